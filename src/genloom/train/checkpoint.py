"""Checkpoints: safetensors for tensors, JSON for the rest, written atomically; never pickle.

A checkpoint is a directory `<run>/checkpoints/step-00000120/` holding
- `model.safetensors`: the (unwrapped) model, via `safetensors.torch.save_model` (tied weights ok);
- `state.safetensors` + `state.json`: any tree of dicts / lists / tuples / numbers / strings /
  tensors / numpy arrays (optimizer, scheduler, EMA shadow, sampler position, RNG states, step,
  best score): every tensor goes to the safetensors file under a key "t0", "t1", ... and the JSON
  holds the tree with {"__tensor__": "t7"} in its place. Dicts with non-string keys (the
  optimizer's per-parameter state is keyed by int) and tuples are tagged so they come back as
  they were. Loading executes no code.

Atomicity: everything is written into `.tmp-step-...` in the same directory, each file fsynced,
then the directory is renamed into place with `os.replace` and the parent fsynced. A process
killed at any point leaves either the complete new checkpoint or none (plus a stray temporary
directory, removed at the next save); the previous checkpoints are untouched. The last
`keep_last` are kept, plus any step the caller protects (the best one).

For a deterministic kill test the writer honours GENLOOM_CHECKPOINT_PAUSE="STEP:SECONDS": when
writing the checkpoint of that step it sleeps SECONDS after the model file, mid-checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import Tensor, nn

from genloom.errors import UserError
from genloom.files import write_atomic, write_json_atomic, write_with

FORMAT = 1
_STEP_DIR = re.compile(r"^step-(\d+)$")


# -- a JSON + safetensors codec for state trees ------------------------------------------------
def flatten(tree: Any, tensors: dict[str, Tensor]) -> Any:
    """JSON-able copy of `tree` with tensors moved into `tensors` (new keys "t0", "t1", ...)."""
    if isinstance(tree, Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = tree.detach().cpu().clone().contiguous()
        return {"__tensor__": key}
    if isinstance(tree, np.ndarray):
        return {"__ndarray__": tree.tolist(), "dtype": str(tree.dtype)}
    if isinstance(tree, np.generic):
        return tree.item()
    if isinstance(tree, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in tree):
            return {k: flatten(v, tensors) for k, v in tree.items()}
        return {"__items__": [[flatten(k, tensors), flatten(v, tensors)] for k, v in tree.items()]}
    if isinstance(tree, tuple):
        return {"__tuple__": [flatten(v, tensors) for v in tree]}
    if isinstance(tree, list):
        return [flatten(v, tensors) for v in tree]
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return tree
    raise TypeError(f"cannot store a {type(tree).__name__} in a checkpoint")


def unflatten(tree: Any, tensors: dict[str, Tensor]) -> Any:
    """Inverse of `flatten`."""
    if isinstance(tree, list):
        return [unflatten(v, tensors) for v in tree]
    if not isinstance(tree, dict):
        return tree
    if "__tensor__" in tree:
        return tensors[tree["__tensor__"]]
    if "__ndarray__" in tree:
        return np.asarray(tree["__ndarray__"], dtype=tree["dtype"])
    if "__tuple__" in tree:
        return tuple(unflatten(v, tensors) for v in tree["__tuple__"])
    if "__items__" in tree:
        return {_hashable(unflatten(k, tensors)): unflatten(v, tensors) for k, v in tree["__items__"]}
    return {k: unflatten(v, tensors) for k, v in tree.items()}


def _hashable(key: Any) -> Any:
    return tuple(map(_hashable, key)) if isinstance(key, list) else key


# -- RNG states ----------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """The global RNG states of torch (CPU and CUDA), numpy and random, as a storable tree."""
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"key": np_state["state"]["key"], "pos": int(np_state["state"]["pos"]),
                  "has_gauss": int(np_state["has_gauss"]), "gauss": float(np_state["gauss"])},
        "python": list(random.getstate()[1]),
        "python_gauss": random.getstate()[2],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore `rng_state()`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": np.asarray(n["key"], dtype=np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    random.setstate((3, tuple(state["python"]), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- atomic files ------------------------------------------------------------------------------
def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_weights(model: nn.Module, directory: str | Path, *, ema: Any = None) -> list[Path]:
    """Write `model.safetensors` (raw weights) and, given an EMA, `model_ema.safetensors` (the
    averaged weights, which `genloom.models.load` takes as the default) into `directory`.

    Each file is written to a temporary name and renamed. Returns the paths written.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for name, use_ema in (("model.safetensors", False), ("model_ema.safetensors", True)):
        if use_ema and ema is None:
            continue
        if use_ema:
            with ema.applied(model):
                write_with(directory / name, lambda tmp: save_model(model, str(tmp)))
        else:
            write_with(directory / name, lambda tmp: save_model(model, str(tmp)))
        out.append(directory / name)
    _fsync_path(directory)
    return out


# -- checkpoints -------------------------------------------------------------------------------
def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in `directory` as (step, path), oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and (p / "state.json").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest complete checkpoint in `directory`, or None."""
    found = list_checkpoints(directory)
    return found[-1][1] if found else None


def _pause_if_asked(step: int) -> None:
    ask = os.environ.get("GENLOOM_CHECKPOINT_PAUSE", "")
    if ask:
        at, _, seconds = ask.partition(":")
        if int(at) == step:
            time.sleep(float(seconds or 60))


def save_checkpoint(
    directory: str | Path,
    step: int,
    *,
    model: nn.Module,
    state: dict[str, Any],
    keep_last: int = 2,
    protect: set[int] | frozenset[int] = frozenset(),
) -> Path:
    """Atomically write the checkpoint of `step` into `directory`; prune to the last `keep_last`.

    Args:
        directory: the run's checkpoint folder (created if missing).
        step: the optimizer step the checkpoint is taken after.
        model: the unwrapped model (its weights go to model.safetensors).
        state: any tree `flatten` accepts (optimizer, scheduler, EMA, data, RNG, counters).
        keep_last: complete checkpoints kept (older ones are deleted).
        protect: steps never deleted by pruning (the best checkpoint).

    Returns:
        The checkpoint's directory.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob(".tmp-step-*"):  # left by a killed writer
        shutil.rmtree(stale, ignore_errors=True)
    final = directory / f"step-{step:08d}"
    tmp = directory / f".tmp-step-{step:08d}-{os.getpid()}"
    tmp.mkdir()
    try:
        save_model(model, str(tmp / "model.safetensors"))
        _fsync_path(tmp / "model.safetensors")
        _pause_if_asked(step)
        tensors: dict[str, Tensor] = {}
        tree = {"format": FORMAT, "step": step, "state": flatten(state, tensors)}
        save_file(tensors, str(tmp / "state.safetensors"))
        _fsync_path(tmp / "state.safetensors")
        with open(tmp / "state.json", "w", encoding="utf-8") as f:
            json.dump(tree, f)
            f.flush()
            os.fsync(f.fileno())
        _fsync_path(tmp)
        if final.exists():  # re-written after a resume: move the old one aside, then drop it
            old = directory / f".tmp-step-{step:08d}-old-{os.getpid()}"
            os.replace(final, old)
            shutil.rmtree(old)
        os.replace(tmp, final)
        _fsync_path(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    kept = list_checkpoints(directory)
    for old_step, path in kept[: max(0, len(kept) - keep_last)]:
        if old_step not in protect and old_step != step:
            shutil.rmtree(path, ignore_errors=True)
    return final


def load_checkpoint(path: str | Path, *, model: nn.Module | None = None) -> dict[str, Any]:
    """Read a checkpoint: loads its weights into `model` (when given) and returns
    {"step": int, "state": tree} with tensors on the CPU."""
    path = Path(path)
    try:
        with open(path / "state.json", encoding="utf-8") as f:
            tree = json.load(f)
        tensors = load_file(str(path / "state.safetensors"))
        if model is not None:
            load_model(model, str(path / "model.safetensors"))
    except (OSError, ValueError, SafetensorError) as e:
        raise UserError(f"cannot read checkpoint {path}: {e}") from None
    except RuntimeError as e:  # load_model: the weights do not fit this model
        raise UserError(f"checkpoint {path} does not match the model: {str(e).splitlines()[0]}") \
            from None
    if tree.get("format") != FORMAT:
        raise UserError(f"checkpoint {path} has format {tree.get('format')}, expected {FORMAT}")
    return {"step": int(tree["step"]), "state": unflatten(tree["state"], tensors)}
