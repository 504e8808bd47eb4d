"""The NVAE - VAE difference of benchmarks/results/nvae.json, paired image by image (issue 9).

`nvae_vs_vae.py` reports each model's mean IW-NLL with its own standard error; both models are
scored on the same test images, so the difference is better judged per image. This reloads the
two saved models (EMA weights) named in nvae.json, recomputes every image's IW-NLL with the
benchmark's seed (checking that the means reproduce the recorded ones), and adds to nvae.json's
summary the mean paired difference, its standard error and the share of images the NVAE scores
better.

    python benchmarks/nvae_paired.py
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from genloom.data.images import fixed_binarization, load_images
from genloom.models.nvae import load_image_model
from genloom.files import write_json_atomic
from genloom.tasks.nvae.evaluate import iw_nll_per_image

RESULT = Path(__file__).resolve().parent / "results" / "nvae.json"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--result", default=str(RESULT), help="the nvae.json to read and extend")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    path = Path(args.result)
    report = json.loads(path.read_text())
    settings, rows = report["settings"], report["models"]
    if not {"nvae", "vae"} <= rows.keys():
        raise SystemExit(f"{path} lacks a row for both models")
    test = load_images(settings["data"], "test", limit=settings["eval_images"])
    x = fixed_binarization(test, seed=1234)
    nll = {}
    for name in ("nvae", "vae"):
        model = load_image_model(Path(rows[name]["run_dir"]) / "model", weights="ema")
        torch.manual_seed(0)  # the benchmark's seed before its IW-NLL
        with torch.no_grad():
            nll[name] = iw_nll_per_image(model, x, k=settings["k"], progress=True).double()
        recorded = rows[name]["iw_nll"]["nll_nats"]
        print(f"{name}: IW-NLL {nll[name].mean():.3f} (recorded {recorded:.3f})")
        if abs(float(nll[name].mean()) - recorded) > 0.05:
            raise SystemExit(f"{name}: the recomputed mean {float(nll[name].mean()):.3f} does not "
                             f"reproduce the recorded {recorded:.3f}; were the runs moved or retrained?")
    d = nll["nvae"] - nll["vae"]  # (N,) negative where the NVAE is better
    paired = {"mean_nats": float(d.mean()), "stderr_nats": float(d.std() / math.sqrt(len(d))),
              "nvae_better_share": float((d < 0).double().mean()), "images": len(d),
              "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])}
    paired["z"] = paired["mean_nats"] / paired["stderr_nats"]
    report["summary"]["paired_difference"] = paired
    write_json_atomic(path, report)
    print(f"NVAE - VAE, paired over {len(d)} images: {paired['mean_nats']:+.3f} +- "
          f"{paired['stderr_nats']:.3f} nats (z = {paired['z']:.1f}); the NVAE is better on "
          f"{100 * paired['nvae_better_share']:.1f}% of the images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
