"""NVAE vs a plain convolutional VAE of about the same size, same loop, same wall-time budget.

Claim (issue 9): on dynamically binarised Fashion-MNIST, with the same training budget on 2 CPU
cores (60 minutes each by default), the NVAE's importance-weighted NLL (K >= 100) on the test
set is lower than the plain VAE's, with no NaN in either run.

For each model: `genloom.tasks.nvae.train.train` for --minutes of training time (periodic evaluations
excluded), then under the EMA weights: IW-NLL with --k samples on the first --eval-images test
images (fixed binarisation), a reconstruction grid, and a sample grid at temperature 0.7 after
BatchNorm re-estimation. Writes benchmarks/results/nvae.json, nvae_curves.png and the grids
(nvae_{samples,recon}_{nvae,vae}.png) beside it, and prints a table.

    python benchmarks/nvae_vs_vae.py                       # the full claim: 60 min each
    python benchmarks/nvae_vs_vae.py --minutes 2 --eval-images 200 --train-limit 5000  # smoke

Two processes can share the work, one model each and one thread each (`--models nvae
--threads 1` beside `--models vae --threads 1`): the second to finish merges the first one's
row into nvae.json when the settings are the same, and redraws the curves from both runs.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import torch

from genloom import __version__
from genloom.data.images import fixed_binarization, load_images
from genloom.files import write_json_atomic
from genloom.tasks.nvae.config import NVAETrainConfig
from genloom.tasks.nvae.evaluate import iw_nll
from genloom.tasks.nvae.sample import reconstruction_grid, sample_grid
from genloom.tasks.nvae.train import train

RESULTS = Path(__file__).resolve().parent / "results"


def _step_seconds(metrics_path: Path, log_every: int) -> dict[str, float]:
    """min / median / max seconds per optimizer step over the logging windows of a run."""
    recs = [json.loads(x) for x in metrics_path.read_text().splitlines() if x.strip()]
    times = [r["time"] for r in recs if r.get("event") == "train"]
    per = [(b - a) / log_every for a, b in zip(times, times[1:])]
    if not per:
        return {"min": float("nan"), "median": float("nan"), "max": float("nan")}
    return {"min": min(per), "median": statistics.median(per), "max": max(per)}


def _curves(runs: dict[str, Path], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, run in runs.items():
        recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]
        tr = [r for r in recs if r["event"] == "train"]
        ev = [r for r in recs if r["event"] == "eval"]
        axes[0].plot([r["time"] / 60 for r in tr], [r["nelbo"] for r in tr], lw=0.8, label=name)
        axes[1].plot([r["time"] / 60 for r in ev], [r["nelbo"] for r in ev], "o-", ms=3, label=name)
    for ax, title in zip(axes, ("train -ELBO (nats, batch mean)", "test -ELBO (nats, EMA weights)")):
        ax.set_xlabel("training minutes")
        ax.set_title(title)
        ax.legend()
        lows = [l.get_ydata().min() for l in ax.get_lines() if len(l.get_ydata())]
        if lows:  # the test panel zooms in on the last nats, where the models part
            ax.set_ylim(min(lows) - (10 if ax is axes[0] else 2), min(lows) + (250 if ax is axes[0] else 25))
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=60.0, help="training budget per model")
    ap.add_argument("--k", type=int, default=100, help="importance samples per test image")
    ap.add_argument("--eval-images", type=int, default=10000, help="first N test images")
    ap.add_argument("--train-limit", type=int, help="first N training images only")
    ap.add_argument("--data", default="fashion-mnist", help="fashion-mnist or a folder of idx files")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--preset", default=NVAETrainConfig.preset,
                    help="NVAE preset (the VAE is sized to its parameter count)")
    ap.add_argument("--lr", type=float, default=NVAETrainConfig.lr, help="peak Adamax lr, both models")
    ap.add_argument("--bn-iters", type=int, default=100)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="runs/nvae_vs_vae", help="run directories go here")
    ap.add_argument("--results", default=str(RESULTS), help="folder for nvae.json and PNGs")
    ap.add_argument("--models", default="nvae,vae")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out, results = Path(args.out), Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    test = load_images(args.data, "test", limit=args.eval_images)
    x_test = fixed_binarization(test, seed=1234)
    rows, runs = {}, {}
    for name in args.models.split(","):
        cfg = NVAETrainConfig(model=name, preset=args.preset, lr=args.lr, data=args.data,
                              train_limit=args.train_limit,
                              batch_size=args.batch_size, max_minutes=args.minutes,
                              eval_every=200, ckpt_every=2000, device=args.device, progress=False)
        run = out / name
        if run.exists():
            raise SystemExit(f"{run} exists: remove it or pass another --out")
        print(f"training {name} for {args.minutes} min ...", flush=True)
        res = train(cfg, run)
        model = res.model
        device = next(model.parameters()).device
        t0 = time.perf_counter()
        with res.ema.applied(model) if res.ema else nullcontext():
            torch.manual_seed(0)
            nll = iw_nll(model, x_test.to(device), k=args.k, progress=True)
            eval_s = time.perf_counter() - t0
            reconstruction_grid(model, x_test[:32].to(device), results / f"nvae_recon_{name}.png")
            torch.manual_seed(0)
            sample_grid(model, results / f"nvae_samples_{name}.png", temperature=0.7,
                        bn_iters=args.bn_iters)
        steps = _step_seconds(run / "metrics.jsonl", cfg.log_every)
        rows[name] = {"parameters": sum(p.numel() for p in model.parameters()),
                      "steps": res.steps, "images_seen": res.steps * cfg.batch_size,
                      "train_minutes": res.train_seconds / 60, "nan_skipped": res.nan_skipped,
                      "test_nelbo_subset": res.eval_nelbo, "iw_nll": nll, "eval_seconds": eval_s,
                      "seconds_per_step": steps, "images_per_s": cfg.batch_size / steps["median"],
                      "config": asdict(cfg), "run_dir": str(run)}
        runs[name] = run
        print(f"  {name}: {res.steps} steps, IW-NLL {nll['nll_nats']:.2f} +- "
              f"{nll['nll_stderr']:.2f} nats (K={args.k}, {nll['images']} images), "
              f"NaN-skipped {res.nan_skipped}", flush=True)
    settings = {"minutes": args.minutes, "k": args.k, "preset": args.preset, "lr": args.lr, "eval_images": len(x_test),
                "train_limit": args.train_limit, "data": args.data, "device": args.device,
                "binarisation": "dynamic (train), fixed seed 1234 (test)"}
    out.mkdir(parents=True, exist_ok=True)
    lock = open(out / ".results.lock", "w")  # both halves of a split run share --out
    fcntl.flock(lock, fcntl.LOCK_EX)  # the other half of a split run may be writing
    previous = results / "nvae.json"
    if previous.is_file():
        old = json.loads(previous.read_text())
        if old.get("settings") == settings:
            for name, row in old.get("models", {}).items():
                if name not in rows and Path(row["run_dir"], "metrics.jsonl").is_file():
                    rows[name], runs[name] = row, Path(row["run_dir"])
    _curves(runs, results / "nvae_curves.png")
    summary: dict = {"claim": "NVAE IW-NLL < plain VAE IW-NLL, same wall-time budget, no NaN"}
    if {"nvae", "vae"} <= rows.keys():
        a, b = rows["nvae"]["iw_nll"], rows["vae"]["iw_nll"]
        summary.update({
            "nvae_minus_vae_nats": a["nll_nats"] - b["nll_nats"],
            "difference_stderr_upper": (a["nll_stderr"] ** 2 + b["nll_stderr"] ** 2) ** 0.5,
            "holds": a["nll_nats"] < b["nll_nats"] and rows["nvae"]["nan_skipped"] == 0
            and rows["vae"]["nan_skipped"] == 0,
            "nvae_over_vae_step_time": (rows["nvae"]["seconds_per_step"]["median"]
                                        / rows["vae"]["seconds_per_step"]["median"])})
    report = {
        "benchmark": "nvae_vs_vae", "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": os.cpu_count(), "torch_threads": args.threads,
                    "load_avg_before": load_before, "load_avg_after": os.getloadavg(),
                    "under_load": max(load_before[0], os.getloadavg()[0]) > (os.cpu_count() or 1)},
        "versions": {"genloom": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "settings": settings,
        "models": rows, "summary": summary,
        "figures": {k: str(results / v) for k, v in (
            ("curves", "nvae_curves.png"), ("samples_nvae", "nvae_samples_nvae.png"),
            ("recon_nvae", "nvae_recon_nvae.png"), ("samples_vae", "nvae_samples_vae.png"),
            ("recon_vae", "nvae_recon_vae.png"))}}
    write_json_atomic(results / "nvae.json", report)
    lock.close()
    print()
    print(f"{'model':6} {'params':>8} {'steps':>6} {'min':>6} {'s/step':>7} {'IW-NLL':>9} "
          f"{'+-':>5} {'bpd':>7} {'NaN':>4}")
    for name, r in rows.items():
        n = r["iw_nll"]
        print(f"{name:6} {r['parameters']:>8} {r['steps']:>6} {r['train_minutes']:>6.1f} "
              f"{r['seconds_per_step']['median']:>7.3f} {n['nll_nats']:>9.2f} "
              f"{n['nll_stderr']:>5.2f} {n['bpd']:>7.4f} {r['nan_skipped']:>4}")
    if "holds" in summary:
        print(f"NVAE - VAE = {summary['nvae_minus_vae_nats']:+.2f} nats; claim "
              f"{'holds' if summary['holds'] else 'does NOT hold'} at this budget")
    print(f"wrote {results / 'nvae.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
