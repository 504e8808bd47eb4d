"""Save and load model directories: config.json + model.safetensors (+ EMA weights) + tokenizer.

A model directory written by `save` holds:

- `config.json`: the model's config dataclass as JSON, plus "model_type" naming its family in
  `MODEL_TYPES`;
- `model.safetensors`: the weights (shared tensors, e.g. tied embeddings, stored once);
- `model_ema.safetensors` (optional): the EMA weights of a run trained with EMA;
  `load` uses them by default and keeps `model.safetensors` as the raw weights;
- the tokenizer's own files, written by its `save` (`genloom.tokenizers.load_tokenizer` reads them).

Nothing is unpickled: JSON and safetensors only, so loading a directory runs no code from it.
Files are written to a temporary name and renamed, so an interrupted save never leaves a
half-written file under the final name.

Every family is named in one table, `MODEL_TYPES` (model_type -> module, config class, model
class), and its module is imported only when a directory of that family is loaded or saved: the
table is filled by this file alone, never by the side effect of importing a model module.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from genloom.errors import UserError
from genloom.files import write_atomic, write_with
from genloom.models.transformer import Transformer, TransformerConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
EMA_WEIGHTS_FILE = "model_ema.safetensors"
TOKENIZER_MANIFEST = "genloom_tokenizer.json"  # written by every genloom tokenizer's save()

# model_type -> (module, config dataclass, model class taking that config). A new family is one
# line here; its module is imported when a directory of that type is loaded or saved.
MODEL_TYPES: dict[str, tuple[str, str, str]] = {
    "transformer": ("genloom.models.transformer", "TransformerConfig", "Transformer"),
    "rnn_seq2seq": ("genloom.models.rnn_seq2seq", "RNNSeq2SeqConfig", "RNNSeq2Seq"),
    "unilm_seq2seq": ("genloom.models.unilm", "UniLMSeq2SeqConfig", "UniLMSeq2Seq"),
    "unilm_copy": ("genloom.models.unilm", "UniLMCopyConfig", "UniLMSeq2Seq"),  # title UniLMs saved before unilm_seq2seq
    "summarize_unilm": ("genloom.models.unilm", "CopyUniLMConfig", "UniLMSeq2Seq"),  # SPACES seq2seqs, likewise
    "rtf_lm": ("genloom.models.rtf_lm", "RTFLMConfig", "RTFLM"),
    "char_cnn_judge": ("genloom.models.judge", "JudgeConfig", "CharCNNJudge"),
    "nvae": ("genloom.models.nvae", "NVAEConfig", "NVAE"),
    "vae": ("genloom.models.vae", "VAEConfig", "ConvVAE"),
}


def model_family(model_type: str) -> tuple[type, type[nn.Module]]:
    """(config dataclass, model class) of a registered `model_type`, importing its module."""
    try:
        module, config_name, model_name = MODEL_TYPES[model_type]
    except KeyError:
        raise UserError(f"unknown model_type {model_type!r} (known: {', '.join(MODEL_TYPES)})") from None
    mod = importlib.import_module(module)
    return getattr(mod, config_name), getattr(mod, model_name)


def _model_type_of(model: nn.Module) -> str:
    cls, config_cls = type(model), type(getattr(model, "config", None))
    for name, (module, config_name, model_name) in MODEL_TYPES.items():
        if cls.__module__ == module and cls.__qualname__ == model_name and config_cls.__name__ == config_name:
            return name
    raise ValueError(f"{cls.__name__} is not a registered model type (see genloom.models.io.MODEL_TYPES)")


def _unique_tensors(weights: Mapping[str, Tensor], keep: set[str] | None = None) -> dict[str, Tensor]:
    """Contiguous copies of `weights` (only names in `keep`), each storage once (tied weights)."""
    out: dict[str, Tensor] = {}
    seen: set[tuple[int, tuple[int, ...]]] = set()
    for name, t in weights.items():
        if keep is not None and name not in keep:
            continue
        key = (t.data_ptr(), tuple(t.shape))
        if key in seen:
            continue
        seen.add(key)
        out[name] = t.detach().contiguous()
    return out


def save(
    model: nn.Module,
    tokenizer: Any,
    directory: str | os.PathLike[str],
    *,
    ema: nn.Module | Mapping[str, Tensor] | None = None,
) -> Path:
    """Write `model` (and its tokenizer, and optionally EMA weights) as a model directory.

    Args:
        model: a registered model with a dataclass `.config`.
        tokenizer: any genloom tokenizer (its `save(directory)` is called), or None.
        directory: created if needed; existing files of the same names are replaced.
        ema: EMA weights by name (e.g. `genloom.train.ema.EMA.averaged()`) or a module holding
            them; written to model_ema.safetensors, the default weights of `load`.

    Returns:
        The directory path.
    """
    model_type = _model_type_of(model)
    config = dataclasses.asdict(model.config)
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the model directory {path}: {e.strerror}") from None
    state = model.state_dict()
    weights = _unique_tensors(state)
    write_with(path / WEIGHTS_FILE, lambda tmp: save_file(weights, str(tmp)))
    if ema is not None:
        ema_state = ema.state_dict() if isinstance(ema, nn.Module) else ema
        ema_weights = _unique_tensors(ema_state, keep=set(state))
        if set(ema_weights) != set(weights):
            raise ValueError(f"EMA weights do not match the model: {sorted(set(ema_weights) ^ set(weights))[:3]}")
        write_with(path / EMA_WEIGHTS_FILE, lambda tmp: save_file(ema_weights, str(tmp)))
    if tokenizer is not None:
        tokenizer.save(path)
    text = json.dumps({"model_type": model_type, **config}, indent=2, ensure_ascii=False) + "\n"
    write_atomic(path / CONFIG_FILE, text)
    return path


def load_config(directory: str | os.PathLike[str]) -> tuple[str, Any]:
    """(model_type, config dataclass) from a model directory's config.json."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise UserError(f"{Path(directory)} is not a model directory (no {CONFIG_FILE})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} does not hold a JSON object")
    model_type = data.pop("model_type", None)
    if model_type is None and data.get("model") in ("nvae", "vae"):  # NVAE / VAE dirs before model_type
        model_type = data.pop("model")
    if model_type not in MODEL_TYPES:
        raise UserError(f"{path}: unknown model_type {model_type!r} (known: {', '.join(MODEL_TYPES)})")
    config_cls = model_family(model_type)[0]
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise UserError(f"{path}: unknown field(s) {', '.join(unknown)} for model_type {model_type!r}")
    try:
        return model_type, config_cls(**data)
    except TypeError as e:
        raise UserError(f"{path}: {e}") from None


def _copy_weights(model: nn.Module, path: Path, device: str | torch.device) -> tuple[list[str], list[str]]:
    """Copy the tensors of a safetensors file into `model`'s parameters and buffers one at a
    time (the parameters keep their own layout; no second copy of the whole model is ever held).
    Returns (missing names, unexpected names) like `load_state_dict`. A family whose weight names
    changed maps a file's names to its own with `model.rename_weight(name)` (None: not used)."""
    state = model.state_dict()
    rename = getattr(model, "rename_weight", lambda name: name)
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f, torch.no_grad():
            saved = [(n, rename(n)) for n in f.keys()]
            names = [name for _, name in saved if name is not None]
            for stored, name in saved:
                if name in state:
                    tensor = f.get_tensor(stored)
                    if tensor.shape != state[name].shape:
                        raise UserError(f"{path}: {name} has shape {tuple(tensor.shape)}, "
                                        f"the model expects {tuple(state[name].shape)}")
                    state[name].copy_(tensor)
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"cannot read the weights {path}: {str(e).splitlines()[0]}") from None
    found = set(names)
    return [n for n in state if n not in found], [n for n in names if n not in state]


def load(
    directory: str | os.PathLike[str], *, ema: bool = True, device: str | torch.device = "cpu"
) -> tuple[nn.Module, Any]:
    """Rebuild the model (eval mode) and tokenizer saved in `directory`.

    Args:
        directory: written by `save`.
        ema: use model_ema.safetensors when present (the default weights of an EMA run);
            False loads the raw weights from model.safetensors.
        device: where the weights go.

    Returns:
        (model, tokenizer or None when the directory holds no tokenizer).
    """
    path = Path(directory)
    model_type, config = load_config(path)
    model_cls = model_family(model_type)[1]
    weights_path = path / EMA_WEIGHTS_FILE if ema and (path / EMA_WEIGHTS_FILE).is_file() else path / WEIGHTS_FILE
    if not weights_path.is_file():
        raise UserError(f"{path} has no weights ({WEIGHTS_FILE})")
    if hasattr(model_cls, "init_buffers"):  # it rebuilds its non-persistent buffers: skip the random init
        with torch.device("meta"), _NoMetaInit():
            model = model_cls(config)
        # storage in each parameter's own (input-major) layout; to_empty's empty_like would take
        # the same Python path as the normals above
        model = model._apply(lambda t: torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=device))
        if getattr(config, "tie_embeddings", False):
            model.lm_head.weight = model.tok_emb.weight  # to_empty gives each name its own tensor
        model.init_buffers()
    else:
        model = model_cls(config).to(device)
    missing, unexpected = _copy_weights(model, weights_path, device)
    tied = {n for n in missing if _is_tied(model, n)}
    left = sorted(set(missing) - tied)
    if left or unexpected:
        raise UserError(f"{weights_path} does not match {model_type}: missing {left[:3]}, "
                        f"unexpected {sorted(unexpected)[:3]}")
    tokenizer = None
    if (path / TOKENIZER_MANIFEST).is_file():
        from genloom.tokenizers import load_tokenizer

        tokenizer = load_tokenizer(path)
    return model.eval(), tokenizer


class _NoMetaInit(TorchFunctionMode):
    """Skips random initialisation on the meta device, where the values are overwritten next
    anyway: torch draws meta normals through its Python reference ops, whose first use imports
    sympy (1.5-2.5 s of every `load` on 2 busy cores)."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is nn.init.normal_ or func is Tensor.normal_:
            t = args[0] if args else kwargs.get("tensor")
            if isinstance(t, Tensor) and t.is_meta:
                return t
        return func(*args, **kwargs)


def _is_tied(model: nn.Module, name: str) -> bool:
    """True if parameter `name` shares its storage with another named parameter."""
    params = dict(model.named_parameters(remove_duplicate=False))
    target = params.get(name)
    return target is not None and any(p is target for n, p in params.items() if n != name)
