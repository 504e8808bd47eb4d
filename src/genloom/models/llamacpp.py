"""Any GGUF model on llama.cpp, behind the decoding protocol (start / step / select).

Letters: B batch rows, T prompt width, V vocabulary size.

`LlamaCppLM` drives llama.cpp through llama-cpp-python's low-level API: every row of a batch is a
llama.cpp sequence of one context, whose KV cache is unified (cells shared by sequences that
share a prefix), so

- `start` prefills ragged prompts in one batch (each row with its own sequence id and positions
  0 .. len - 1; identical prompts are prefilled once and copied) and returns each row's logits;
- `step` decodes one token per row in one `llama_decode` and returns every row's logits;
- `select` maps onto the KV memory's sequence operations: rows dropped are removed
  (`llama_memory_seq_rm`), a row kept twice is copied (`llama_memory_seq_cp`, which shares the
  cells rather than copying them);
- `model(ids)` returns the logits at every position (B, T, V), in a second context, so scoring
  (`decode.targets.CausalLMScorer`, the MCMC targets) never disturbs a decode in flight.

`start` keeps the cells of the previous decode's rows that begin a new prompt (the longest shared
prefix, as llama.cpp's server does), so exact healing's tree and the continuation after it
prefill the prompt once; `reset()` or `reuse_prefix=False` turn that off.

The context grows when the cache runs out of cells: a bigger one is made and every row's tokens
(the state keeps them) are prefilled again. llama.cpp's KV cache lives in the context, not in the
state, so a state is valid only until the next call: using an older one raises (the decoding
loops always pass the newest).

`quantized(path, quant)` requantizes a GGUF once with llama.cpp's own quantizer into a cache folder
(`$GENLOOM_CACHE`, default ~/.cache/genloom); `load_llamacpp(source, quant=...)` gives the model
and its `GGUFTokenizer`. llama-cpp-python is the optional `llamacpp` extra.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from genloom.errors import UserError
from genloom.files import write_with
from genloom.models.prompts import check_prompts
from genloom.tokenizers.gguf import GGUFHandle, GGUFTokenizer, check_gguf, llama_cpp, open_gguf

# --quant name -> llama.cpp file type (llama_ftype); None keeps the file as it is
QUANTS = {"f32": 0, "f16": 1, "q8_0": 7, "q4_0": 2, "q4_1": 3}
MAX_SEQUENCES = 256  # llama.cpp's LLAMA_MAX_SEQ: rows one context holds at once
BATCH = 512  # tokens per llama_decode call (longer prefills are split)
MIN_REUSE = 8  # shortest shared prefix `start` keeps from the previous decode


class _NoSlot(Exception):
    """llama_decode found no free KV cells for the batch."""


def cache_root() -> Path:
    """Where converted models are kept: $GENLOOM_CACHE, default ~/.cache/genloom."""
    return Path(os.environ.get("GENLOOM_CACHE") or Path.home() / ".cache" / "genloom")


def resolve_gguf(source: str | os.PathLike[str]) -> Path:
    """A .gguf path from "smollm2-135m", a .gguf file or a directory holding exactly one."""
    from genloom.models.hf import SMOLLM2_ALIASES

    if str(source).lower() in SMOLLM2_ALIASES:
        from genloom.tokenizers.hf import smollm2_files

        directory, name = smollm2_files()
        return check_gguf(Path(directory) / name)
    path = Path(source)
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) != 1:
            raise UserError(f"{path} holds {len(ggufs)} .gguf files: the llama.cpp engine needs exactly one")
        return check_gguf(ggufs[0])
    if not path.exists():
        raise UserError(f"no model {str(source)!r}: the llama.cpp engine takes a .gguf file, a directory "
                        f"holding one, or {SMOLLM2_ALIASES[0]!r}")
    return check_gguf(path)


def quantized(path: str | os.PathLike[str], quant: str, *, threads: int | None = None) -> Path:
    """`path` requantized to `quant` by llama.cpp (once; later calls reuse the cached file).

    The cache file is named after the source's resolved path, size and modification time, and is
    written through `files.write_with` (temporary name, fsync, rename), so an interrupted run
    leaves no half file."""
    if quant not in QUANTS:
        raise UserError(f"unknown quant {quant!r} (choose from {', '.join(QUANTS)})")
    src = check_gguf(path).resolve()
    st = src.stat()
    key = hashlib.sha256(f"{src}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    out = cache_root() / "gguf" / f"{src.stem}.{key}.{quant}.gguf"
    if out.is_file():
        return out
    lc = llama_cpp()
    params = lc.llama_model_quantize_default_params()
    params.ftype, params.allow_requantize = QUANTS[quant], True
    params.nthread = threads or torch.get_num_threads()

    def write(tmp: Path) -> None:
        if lc.llama_model_quantize(str(src).encode(), str(tmp).encode(), params) != 0:
            raise UserError(f"llama.cpp could not quantize {src} to {quant}")
    return write_with(out, write, what="quantized model (set GENLOOM_CACHE to put the cache elsewhere)")


class _Context:
    """One llama.cpp context (KV cache of `cells` cells shared by up to 256 sequences) and its batch."""

    def __init__(self, handle: GGUFHandle, *, cells: int, threads: int, kv_f32: bool) -> None:
        lc = self.lc = llama_cpp()
        p = lc.llama_context_default_params()
        p.n_ctx, p.n_batch, p.n_ubatch = cells, BATCH, BATCH
        p.n_seq_max, p.kv_unified, p.no_perf = MAX_SEQUENCES, True, True
        p.n_threads = p.n_threads_batch = threads
        if kv_f32:  # f32 weights: keep attention exact too (llama.cpp's default cache is f16, and its
            # CPU flash attention rounds queries to f16)
            p.type_k = p.type_v = lc.GGML_TYPE_F32
            p.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self.ctx = lc.llama_init_from_model(handle.model, p)
        if not self.ctx:
            raise UserError(f"llama.cpp could not make a context of {cells} cells for {handle.path}")
        self.handle = handle  # the model must outlive its contexts
        self.cells = cells
        self.mem = lc.llama_get_memory(self.ctx)
        self.vocab_size = int(lc.llama_vocab_n_tokens(handle.vocab))
        self.batch = lc.llama_batch_init(BATCH, 0, 1)
        b = self.batch
        self._token = np.ctypeslib.as_array(b.token, shape=(BATCH,))
        self._pos = np.ctypeslib.as_array(b.pos, shape=(BATCH,))
        self._logits = np.ctypeslib.as_array(b.logits, shape=(BATCH,))
        np.ctypeslib.as_array(b.n_seq_id, shape=(BATCH,))[:] = 1
        self._seq = [b.seq_id[i] for i in range(BATCH)]

    def clear(self) -> None:
        self.lc.llama_memory_clear(self.mem, True)

    def decode(self, tokens: Sequence[int], positions: Sequence[int], seqs: Sequence[int],
               outputs: Sequence[bool]) -> np.ndarray:
        """Decode the tokens (split into calls of BATCH); (n outputs, V) float32 logits, in order."""
        got = []
        for lo in range(0, len(tokens), BATCH):
            hi = min(lo + BATCH, len(tokens))
            n = hi - lo
            self._token[:n] = tokens[lo:hi]
            self._pos[:n] = positions[lo:hi]
            want = np.asarray(outputs[lo:hi], dtype=np.int8)
            self._logits[:n] = want
            for i, s in enumerate(seqs[lo:hi]):
                self._seq[i][0] = s
            self.batch.n_tokens = n
            rc = self.lc.llama_decode(self.ctx, self.batch)
            if rc == 1:
                raise _NoSlot
            if rc != 0:
                raise RuntimeError(f"llama_decode failed with code {rc}")
            k = int(want.sum())
            if k:
                ptr = self.lc.llama_get_logits(self.ctx)
                got.append(np.ctypeslib.as_array(ptr, shape=(k, self.vocab_size)).copy())
        return np.concatenate(got) if got else np.zeros((0, self.vocab_size), dtype=np.float32)

    def seq_rm(self, seq: int) -> None:
        self.lc.llama_memory_seq_rm(self.mem, seq, -1, -1)

    def seq_cp(self, src: int, dst: int, p0: int = -1, p1: int = -1) -> None:
        """Give `dst` the cells of `src` at positions [p0, p1) (-1: open ends)."""
        self.lc.llama_memory_seq_cp(self.mem, src, dst, p0, p1)

    def __del__(self) -> None:
        lc = getattr(self, "lc", None)
        if lc is None or not getattr(self, "ctx", None):
            return
        try:
            lc.llama_batch_free(self.batch)
            lc.llama_free(self.ctx)
        except Exception:  # interpreter shutdown
            pass
        self.ctx = None


@dataclass
class LlamaState:
    """Decoding state of `LlamaCppLM`: which llama.cpp sequence holds each row, and its tokens."""

    seqs: list[int]  # llama.cpp sequence id of each row
    history: list[list[int]]  # each row's tokens so far (prompt + stepped), to rebuild a grown cache
    epoch: int  # the model's call count when this state was made (older states are stale)


class LlamaCppLM:
    """A GGUF model on llama.cpp behind start / step / select (module docstring).

    Args:
        source: a .gguf path, a directory holding one, "smollm2-135m", or an open `GGUFHandle`.
        threads: llama.cpp threads (default: torch's thread count, which `--threads` sets).
        kv_f32: keep the KV cache in f32 (default: when the weights are all f32, so f32 decoding
            matches a float32 reference; llama.cpp's usual f16 cache otherwise).
        reuse_prefix: `start` keeps the cache cells of the previous decode's rows that begin a new
            prompt (its longest shared prefix of at least MIN_REUSE tokens) and prefills only the
            rest, as llama.cpp's own server does; exact healing's tree and the continuation after
            it then prefill the prompt once. `reset()` drops what is kept.
    """

    def __init__(self, source: str | os.PathLike[str] | GGUFHandle, *, threads: int | None = None,
                 kv_f32: bool | None = None, reuse_prefix: bool = True) -> None:
        self.handle = source if isinstance(source, GGUFHandle) else open_gguf(resolve_gguf(source))
        lc = self._lc = llama_cpp()
        self.vocab_size = int(lc.llama_vocab_n_tokens(self.handle.vocab))
        self.max_len = int(lc.llama_model_n_ctx_train(self.handle.model)) or None
        self.threads = threads or torch.get_num_threads()
        self.description = ctypes_text(lambda buf, n: lc.llama_model_desc(self.handle.model, buf, n))
        self.ftype = int(lc.llama_model_ftype(self.handle.model))  # llama_ftype: 0 = all f32
        self.kv_f32 = self.ftype == 0 if kv_f32 is None else kv_f32
        self.reuse_prefix = reuse_prefix
        self._gen: _Context | None = None
        self._score: _Context | None = None
        self._epoch = 0
        self._live: LlamaState | None = None  # the newest state: what the cache holds now

    def reset(self) -> None:
        """Forget the cache (the next `start` prefills everything)."""
        self._live = None
        self._epoch += 1  # states in flight are stale
        if self._gen is not None:
            self._gen.clear()

    def eval(self) -> LlamaCppLM:  # scorers call model.eval(); nothing to switch
        return self

    def __repr__(self) -> str:
        return f"LlamaCppLM({self.handle.path.name}, {self.description}, threads={self.threads})"

    # ---- contexts -----------------------------------------------------------------------------

    def _context(self, which: str, cells: int) -> _Context:
        ctx = getattr(self, which)
        if ctx is None or ctx.cells < cells:
            size = 1 << max(9, (cells - 1).bit_length())  # powers of two from 512 cells
            if ctx is not None:
                setattr(self, which, None)  # free the old cache before the new one is made
                del ctx
            ctx = _Context(self.handle, cells=size, threads=self.threads, kv_f32=self.kv_f32)
            setattr(self, which, ctx)
        return ctx

    def _fresh(self, state: LlamaState) -> None:
        if state.epoch != self._epoch:
            raise RuntimeError("this decoding state is stale: llama.cpp's cache has moved on since (pass the "
                               "state returned by the last start / step / select)")
        self._epoch += 1
        state.epoch = self._epoch
        self._live = state

    def _prefill(self, ctx: _Context, rows: Sequence[Sequence[int]], seqs: Sequence[int], *, outputs: bool,
                 skip: Sequence[int] | None = None) -> np.ndarray:
        """Each row into its sequence from position skip[r] on (the cells before are there already;
        identical rows once, then copied); last-token logits per row."""
        skip = skip or [0] * len(rows)
        first: dict[tuple[int, ...], int] = {}
        order = []  # the row whose prefill (and logits) each row shares
        for r, row in enumerate(rows):
            order.append(first.setdefault(tuple(row), r))
        uniq = sorted(set(order))
        tokens = [t for r in uniq for t in rows[r][skip[r]:]]
        positions = [p for r in uniq for p in range(skip[r], len(rows[r]))]
        ids = [seqs[r] for r in uniq for _ in range(skip[r], len(rows[r]))]
        want = [outputs and p == len(rows[r]) - 1 for r in uniq for p in range(skip[r], len(rows[r]))]
        logits = ctx.decode(tokens, positions, ids, want)
        for r, src in enumerate(order):
            if src != r:  # (a repeated row got no cells from a reuse: `_reuse` skips it)
                ctx.seq_cp(seqs[src], seqs[r])
        if not outputs:
            return logits
        at = {r: i for i, r in enumerate(uniq)}
        return logits[[at[src] for src in order]]

    def _rebuild(self, state: LlamaState, extra: int) -> _Context:
        """A context with room for `extra` more tokens per row, every row's tokens prefilled again."""
        need = sum(len(h) for h in state.history) + len(state.history) * extra
        ctx = self._context("_gen", max(need + 1, 2 * self._gen.cells))
        ctx.clear()
        self._prefill(ctx, state.history, state.seqs, outputs=False)
        return ctx

    # ---- the decoding protocol ----------------------------------------------------------------

    def start(self, *, input_ids: Tensor, lengths: Tensor | Sequence[int] | None = None, max_new_tokens: int,
              truncate: bool = False) -> tuple[Tensor, LlamaState]:
        """Prefill right-padded prompts (row b is input_ids[b, :lengths[b]]); (logits (B, V), state)."""
        ids, lengths, _ = check_prompts(input_ids, lengths, max_new_tokens=max_new_tokens, max_len=self.max_len,
                                        truncate=truncate)
        b = ids.shape[0]
        if b > MAX_SEQUENCES:
            raise UserError(f"llama.cpp decodes at most {MAX_SEQUENCES} rows at once, got {b}")
        rows = [r[:n] for r, n in zip(ids.tolist(), lengths.tolist())]
        prev, old = self._live, self._gen
        ctx = self._context("_gen", sum(map(len, rows)) + max(b, 4) * max(max_new_tokens, 1) + 1)
        state = LlamaState(seqs=list(range(b)), history=rows, epoch=self._epoch)
        self._fresh(state)
        skip = None
        if self.reuse_prefix and prev is not None and ctx is old:
            state.seqs, skip = self._reuse(ctx, prev, rows)
        else:
            ctx.clear()
        try:
            logits = self._prefill(ctx, rows, state.seqs, outputs=True, skip=skip)
        except _NoSlot:  # full: from scratch in this cache, else in one twice its size
            state.seqs = list(range(b))
            ctx.clear()
            try:
                logits = self._prefill(ctx, rows, state.seqs, outputs=True)
            except _NoSlot:
                ctx = self._context("_gen", 2 * ctx.cells)
                ctx.clear()
                logits = self._prefill(ctx, rows, state.seqs, outputs=True)
        return torch.from_numpy(logits), state  # (B, V)

    def _reuse(self, ctx: _Context, prev: LlamaState, rows: list[list[int]]) -> tuple[list[int], list[int]]:
        """Sequences for the new rows holding the longest prefix each shares with a row of `prev`
        (at least MIN_REUSE tokens, and never a row's last token, whose logits are needed), the old
        sequences removed; returns (sequence ids, tokens already in place per row)."""
        old = set(prev.seqs)
        free = [s for s in range(MAX_SEQUENCES) if s not in old]
        if len(rows) > len(free) or len(rows) * len(prev.history) > 4096:  # too many pairs to compare
            ctx.clear()
            return list(range(len(rows))), [0] * len(rows)
        seqs, skip, seen = free[: len(rows)], [], set()
        for r, row in enumerate(rows):
            best, src = 0, None
            if tuple(row) not in seen:  # a repeated row is copied from its first copy by _prefill
                for p, hist in enumerate(prev.history):
                    n = len(os.path.commonprefix([row[:-1], hist]))
                    if n > best:
                        best, src = n, p
            seen.add(tuple(row))
            if best >= MIN_REUSE:
                ctx.seq_cp(prev.seqs[src], seqs[r], 0, best)
                skip.append(best)
            else:
                skip.append(0)
        for s in prev.seqs:
            ctx.seq_rm(s)
        return seqs, skip

    def step(self, tokens: Tensor, state: LlamaState) -> tuple[Tensor, LlamaState]:
        """tokens (B,) -> (logits (B, V) for the next token, state)."""
        self._fresh(state)
        toks = [int(t) for t in tokens.tolist()]
        if len(toks) != len(state.seqs):
            raise ValueError(f"step() got {len(toks)} tokens for {len(state.seqs)} rows")
        positions = [len(h) for h in state.history]
        try:
            logits = self._gen.decode(toks, positions, state.seqs, [True] * len(toks))
        except _NoSlot:
            logits = self._rebuild(state, 64).decode(toks, positions, state.seqs, [True] * len(toks))
        for h, t in zip(state.history, toks):
            h.append(t)
        return torch.from_numpy(logits), state  # (B, V)

    def select(self, state: LlamaState, index: Tensor) -> LlamaState:
        """Keep / reorder rows (index (B',), repeats allowed): drop, keep or copy llama.cpp sequences."""
        self._fresh(state)
        index = [int(i) for i in torch.as_tensor(index).reshape(-1).tolist()]
        if len(index) > MAX_SEQUENCES:
            raise UserError(f"llama.cpp decodes at most {MAX_SEQUENCES} rows at once, got {len(index)}")
        ctx, kept = self._gen, set(index)
        for r, s in enumerate(state.seqs):
            if r not in kept:
                ctx.seq_rm(s)
        in_use = {state.seqs[r] for r in kept}
        free = [s for s in range(MAX_SEQUENCES - 1, -1, -1) if s not in in_use]
        seqs, history, placed = [], [], set()
        for r in index:
            if r in placed:  # a second copy of row r: a fresh sequence sharing its cells
                dst = free.pop()
                ctx.seq_cp(state.seqs[r], dst)
                seqs.append(dst)
                history.append(list(state.history[r]))
            else:
                placed.add(r)
                seqs.append(state.seqs[r])
                history.append(state.history[r])
        self._live = LlamaState(seqs=seqs, history=history, epoch=state.epoch)
        return self._live

    def __call__(self, input_ids: Tensor) -> Tensor:
        """Logits at every position: input_ids (B, T) -> (B, T, V) float32 (rows scored independently)."""
        rows = input_ids.tolist()
        b, t = input_ids.shape
        out = torch.empty(b, t, self.vocab_size, dtype=torch.float32)
        if b == 0 or t == 0:
            return out
        ctx = self._context("_score", max(t, BATCH))
        per = max(1, ctx.cells // t)  # rows scored per cache fill
        for lo in range(0, b, per):
            chunk = rows[lo:lo + per]
            ctx.clear()
            logits = ctx.decode([x for r in chunk for x in r], [p for _ in chunk for p in range(t)],
                                [i for i in range(len(chunk)) for _ in range(t)], [True] * (len(chunk) * t))
            out[lo:lo + len(chunk)] = torch.from_numpy(logits).view(len(chunk), t, -1)
        return out


def ctypes_text(fill: Any, size: int = 256) -> str:
    """A C string written by `fill(buffer, size)`."""
    buf = ctypes.create_string_buffer(size)
    fill(buf, size)
    return buf.value.decode("utf-8", "replace")


def load_llamacpp(source: str | os.PathLike[str], *, quant: str | None = None,
                  threads: int | None = None) -> tuple[LlamaCppLM, GGUFTokenizer]:
    """(LlamaCppLM, its GGUFTokenizer) for a GGUF source, requantized to `quant` when given."""
    path = resolve_gguf(source)
    if quant is not None:
        path = quantized(path, quant, threads=threads)
    model = LlamaCppLM(path, threads=threads)
    return model, GGUFTokenizer(model.handle)
