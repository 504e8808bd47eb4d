"""Save and load model directories: config.json + model.safetensors (+ EMA weights) + tokenizer.

A model directory written by `save` holds:

- `config.json`: the model's config dataclass as JSON, plus "model_type" naming its family in
  `MODEL_TYPES`;
- `model.safetensors`: the weights (shared tensors, e.g. tied embeddings, stored once);
- `model_ema.safetensors` (optional): the EMA weights of a run trained with EMA;
  `load` uses them by default and keeps `model.safetensors` as the raw weights;
- the tokenizer's own files, written by its `save` (`genloom.tokenizers.load_tokenizer` reads them);
- `direction.json` (optional, `write_direction`): {"reverse": true} for an LM trained on text read
  right to left (a backward LM); a directory without it reads left to right (`reads_reversed`).

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
DIRECTION_FILE = "direction.json"  # {"reverse": bool}: which way the LM reads its text

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


def write_direction(directory: str | os.PathLike[str], reverse: bool) -> None:
    """Record in a model directory which way its LM reads: right to left when `reverse`."""
    from genloom.files import write_json_atomic

    write_json_atomic(Path(directory) / DIRECTION_FILE, {"reverse": bool(reverse)})


def reads_reversed(directory: str | os.PathLike[str]) -> bool:
    """Whether the LM in `directory` was trained on text read right to left (DIRECTION_FILE)."""
    path = Path(directory) / DIRECTION_FILE
    return path.is_file() and bool(json.loads(path.read_text(encoding="utf-8")).get("reverse", False))


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


TRANSPOSED_KEY = "genloom_transposed"  # safetensors metadata: names stored as their transpose


def _is_transposed_view(t: Tensor) -> bool:
    """A 2-D tensor that is the transpose of a contiguous one (an input-major weight)."""
    return t.dim() == 2 and not t.is_contiguous() and t.t().is_contiguous()


def _unique_tensors(weights: Mapping[str, Tensor], keep: set[str] | None = None, *, storage_layout: bool = False
                    ) -> tuple[dict[str, Tensor], list[str]]:
    """Contiguous copies of `weights` (only names in `keep`), each storage once (tied weights),
    and the names stored transposed: with `storage_layout`, an input-major weight is written as
    its (in, out) storage, so `load` can map it straight into the parameter with no copy."""
    out: dict[str, Tensor] = {}
    transposed: list[str] = []
    seen: set[tuple[int, tuple[int, ...]]] = set()
    for name, t in weights.items():
        if keep is not None and name not in keep:
            continue
        key = (t.data_ptr(), tuple(t.shape))
        if key in seen:
            continue
        seen.add(key)
        if storage_layout and _is_transposed_view(t):
            out[name] = t.detach().t()
            transposed.append(name)
        else:
            out[name] = t.detach().contiguous()
    return out, transposed


def _save_weights(path: Path, weights: dict[str, Tensor], transposed: list[str]) -> None:
    metadata = {TRANSPOSED_KEY: json.dumps(transposed)} if transposed else None
    write_with(path, lambda tmp: save_file(weights, str(tmp), metadata=metadata))


def save(
    model: nn.Module,
    tokenizer: Any,
    directory: str | os.PathLike[str],
    *,
    ema: nn.Module | Mapping[str, Tensor] | None = None,
    storage_layout: bool = False,
) -> Path:
    """Write `model` (and its tokenizer, and optionally EMA weights) as a model directory.

    Args:
        model: a registered model with a dataclass `.config`.
        tokenizer: any genloom tokenizer (its `save(directory)` is called), or None.
        directory: created if needed; existing files of the same names are replaced.
        ema: EMA weights by name (e.g. `genloom.train.ema.EMA.averaged()`) or a module holding
            them; written to model_ema.safetensors, the default weights of `load`.
        storage_layout: write input-major weights as their (in, out) storage, transposed,
            named in the file's metadata (`TRANSPOSED_KEY`): `load` then maps every weight from
            the file with no copy (the conversion cache's files; other readers of the file
            would see those shapes transposed).

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
    weights, transposed = _unique_tensors(state, storage_layout=storage_layout)
    _save_weights(path / WEIGHTS_FILE, weights, transposed)
    if ema is not None:
        ema_state = ema.state_dict() if isinstance(ema, nn.Module) else ema
        ema_weights, ema_transposed = _unique_tensors(ema_state, keep=set(state), storage_layout=storage_layout)
        if set(ema_weights) != set(weights):
            raise ValueError(f"EMA weights do not match the model: {sorted(set(ema_weights) ^ set(weights))[:3]}")
        _save_weights(path / EMA_WEIGHTS_FILE, ema_weights, ema_transposed)
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


def _read_weights(model: nn.Module, path: Path, device: str | torch.device) -> tuple[list[str], list[str]]:
    """Put the tensors of a safetensors file into `model`'s parameters and buffers, which are on
    the meta device (built by `load`) or real. A file tensor with the dtype, device and strides
    of a meta parameter becomes that parameter with no copy: safetensors maps the file
    copy-on-write, so nothing is read until it is used and writing a weight never touches the
    file (SmolLM2's 540 MB: reading and touching every mapped tensor took 0.05 s, allocating and
    copying into input-major parameters 0.6 s; the whole cached load went from 0.8 to 0.26 s).
    Others are allocated in the parameter's own (input-major) layout and copied in, one at a time.
    Tensors named in the file's `TRANSPOSED_KEY` metadata are stored as their transposes.
    Returns (missing names, unexpected names) like `load_state_dict`. A family whose weight names
    changed maps a file's names to its own with `model.rename_weight(name)` (None: not used)."""
    rename = getattr(model, "rename_weight", lambda name: name)
    slots: dict[str, tuple[nn.Module, str, bool]] = {}  # name -> (module, attribute, is a parameter)
    for prefix, module in model.named_modules():
        for local, p in module._parameters.items():
            if p is not None:
                slots[f"{prefix}.{local}" if prefix else local] = (module, local, True)
        for local, b in module._buffers.items():
            if b is not None and local not in module._non_persistent_buffers_set:
                slots[f"{prefix}.{local}" if prefix else local] = (module, local, False)
    # id of a replaced tensor -> (it, what replaced it): tied weights are one object under two names;
    # the old one is kept so its id is not reused while this runs
    done: dict[int, tuple[Tensor, Tensor]] = {}
    names: list[str] = []
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f, torch.no_grad():
            transposed = set(json.loads((f.metadata() or {}).get(TRANSPOSED_KEY, "[]")))
            for stored in f.keys():
                name = rename(stored)
                if name is None:
                    continue
                names.append(name)
                if name not in slots:
                    continue
                module, local, is_param = slots[name]
                old = getattr(module, local)
                tensor = f.get_tensor(stored)
                if stored in transposed:
                    tensor = tensor.t()
                if tensor.shape != old.shape:
                    raise UserError(f"{path}: {name} has shape {tuple(tensor.shape)}, "
                                    f"the model expects {tuple(old.shape)}")
                if id(old) in done:
                    done[id(old)][1].copy_(tensor)
                    continue
                if old.is_meta:
                    if tensor.dtype != old.dtype or tensor.stride() != old.stride() or tensor.device != torch.device(device):
                        tensor = torch.empty_strided(old.shape, old.stride(), dtype=old.dtype, device=device).copy_(tensor)
                    new = nn.Parameter(tensor, requires_grad=old.requires_grad) if is_param else tensor
                    setattr(module, local, new)
                    done[id(old)] = (old, new)
                else:
                    old.copy_(tensor)
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"cannot read the weights {path}: {str(e).splitlines()[0]}") from None
    # a weight shared by several names (tied embeddings) is the same object under each
    for module, local, _ in slots.values():
        old = getattr(module, local)
        if old.is_meta and id(old) in done:
            setattr(module, local, done[id(old)][1])
    found = set(names)
    return [n for n in slots if n not in found], [n for n in names if n not in slots]


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
    meta = hasattr(model_cls, "init_buffers")  # it rebuilds its non-persistent buffers: skip the random init
    if meta:
        with torch.device("meta"), _NoMetaInit():
            model = model_cls(config)
    else:
        model = model_cls(config).to(device)
    missing, unexpected = _read_weights(model, weights_path, device)
    tied = {n for n in missing if _is_tied(model, n)}
    left = sorted(set(missing) - tied)
    if meta and not left and not unexpected:
        model.init_buffers()
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
