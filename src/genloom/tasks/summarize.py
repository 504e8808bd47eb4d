"""SPACES extract-then-generate summarization of documents longer than the model's window.

Pipeline (bojone/SPACES; research notes in shared/reference/seq2seq-cln-spaces.md section 4):

1. split the document into clauses (`summarize_convert.split_clauses`, the first `max_clauses`);
2. extract: the DGCNN extractor (`summarize_extract`) scores every clause from its frozen sentence
   vector; the clauses above `threshold` (the post's 0.2) are kept, most probable first, as long
   as they fit the window, and, with `fill` (our default), the window is topped up with the next
   most probable clauses; the kept clauses are joined in document order;
3. generate: the UniLM + B/I/O copy model (`summarize_seq2seq`) writes the summary from that
   text by beam search under the copy constraint and Sparse Softmax's top-k.

`fill` is a deviation from the post. Its summaries (283 characters on average) took many clauses
and the extraction was its input; with news titles (24 characters) as targets the alignment marks
one or two short clauses per document, so extracting only those would hand the seq2seq far less
text than the window holds. Filling it makes the comparison with "truncate to the window, then
generate" (mode="truncate", the baseline) one of which characters are read, not how many.

Training (`train`): the documents' aligned clauses are the extractor's labels; k-fold
cross-prediction gives each training document an extraction made by a fold model that never saw
it; the seq2seq trains on, at random, that predicted extraction or the oracle one (the aligned
clauses first, topped up by the predictions), as the post does; EMA weights are saved as the
model's default weights and used for evaluation. The post fine-tunes a pretrained NEZHA; `pretrain`
is our stand-in (the seq2seq's Transformer as a causal char LM on the training documents), used
through `init` (or `pretrain_minutes`). The vocabulary is built from the documents and summaries,
not from the sources, so truncate- and pipeline-mode models of the same data share it (and can
share one pre-training). A trained summarizer is a directory:

    summarize.json   this module's config + facts of the run (mean target length, counts)
    seq2seq/         the CopyUniLM model directory (genloom.models.save; EMA weights default)
    encoder/         the sentence encoder (a genloom bidirectional Transformer directory)
    extractor/       the k DGCNN fold models
    runs/            training runs (metrics.jsonl, curves.png of every fold and the seq2seq)
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from genloom.errors import UserError
from genloom.tasks.summarize_convert import extraction_labels, split_clauses
from genloom.tasks.summarize_extract import (CrossFit, EncoderConfig, Extractor, ExtractorConfig, cross_fit,
                                             document_vectors, load_encoder, train_encoder)
from genloom.tasks.summarize_seq2seq import (CausalLMObjective, CopyUniLM, CopyUniLMConfig, LMChunks, PadRows,
                                             Seq2SeqCollate, Seq2SeqData, causal_lm_loss, generate_ids,
                                             seq2seq_loss)

CONFIG_FILE = "summarize.json"
MODES = ("pipeline", "truncate")


@dataclass
class SummarizeConfig:
    """Everything `genloom summarize train` sets (the CLI maps its flags onto these fields)."""

    mode: str = "pipeline"  # "pipeline" (extract, then generate) or "truncate" (first window chars, then generate)
    window: int = 256  # characters of source the seq2seq reads (its context minus the target)
    max_target_len: int = 40  # longest summary in characters (longer training targets are cut)
    max_clauses: int = 128  # clauses of a document considered (the first ones; the post kept the last 256)
    threshold: float = 0.2  # extractor probability above which a clause is extracted (the post's)
    fill: bool = True  # top the extraction up to the window with the next most probable clauses
    oracle_rate: float = 0.5  # chance a training source is the oracle extraction instead of the predicted one
    encoder: str | None = None  # sentence encoder directory (bidirectional Transformer); None = train one
    encoder_minutes: float = 3.0  # training budget of that encoder (minutes)
    encoder_steps: int | None = None  # or a step budget for it (whichever ends first)
    folds: int = 5  # k of the extractor's cross-prediction (the post: 15)
    extract_epochs: int = 8  # epochs of each fold model
    extract_hidden: int = 128  # DGCNN width
    extract_position: int = 0  # clause-position features of the extractor (first k positions one-hot); 0: none (the post)
    init: str | None = None  # start the seq2seq from this `pretrain` directory (same shape; its vocabulary)
    pretrain_minutes: float = 0.0  # without init: pre-train the seq2seq as a char LM this long first
    pretrain_steps: int | None = None  # or for this many steps (whichever ends first)
    d_model: int = 256  # seq2seq width
    n_layer: int = 4  # seq2seq blocks
    n_head: int = 4  # seq2seq heads
    d_ff: int = 1024  # seq2seq feed-forward width
    dropout: float = 0.1  # seq2seq dropout
    copy: bool = True  # B/I/O copy head and constrained decoding
    pointer: bool = True  # the title task's pointer-generator copy in the seq2seq's output (not in the post)
    prior: bool = True  # the title task's source-character prior in the seq2seq's output (not in the post)
    copy_weight: float = 2.0  # loss = token loss + copy_weight * copy loss
    sparse_k: int | None = 10  # Sparse Softmax top-k (training and decoding); None = off
    sparse_p: float | None = None  # Sparse Softmax top-p instead (when sparse_k is None)
    source_noise: float = 0.15  # share of source tokens replaced by random source tokens in training
    min_count: int = 2  # characters rarer than this in the training texts become <unk>
    vocab_max: int = 6000  # the most vocabulary ids
    batch_size: int = 32  # seq2seq examples per optimizer step
    lr: float = 1e-3  # seq2seq peak learning rate (AdamW, warm-up then cosine)
    warmup_steps: int = 100  # seq2seq warm-up steps
    steps: int | None = None  # seq2seq optimizer steps (None: bounded by minutes only)
    minutes: float | None = 10.0  # seq2seq wall-clock budget (None: bounded by steps only)
    ema_decay: float = 0.995  # EMA of the seq2seq weights (saved as its default weights)
    num_beams: int = 3  # beam width when summarizing
    no_repeat_ngram: int = 3  # ban repeated character n-grams of this size when summarizing (0: off)
    seed: int = 0  # every random choice of the run

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UserError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.no_repeat_ngram < 0:
            raise UserError(f"no_repeat_ngram must be >= 0, got {self.no_repeat_ngram}")
        for name in ("window", "max_target_len", "max_clauses", "batch_size", "num_beams", "folds"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.threshold < 1.0:
            raise UserError(f"threshold must be in [0, 1), got {self.threshold}")
        if self.steps is None and self.minutes is None:
            raise UserError("give a step or a minute budget for the seq2seq")
        if self.sparse_k is not None and self.sparse_k < 1:
            raise UserError(f"sparse_k must be at least 1 (or off), got {self.sparse_k}")

    def seq2seq(self, vocab_size: int, tokenizer: Any) -> CopyUniLMConfig:
        """The CopyUniLM config these settings describe."""
        return CopyUniLMConfig(
            vocab_size=vocab_size, pad_id=tokenizer.pad_id, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id,
            d_model=self.d_model, n_layer=self.n_layer, n_head=self.n_head, d_ff=self.d_ff,
            dropout=self.dropout, max_source_len=self.window, max_target_len=self.max_target_len,
            copy=self.copy, copy_weight=self.copy_weight, sparse_k=self.sparse_k,
            sparse_p=self.sparse_p if self.sparse_k is None else None, source_noise=self.source_noise,
            pointer=self.pointer, prior=self.prior)


# ---- documents and extraction ----------------------------------------------------------------------
def clauses_of(text: str, max_clauses: int) -> list[str]:
    """The first `max_clauses` clauses of a document; a UserError for a blank document."""
    clauses = split_clauses(text)[:max_clauses]
    if not clauses:
        raise UserError("a document is empty (nothing to summarize)")
    return clauses


def truncate_text(clauses: Sequence[str], window: int) -> str:
    """The document's first `window` characters (clauses joined as the pipeline joins them)."""
    return "".join(clauses)[:window]


def select_clauses(clauses: Sequence[str], probs: Sequence[float], *, window: int, threshold: float,
                   fill: bool) -> list[int]:
    """Indices (document order) of the extracted clauses: most probable first while they fit the
    window, those above `threshold` (at least the best one), then with `fill` any that still fit."""
    order = sorted(range(len(clauses)), key=lambda i: (-float(probs[i]), i))
    chosen: list[int] = []
    used = 0
    for i in order:
        if chosen and not fill and float(probs[i]) <= threshold:
            break
        if used + len(clauses[i]) <= window or not chosen:
            chosen.append(i)
            used += len(clauses[i])
        if used >= window:
            break
    return sorted(chosen)


def with_oracle(scores: Sequence[float], aligned: Sequence[int]) -> list[float]:
    """Clause scores that rank the `aligned` clauses first (2.0, above any probability), the
    others by `scores`: the oracle extraction (training sources, the benchmark's upper bound)."""
    out = [float(s) for s in scores]
    for i in aligned:
        out[i] = 2.0
    return out


def extracted_text(clauses: Sequence[str], chosen: Sequence[int], window: int) -> str:
    """The chosen clauses joined in document order, cut to the window."""
    return "".join(clauses[i] for i in sorted(chosen))[:window]


def best_clause_text(clauses: Sequence[str], probs: Sequence[float], length: int) -> str:
    """Extract-only baseline: the most probable clause and those after it, cut to `length` chars."""
    best = max(range(len(clauses)), key=lambda i: (float(probs[i]), -i))
    return "".join(clauses[best:])[:length]


def extraction_recall(selected: Sequence[Sequence[int]], gold: Sequence[Sequence[int]]) -> dict[str, float]:
    """Micro-averaged recall / precision (percent) of selected clause indices against the aligned ones."""
    hit = sum(len(set(s) & set(g)) for s, g in zip(selected, gold))
    n_gold, n_sel = sum(len(g) for g in gold), sum(len(s) for s in selected)
    return {"recall": 100.0 * hit / max(n_gold, 1), "precision": 100.0 * hit / max(n_sel, 1),
            "aligned": n_gold, "selected": n_sel}


@dataclass
class TrainingExtraction:
    """The extraction side of training, reusable across seq2seq runs (the benchmark's ablations)."""

    encoder_dir: Path  # the sentence encoder used
    labels: list[list[int]]  # aligned clause indices per training document
    cross: CrossFit  # fold models and each document's cross-predicted probabilities


def prepare_extraction(clauses: Sequence[Sequence[str]], summaries: Sequence[str], config: SummarizeConfig, *,
                       out: Path, progress: bool = True) -> TrainingExtraction:
    """Align labels, get (or train) the encoder, vectorise, and cross-fit the extractor."""
    labels = [extraction_labels(c, s) for c, s in zip(clauses, summaries)]
    encoder_dir = out / "encoder"
    if config.encoder is not None:
        model, tokenizer = load_encoder(config.encoder)
        if Path(config.encoder).resolve() != encoder_dir.resolve():
            from genloom.models import save

            save(model, tokenizer, encoder_dir)
    else:
        flat = [c for doc in clauses for c in doc]
        train_encoder(flat, encoder_dir, EncoderConfig(minutes=config.encoder_minutes,
                                                        max_steps=config.encoder_steps, seed=config.seed),
                      progress=progress)
    encoder, enc_tok = load_encoder(encoder_dir)
    vectors = document_vectors(encoder, enc_tok, clauses)
    ext_cfg = ExtractorConfig(hidden=config.extract_hidden, folds=config.folds, epochs=config.extract_epochs,
                              threshold=config.threshold, seed=config.seed, position=config.extract_position)
    cross = cross_fit(vectors, labels, ext_cfg, run_dir=out / "runs" / "extractor", progress=progress)
    return TrainingExtraction(encoder_dir, labels, cross)


# ---- the trained summarizer ------------------------------------------------------------------------
class Summarizer:
    """A trained pipeline (or truncate-mode model): `summarize` texts, `load` / `save` a directory."""

    def __init__(self, config: SummarizeConfig, model: CopyUniLM, tokenizer: Any, *, info: dict[str, Any],
                 extractor: Extractor | None = None, encoder: Any = None, encoder_tokenizer: Any = None) -> None:
        self.config, self.model, self.tokenizer, self.info = config, model.eval(), tokenizer, info
        self.extractor, self.encoder, self.encoder_tokenizer = extractor, encoder, encoder_tokenizer

    @property
    def summary_length(self) -> int:
        """Mean training-summary length (characters, rounded): the extract-only baseline's cut."""
        return int(self.info.get("mean_target_len", 24))

    def probabilities(self, clauses: Sequence[Sequence[str]]) -> list[Tensor]:
        """The extractor's clause probabilities (mean over its fold models) per document."""
        if self.extractor is None:
            raise UserError("this summarizer has no extractor (it was trained with --mode truncate)")
        vectors = document_vectors(self.encoder, self.encoder_tokenizer, clauses)
        return self.extractor.probabilities(vectors)

    def sources(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        """Per text: its clauses, and the source the seq2seq reads (with the extraction, if any)."""
        c = self.config
        docs = [clauses_of(t, c.max_clauses) for t in texts]
        out = []
        probs = self.probabilities(docs) if c.mode == "pipeline" else [None] * len(docs)
        for clauses, p in zip(docs, probs):
            if p is None:
                out.append({"clauses": clauses, "source": truncate_text(clauses, c.window)})
                continue
            chosen = select_clauses(clauses, p.tolist(), window=c.window, threshold=c.threshold, fill=c.fill)
            out.append({"clauses": clauses, "probs": p.tolist(), "chosen": chosen,
                        "source": extracted_text(clauses, chosen, c.window)})
        return out

    def summarize(self, texts: Sequence[str], *, num_beams: int | None = None, copy: bool | None = None,
                  explain: bool = False, batch_size: int = 32) -> list[dict[str, Any]]:
        """Summaries of `texts`: [{"summary": ...}] (plus, with `explain`, the source read and the
        extracted clauses with their probabilities)."""
        return self.generate(self.sources(texts), num_beams=num_beams, copy=copy, explain=explain,
                             batch_size=batch_size)

    def generate(self, prepared: Sequence[dict[str, Any]], *, num_beams: int | None = None,
                 copy: bool | None = None, explain: bool = False, batch_size: int = 32) -> list[dict[str, Any]]:
        """`summarize` from the output of `sources` (so an evaluation extracts once)."""
        beams = self.config.num_beams if num_beams is None else num_beams
        if beams < 1:
            raise UserError(f"the beam size must be at least 1, got {beams}")
        ids = [self.tokenizer.encode(p["source"]) for p in prepared]
        outs = generate_ids(self.model, ids, num_beams=beams, copy=copy, batch_size=batch_size,
                            no_repeat_ngram=self.config.no_repeat_ngram)
        results = []
        for p, o in zip(prepared, outs):
            row: dict[str, Any] = {"summary": self.tokenizer.decode(o)}
            if explain:
                row["source"] = p["source"]
                if "chosen" in p:
                    row["extracted"] = [{"clause": p["clauses"][i], "index": i, "p": round(p["probs"][i], 4),
                                         "above_threshold": p["probs"][i] > self.config.threshold}
                                        for i in p["chosen"]]
            results.append(row)
        return results

    def save(self, directory: str | Path, *, ema: Any = None) -> Path:
        """Write seq2seq/ (with `ema` weights as the default), extractor/, summarize.json."""
        from genloom.models import save
        from genloom.train.checkpoint import write_json_atomic

        path = Path(directory)
        save(self.model, self.tokenizer, path / "seq2seq", ema=ema)
        if self.extractor is not None:
            self.extractor.save(path / "extractor")
        write_json_atomic(path / CONFIG_FILE, {"config": asdict(self.config), "info": self.info})
        return path

    @classmethod
    def load(cls, directory: str | Path, *, ema: bool = True) -> Summarizer:
        """Rebuild a summarizer saved by `train` (EMA weights unless ema=False)."""
        from genloom.models import load

        path = Path(directory)
        meta_path = path / CONFIG_FILE
        if not meta_path.is_file():
            raise UserError(f"{path} is not a summarizer directory (no {CONFIG_FILE})")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            known = {f.name for f in fields(SummarizeConfig)}
            config = SummarizeConfig(**{k: v for k, v in meta["config"].items() if k in known})
        except (OSError, KeyError, TypeError, json.JSONDecodeError) as e:
            raise UserError(f"cannot read {meta_path}: {e}") from None
        model, tokenizer = load(path / "seq2seq", ema=ema)
        if not isinstance(model, CopyUniLM):
            raise UserError(f"{path / 'seq2seq'} does not hold a summarization model")
        extractor = encoder = enc_tok = None
        if config.mode == "pipeline":
            extractor = Extractor.load(path / "extractor")
            encoder, enc_tok = load_encoder(path / "encoder")
        return cls(config, model, tokenizer, info=meta.get("info", {}), extractor=extractor, encoder=encoder,
                   encoder_tokenizer=enc_tok)


# ---- pre-training --------------------------------------------------------------------------------------
def _lm_texts(docs: Sequence[Sequence[str]], targets: Sequence[str]) -> list[str]:
    """The texts the vocabulary and the LM pre-training see: every document (clauses joined) and summary.
    Built from the documents, not the seq2seq's sources, so every mode shares one vocabulary."""
    return ["".join(c) for c in docs] + list(targets)


def pretrain(config: SummarizeConfig, pairs: Sequence[tuple[str, str]], *, out: str | Path,
             progress: bool = True) -> Path:
    """Pre-train the seq2seq's Transformer as a causal char LM on the documents and summaries
    (windows of its context; every position segment 1, where the prefix mask is causal) for
    `pretrain_minutes` / `pretrain_steps`, and save it (EMA weights, tokenizer) to `out`.
    SPACES fine-tunes a pretrained NEZHA; this is the small from-our-data stand-in, and what
    Sparse Softmax needs (the post: from scratch it underfits). `train` starts from it via `init`."""
    from genloom.models import save
    from genloom.tokenizers import CharTokenizer
    from genloom.train import Loader, TrainConfig, fit

    if config.pretrain_minutes <= 0 and not config.pretrain_steps:
        raise UserError("give pretrain_minutes or pretrain_steps")
    docs = [clauses_of(text, config.max_clauses) for text, _ in pairs]
    targets = [" ".join(s.split())[: config.max_target_len] for _, s in pairs]
    texts = _lm_texts(docs, targets)
    tokenizer = CharTokenizer.train(texts, min_count=config.min_count, max_size=config.vocab_max)
    torch.manual_seed(config.seed)
    model = CopyUniLM(config.seq2seq(tokenizer.vocab_size, tokenizer))
    width = model.lm.config.max_len
    chunks = [ids[i:i + width] for ids in (tokenizer.encode(t) for t in texts)
              for i in range(0, max(len(ids) - 1, 1), width) if len(ids[i:i + width]) > 1]
    data = LMChunks(chunks)
    loader = Loader(data, batch_size=config.batch_size, collate_fn=PadRows(tokenizer.pad_id),
                    lengths=[len(c) for c in chunks], seed=config.seed)
    run_dir = Path(out).parent / f"{Path(out).name}-run"
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = TrainConfig(lr=config.lr, warmup_steps=config.warmup_steps, schedule="constant",
                      max_minutes=config.pretrain_minutes if config.pretrain_minutes > 0 else None,
                      max_steps=config.pretrain_steps, ema_decay=config.ema_decay, ema_warmup=True,
                      seed=config.seed, device="cpu", progress=progress, log_every=10)
    result = fit(CausalLMObjective(model), causal_lm_loss, loader, config=cfg, run_dir=run_dir, task_config=asdict(config))
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    ema = None
    if result.ema is not None:
        ema = {k.removeprefix("model."): v for k, v in result.ema.averaged().items()}
    return save(model, tokenizer, out, ema=ema)


def _from_pretrained(config: SummarizeConfig) -> tuple[CopyUniLM, Any]:
    """A CopyUniLM shaped by `config`, its Transformer taken from `config.init` (copy head fresh)."""
    from genloom.models import load

    base, tokenizer = load(config.init)
    if not isinstance(base, CopyUniLM) or tokenizer is None:
        raise UserError(f"{config.init} does not hold a pre-trained summarization seq2seq")
    want = config.seq2seq(tokenizer.vocab_size, tokenizer)
    shape = ("vocab_size", "d_model", "n_layer", "n_head", "d_ff", "max_source_len", "max_target_len")
    if any(getattr(want, k) != getattr(base.config, k) for k in shape):
        raise UserError(f"{config.init} has another shape than these settings "
                        f"({', '.join(f'{k}={getattr(base.config, k)}' for k in shape)})")
    torch.manual_seed(config.seed)
    model = CopyUniLM(want)
    model.lm.load_state_dict(base.lm.state_dict())
    return model, tokenizer


# ---- training ----------------------------------------------------------------------------------------
def train(config: SummarizeConfig, pairs: Sequence[tuple[str, str]], *, out: str | Path,
          extraction: TrainingExtraction | None = None, progress: bool = True) -> Summarizer:
    """Train a summarizer on (document, summary) pairs and save it to `out` (module docstring).

    Args:
        config: the settings.
        pairs: training (document, summary) pairs.
        out: the summarizer directory (created; an earlier run's files there are replaced).
        extraction: the extraction side of an earlier `prepare_extraction` on the same pairs, to
            reuse (pipeline mode); None computes it.
    """
    from genloom.tokenizers import CharTokenizer
    from genloom.train import Loader, TrainConfig, fit

    if not pairs:
        raise UserError("no training pairs")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    docs = [clauses_of(text, config.max_clauses) for text, _ in pairs]
    targets = [" ".join(summary.split())[: config.max_target_len] for _, summary in pairs]
    if any(not t for t in targets):
        raise UserError("a training summary is empty")
    info: dict[str, Any] = {"documents": len(docs), "mean_target_len": round(sum(map(len, targets)) / len(targets))}
    extractor = None
    if config.mode == "pipeline":
        if extraction is None:
            extraction = prepare_extraction(docs, targets, config, out=out, progress=progress)
        elif extraction.encoder_dir.resolve() != (out / "encoder").resolve():
            shutil.copytree(extraction.encoder_dir, out / "encoder", dirs_exist_ok=True)
        probs = extraction.cross.probabilities
        if len(probs) != len(docs):
            raise UserError(f"the extraction covers {len(probs)} documents, not {len(docs)}")
        sources = []
        for clauses, p, gold in zip(docs, probs, extraction.labels):
            kw = {"window": config.window, "threshold": config.threshold, "fill": config.fill}
            predicted = extracted_text(clauses, select_clauses(clauses, p.tolist(), **kw), config.window)
            oracle = extracted_text(clauses, select_clauses(clauses, with_oracle(p.tolist(), gold), **kw),
                                    config.window)
            sources.append((predicted, oracle))
        extractor = extraction.cross.extractor
        info["aligned_clauses"] = sum(len(g) for g in extraction.labels)
        info["extraction_seconds"] = round(time.perf_counter() - started, 1)
    else:
        sources = [(truncate_text(clauses, config.window),) for clauses in docs]
    if config.init is None and (config.pretrain_minutes > 0 or config.pretrain_steps):
        pretrain(config, pairs, out=out / "pretrained", progress=progress)
        config = replace(config, init=str(out / "pretrained"))
    if config.init is not None:
        model, tokenizer = _from_pretrained(config)
        info["init"] = config.init
    else:
        tokenizer = CharTokenizer.train(_lm_texts(docs, targets), min_count=config.min_count, max_size=config.vocab_max)
        torch.manual_seed(config.seed)
        model = CopyUniLM(config.seq2seq(tokenizer.vocab_size, tokenizer))
    src_ids = [[tokenizer.encode(s) for s in group] for group in sources]
    tgt_ids = [tokenizer.encode(t) for t in targets]
    data = Seq2SeqData(src_ids, tgt_ids, noise=config.source_noise, alt_rate=config.oracle_rate)
    collate = Seq2SeqCollate(pad_id=tokenizer.pad_id, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id)
    loader = Loader(data, batch_size=config.batch_size, collate_fn=collate, lengths=data.lengths(), seed=config.seed)
    run_dir = out / "runs" / "seq2seq"
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = TrainConfig(lr=config.lr, warmup_steps=config.warmup_steps, schedule="cosine", min_lr_ratio=0.1,
                      max_steps=config.steps, max_minutes=config.minutes, ema_decay=config.ema_decay,
                      ema_warmup=True, seed=config.seed, device="cpu", progress=progress, log_every=10)
    t0 = time.perf_counter()
    result = fit(model, seq2seq_loss, loader, config=cfg, run_dir=run_dir, task_config=asdict(config))
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    info.update({"seq2seq_steps": result.step, "seq2seq_seconds": round(time.perf_counter() - t0, 1),
                 "parameters": sum(p.numel() for p in model.parameters()), "vocab_size": tokenizer.vocab_size})
    ema = result.ema.averaged() if result.ema is not None else None
    summarizer = Summarizer(config, model, tokenizer, info=info, extractor=extractor)
    summarizer.save(out, ema=ema)
    return Summarizer.load(out)


# ---- evaluation --------------------------------------------------------------------------------------
def score(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Char ROUGE-1/2/L F1 and the CAIL weighting 0.2 R1 + 0.4 R2 + 0.4 RL on jieba words (percent)."""
    from genloom.metrics import cail_score, rouge

    return {**rouge(predictions, references, level="char"), "cail": cail_score(predictions, references)}


def evaluate(summarizer: Summarizer, pairs: Sequence[tuple[str, str]], *, num_beams: int | None = None,
             copy: bool | None = None, batch_size: int = 32,
             prepared: Sequence[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Score a summarizer on (document, reference) pairs; `prepared`, when given, is
    `summarizer.sources` of the pairs' documents (so several evaluations extract once).

    Returns:
        {"rows": {name: score}, "predictions", "extraction": recall/precision of the extractor
        against the aligned clauses (pipeline mode), "decode_seconds"}. Rows: "summarizer" and,
        in pipeline mode, "extract only" (`best_clause_text` cut to the mean training-summary length).
    """
    if not pairs:
        raise UserError("no pairs to evaluate")
    refs = [r for _, r in pairs]
    if prepared is None:
        prepared = summarizer.sources([d for d, _ in pairs])
    elif len(prepared) != len(pairs):
        raise UserError(f"{len(prepared)} prepared sources for {len(pairs)} pairs")
    t0 = time.perf_counter()
    preds = [r["summary"] for r in summarizer.generate(prepared, num_beams=num_beams, copy=copy,
                                                      batch_size=batch_size)]
    seconds = time.perf_counter() - t0
    rows = {"summarizer": score(preds, refs)}
    result: dict[str, Any] = {"rows": rows, "predictions": preds, "decode_seconds": round(seconds, 1),
                              "pairs": len(pairs)}
    if summarizer.config.mode == "pipeline":
        c = summarizer.config
        rows["extract only"] = score([best_clause_text(p["clauses"], p["probs"], summarizer.summary_length)
                                      for p in prepared], refs)
        gold = [extraction_labels(p["clauses"], r) for p, r in zip(prepared, refs)]
        above = [select_clauses(p["clauses"], p["probs"], window=10**9, threshold=c.threshold, fill=False)
                 for p in prepared]
        result["extraction"] = {"threshold": extraction_recall(above, gold),
                                "window": extraction_recall([p["chosen"] for p in prepared], gold)}
    return result
