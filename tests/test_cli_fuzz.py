"""Fuzz of every `genloom` sub-command with bad numbers and bad output paths (issue 24).

Every leaf command of `genloom.cli.COMMANDS` is found by walking the real parsers, so a new
command or flag is fuzzed without touching this file. For each case the command must end with
exit code 2 and exactly one line on stderr naming the flag, no traceback, nothing on stdout,
within 30 s, and leave no file behind (the working directory is a fresh temporary one, so
default outputs would land there too).

- numbers: every flag parsed by a checked number type (`genloom.cliargs.number`) gets values
  outside the range its type declares (text, empty, nan, +-inf, past either bound, a fraction
  for an integer, an integer past INT_MAX); a flag parsed by bare int/float fails the test.
- consistency: the issue's cases that need more than one flag (`--min-new-tokens` above
  `--max-new-tokens`, `--num-beams` without beam search, a training run with no budget,
  `--model-json` sizes, ...), each given a model or data path that does not exist, so the flag
  must be refused before anything is loaded.
- output paths: every flag registered by `cliargs.output_flag` gets a directory, a path under a
  regular file, a path in a missing directory and one where no file can be created; and a good
  path in folders not made yet, with a missing model: the failed command must not make them.
- a sample of all three kinds through the real executable, in subprocesses.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from genloom.cli import COMMANDS, build_parser, main
from genloom.cliargs import INT_MAX, is_checked_number

LIMIT_S = 30.0
MISSING = "/nonexistent-genloom-fuzz"


# ---- the parsers ------------------------------------------------------------------------------
def _leaves() -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """(command, action, ...) -> parser of every runnable leaf of every command."""
    leaves: dict[tuple[str, ...], argparse.ArgumentParser] = {}

    def walk(path: tuple[str, ...], parser: argparse.ArgumentParser) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            leaves[path] = parser
        for sub in subs:
            for name, child in sub.choices.items():
                walk((*path, name), child)

    for name in COMMANDS:
        top = build_parser(only=name)
        sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
        walk((name,), sub.choices[name])
    return leaves


LEAVES = _leaves()


def _flag(action: argparse.Action) -> str:
    return max(action.option_strings, key=len)


def _bad_values(parse) -> list[str]:
    """Values the checked number type `parse` must refuse, from the range it declares."""
    values = ["abc", "", "nan", "inf", "-inf", "1e999"]
    lo, hi = parse.lo, parse.hi
    if parse.kind is int:
        values += ["1.5", str(hi + 1), str(INT_MAX * 10**6)]
        if lo is not None:
            values.append(str(lo - 1))
    else:
        if lo is not None:
            values.append(repr(float(lo)) if parse.lo_open else repr(lo - 0.5))
            values += [repr(lo / 2)] * (lo > 0 and not parse.lo_open)
        if hi is not None:
            values.append(repr(float(hi)) if parse.hi_open else repr(hi + 0.5))
    return values


def _number_cases() -> list[tuple[tuple[str, ...], str, str]]:
    cases = []
    for path, parser in LEAVES.items():
        for action in parser._actions:
            if action.option_strings and is_checked_number(action.type):
                cases += [(path, _flag(action), v) for v in _bad_values(action.type)]
    return cases


NUMBER_CASES = _number_cases()


# ---- running a case ---------------------------------------------------------------------------
def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _one_line_error(rc: int, out: str, err: str, seconds: float, must_name: str) -> None:
    assert "Traceback" not in err, err
    assert rc == 2, (rc, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].strip(), err
    assert must_name in lines[0], lines[0]
    assert out == "", out
    assert seconds < LIMIT_S


def _main(argv: list[str], capsys) -> tuple[int, str, str, float]:
    """genloom.cli.main in this process: (exit code, stdout, stderr, seconds)."""
    capsys.readouterr()
    t0 = time.perf_counter()
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's errors
        rc = e.code if isinstance(e.code, int) else 1
    seconds = time.perf_counter() - t0
    out, err = capsys.readouterr()
    return rc, out, err, seconds


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty working directory (with one regular file, `file`) that the case must not change."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("x\n")
    monkeypatch.setattr(sys, "stdin", open(os.devnull))  # a command reading stdin gets nothing
    return tmp_path


# ---- 1. every numeric flag, generated bad values (parse level) ---------------------------------
def test_every_numeric_flag_is_checked():
    """No flag of any command parses a number with bare int/float (those take nan, inf, -1)."""
    bare = [(" ".join(path), _flag(a)) for path, parser in LEAVES.items() for a in parser._actions
            if a.option_strings and a.type in (int, float)]
    assert bare == []
    assert len({c[:2] for c in NUMBER_CASES}) >= 150  # flags fuzzed; every command has some
    assert {path[0] for path, _, _ in NUMBER_CASES} >= set(COMMANDS) - {"corpora"}


FLAGS = sorted({(path, flag) for path, flag, _ in NUMBER_CASES})


@pytest.mark.parametrize("path, flag", FLAGS, ids=[f"{' '.join(p)} {f}" for p, f in FLAGS])
def test_bad_numbers_are_one_line_exit_2(path, flag, workdir, capsys):
    """Parsing alone: a value the flag's type accepts would start the real command, so the
    parser is called directly (the same `_Parser.error` line and exit code `main` gives)."""
    before = _tree(workdir)
    parser = build_parser(only=path[0])
    for p, f, value in NUMBER_CASES:
        if (p, f) != (path, flag):
            continue
        capsys.readouterr()
        t0 = time.perf_counter()
        with pytest.raises(SystemExit) as e:
            parser.parse_args([*path, f"{flag}={value}"])
        out, err = capsys.readouterr()
        _one_line_error(e.value.code, out, err, time.perf_counter() - t0, flag)  # "argument --a/--b: ..." names every spelling
    assert _tree(workdir) == before


# ---- 2. flags against each other, before anything is loaded -------------------------------------
CONSISTENCY = [
    # (argv, text the one line must hold) -- models and data do not exist: the flag must be first
    (["generate", "--model", MISSING, "--prompt", "hi", "--min-new-tokens", "9", "--max-new-tokens", "4"],
     "--min-new-tokens 9 is above --max-new-tokens 4"),
    (["generate", "--model", MISSING, "--prompt", "hi", "--num-beams", "3"], "--num-beams"),
    (["generate", "--model", MISSING, "--prompt", "hi", "--length-penalty", "2"], "--length-penalty"),
    (["generate", "--model", MISSING, "--prompt", "hi", "--stream", "--output", "x.txt"], "--stream"),
    (["continue", "--model", MISSING, "--prompt", "hi", "--num-beams", "2"], "--num-beams"),
    (["continue", "--model", MISSING, "--prompt", "hi", "--num-samples", "2"], "--num-samples"),
    (["continue", "--model", MISSING, "--prompt", "hi", "--heal", "none", "--back-off", "3"], "--back-off"),
    (["title", "train", "--data", MISSING, "--out", "m", "--model-json", '{"enc_hidden": -4}'], "enc_hidden"),
    (["title", "train", "--data", MISSING, "--out", "m", "--model-json", '{"dropout": 1.5}'], "dropout"),
    (["title", "train", "--data", MISSING, "--out", "m", "--model-json", '{"emb_dim": 1.5}'], "emb_dim"),
    (["title", "train", "--data", MISSING, "--out", "m", "--model-json", '{"vocab_size": 9}'], "vocab_size"),
    (["title", "train", "--data", MISSING, "--out", "m", "--model-json", '{"nope": 1}'], "nope"),
    (["title", "train", "--data", MISSING, "--out", "m", "--model-json", '[1]'], "--model-json"),
    (["title", "train", "--data", MISSING, "--out", "m", "--arch", "unilm", "--model-json",
      '{"d_model": 100, "n_head": 3}'], "n_head"),
    (["title", "train", "--data", MISSING, "--out", "m", "--minutes", "-1"], "--minutes"),
    (["title", "train", "--data", MISSING, "--out", "m", "--gen-vocab", "3"], "--gen-vocab"),
    (["title", "train", "--data", MISSING, "--out", "m", "--pretrain-minutes", "1"], "--pretrain-minutes"),
    (["nvae", "train", "--data", MISSING, "--out", "m"], "--steps or --minutes"),
    (["condition", "train", "--data", MISSING, "--out", "m"], "--steps or --minutes"),
    (["condition", "train", "--data", MISSING, "--out", "m", "--steps", "5", "--width", "100", "--heads", "3"],
     "--width 100 is not a multiple of --heads 3"),
    (["condition", "train", "--data", MISSING, "--out", "m", "--epochs", "2", "--steps", "5"], "--epochs"),
    (["condition", "generate", "--model", MISSING, "--top-p", "1.5"], "--top-p"),
    (["condition", "eval", "--model", MISSING, "--judge", MISSING, "--lm", MISSING, "--top-p", "2"], "--top-p"),
    (["summarize", "train", "--data", MISSING, "--out", "m", "--d-model", "100", "--n-head", "3"], "--d-model"),
    (["summarize", "train", "--data", MISSING, "--out", "m", "--sparse-p", "0.9"], "--sparse-p"),
    (["summarize", "train", "--data", MISSING, "--out", "m", "--encoder", "no-encoder"], "--encoder no-encoder"),
    (["summarize", "train", "--data", MISSING, "--out", "m", "--init", "file"], "--init file"),
    (["summarize", "train", "--data", MISSING, "--out", "m", "--init", "no-init", "--pretrain-minutes", "2"],
     "--pretrain-minutes"),
    (["search", "keywords", "--models", MISSING, "--keywords", "北京", "--min-len", "9", "--max-len", "4"],
     "--min-len"),
    (["search", "gibbs", "--models", MISSING, "--min-len", "9", "--max-len", "4"], "--min-len 9 is above --max-len 4"),
    (["search", "gibbs", "--models", MISSING, "--min-len", "40"], "--min-len 40 is above --max-len 32"),
]


@pytest.mark.parametrize("argv, message", CONSISTENCY, ids=[" ".join(a[:2] + a[-2:]) for a, _ in CONSISTENCY])
def test_inconsistent_flags_are_refused_before_loading(argv, message, workdir, capsys):
    before = _tree(workdir)
    rc, out, err, seconds = _main(argv, capsys)
    _one_line_error(rc, out, err, seconds, message)
    assert MISSING not in err  # refused for the flag, not for the missing model or data
    assert _tree(workdir) == before


# ---- 3. output paths ----------------------------------------------------------------------------
# every leaf with an output flag: the other arguments it needs to get past parsing (a model that
# does not exist: the path must be refused before it is looked at)
PREFIX = {
    ("baseline",): ["--data", MISSING],
    ("title", "generate"): ["--model", MISSING, MISSING],
    ("title", "eval"): ["--model", MISSING],
    ("generate",): ["--model", MISSING, "--prompt", "hi"],
    ("nvae", "eval"): ["--model", MISSING],
    ("nvae", "sample"): ["--model", MISSING],
    ("condition", "eval"): ["--model", MISSING, "--judge", MISSING, "--lm", MISSING],
    ("summarize", "run"): ["--model", MISSING, MISSING],
    ("summarize", "eval"): ["--model", MISSING],
    ("search", "keywords"): ["--models", MISSING, "--keywords", "北京"],
    ("search", "gibbs"): ["--models", MISSING],
    ("search", "correct"): ["--models", MISSING, "--text", "今天"],
}
OUTPUT_DESTS = {"out", "output", "explain", "json"}
BAD_FILES = {  # name -> (path relative to the work directory, a word the line must hold)
    "a directory": (".", "is a directory"),
    "under a regular file": ("file/x.out", "not a directory"),
    "deep under a regular file": ("file/a/b/x.out", "not a directory"),
    "where nothing can be created": ("/proc/genloom-fuzz.out", "cannot write"),
    "in a missing directory where nothing can be created": ("/proc/genloom-fuzz/x.out", "cannot write"),
}
BAD_DIRS = {
    "a regular file": ("file", "is a file"),
    "under a regular file": ("file/sub", "not a directory"),
    "where nothing can be created": ("/proc/genloom-fuzz", "cannot write"),
}


BAD = {"file": BAD_FILES, "directory": BAD_DIRS,
       "file in an existing directory": {**BAD_FILES, "in a missing directory": ("none/x.out", "no directory"),
                                         "in a missing directory where nothing can be created":
                                             ("/proc/genloom-fuzz/x.out", "no directory")}}


def _output_flags() -> list[tuple[tuple[str, ...], str, str]]:
    return [(path, flag, kind) for path, parser in LEAVES.items()
            for _, flag, kind in parser.get_default("output_flags") or ()]


OUTPUT_FLAGS = _output_flags()
OUTPUT_CASES = [(path, flag, bad, *BAD[kind][bad]) for path, flag, kind in OUTPUT_FLAGS for bad in BAD[kind]]


def test_every_output_path_flag_is_registered():
    """Flags that name a file a command writes go through `cliargs.output_flag` (so they are
    checked before the work and fuzzed here); training commands' --out run directories are the
    model-directory checks' business."""
    registered = {(path, dest) for path, parser in LEAVES.items()
                  for dest, _, _ in parser.get_default("output_flags") or ()}
    unregistered = [(path, a.dest) for path, parser in LEAVES.items() if path[-1] not in ("train", "train-models")
                    for a in parser._actions if a.dest in OUTPUT_DESTS and a.option_strings and a.nargs != 0
                    and (path, a.dest) not in registered]
    assert unregistered == []
    assert {path for path, _, _ in OUTPUT_FLAGS} == set(PREFIX)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc (a directory that takes no file)")
@pytest.mark.parametrize("path, flag, kind, target, message", OUTPUT_CASES,
                         ids=[f"{' '.join(c[0])} {c[1]} {c[2]}" for c in OUTPUT_CASES])
def test_bad_output_path_is_refused_before_the_work(path, flag, kind, target, message, workdir, capsys):
    before = _tree(workdir)
    rc, out, err, seconds = _main([*path, *PREFIX[path], flag, target], capsys)
    _one_line_error(rc, out, err, seconds, message)
    assert flag in err and MISSING not in err
    assert _tree(workdir) == before


@pytest.mark.parametrize("path, flag, kind", OUTPUT_FLAGS, ids=[f"{' '.join(p)} {f}" for p, f, _ in OUTPUT_FLAGS])
def test_command_failing_after_the_check_leaves_no_folder(path, flag, kind, workdir, capsys):
    """A good output path in folders that do not exist yet, and a model that does not exist: the
    command fails on the model, and the folders are not made (they are made by the final write)."""
    before = _tree(workdir)
    rc, out, err, seconds = _main([*path, *PREFIX[path], flag, "new/deeper/x.out"], capsys)
    _one_line_error(rc, out, err, seconds, "no directory" if kind == "file in an existing directory" else MISSING)
    assert _tree(workdir) == before


# ---- 4. a sample through the real executable --------------------------------------------------
SUBPROCESS = [
    (["nvae", "train", "--out", "m", "--steps", "0"], "argument --steps"),
    (["title", "train", "--minutes", "nan"], "argument --minutes"),
    (["summarize", "train", "--steps", "-3"], "argument --steps"),
    (["search", "train-models", "--minutes", "-1"], "argument --minutes"),
    (["continue", "--model", MISSING, "--prompt", "x", "--tol", "nan"], "argument --tol"),
    (["title", "train", "--data", MISSING, "--out", "m", "--model-json", '{"enc_hidden": -4}'], "enc_hidden"),
    (["generate", "--model", MISSING, "--prompt", "hi", "--output", "file/x.txt"], "--out"),
    (["title", "eval", "--model", MISSING, "--limit", "0"], "argument --limit"),
    # in every range a flag takes, but far beyond the machine: the refused allocation is one line
    (["condition", "train", "--data", "texts.jsonl", "--out", "m", "--width", "1000000", "--heads", "1",
      "--steps", "1", "--quiet", "--threads", "1"], "out of memory"),
]
TEXTS = "".join(json.dumps({"text": "今天天气很好我们去公园玩"[:3 + i % 9], "label": "pn"[i % 2]}, ensure_ascii=False)
                + "\n" for i in range(40))


def test_sample_through_the_executable(tmp_path):
    """Each case in a fresh process (all started at once, so the start-up costs overlap)."""
    (tmp_path / "file").write_text("x\n")
    (tmp_path / "texts.jsonl").write_text(TEXTS, encoding="utf-8")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "genloom.cli", *argv], cwd=tmp_path, env=env,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for argv, _ in SUBPROCESS]
    for proc, (argv, message) in zip(procs, SUBPROCESS):
        out, err = proc.communicate(timeout=LIMIT_S * len(SUBPROCESS))
        _one_line_error(proc.returncode, out, err, 0.0, message)
    assert time.perf_counter() - t0 < LIMIT_S * len(SUBPROCESS) / 2
    assert _tree(tmp_path) == {"file", "texts.jsonl"}


def test_case_count():
    """The number of cases this file runs (reported in the issue's note)."""
    total = len(NUMBER_CASES) + len(CONSISTENCY) + len(OUTPUT_CASES) + len(OUTPUT_FLAGS) + len(SUBPROCESS)
    print(f"\ncli fuzz: {len(NUMBER_CASES)} bad numbers over {len({c[:2] for c in NUMBER_CASES})} flags of "
          f"{len(LEAVES)} commands, {len(CONSISTENCY)} flag combinations, {len(OUTPUT_CASES)} bad output paths "
          f"and a good one of a failing command for each of {len(OUTPUT_FLAGS)} flags, {len(SUBPROCESS)} "
          f"subprocesses: {total} cases")
    assert total > 1000
