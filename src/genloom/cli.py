"""The `genloom` command: one sub-command per task, registered in one explicit table.

Each entry names a module that exposes `add_parser(subparsers) -> argparse.ArgumentParser`; the
parser it returns carries `func(args) -> int | None` through `set_defaults`. Modules are imported
only when their command runs, so `genloom corpora` does not load transformers.
A `UserError` (or a bad flag) ends as one line on stderr and exit code 2, and so does an
allocation the machine refuses (a model, beam or batch far too large for its memory).
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from typing import Any

from genloom import __version__
from genloom.cliargs import DefaultsHelpFormatter
from genloom.errors import UserError

# name -> (module with add_parser, one-line help). Add a task here and nowhere else.
COMMANDS: dict[str, tuple[str, str]] = {
    "corpora": ("genloom.tasks.corpora.cli", "list the named corpora, whether installed, sizes, licences"),
    "baseline": ("genloom.tasks.title.baseline_cli", "score lead-N and best-sentence title baselines"),
    "title": ("genloom.tasks.title.cli", "train / generate / evaluate article -> title models"),
    "generate": ("genloom.tasks.lm.cli", "continue prompts with a genloom or Hugging Face model"),
    "continue": ("genloom.tasks.lm.cli", "continue a prompt cut mid-word, with exact token healing"),
    "lm": ("genloom.tasks.lm.pretrain_cli", "pre-train genloom-zh-base, the Chinese base LM (lm pretrain)"),
    "nvae": ("genloom.tasks.nvae.cli", "train / evaluate / sample NVAE (and a plain VAE) on images"),
    "condition": ("genloom.tasks.condition.cli", "train / sample / evaluate label- or vector-conditioned LMs (CLN)"),
    "summarize": ("genloom.tasks.summarize.cli", "extract-then-generate summaries of long documents (SPACES)"),
    "search": ("genloom.tasks.search.cli", "keywords-to-sentence, Gibbs sampling, typo correction by MCMC search"),
    "serve": ("genloom.serve.cli", "an OpenAI-compatible HTTP server with token healing and a playground"),
}


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage otherwise)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser; only the command named `only` has its module imported and its
    options registered (the others show their one-line help), so start-up stays fast."""
    parser = _Parser(prog="genloom", description="genloom: text generation toolkit")
    parser.add_argument("--version", action="version", version=f"genloom {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module, help_) in COMMANDS.items():
        if name != only:
            sub.add_parser(name, help=help_)
            continue
        importlib.import_module(module).add_parser(sub, name=name, help=help_)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    first = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only=first if first in COMMANDS else None)
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0 if not argv else 2
    try:
        rc = args.func(args)
    except UserError as e:
        print(f"genloom: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("genloom: interrupted", file=sys.stderr)
        return 130
    except (MemoryError, RuntimeError) as e:
        if (why := _out_of_memory(e)) is None:
            raise
        print(f"genloom: error: {why}", file=sys.stderr)
        return 2
    return int(rc or 0)


def _out_of_memory(e: BaseException) -> str | None:
    """One line for an allocation the machine refused (sizes, beams or sample counts a flag asked
    for), None for any other error (a bug: its traceback is kept)."""
    text = str(e)
    if not isinstance(e, MemoryError) and "can't allocate memory" not in text and "out of memory" not in text.lower():
        return None
    asked = re.search(r"allocate (\d+) bytes", text)
    size = f" (an allocation of {int(asked.group(1)) / 2**30:.1f} GiB)" if asked else ""
    return f"out of memory{size}: ask for less (a smaller model, batch, beam width, length or sample count)"


if __name__ == "__main__":
    raise SystemExit(main())
