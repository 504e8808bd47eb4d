"""`genloom baseline`: the extractive title baselines (lead-N, best-sentence; baselines.py) scored
with char ROUGE-1/2/L F1 and BLEU on a named corpus split (with its cleaning counts) or a user file.

The table is printed; `--out FILE` (alias `--output`) also writes it as JSON. `--quiet` is taken as
on every command (the command prints no progress to leave out)."""

from __future__ import annotations

import argparse

from genloom.cliargs import add_common, check_outputs, output_flag, positive_int
from genloom.data import corpus_pairs, corpus_stats, read_pairs
from genloom.files import write_json_atomic
from genloom.tasks.title.baselines import baseline_table, format_table
from genloom.tasks.title.cli import add_pair_flags


def cleaning_line(name: str, split: str) -> str:
    """What reading and cleaning did to a corpus split, in one line."""
    s = corpus_stats(name, split).as_dict()
    dropped = ", ".join(f"{k.removeprefix('dropped_').replace('_', ' ')} {v}"
                        for k, v in s.items() if k.startswith("dropped_"))
    return f"{name} {split}: {s['shipped']} items shipped, {s['kept']} after cleaning (dropped: {dropped})"


def run(args: argparse.Namespace) -> int:
    """`genloom baseline`: print the cleaning counts (or the file) and the baseline table."""
    check_outputs(args)
    if args.data is not None:
        pairs = read_pairs(args.data, source=args.source, target=args.target, fmt=args.format)
        header = f"{args.data}: {len(pairs)} pairs ({args.source} -> {args.target})"
        source = {"data": str(args.data), "source": args.source, "target": args.target}
    else:
        pairs = corpus_pairs(args.corpus, args.split)
        header = cleaning_line(args.corpus, args.split)
        source = {"corpus": args.corpus, "split": args.split}
    table = baseline_table(pairs, lead_chars=args.lead_chars)
    print(header)
    print(format_table(table, n=len(pairs)))
    if args.out is not None:
        write_json_atomic(args.out, {**source, "pairs": len(pairs), "rows": table}, what="--out")
    return 0


def add_parser(subparsers: argparse._SubParsersAction, *, name: str, help: str) -> argparse.ArgumentParser:
    """Register `genloom baseline`."""
    p = subparsers.add_parser(name, help=help, description=(
        "Score the extractive title baselines (lead-N: first sentence cut to N characters; "
        "best-sentence: the oracle sentence with the best ROUGE-L against the title) with "
        "char-level ROUGE-1/2/L F1 and BLEU, on a named corpus or on a user file."))
    add_common(p, corpus="inews", data=True, threads=False, quiet=True)
    p.add_argument("--split", default="test", help="split of the corpus (default: test)")
    add_pair_flags(p)
    p.add_argument("--lead-chars", type=positive_int, default=24, help="N of lead-N (default: 24)")
    output_flag(p, "--out", "--output", default=None, help="also write the table as JSON here (default: the table is printed only)")
    p.set_defaults(func=run)
    return p
