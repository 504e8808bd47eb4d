"""Taps: read any intermediate value of a model by name, without editing its code (the
"中间变量" of 让Keras更酷一些; Keras needed `K.function`, PyTorch has forward hooks).

    with Taps(model, ["blocks.*.mixer:attn_probs", "blocks.0.norm1"]) as taps:
        model(x)
    probs = taps["blocks.0.mixer:attn_probs"]             # (B, H, T, S)
    every_layer = taps.stack("blocks.*.mixer:attn_probs")  # (L, B, H, T, S)

(In genloom's Transformer the attention of block i is `blocks.i.mixer`.)

A pattern is a glob over qualified module names (`fnmatch`: `*` also crosses dots), optionally
followed by ":key":
- "encoder.lstm" captures the module's forward output (a forward hook), stored under the module's
  name;
- "blocks.*.mixer:attn_probs" captures what matching modules record through `genloom.nn.probe`
  (`probe.record(self, "attn_probs", probs)`), stored under "blocks.0.mixer:attn_probs". The key
  may be a glob too ("blocks.0.mixer:*").

Values are detached by default (`detach=False` keeps the graph, for gradient-based analyses).
A module called several times in one pass (decoding steps, shared layers) keeps every call:
`taps[name]` is the latest, `taps.all(name)` the list in call order. On leaving the context every
hook is removed and the probe listener closed; the captured values stay readable.

Shape letters: L layers, B batch, H heads, T target positions, S source positions.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from genloom.errors import UserError
from genloom.nn import probe


def _detach(value: Any) -> Any:
    """Detach every tensor inside tuples / lists / dicts (module outputs come in all shapes)."""
    if isinstance(value, Tensor):
        return value.detach()
    if isinstance(value, tuple):
        return type(value)(*map(_detach, value)) if hasattr(value, "_fields") else tuple(
            map(_detach, value))
    if isinstance(value, list):
        return [_detach(v) for v in value]
    if isinstance(value, dict):
        return {k: _detach(v) for k, v in value.items()}
    return value


class Taps:
    """Capture module outputs and probe-recorded tensors of `model`, by name or glob.

    Args:
        model: any module; names are those of `model.named_modules()`.
        patterns: "module-glob" (forward output) or "module-glob:key-glob" (probe records).
        detach: detach captured tensors (default); False keeps them in the autograd graph.

    Raises:
        UserError: a module glob that matches no module of `model`.
    """

    def __init__(self, model: nn.Module, patterns: Iterable[str], *, detach: bool = True) -> None:
        self.model = model
        self.patterns = list(patterns)
        self.detach = detach
        self.values: dict[str, list[Any]] = {}
        self._handles: list[RemovableHandle] = []
        self._probe_ctx = None
        names = [n for n, _ in model.named_modules()]
        self._outputs: dict[str, nn.Module] = {}  # module name -> module, forward-hooked
        self._probes: dict[int, tuple[str, list[str]]] = {}  # id(module) -> (name, key globs)
        modules = dict(model.named_modules())
        for pattern in self.patterns:
            glob, _, key = pattern.partition(":")
            hits = [n for n in names if fnmatch.fnmatchcase(n, glob)]
            if not hits:
                raise UserError(f"tap {pattern!r} matches no module of {type(model).__name__}"
                                f" (modules look like {names[1:4] or names})")
            for name in hits:
                if not key:
                    self._outputs[name] = modules[name]
                else:
                    entry = self._probes.setdefault(id(modules[name]), (name, []))
                    entry[1].append(key)

    # -- context ---------------------------------------------------------------------------------
    def __enter__(self) -> Taps:
        self.values.clear()
        for name, module in self._outputs.items():
            self._handles.append(module.register_forward_hook(self._output_hook(name)))
        if self._probes:
            self._probe_ctx = probe.listening(self._on_record)
            self._probe_ctx.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove every hook and the probe listener (idempotent); captured values stay."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self._probe_ctx is not None:
            ctx, self._probe_ctx = self._probe_ctx, None
            ctx.__exit__(None, None, None)

    def _store(self, key: str, value: Any) -> None:
        self.values.setdefault(key, []).append(_detach(value) if self.detach else value)

    def _output_hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            self._store(name, output)
        return hook

    def _on_record(self, module: nn.Module, key: str, tensor: Tensor) -> None:
        entry = self._probes.get(id(module))
        if entry is None:
            return
        name, globs = entry
        if any(fnmatch.fnmatchcase(key, g) for g in globs):
            self._store(f"{name}:{key}", tensor)

    # -- reading ---------------------------------------------------------------------------------
    def keys(self) -> list[str]:
        """Captured names, in the order first captured."""
        return list(self.values)

    def all(self, name: str) -> list[Any]:
        """Every value captured under `name`, in call order."""
        if name not in self.values:
            raise KeyError(f"nothing captured under {name!r}; captured: {self.keys()}")
        return self.values[name]

    def __getitem__(self, name: str) -> Any:
        """The latest value captured under the exact name `name`."""
        return self.all(name)[-1]

    def __contains__(self, name: str) -> bool:
        return name in self.values

    def find(self, pattern: str) -> dict[str, Any]:
        """Latest value of every captured name matching the glob `pattern`, in capture order."""
        return {k: v[-1] for k, v in self.values.items() if fnmatch.fnmatchcase(k, pattern)}

    def stack(self, pattern: str) -> Tensor:
        """The latest tensors of every name matching `pattern`, stacked on a new dim 0."""
        found = self.find(pattern)
        if not found:
            raise KeyError(f"nothing captured matches {pattern!r}; captured: {self.keys()}")
        return torch.stack(list(found.values()))


def hooks_left(model: nn.Module) -> int:
    """Number of forward / forward-pre / backward hooks registered on any module of `model`."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in model.modules())
