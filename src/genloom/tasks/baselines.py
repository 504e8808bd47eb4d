"""Extractive baselines for title generation, and `genloom baseline`.

- `lead_n`: the first sentence of the content, cut to n characters (lead-24 by default: 24 is
  the median title length of inews). Sentences are split by `genloom.data.split_sentences`: at
  newlines and after 。！？!?… plus any closing quotes/brackets, never at "." or commas.
- `best_sentence`: an oracle, the content sentence with the highest char-level ROUGE-L F1
  against the reference title (ties go to the earliest sentence). It needs the answer, so it is
  an upper bound for pure sentence extraction, not a method.

`baseline_table(pairs)` scores both on (content, title) pairs with `score_row` (char-level
ROUGE-1/2/L F1 and sacrebleu BLEU with tokenize="zh"); the title task adds its own rows to the
same table and prints it with `format_table`.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Sequence

from genloom.data import corpus_info, corpus_stats, load_corpus, read_pairs, split_sentences
from genloom.errors import UserError
from genloom.metrics import bleu, char_tokens, rouge, rouge_l

_COLUMNS = (("rouge-1", "ROUGE-1"), ("rouge-2", "ROUGE-2"), ("rouge-l", "ROUGE-L"),
            ("bleu", "BLEU"))


def lead_n(content: str, n: int = 24) -> str:
    """The first sentence of `content`, cut to its first `n` characters ("" for blank text)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, not {n}")
    sentences = split_sentences(content)
    return sentences[0][:n] if sentences else ""


def best_sentence(content: str, title: str) -> str:
    """The sentence of `content` with the best char-level ROUGE-L F1 against `title`.

    Exact, but fast on long contents: a sentence's F1 is at most 2*overlap/(|s|+|t|), with
    overlap the clipped count of shared characters (an LCS never exceeds it), so sentences are
    scored by rouge-score's LCS in order of that bound and the search stops once the bound
    falls below the best F1 found. Ties go to the earliest sentence; "" for blank content.
    """
    sentences = split_sentences(content)
    if not sentences:
        return ""
    ref = Counter(char_tokens(title))
    ref_len = sum(ref.values())
    bounds = []
    for i, sentence in enumerate(sentences):
        toks = Counter(char_tokens(sentence))
        overlap = sum((toks & ref).values())
        length = sum(toks.values())
        bounds.append((200.0 * overlap / (length + ref_len) if length + ref_len else 0.0, i))
    bounds.sort(key=lambda b: (-b[0], b[1]))
    best_f, best_i = -1.0, len(sentences)
    for bound, i in bounds:
        if bound < best_f - 1e-9:
            break
        f = rouge_l(sentences[i], title)
        if f > best_f + 1e-9 or (abs(f - best_f) <= 1e-9 and i < best_i):
            best_f, best_i = f, i
    return sentences[best_i]


def score_row(preds: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """Char-level ROUGE-1/2/L F1 (percent) and corpus BLEU (sacrebleu, tokenize="zh")."""
    row = rouge(preds, refs, level="char")
    row["bleu"] = bleu(preds, refs, tokenize="zh")
    return row


def baseline_table(pairs: Sequence[tuple[str, str]], *, lead_chars: int = 24
                   ) -> dict[str, dict[str, float]]:
    """Scores of the extractive baselines on (content, title) pairs.

    Returns:
        {"lead-<lead_chars>": row, "best-sentence": row}, each row as `score_row` gives it.
    """
    if not pairs:
        raise UserError("no (content, title) pairs to score")
    contents = [c for c, _ in pairs]
    titles = [t for _, t in pairs]
    return {
        f"lead-{lead_chars}": score_row([lead_n(c, lead_chars) for c in contents], titles),
        "best-sentence": score_row([best_sentence(c, t) for c, t in pairs], titles),
    }


def format_table(table: dict[str, dict[str, float]], *, n: int) -> str:
    """A plain-text table: one row per method, columns ROUGE-1/2/L and BLEU, `n` pairs."""
    width = max(len("method"), *(len(m) for m in table))
    head = f"{'method':<{width}}  {'pairs':>6}" + "".join(f"  {h:>7}" for _, h in _COLUMNS)
    lines = [head, "-" * len(head)]
    for method, row in table.items():
        cells = "".join(f"  {row[k]:7.2f}" for k, _ in _COLUMNS)
        lines.append(f"{method:<{width}}  {n:>6}{cells}")
    return "\n".join(lines)


def _write_json(path: Path, payload: dict) -> None:
    """Write `payload` as JSON to `path` via a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(payload, f, ensure_ascii=False, indent=2)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _corpus_pairs(name: str, split: str) -> tuple[list[tuple[str, str]], str]:
    """(content, title) pairs of a named corpus and a line describing the cleaning."""
    info = corpus_info(name)
    if not {"content", "title"} <= set(info.fields):
        raise UserError(f"corpus {name!r} has no (content, title) pairs; baselines need a "
                        f"corpus with titles (inews) or --data FILE")
    records = load_corpus(name, split)
    s = corpus_stats(name, split).as_dict()
    dropped = ", ".join(f"{k.removeprefix('dropped_').replace('_', ' ')} {v}"
                        for k, v in s.items() if k.startswith("dropped_"))
    line = f"{name} {split}: {s['shipped']} items shipped, {s['kept']} after cleaning " \
           f"(dropped: {dropped})"
    return [(r["content"], r["title"]) for r in records], line


def run(args: argparse.Namespace) -> int:
    """`genloom baseline`: print the cleaning counts and the baseline table."""
    if args.lead_chars < 1:
        raise UserError(f"--lead-chars must be >= 1, not {args.lead_chars}")
    if args.data is not None:
        if args.corpus is not None:
            raise UserError("give either --corpus or --data, not both")
        pairs = read_pairs(args.data, source=args.source, target=args.target, fmt=args.format)
        header = f"{args.data}: {len(pairs)} pairs ({args.source} -> {args.target})"
        source = {"data": str(args.data), "source": args.source, "target": args.target}
    else:
        name = args.corpus or "inews"
        pairs, header = _corpus_pairs(name, args.split)
        source = {"corpus": name, "split": args.split}
    table = baseline_table(pairs, lead_chars=args.lead_chars)
    print(header)
    print(format_table(table, n=len(pairs)))
    if args.json is not None:
        _write_json(Path(args.json), {**source, "pairs": len(pairs), "rows": table})
    return 0


def add_parser(subparsers: argparse._SubParsersAction, *, name: str, help: str
               ) -> argparse.ArgumentParser:
    """Register `genloom baseline`."""
    p = subparsers.add_parser(name, help=help, description=(
        "Score the extractive title baselines (lead-N: first sentence cut to N characters; "
        "best-sentence: the oracle sentence with the best ROUGE-L against the title) with "
        "char-level ROUGE-1/2/L F1 and BLEU, on a named corpus or on a user file."))
    p.add_argument("--corpus", default=None, help="named corpus (default: inews)")
    p.add_argument("--split", default="test", help="split of the corpus (default: test)")
    p.add_argument("--data", default=None, metavar="FILE",
                   help="user file of pairs: .jsonl, .csv, .tsv or .txt (tab-separated)")
    p.add_argument("--source", default="content", help="field holding the article")
    p.add_argument("--target", default="title", help="field holding the title")
    p.add_argument("--format", default=None, choices=("jsonl", "csv", "tsv", "txt"),
                   help="file format (default: from the extension)")
    p.add_argument("--lead-chars", type=int, default=24, help="N of lead-N (default: 24)")
    p.add_argument("--json", default=None, metavar="OUT", help="also write the table as JSON")
    p.set_defaults(func=run)
    return p
