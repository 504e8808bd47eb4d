"""genloom.cliargs: flags from a config dataclass round-trip, bad numbers are argparse errors."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from genloom.cliargs import add_common, add_config_flags, config_from_args, positive_int, probability
from genloom.errors import UserError


@dataclass
class Cfg:
    max_len: int = 8
    lr: float = 1e-3
    copy: bool = True
    mode: str = "a"
    steps: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("a", "b"):
            raise ValueError(f"unknown mode {self.mode!r}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(exit_on_error=False)
    add_config_flags(p, Cfg, {"max_len": "m", "lr": "l", "copy": "c", "mode": "o", "steps": "s"},
                     types_={"steps": positive_int})
    add_common(p, model="model dir", out="run dir", out_default="runs/x", force=True, quiet=True, seed=3)
    return p


def test_defaults_and_values_round_trip():
    args = _parser().parse_args(["--model", "m"])
    assert config_from_args(Cfg, args) == Cfg()
    assert (args.out, args.force, args.quiet, args.seed, args.threads) == ("runs/x", False, False, 3, None)
    args = _parser().parse_args(["--model", "m", "--max-len", "5", "--lr", "0.5", "--no-copy", "--mode", "b",
                                 "--steps", "7"])
    assert config_from_args(Cfg, args) == Cfg(max_len=5, lr=0.5, copy=False, mode="b", steps=7)


@pytest.mark.parametrize("argv", [["--max-len", "-1"], ["--lr", "nan"], ["--lr", "inf"], ["--steps", "0"],
                                  ["--max-len", "x"], ["--threads", "-3"]])
def test_bad_numbers_are_rejected_by_the_parser(argv):
    with pytest.raises(argparse.ArgumentError):
        _parser().parse_args(["--model", "m", *argv])


def test_config_errors_are_one_line_user_errors():
    args = _parser().parse_args(["--model", "m", "--mode", "z"])
    with pytest.raises(UserError, match="unknown mode 'z'"):
        config_from_args(Cfg, args)


def test_probability_bounds():
    assert probability("0.25") == 0.25
    for bad in ("-0.1", "1.5", "nan"):
        with pytest.raises(argparse.ArgumentTypeError):
            probability(bad)
