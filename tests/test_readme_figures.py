"""The README's figures against the committed result files they come from (benchmarks/figures.py):
each figure formatted from its file's keys is in the README word for word, every result file the
README names exists, and the README states the load each of them recorded."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("benchmark_figures", ROOT / "benchmarks" / "figures.py")
figures = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = figures  # dataclasses look their module up there
spec.loader.exec_module(figures)


def _flat(text: str) -> str:
    return " ".join(text.split())


README = _flat((ROOT / "README.md").read_text(encoding="utf-8"))
NAMED = sorted(set(re.findall(r"results/([a-z0-9_]+\.json)", README)))  # not the generic NAME.json


@pytest.mark.parametrize("fig", figures.FIGURES, ids=lambda f: f"{f.file}:{f.text[:30]}")
def test_every_registered_figure_is_in_the_readme_as_its_file_gives_it(fig):
    assert _flat(figures.rendered(fig)) in README


def test_every_result_file_the_readme_names_exists_and_its_load_is_stated():
    assert len(NAMED) >= 10
    for name in NAMED + sorted({f.file for f in figures.FIGURES}):
        assert (figures.RESULTS / name).is_file(), name
        assert figures.load_text(name) in README, (name, figures.load_text(name))


def test_load_reads_what_the_files_recorded():
    """`loaded` agrees with the flags the benchmarks wrote themselves, where they wrote one."""
    for name, flag in (("make_run.json", ("loaded",)), ("title_decode.json", ("machine", "loaded")),
                       ("rtf.json", ("machine", "loaded")), ("condition.json", ("machine", "loaded")),
                       ("nvae.json", ("machine", "under_load"))):
        assert figures.load(name)["loaded"] == figures.lookup(figures.read(name), flag), name
    assert figures.load("summarize_extract_baselines.json")["loaded"] is None  # it recorded none
