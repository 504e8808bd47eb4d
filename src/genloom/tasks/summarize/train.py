"""Training a summarizer: the extraction side (alignment labels, the sentence encoder, the k-fold
extractor), the optional char-LM pre-training of the seq2seq (`genloom.train.lm`), and the
seq2seq on predicted / oracle extractions (see `genloom.tasks.summarize`)."""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from genloom.errors import UserError
from genloom.files import write_json_atomic
from genloom.models import load, save
from genloom.models.unilm import UniLMSeq2Seq
from genloom.tasks.summarize.config import SummarizeConfig, parse_features
from genloom.tasks.summarize.convert import extraction_labels
from genloom.tasks.summarize.extract import (CrossFit, EncoderConfig, ExtractorConfig, cross_fit, featurize,
                                             load_encoder, train_encoder)
from genloom.tasks.summarize.features import TfidfModel
from genloom.tasks.summarize.pipeline import (Summarizer, clauses_of, extracted_text, select_clauses, truncate_text,
                                              with_oracle)
from genloom.tasks.summarize.seq2seq import Seq2SeqCollate, Seq2SeqData, seq2seq_loss
from genloom.tasks.summarize.titlewords import TitleWordModel, cross_features
from genloom.tokenizers import CharTokenizer
from genloom.train import Loader, TrainConfig, fit
from genloom.train.checkpoint import latest_checkpoint
from genloom.train.lm import pretrain_causal_lm
from genloom.train.outdir import check_same_run, output_directory, read_json, untrained


RUN_FILE = "summarize-run.json"  # the settings and data fingerprint of a run in progress (removed once it is saved)
CKPT_EVERY = 200  # seq2seq steps between checkpoints, what a stopped run resumes from


@dataclass
class TrainingExtraction:
    """The extraction side of training, reusable across seq2seq runs (the benchmark's ablations)."""

    encoder_dir: Path  # the sentence encoder used
    labels: list[list[int]]  # aligned clause indices per training document
    cross: CrossFit  # fold models and each document's cross-predicted probabilities


def prepare_extraction(clauses: Sequence[Sequence[str]], summaries: Sequence[str], config: SummarizeConfig, *,
                       out: Path, progress: bool = True, resume: bool = False) -> TrainingExtraction:
    """Align labels, get (or train) the encoder, vectorise, and cross-fit the extractor (`resume`:
    an encoder a stopped run saved whole under out/encoder is used again)."""
    labels = [extraction_labels(c, s) for c, s in zip(clauses, summaries)]
    encoder_dir = out / "encoder"
    if config.encoder is not None:
        model, tokenizer = load_encoder(config.encoder)
        if Path(config.encoder).resolve() != encoder_dir.resolve():
            save(model, tokenizer, encoder_dir)
    elif resume and _saved(encoder_dir):
        pass
    else:
        flat = [c for doc in clauses for c in doc]
        train_encoder(flat, encoder_dir, EncoderConfig(minutes=config.encoder_minutes,
                                                        max_steps=config.encoder_steps, seed=config.seed),
                      progress=progress)
    encoder, enc_tok = load_encoder(encoder_dir)
    ext_cfg = ExtractorConfig(hidden=config.extract_hidden, folds=config.folds, epochs=config.extract_epochs,
                              threshold=config.threshold, seed=config.seed, position=config.extract_position,
                              features=parse_features(config.extract_features), tfidf_dim=config.tfidf_dim)
    tfidf = titlewords = rows = None
    if "centroid" in ext_cfg.features or "tfidf" in ext_cfg.features:  # fitted on the training documents only
        tfidf = TfidfModel.fit(clauses, dim=ext_cfg.tfidf_dim if "tfidf" in ext_cfg.features else 0,
                               seed=config.seed)
    if "titlewords" in ext_cfg.features:  # new documents read `titlewords`; training ones their cross-fitted rows
        titlewords = TitleWordModel.fit(clauses, summaries, folds=ext_cfg.folds, seed=config.seed)
        rows = cross_features(clauses, summaries, folds=ext_cfg.folds, seed=config.seed)
    vectors = featurize(ext_cfg.features, tfidf, encoder, enc_tok, clauses, titlewords=titlewords,
                        titleword_rows=rows)
    cross = cross_fit(vectors, labels, ext_cfg, run_dir=out / "runs" / "extractor", progress=progress, tfidf=tfidf,
                      titlewords=titlewords)
    return TrainingExtraction(encoder_dir, labels, cross)


# ---- pre-training ----------------------------------------------------------------------------------
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
    if config.pretrain_minutes <= 0 and not config.pretrain_steps:
        raise UserError("give pretrain_minutes or pretrain_steps")
    docs = [clauses_of(text, config.max_clauses) for text, _ in pairs]
    targets = [" ".join(s.split())[: config.max_target_len] for _, s in pairs]
    texts = _lm_texts(docs, targets)
    tokenizer = CharTokenizer.train(texts, min_count=config.min_count, max_size=config.vocab_max)
    torch.manual_seed(config.seed)
    model = UniLMSeq2Seq(config.seq2seq(tokenizer))
    run_dir = Path(out).parent / f"{Path(out).name}-run"
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = TrainConfig(lr=config.lr, warmup_steps=config.warmup_steps, schedule="constant",
                      max_minutes=config.pretrain_minutes if config.pretrain_minutes > 0 else None,
                      max_steps=config.pretrain_steps, ema_decay=config.ema_decay, ema_warmup=True,
                      seed=config.seed, device="cpu", progress=progress, log_every=10)
    result = pretrain_causal_lm(model.lm, tokenizer, texts, config=cfg, run_dir=run_dir, segments=True,
                                length=model.lm.config.max_len, batch_size=config.batch_size,
                                task_config=asdict(config))
    ema = None
    if result.ema is not None:  # the LM's averaged weights; the heads keep their initialisation
        ema = {name: p.detach() for name, p in model.named_parameters()}
        ema.update(result.ema.averaged())
    return save(model, tokenizer, out, ema=ema)


def from_pretrained(config: SummarizeConfig) -> tuple[UniLMSeq2Seq, Any]:
    """A UniLMSeq2Seq shaped by `config`, its Transformer taken from `config.init` (heads fresh)."""
    base, tokenizer = load(config.init)
    if not isinstance(base, UniLMSeq2Seq) or tokenizer is None:
        raise UserError(f"{config.init} does not hold a pre-trained summarization seq2seq")
    want = config.seq2seq(tokenizer)
    shape = ("vocab_size", "d_model", "n_layer", "n_head", "d_ff", "max_source_len", "max_target_len")
    if any(getattr(want, k) != getattr(base.config, k) for k in shape):
        raise UserError(f"{config.init} has another shape than these settings "
                        f"({', '.join(f'{k}={getattr(base.config, k)}' for k in shape)})")
    torch.manual_seed(config.seed)
    model = UniLMSeq2Seq(want)
    model.lm.load_state_dict(base.lm.state_dict())
    return model, tokenizer


# ---- the seq2seq ---------------------------------------------------------------------------------------
def _saved(directory: Path) -> bool:
    """True when `genloom.models.save` finished writing `directory` (config.json comes last)."""
    return (directory / "config.json").is_file()


def _fingerprint(pairs: Sequence[tuple[str, str]]) -> str:
    """BLAKE2b of the training pairs, recorded so --resume refuses other data."""
    h = hashlib.blake2b(digest_size=16)
    for document, summary in pairs:
        h.update(document.encode("utf-8", "surrogatepass") + b"\x00")
        h.update(summary.encode("utf-8", "surrogatepass") + b"\x01")
    return h.hexdigest()


def train(config: SummarizeConfig, pairs: Sequence[tuple[str, str]], *, out: str | Path,
          extraction: TrainingExtraction | None = None, progress: bool = True, force: bool = True,
          resume: bool = False) -> Summarizer:
    """Train a summarizer on (document, summary) pairs and save it to `out` (module docstring).

    Args:
        config: the settings.
        pairs: training (document, summary) pairs.
        out: the summarizer directory: new, empty, or (with `force`) an earlier summarizer or
            summarize run, replaced only once the new summarizer is complete; another kind of
            model is never written over (`genloom.train.outdir`).
        extraction: the extraction side of an earlier `prepare_extraction` on the same pairs, to
            reuse (pipeline mode); None computes it.
        force: replace what `out` holds (the library's default; `summarize train` asks --force).
        resume: continue the stopped run in `out` (same settings and pairs; checked): the encoder
            and the pre-trained init it saved whole are used again, the extractor's cross-fit
            (deterministic) is recomputed, and the seq2seq continues from its last checkpoint
            (`fit(resume=True)`), so it logs the losses of an uninterrupted run.
    """
    if not pairs:
        raise UserError("no training pairs")
    with output_directory(out, kind="summarize", force=force and not resume, resume=resume) as where:
        _train_in(config, pairs, Path(where), Path(out), extraction=extraction, progress=progress, resume=resume)
    return Summarizer.load(out)


def _check_settings(out: Path, settings: dict[str, Any], *, resume: bool) -> None:
    """Record the run's settings and data (RUN_FILE) or, with `resume`, refuse other ones."""
    path = out / RUN_FILE
    if resume and path.is_file():
        old = read_json(path) or {}
        check_same_run(out, {**old.get("config", {}), "data": old.get("data")},
                       {**settings["config"], "data": settings["data"]}, what="settings and data")
        return
    write_json_atomic(path, settings)


def _train_in(config: SummarizeConfig, pairs: Sequence[tuple[str, str]], out: Path, final: Path, *,
              extraction: TrainingExtraction | None, progress: bool, resume: bool) -> None:
    """`train` in the directory `out` that `output_directory` gave it (`final` once in place)."""
    _check_settings(out, {"config": asdict(config), "data": _fingerprint(pairs)}, resume=resume)
    started = time.perf_counter()
    docs = [clauses_of(text, config.max_clauses) for text, _ in pairs]
    targets = [" ".join(summary.split())[: config.max_target_len] for _, summary in pairs]
    if any(not t for t in targets):
        raise UserError("a training summary is empty")
    info: dict[str, Any] = {"documents": len(docs), "mean_target_len": round(sum(map(len, targets)) / len(targets))}
    extractor = None
    if config.mode == "pipeline":
        if extraction is None:
            extraction = prepare_extraction(docs, targets, config, out=out, progress=progress, resume=resume)
        elif extraction.encoder_dir.resolve() != (out / "encoder").resolve():
            shutil.copytree(extraction.encoder_dir, out / "encoder", dirs_exist_ok=True)
        probs = extraction.cross.probabilities
        if len(probs) != len(docs):
            raise UserError(f"the extraction covers {len(probs)} documents, not {len(docs)}")
        sources = []
        for clauses, p, gold in zip(docs, probs, extraction.labels):
            kw = {"window": config.window, "threshold": config.threshold, "fill": config.fill}
            predicted = extracted_text(clauses, select_clauses(clauses, p.tolist(), density=config.extract_density,
                                                               **kw), config.window)
            oracle = extracted_text(clauses, select_clauses(clauses, with_oracle(p.tolist(), gold), **kw),
                                    config.window)
            sources.append((predicted, oracle))
        extractor = extraction.cross.extractor
        info["aligned_clauses"] = sum(len(g) for g in extraction.labels)
        info["extraction_seconds"] = round(time.perf_counter() - started, 1)
    else:
        sources = [(truncate_text(clauses, config.window),) for clauses in docs]
    if config.init is None and (config.pretrain_minutes > 0 or config.pretrain_steps):
        if not (resume and _saved(out / "pretrained")):
            pretrain(config, pairs, out=out / "pretrained", progress=progress)
        model, tokenizer = from_pretrained(replace(config, init=str(out / "pretrained")))
        config = replace(config, init=str(final / "pretrained"))  # where it is once `out` is in place
        info["init"] = config.init
    elif config.init is not None:
        model, tokenizer = from_pretrained(config)
        info["init"] = config.init
    else:
        tokenizer = CharTokenizer.train(_lm_texts(docs, targets), min_count=config.min_count, max_size=config.vocab_max)
        torch.manual_seed(config.seed)
        model = UniLMSeq2Seq(config.seq2seq(tokenizer))
    src_ids = [[tokenizer.encode(s) for s in group] for group in sources]
    tgt_ids = [tokenizer.encode(t) for t in targets]
    data = Seq2SeqData(src_ids, tgt_ids, noise=config.source_noise, alt_rate=config.oracle_rate)
    collate = Seq2SeqCollate(pad_id=tokenizer.pad_id, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id)
    loader = Loader(data, batch_size=config.batch_size, collate_fn=collate, lengths=data.lengths(), seed=config.seed)
    run_dir = out / "runs" / "seq2seq"
    resume_fit = resume and latest_checkpoint(run_dir / "checkpoints") is not None
    if not resume_fit:
        shutil.rmtree(run_dir, ignore_errors=True)
    # cosine decay over a step budget; with minutes only (the default) a constant lr after warm-up,
    # since a cosine needs to know where it ends (fit would refuse it, after the extraction's work)
    cfg = TrainConfig(lr=config.lr, warmup_steps=config.warmup_steps,
                      schedule="cosine" if config.steps else "constant", min_lr_ratio=0.1,
                      max_steps=config.steps, max_minutes=config.minutes, ema_decay=config.ema_decay,
                      ema_warmup=True, seed=config.seed, device="cpu", progress=progress, log_every=10,
                      ckpt_every=CKPT_EVERY, keep_last=1)
    t0 = time.perf_counter()
    result = fit(model, partial(seq2seq_loss, copy_weight=config.copy_weight), loader, config=cfg, run_dir=run_dir,
                 task_config={"writer": "summarize", **asdict(config)}, resume=resume_fit)
    untrained(result)
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    info.update({"seq2seq_steps": result.step, "seq2seq_seconds": round(time.perf_counter() - t0, 1),
                 "parameters": sum(p.numel() for p in model.parameters()), "vocab_size": tokenizer.vocab_size})
    ema = result.ema.averaged() if result.ema is not None else None
    Summarizer(config, model, tokenizer, info=info, extractor=extractor).save(out, ema=ema)
    (out / RUN_FILE).unlink(missing_ok=True)  # the summarizer is complete: nothing left to resume
