"""`genloom corpora`: the named corpora, whether installed, split sizes, licence, install command.

`genloom corpora --stats NAME` prints what reading and cleaning did to each split of NAME (for
inews: items shipped, kept, and how many were touched or dropped by each cleaning rule).
"""

from __future__ import annotations

import argparse

from genloom.data.images import image_sets
from genloom.data.registry import CORPORA, corpus_info, corpus_stats
from genloom.errors import UserError


def _table(rows: list[list[str]], *, right: set[int]) -> str:
    """Align `rows` (first row = header) in columns; columns in `right` are right-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for k, row in enumerate(rows):
        cells = [c.rjust(w) if i in right else c.ljust(w)
                 for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
        if k == 0:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines)


def list_corpora() -> str:
    """The table `genloom corpora` prints, followed by one description/licence note each."""
    splits = ("train", "dev", "test")
    rows = [["name", "installed", *splits, "install"]]
    notes = []
    for info in CORPORA.values():
        sizes = ["-"] * len(splits)
        installed = info.installed
        if installed:
            try:
                sizes = [str(info.stats(s).kept) if s in info.splits else "-" for s in splits]
            except UserError as e:
                sizes = ["?"] * len(splits)
                notes.append(f"{info.name}: unreadable: {e}")
        rows.append([info.name, "yes" if installed else "no", *sizes, info.install])
        notes.append(f"{info.name}: {info.description}. Licence: {info.licence}.")
    images = image_sets()
    image_rows = [["image set", "installed", "train", "test", "install"]]
    image_rows += [[d["name"], d["installed"], d["train"], d["test"], d["install"]] for d in images]
    return "\n".join([_table(rows, right={2, 3, 4}),
                      "(sizes: records per split after cleaning)", "", *notes, "",
                      _table(image_rows, right={2, 3}), "(images per split; `--data` of genloom nvae)",
                      "", *(f"{d['name']}: {d['note']}." for d in images)])


def stats_table(name: str) -> str:
    """Per-split reading/cleaning counts of corpus `name`, one row per count."""
    info = corpus_info(name)
    per_split = {s: corpus_stats(name, s).as_dict() for s in info.splits}
    keys = list(next(iter(per_split.values())))
    rows = [["count", *info.splits]]
    rows += [[k.replace("_", " "), *(str(per_split[s][k]) for s in info.splits)] for k in keys]
    return f"{name}: what reading and cleaning did, per split\n" + _table(
        rows, right=set(range(1, len(info.splits) + 1)))


def run(args: argparse.Namespace) -> int:
    """Print the corpus table, or the cleaning counts of one corpus with --stats."""
    print(stats_table(args.stats) if args.stats else list_corpora())
    return 0


def add_parser(subparsers: argparse._SubParsersAction, *, name: str, help: str
               ) -> argparse.ArgumentParser:
    """Register `genloom corpora`."""
    p = subparsers.add_parser(name, help=help, description=(
        "List every named corpus: whether its package is installed, records per split after "
        "cleaning, the command that installs it and its licence note."))
    p.add_argument("--stats", metavar="NAME", default=None,
                   help="print the reading/cleaning counts of corpus NAME, per split (default: none, the corpus list)")
    p.set_defaults(func=run)
    return p
