"""DDP: `torchrun --nproc_per_node 2` (gloo on CPU) trains the toy model; after N steps its weights
match a single process with the doubled batch to 1e-5, and rank 0 alone wrote the run files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import train_toy  # noqa: E402

STEPS = 8


def test_two_processes_match_one_with_double_batch(tmp_path):
    ddp_dir, single_dir = tmp_path / "ddp", tmp_path / "single"
    common = ["--max-steps", str(STEPS), "--ckpt-every", "0", "--dropout", "0", "--ema", "0.9"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / "train_toy.py"), str(ddp_dir), "--batch", "4", *common]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]

    train_toy.main([str(single_dir), "--batch", "8", *common])  # one process, batch 2 x 4

    for name in ("model.safetensors", "model_ema.safetensors"):
        a = load_file(str(ddp_dir / "final" / name))
        b = load_file(str(single_dir / "final" / name))
        assert a.keys() == b.keys()
        worst = max((a[k] - b[k]).abs().max().item() for k in a)
        print(f"{name}: max |ddp - single| = {worst:.3g}")
        assert worst <= 1e-5, (name, worst)
        moved = max((a[k] - train_toy.make_model(dropout=0).state_dict()[k]).abs().max().item()
                    for k in a)
        assert moved > 1e-3  # the weights really trained

    rows = [json.loads(x) for x in (ddp_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["event"] == "train"] == list(range(1, STEPS + 1))
    single = [json.loads(x) for x in (single_dir / "metrics.jsonl").read_text().splitlines()]
    for r, s in zip(rows, single):
        if r["event"] == "train":
            assert abs(r["loss"] - s["loss"]) < 1e-5  # the logged loss is over both ranks' tokens
    cfg = json.loads((ddp_dir / "config.json").read_text())
    assert cfg["world_size"] == 2 and cfg["task"]["batch_per_rank"] == 4
    assert [p.name for p in (ddp_dir / "checkpoints").iterdir()] == [f"step-{STEPS:08d}"]
    ckpt = json.loads((ddp_dir / "checkpoints" / f"step-{STEPS:08d}" / "state.json").read_text())
    assert len(ckpt["state"]["rng"]) == 2  # both ranks' RNG states, written by rank 0
