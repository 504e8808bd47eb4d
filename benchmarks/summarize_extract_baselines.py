"""How well can anything pick inews's title clauses? Window recall of the aligned clauses (issue 10).

The SPACES pipeline can only beat "truncate, then generate" if its extraction puts more of the
title's material into the window than the document's lead does. This script scores several
clause rankers with the pipeline's own window-filling rule (`select_clauses`, fill on) on the
inews test documents longer than the window (64, 128 and 256 characters by default):

  lead            the document order (what truncation reads);
  salience        tf-idf salience: sum over the clause's characters and bigrams of idf x
                  log(1 + occurrences elsewhere in the document), per character (hand-written:
                  no library scores clause centrality this way);
  salience+lead   salience minus 0.05 per clause of position;
  extractor       the trained k-fold pipeline's extractor (--run: a `genloom summarize` model);
  draft-guided    clauses ranked by how much of a draft title they hold (char ROUGE-1 recall),
                  the draft generated from the lead by the truncate row's model (--draft-run);
  oracle          the aligned clauses first (uses the reference: an upper bound).

For each: recall / precision of the aligned clauses inside the window, and how much of the
title the window text covers (char ROUGE-1 and ROUGE-2 recall, `genloom.metrics`). Writes
benchmarks/results/summarize_extract_baselines.json.

    python benchmarks/summarize_extract_baselines.py --run runs/summarize-bench4/c \\
        --draft-run runs/summarize-bench4/a
"""

from __future__ import annotations

import argparse
import collections
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from summarize import long_pairs  # noqa: E402

from genloom.metrics import rouge_per_pair  # noqa: E402
from genloom.files import write_json_atomic  # noqa: E402
from genloom.tasks.summarize.convert import extraction_labels, split_clauses  # noqa: E402
from genloom.tasks.summarize.pipeline import (Summarizer, extracted_text, extraction_recall,  # noqa: E402
                                              select_clauses, with_oracle)

RESULT = Path(__file__).resolve().parent / "results" / "summarize_extract_baselines.json"


def grams(text: str) -> list[str]:
    return list(text) + [text[i:i + 2] for i in range(len(text) - 1)]


def salience(clauses: list[str], idf: dict[str, float], default_idf: float) -> list[float]:
    """Per clause: sum of idf(g) * log(1 + count of g in the rest of the document) over its grams, per char."""
    doc = collections.Counter(g for c in clauses for g in grams(c))
    out = []
    for c in clauses:
        own = collections.Counter(grams(c))
        s = sum(idf.get(g, default_idf) * math.log1p(doc[g] - n) for g, n in own.items())
        out.append(s / (len(c) + 1))
    return out


def window_rows(window: int, max_clauses: int, summ: Summarizer | None, drafter: Summarizer | None,
                beams: int) -> tuple[dict, dict]:
    """(data figures, ranker rows) on the test documents longer than `window`."""
    train_pairs = long_pairs("train", window, max_clauses)
    test_pairs = long_pairs("test", window, max_clauses)
    df: collections.Counter = collections.Counter()
    for doc, _ in train_pairs:
        df.update(set(grams(doc)))
    n = len(train_pairs)
    idf = {g: math.log((n + 1) / (c + 1)) for g, c in df.items()}
    docs = [split_clauses(d)[:max_clauses] for d, _ in test_pairs]
    refs = [t for _, t in test_pairs]
    gold = [extraction_labels(c, t) for c, t in zip(docs, refs)]
    rankers: dict[str, list[list[float]]] = {
        "lead": [[-i for i in range(len(c))] for c in docs],
        "salience": [salience(c, idf, math.log(n + 1)) for c in docs]}
    rankers["salience+lead"] = [[s - 0.05 * i for i, s in enumerate(sal)] for sal in rankers["salience"]]
    if summ is not None:  # its clause probabilities do not depend on the window
        rankers["extractor"] = [[float(p) for p in probs] for probs in summ.probabilities(docs)]
    if drafter is not None and drafter.config.window == window:
        drafts = [r["summary"] for r in drafter.summarize([d for d, _ in test_pairs], num_beams=beams)]
        rankers["draft-guided"] = [[r["rouge-1"] for r in rouge_per_pair(cl, [d] * len(cl), measure="recall")]
                                   for cl, d in zip(docs, drafts)]
    rankers["oracle (uses the reference)"] = [with_oracle(lead, g) for lead, g in zip(rankers["lead"], gold)]
    rows = {}
    for name, scores in rankers.items():
        chosen = [select_clauses(c, s, window=window, threshold=0.2, fill=True) for c, s in zip(docs, scores)]
        texts = [extracted_text(c, ch, window) for c, ch in zip(docs, chosen)]
        rec = extraction_recall(chosen, gold)
        recall = rouge_per_pair(texts, refs, measure="recall")  # how much of the title the window holds
        rows[name] = {"window_recall": round(rec["recall"], 2), "window_precision": round(rec["precision"], 2),
                      "title_chars_covered": round(sum(r["rouge-1"] for r in recall) / len(refs), 2),
                      "title_bigrams_covered": round(sum(r["rouge-2"] for r in recall) / len(refs), 2)}
    data = {"test_documents": len(test_pairs), "aligned_clauses": sum(map(len, gold)),
            "clauses_per_document": round(sum(map(len, docs)) / len(docs), 1)}
    return data, rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--windows", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--max-clauses", type=int, default=128)
    ap.add_argument("--run", help="a trained pipeline (`genloom summarize train`) for the extractor row")
    ap.add_argument("--draft-run", help="a trained truncate-mode model for the draft-guided row (at its window)")
    ap.add_argument("--beams", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--result", default=str(RESULT))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    summ = Summarizer.load(args.run) if args.run else None
    drafter = Summarizer.load(args.draft_run) if args.draft_run else None
    per_window = {}
    for window in args.windows:
        data, rows = window_rows(window, args.max_clauses, summ, drafter, args.beams)
        per_window[str(window)] = {"data": data, "rows": rows}
        print(f"window {window}: {data['test_documents']} test documents longer than it, "
              f"{data['clauses_per_document']} clauses each on average")
        print(f"  {'ranker':30s} {'recall':>7s} {'prec':>6s} {'chars':>6s} {'bigrams':>7s}")
        for name, r in rows.items():
            print(f"  {name:30s} {r['window_recall']:7.2f} {r['window_precision']:6.2f} "
                  f"{r['title_chars_covered']:6.2f} {r['title_bigrams_covered']:7.2f}")
    report = {"benchmark": "summarize_extract_baselines", "issue": 10,
              "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
              "settings": {"windows": args.windows, "max_clauses": args.max_clauses, "run": args.run,
                           "draft_run": args.draft_run, "beams": args.beams},
              "columns": {"window_recall": "percent of the aligned clauses inside the filled window",
                          "window_precision": "percent of the window's clauses that are aligned",
                          "title_chars_covered": "char ROUGE-1 recall of the title by the window text",
                          "title_bigrams_covered": "char ROUGE-2 recall of the title by the window text"},
              "windows": per_window, "seconds": round(time.perf_counter() - t0, 1)}
    write_json_atomic(Path(args.result), report)
    print(f"wrote {args.result}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
