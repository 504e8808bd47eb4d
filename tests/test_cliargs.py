"""genloom.cliargs: flags from a config dataclass round-trip, bad numbers are argparse errors,
number types take exactly the range they declare, output paths are refused before any work and
their check creates nothing (`genloom.files.check_output`)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from genloom.cliargs import (INT_MAX, add_common, add_config_flags, at_most, check_outputs, config_from_args,
                             is_checked_number, learning_rate, number, output_flag, positive_int, probability, require,
                             seed_int, temperature, threads_int)
from genloom.errors import UserError
from genloom.files import check_output


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


# ---- number(): the range a type declares is the range it takes -----------------------------------
@pytest.mark.parametrize("parse, good, bad", [
    (number(int, lo=1, hi=5), ["1", "5", "003"], ["0", "6", "-1", "1.0", "x", "", "nan"]),
    (number(float, lo=0, hi=1, lo_open=True), ["1", "0.5", "1e-9"], ["0", "1.0001", "-0.0", "nan", "inf", "-inf"]),
    (number(float, lo=0, hi=1, hi_open=True), ["0", "0.999"], ["1", "-1e-9", "nan", "1e999"]),
    (number(float), ["-1e300", "0", "7"], ["nan", "inf", "-inf", "1e999", "one"]),
    (seed_int, ["0", str(INT_MAX)], ["-1", str(INT_MAX + 1), "0.5"]),
    (threads_int, ["1", "1024"], ["0", "1025", "-3"]),
])
def test_number_takes_exactly_its_range(parse, good, bad):
    for text in good:
        parse(text)
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)
    assert is_checked_number(parse) and not is_checked_number(int)


def test_number_messages_name_the_rule():
    with pytest.raises(argparse.ArgumentTypeError, match=r"'0' must be a positive integer"):
        positive_int("0")
    with pytest.raises(argparse.ArgumentTypeError, match=r"is too large \(at most 256\)"):
        number(int, lo=1, hi=256)("257")
    with pytest.raises(argparse.ArgumentTypeError, match=r"'2' must be a number in \(0, 1\]"):
        number(float, lo=0, hi=1, lo_open=True)("2")
    with pytest.raises(argparse.ArgumentTypeError, match=r"is too large \(at most 2147483647\)"):
        positive_int(str(2**40))
    # bounded(): the base type's message first, then the range a float32 computation survives
    with pytest.raises(argparse.ArgumentTypeError, match=r"'0' must be a positive number"):
        temperature("0")
    with pytest.raises(argparse.ArgumentTypeError, match=r"'1e-300' is too small \(at least 0.001\)"):
        temperature("1e-300")
    with pytest.raises(argparse.ArgumentTypeError, match=r"'1e300' is too large \(at most 10\)"):
        learning_rate("1e300")
    assert temperature("0.001") == 0.001 and learning_rate("10") == 10.0
    assert (temperature.kind, temperature.lo, temperature.hi, temperature.lo_open) == (float, 1e-3, 1e3, False)


def test_flags_against_each_other():
    ns = argparse.Namespace(min_len=3, max_len=2, other=None)
    with pytest.raises(UserError, match=r"^--min-len 3 is above --max-len 2$"):
        at_most(ns, "min_len", "max_len")
    at_most(ns, "max_len", "min_len")
    at_most(ns, "other", "max_len")  # unset: nothing to compare
    with pytest.raises(UserError, match="^why$"):
        require(False, "why")


# ---- output_flag / check_outputs: refused before the work, nothing created ---------------------
def _out_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    output_flag(p, "--output", help="a file in an existing directory (the default)")
    output_flag(p, "--made", parents=True, help="a file whose missing directories are made")
    output_flag(p, "--dir", directory=True, help="a directory")
    return p


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("flag, target, message", [
    ("--output", ".", "--output . is a directory, not a file"),
    ("--output", "file/x.json", "cannot write --output file/x.json: a parent is not a directory (file is a file)"),
    ("--made", "file/a/b.json", "a parent is not a directory (file is a file)"),
    ("--output", "/proc/genloom-test.json", "cannot write --output /proc/genloom-test.json: "),
    ("--output", "", "--output: an empty path"),
    ("--output", "none/x.json", "no directory none for --output"),
    ("--dir", "file", "--dir file is a file, not a directory"),
    ("--dir", "file/sub", "a parent is not a directory"),
])
def test_bad_output_paths(tmp_path, monkeypatch, flag, target, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("x")
    args = _out_parser().parse_args([flag, target])
    with pytest.raises(UserError) as e:
        check_outputs(args)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert _tree(tmp_path) == ["file"]


def test_good_output_paths_create_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    for argv in (["--made", "new/deeper/x.json"], ["--output", "d/x.json"], ["--made", "d/x.json"],
                 ["--dir", "runs/eval"], ["--dir", "d"], []):
        check_outputs(_out_parser().parse_args(argv))
    assert _tree(tmp_path) == ["d"]
    assert check_output(tmp_path / "d" / "x", what="--o") == tmp_path / "d" / "x"
    with pytest.raises(UserError, match="no directory"):
        check_output(tmp_path / "none" / "x", what="--o", parents=False)
