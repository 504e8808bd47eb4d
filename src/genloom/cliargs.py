"""Flags every genloom command shares, and config dataclasses turned into flags: one convention.

- `add_common(parser, ...)` adds the shared flags with the same names and meaning in every task:
  `--model DIR` (a model directory to read), `--out DIR` (where a run writes), `--force`
  (replace what --out holds), `--threads N`, `--quiet`, `--seed N`, `--data FILE` /
  `--corpus NAME`.
- `add_config_flags(parser, Config, helps)` adds one flag per documented field of a config
  dataclass (`max_len` -> `--max-len`; bools as `--x/--no-x`; the field's type, default and
  choices from the dataclass), and `config_from_args(Config, args)` builds the config back, so a
  task's flags never drift from its config.
- Numbers are checked where they are parsed (`positive_int`, `nonneg_float`, ... `number(int,
  lo=, hi=)`, and `bounded(...)` for ranges a float32 computation survives: `temperature`,
  `learning_rate`, ...): a bad value is one line from argparse naming the flag and exit 2, never
  a traceback, a run that never ends or a silently changed meaning; `require` / `at_most` check
  flags against each other before any model loads.
- Output paths are flags added by `output_flag` and checked by `check_outputs(args)` first thing
  in a command (`genloom.files.check_output`): a directory, a path under a regular file or a
  directory that takes no file is refused before the work starts; results are written by
  `genloom.files`.
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
INT_MAX = 2**31 - 1  # no count, size or step budget of genloom is larger; bigger ones are typos


def number(kind: type, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           hi_open: bool = False, what: str | None = None) -> Callable[[str], Any]:
    """An argparse `type` for a number of `kind` (int or float) in the range from `lo` to `hi`
    (either bound left out, `..._open` to exclude it): a bad value is one argparse line naming the
    flag ("argument --steps: '0' must be a positive integer"; an integer past `hi`: "is too large
    (at most N)"). Floats must be finite; ints are at most INT_MAX unless `hi` says otherwise.
    The bounds are kept on the function (`kind`, `lo`, `hi`, `lo_open`, `hi_open`), so tests can
    generate the values it must refuse."""
    if kind is int and hi is None:
        hi = INT_MAX
    if what is None:
        if kind is int:
            what = "an integer" if lo is None else "a positive integer" if lo == 1 else f"an integer >= {lo}"
        else:
            left = "" if lo is None else ("(" if lo_open else "[") + f"{lo:g}"
            right = "" if hi is None else f"{hi:g}" + (")" if hi_open else "]")
            what = f"a number in {left or '(-inf'}, {right or 'inf)'}" if left or right else "a finite number"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} must be {what}")
        if lo is not None and (value < lo or lo_open and value == lo):
            raise argparse.ArgumentTypeError(f"{text!r} must be {what}")
        if hi is not None and (value > hi or hi_open and value == hi):
            raise argparse.ArgumentTypeError(f"{text!r} is too large (at most {hi})" if kind is int
                                             else f"{text!r} must be {what}")
        return value

    parse.__name__ = f"{kind.__name__} ({what}{'' if kind is float or hi == INT_MAX else f', at most {hi}'})"
    parse.kind, parse.lo, parse.hi, parse.lo_open, parse.hi_open = kind, lo, hi, lo_open, hi_open  # type: ignore[attr-defined]
    return parse


positive_int = number(int, lo=1)
nonneg_int = number(int, lo=0, what="an integer >= 0")
positive_float = number(float, lo=0, lo_open=True, what="a positive number")
nonneg_float = number(float, lo=0, what="a number >= 0")
probability = number(float, lo=0, hi=1)  # [0, 1]
unit_fraction = number(float, lo=0, hi=1, lo_open=True)  # (0, 1]: top-p, warm-up shares
decay = number(float, lo=0, hi=1, hi_open=True)  # [0, 1): EMA decay, dropout, thresholds
finite_float = number(float)
seed_int = number(int, lo=0, what="an integer >= 0")  # at most INT_MAX: numpy takes < 2**32, tasks add to it
threads_int = number(int, lo=1, hi=1024)
# what one decoding call holds at once: larger values only exhaust memory or never finish
beam_width = number(int, lo=1, hi=256)
rows_int = number(int, lo=1, hi=4096)  # samples, chains, rows of a batch


def bounded(parse: Callable[[str], Any], *, lo: float | None = None, hi: float | None = None) -> Callable[[str], Any]:
    """A checked number type narrowed to [lo, hi]: its own message for what it refuses ("must be a
    positive number"), then "is too small (at least lo)" / "is too large (at most hi)" for values
    it takes that a float32 computation cannot (a temperature of 1e-300 turns logits into inf)."""
    def narrowed(text: str) -> Any:
        value = parse(text)
        if lo is not None and value < lo:
            raise argparse.ArgumentTypeError(f"{text!r} is too small (at least {lo:g})")
        if hi is not None and value > hi:
            raise argparse.ArgumentTypeError(f"{text!r} is too large (at most {hi:g})")
        return value

    limits = ([] if lo is None else [f"at least {lo:g}"]) + ([] if hi is None else [f"at most {hi:g}"])
    narrowed.__name__ = f"{parse.__name__[:-1]}, {', '.join(limits)})"
    narrowed.kind = parse.kind  # type: ignore[attr-defined]
    narrowed.lo, narrowed.lo_open = (parse.lo, parse.lo_open) if lo is None else (lo, False)  # type: ignore[attr-defined]
    narrowed.hi, narrowed.hi_open = (parse.hi, parse.hi_open) if hi is None else (hi, False)  # type: ignore[attr-defined]
    return narrowed


# temperatures divide float32 logits (sampling, guidance, search) or scale a std (NVAE): outside
# these they overflow to inf or vanish, and a sampler sees NaN probabilities
temperature = bounded(positive_float, lo=1e-3, hi=1e3)
penalty_factor = bounded(positive_float, lo=1e-3, hi=1e3)  # repetition penalty: divides / multiplies logits
length_penalty = bounded(finite_float, lo=-100, hi=100)  # beam score / length ** this: overflows past it
guidance_weight = bounded(nonneg_float, hi=100)  # (1 + w) cond - w uncond logits
# optimizer rates: torch keeps them as float32 inside (lr 1e300: "cannot be converted without overflow")
learning_rate = bounded(positive_float, hi=10)
decay_rate = bounded(nonneg_float, hi=10)  # weight decay, an lr floor


def is_checked_number(parse: Any) -> bool:
    """Whether an argparse `type` is a checked number type (`number(...)`, `bounded(...)`)."""
    return callable(parse) and getattr(parse, "kind", None) in (int, float) and hasattr(parse, "lo")


def require(condition: bool, message: str) -> None:
    """A consistency check between flags, made before any model loads: one line, exit 2."""
    if not condition:
        raise UserError(message)


def at_most(args: argparse.Namespace, low: str, high: str) -> None:
    """Refuse `--low` above `--high` (dests `low`, `high`; None means unset)."""
    a, b = getattr(args, low, None), getattr(args, high, None)
    require(a is None or b is None or a <= b, f"{flag_name(low)} {a} is above {flag_name(high)} {b}")


# ---- checked output paths ---------------------------------------------------------------------
def output_flag(parser: argparse.ArgumentParser, *names: str, directory: bool = False, parents: bool = False,
                **kwargs: Any) -> argparse.Action:
    """Add an output-path flag (a file in a directory that exists, or with `parents=True` one
    whose missing directories are made; or with `directory=True` a directory files are written
    into) and register it for `check_outputs`, which the command calls before its work starts:
    a file in a directory that does not exist is refused there, as a shell redirect would be,
    so a typo in a path never makes folders."""
    action = parser.add_argument(*names, metavar=kwargs.pop("metavar", "DIR" if directory else "FILE"), **kwargs)
    known = parser.get_default("output_flags") or ()
    kind = "directory" if directory else "file" if parents else "file in an existing directory"
    parser.set_defaults(output_flags=(*known, (action.dest, names[0], kind)))
    return action


def check_outputs(args: argparse.Namespace) -> None:
    """Refuse, in one line naming the flag, every given output path of `output_flag` that could
    not be written now (a directory, under a regular file, no such directory, not writable:
    `genloom.files.check_output`). Nothing is created; call it before any model loads."""
    from genloom.files import check_output

    for dest, flag, kind in getattr(args, "output_flags", ()):
        value = getattr(args, dest, None)
        if value is not None:
            check_output(value, what=flag, directory=kind == "directory", parents=kind != "file in an existing directory")


def free_cores() -> tuple[int, int]:
    """(cores free now, cores this process may use): the usable cores less the 1-minute load
    average, rounded, at least 1. Two threads on two cores that another job also uses stall
    each other (issue 24 saw SmolLM2 stream at 1.2 s/token where one thread took 25 ms), so a
    shared machine gets one thread."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        busy = os.getloadavg()[0]
    except OSError:  # no load average on this system
        busy = 0.0
    return max(1, min(cores, int(cores - busy + 0.5))), cores


def set_threads(n: int | None) -> int:
    """--threads: torch's intra-op threads (torch is imported only when a command runs); None
    (the flag left out) takes `free_cores()`. Returns the number set."""
    import torch

    n = n or free_cores()[0]
    torch.set_num_threads(n)
    return n


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """--help shows every flag's default: "(default: X)" is added to each help that does not
    say its default already; a flag whose default is None says in its own help what leaving
    it out means (tests/test_cli_help.py checks every flag of every command)."""

    SILENT = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._StoreConstAction,
              argparse._HelpAction, argparse._VersionAction, argparse.BooleanOptionalAction,
              argparse._SubParsersAction)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (isinstance(action, self.SILENT) or not action.option_strings or action.required
                or action.default in (None, argparse.SUPPRESS) or "default" in text.lower()):
            return text
        return f"{text} (default: %(default)s)"


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
        parser.add_argument("--data", default=None, metavar="FILE", help="a user file (.jsonl, .csv, .tsv, .txt) instead of --corpus (default: none, --corpus is read)")
    if seed is not None:
        parser.add_argument("--seed", type=seed_int, default=seed, help=f"seed of every random choice (default {seed})")
    if threads:
        add_threads(parser)
    if quiet:
        parser.add_argument("--quiet", action="store_true", help="no progress bars or progress lines on stderr")
    return parser


def add_threads(parser: argparse.ArgumentParser) -> None:
    """`--threads N`, whose default is the cores free when the command starts (`free_cores`)."""
    free, cores = free_cores()
    parser.add_argument("--threads", type=threads_int, default=None,
                        help=f"torch CPU threads (default: the cores free when it starts, {free} of {cores} now)")


def add_input(parser: argparse.ArgumentParser, text: str, *, required: bool = False) -> argparse.Action:
    """`--input FILE`, where "-" is stdin."""
    return parser.add_argument("--input", metavar="FILE", required=required,
                               help=f"{text}; - reads stdin" + ("" if required else " (default: none)"))


def add_json(parser: argparse.ArgumentParser, what: str = "each result") -> argparse.Action:
    """`--json` (and its older spelling `--jsonl`): JSON lines of one shape, `json_record`."""
    return parser.add_argument("--json", "--jsonl", dest="json", action="store_true",
                               help=f"print {what} as a JSON line {{id, input, output, ...}}; id is the input "
                                    "record's \"id\" field, else its line number")


def add_item_input(p: argparse.ArgumentParser, what: str) -> None:
    """The input of a command that answers items one per line: `--input FILE` ("-" is stdin) or
    the older positional FILE (one of them, `input_path`), as lines or JSONL (--format, --field)."""
    p.add_argument("input_file", nargs="?", default=None, metavar="FILE",
                   help=f"file of {what}s, - for stdin (the older spelling of --input FILE)")
    add_input(p, f"file of {what}s, one per line or JSONL objects (field --field)")
    from genloom.data.readers import INPUT_FORMATS

    p.add_argument("--format", default="auto", choices=INPUT_FORMATS,
                   help="lines, jsonl, or auto (JSONL if the first line is a JSON object)")
    p.add_argument("--field", default="content", help=f"JSONL field holding the {what}")


def input_path(args: argparse.Namespace) -> str:
    """The file (or "-") named by --input or by the positional FILE, or "-" when neither is
    given and stdin is a pipe or a file (as before --input existed). Both given, or neither with
    stdin a terminal (which would wait for typing with no prompt), is a one-line UserError
    (exit 2), before anything is opened or loaded."""
    if args.input is not None and args.input_file is not None:
        raise UserError(f"the input is given twice (FILE {args.input_file} and --input {args.input}): give one")
    if args.input is None and args.input_file is None:
        import sys

        if sys.stdin is None or sys.stdin.isatty():
            raise UserError("no input: give --input FILE (--input - reads stdin)")
        return "-"
    return args.input if args.input is not None else args.input_file


def add_num_beams(p: argparse.ArgumentParser) -> None:
    """`--num-beams N` (and its older spelling `--beams`): the beam width of decoding."""
    p.add_argument("--num-beams", "--beams", dest="num_beams", type=beam_width, default=None, metavar="N",
                   help="beam width (default: the model's)")


def json_record(id_: Any, input_: Any, output: Any, **extra: Any) -> str:
    """One JSON line of every command's --json output: {"id", "input", "output", ...extra}."""
    import json

    return json.dumps({"id": id_, "input": input_, "output": output, **extra}, ensure_ascii=False)


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
