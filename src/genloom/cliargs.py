"""Flags every genloom command shares, and config dataclasses turned into flags: one convention.

- `add_common(parser, ...)` adds the shared flags with the same names and meaning in every task:
  `--model DIR` (a model directory to read), `--out DIR` (where a run writes), `--force`
  (replace what --out holds), `--threads N`, `--quiet`, `--seed N`, `--data FILE` /
  `--corpus NAME`.
- `add_config_flags(parser, Config, helps)` adds one flag per documented field of a config
  dataclass (`max_len` -> `--max-len`; bools as `--x/--no-x`; the field's type, default and
  choices from the dataclass), and `config_from_args(Config, args)` builds the config back, so a
  task's flags never drift from its config.
- Numbers are checked where they are parsed (`positive_int`, `nonneg_float`, ...): a bad value is
  one line from argparse and exit 2, never a traceback or a run that never ends.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from genloom.errors import UserError


# ---- checked number types ---------------------------------------------------------------------
def _number(kind: type, test: Callable[[float], bool], what: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None
        if isinstance(value, float) and not math.isfinite(value) or not test(value):
            raise argparse.ArgumentTypeError(f"{text!r} must be {what}")
        return value

    parse.__name__ = f"{kind.__name__} ({what})"
    return parse


positive_int = _number(int, lambda v: v > 0, "a positive integer")
nonneg_int = _number(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _number(float, lambda v: v > 0, "a positive number")
nonneg_float = _number(float, lambda v: v >= 0, "a number >= 0")
probability = _number(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")
finite_float = _number(float, lambda v: True, "a finite number")


def set_threads(n: int | None) -> None:
    """--threads: torch's intra-op threads (torch is imported only when a command runs)."""
    if n:
        import torch

        torch.set_num_threads(n)


# ---- the shared flags ---------------------------------------------------------------------------
def add_common(
    parser: argparse.ArgumentParser,
    *,
    model: str | None = None,
    model_required: bool = True,
    out: str | None = None,
    out_default: str | None = None,
    force: bool = False,
    threads: bool = True,
    quiet: bool = False,
    seed: int | None = None,
    data: bool = False,
    corpus: str | None = None,
) -> argparse.ArgumentParser:
    """Add the shared flags; each keyword that is not None/False turns one on, its text the help.

    Args:
        model: help of `--model DIR` (required unless `model_required=False`).
        out: help of `--out DIR` (required unless `out_default` is given).
        force: add `--force` (replace what --out holds).
        threads / quiet: add `--threads N` / `--quiet`.
        seed: add `--seed N` with this default.
        data: add `--data FILE` (a user file instead of the corpus).
        corpus: add `--corpus NAME` with this default.
    """
    if model is not None:
        parser.add_argument("--model", required=model_required, metavar="DIR", help=model)
    if out is not None:
        parser.add_argument("--out", required=out_default is None, default=out_default, metavar="DIR",
                            help=out if out_default is None else f"{out} (default {out_default})")
    if force:
        parser.add_argument("--force", action="store_true", help="replace what --out already holds")
    if corpus is not None:
        parser.add_argument("--corpus", default=corpus, metavar="NAME", help=f"named corpus (default {corpus})")
    if data:
        parser.add_argument("--data", default=None, metavar="FILE", help="a user file (.jsonl, .csv, .tsv, .txt) instead of --corpus")
    if seed is not None:
        parser.add_argument("--seed", type=int, default=seed, help=f"seed of every random choice (default {seed})")
    if threads:
        parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    if quiet:
        parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


# ---- config dataclass <-> flags -----------------------------------------------------------------
def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _base_type(annotation: Any) -> tuple[type, bool]:
    """(the scalar type, whether None is allowed) of a field annotation."""
    if isinstance(annotation, str):
        annotation = eval(annotation, vars(typing), {})  # noqa: S307 (dataclass annotations only)
    optional = False
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        optional = type(None) in args
        args = tuple(a for a in args if a is not type(None))
        annotation = args[0] if len(args) == 1 else str
    if typing.get_origin(annotation) is typing.Literal:
        return type(typing.get_args(annotation)[0]), optional
    return (annotation if isinstance(annotation, type) else str), optional


_CHECKED = {int: nonneg_int, float: finite_float}


def add_config_flags(
    parser: argparse.ArgumentParser,
    config_cls: type,
    helps: Mapping[str, str],
    *,
    types_: Mapping[str, Callable[[str], Any]] | None = None,
    choices: Mapping[str, Sequence[Any]] | None = None,
    defaults: Any = None,
) -> None:
    """One flag per field named in `helps` (in that order), typed from the dataclass.

    Args:
        config_cls: the config dataclass.
        helps: field -> help text; only these fields become flags.
        types_: field -> parser, overriding the default check (int: >= 0, float: finite).
        choices: field -> allowed values.
        defaults: an instance whose values are the flags' defaults (default: config_cls()).
    """
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    hints = typing.get_type_hints(config_cls)
    base = defaults if defaults is not None else config_cls()
    for name, text in helps.items():
        if name not in fields:
            raise KeyError(f"{config_cls.__name__} has no field {name!r}")
        kind, optional = _base_type(hints[name])
        default = getattr(base, name)
        flag = flag_name(name)
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=text)
            continue
        parse = (types_ or {}).get(name) or _CHECKED.get(kind, kind)
        extra = {"choices": list((choices or {})[name])} if choices and name in choices else {}
        shown = f" (default {default})" if default is not None else ""
        parser.add_argument(flag, dest=name, type=parse, default=default, help=f"{text}{shown}", **extra)


def config_from_args(config_cls: type, args: argparse.Namespace, **overrides: Any) -> Any:
    """The config built from the flags `add_config_flags` added (fields absent from `args` keep
    their defaults); a config that rejects its values gives a one-line UserError."""
    names = {f.name for f in dataclasses.fields(config_cls)}
    values = {n: getattr(args, n) for n in names if hasattr(args, n)}
    values.update(overrides)
    try:
        return config_cls(**values)
    except (TypeError, ValueError) as e:
        raise UserError(str(e)) from None
