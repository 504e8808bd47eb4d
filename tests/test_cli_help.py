"""Every flag of every `genloom` command shows its default in --help (issue 24, part 5).

The parsers are walked as the fuzz test walks them, so a new flag is checked without touching
this file: a flag with a default gets "(default: X)" from `cliargs.DefaultsHelpFormatter`, and a
flag whose default is None must say in its own help what leaving it out means (its text names a
default); on/off switches, required flags and positionals need nothing."""

from __future__ import annotations

import argparse
import contextlib
import io

import pytest

from genloom.cli import main
from genloom.cliargs import DefaultsHelpFormatter

from test_cli_fuzz import LEAVES


def _flags_without_default(parser: argparse.ArgumentParser) -> list[str]:
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or not action.option_strings:
            continue
        if isinstance(action, DefaultsHelpFormatter.SILENT) or action.required:
            if not action.help:
                missing.append(action.option_strings[0])
            continue
        if action.help == argparse.SUPPRESS:
            continue
        if not action.help:  # argparse prints neither text nor default for a flag with no help
            missing.append(action.option_strings[0])
            continue
        if action.default is None and "default" not in (action.help or "").lower():
            missing.append(action.option_strings[0])
    return missing


@pytest.mark.parametrize("path", sorted(LEAVES), ids=" ".join)
def test_every_flag_says_its_default(path):
    assert _flags_without_default(LEAVES[path]) == []


@pytest.mark.parametrize("path", [("title", "generate"), ("generate",), ("search", "keywords")], ids=" ".join)
def test_help_text_shows_the_defaults(path):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as e:
        main([*path, "--help"])
    assert e.value.code == 0
    text = " ".join(out.getvalue().split())
    parser = LEAVES[path]
    for action in parser._actions:
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS) and \
                not isinstance(action, DefaultsHelpFormatter.SILENT):
            assert f"default: {action.default}" in text or "default" in (action.help or "").lower(), action.dest
    assert "the cores free when it starts" in text
