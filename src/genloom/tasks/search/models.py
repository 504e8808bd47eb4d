"""The models search-based generation needs: their shapes, their training (genloom's LM pieces
and `fit`), and loading them back.

    nice genloom search train-models --out models/search

writes one model directory per model under `--out` (config.json + safetensors + tokenizer,
loadable with `genloom.models.load`):

| name | what | used for |
|---|---|---|
| `mlm` | Chinese character masked LM (bidirectional Transformer, BERT masking 80/10/10) | Gibbs sampling, replace/insert proposals |
| `forward` | Chinese character LM, left to right | the fluency target; proposals with `backward` |
| `backward` | Chinese character LM over reversed sentences | forward x backward proposals |
| `eval-zh` | a second Chinese character LM (other shape and seed) | fluency of the benchmark outputs |
| `eval-en` | English character LM on standard-library docstrings (train part) | fluency of the English outputs |

The data and the shared Chinese vocabulary are described in `genloom.tasks.search.data`; the
dev split gives the evaluation loss. Every row is one [BOS] sentence [EOS] (`TokenWindows`
with a window longer than any sentence); causal LMs train through `CausalLMObjective`, the masked
LM through `MaskedLMCollate` / `masked_lm_loss` (genloom.train.lm). Each model trains a fixed
number of optimizer steps (warm-up then cosine decay, EMA weights saved as the defaults) with a
wall-clock cap per model as a safety net; the defaults take about 5-8 CPU-minutes per model on
one core, far more wall time on a busy machine. The run's metrics.jsonl and curves.png (under
`--out`/runs/NAME) have the losses; they are small models, trained briefly, and read as such.
A model directory is built under a temporary name and renamed into place when the model is saved;
its run directory is written in place, so a stopped run continues from its last checkpoint with
`resume` (`--resume`; models already saved are kept). An earlier run is replaced only with
`force`, and then both directories are built beside the old ones, which they replace only once
the new model is saved.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from genloom.errors import UserError
from genloom.files import atomic_directory
from genloom.tasks.search.data import chinese_sentences, chinese_tokenizer, mask_id_of, stdlib_sentences
from genloom.train import outdir
from genloom.train.checkpoint import latest_checkpoint
from genloom.train.lm import (CausalLMObjective, MaskedLMCollate, PadRows, TokenWindows, causal_lm_loss,
                              masked_lm_loss)

ZH_MODELS = ("mlm", "forward", "backward", "eval-zh")
ALL_MODELS = (*ZH_MODELS, "eval-en")
_WHOLE = 1 << 20  # a window longer than any sentence: one row per sentence


@dataclass
class SearchModelsConfig:
    """Settings of `genloom search train-models`."""

    out: str = "models/search"  # one sub-directory per model is written here
    steps: int = 2000  # optimizer steps per model (the eval models take half)
    minutes: float = 45.0  # wall-clock cap per model (stops early on a very busy machine)
    models: tuple[str, ...] = ALL_MODELS  # which models to train (names in the module docstring)
    vocab_size: int = 4000  # Chinese character vocabulary, 4 specials and the mask included
    min_chars: int = 4  # shortest training sentence
    max_chars: int = 48  # longest training sentence (the models' context is this + 2)
    batch_size: int = 32  # sentences per optimizer step
    lr: float = 2e-3  # peak AdamW learning rate
    mask_rate: float = 0.15  # fraction of characters the masked LM predicts
    seed: int = 0  # seed of data order, masking and initialisation
    eval_sentences: int = 512  # dev sentences for the evaluation loss
    progress: bool = True  # show the training bar
    force: bool = False  # replace the models and runs already under `out`
    resume: bool = False  # continue stopped runs from their last checkpoint; models already saved are kept
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes stored in config.json


# ---- model shapes -------------------------------------------------------------------------------


def search_lm_config(vocab_size: int, max_len: int, *, mask: str = "causal") -> Any:
    """The shape of `mlm`, `forward`, `backward`: Llama style, 3 layers, width 128 (0.8 M weights
    besides the embedding)."""
    from genloom.models import TransformerConfig

    return TransformerConfig(vocab_size=vocab_size, n_layer=3, n_head=4, d_model=128, d_ff=384,
                             max_len=max_len, mask=mask, pos="rope", norm="rms", mlp="swiglu", bias=False)


def eval_lm_config(vocab_size: int, max_len: int) -> Any:
    """The shape of the evaluation LMs: GPT-2 style (learned positions, LayerNorm, GELU), 2 layers,
    width 96."""
    from genloom.models import TransformerConfig

    return TransformerConfig(vocab_size=vocab_size, n_layer=2, n_head=4, d_model=96, d_ff=384,
                             max_len=max_len, mask="causal")


@dataclass(frozen=True)
class ModelSpec:
    """How one model of the table in the module docstring is trained."""

    kind: str  # "causal" or "masked"
    reverse: bool  # train on reversed sentences
    lang: str  # "zh" (shared vocabulary) or "en" (its own character vocabulary)
    shape: Callable[[int, int], Any]  # (vocab size, max_len) -> TransformerConfig
    seed_offset: int  # added to the run seed


SPECS: dict[str, ModelSpec] = {
    "mlm": ModelSpec("masked", False, "zh", lambda v, n: search_lm_config(v, n, mask="bidirectional"), 0),
    "forward": ModelSpec("causal", False, "zh", search_lm_config, 1),
    "backward": ModelSpec("causal", True, "zh", search_lm_config, 2),
    "eval-zh": ModelSpec("causal", False, "zh", eval_lm_config, 3),
    "eval-en": ModelSpec("causal", False, "en", eval_lm_config, 4),
}


# ---- training -----------------------------------------------------------------------------------


def _reversed(text: str) -> str:
    return text[::-1]


def train_one(name: str, config: SearchModelsConfig, texts: dict[str, list[str]], tokenizer: Any) -> Path:
    """Train model `name` on `texts` ({"train", "dev"}) and save it under config.out/name (its run
    under config.out/runs/name)."""
    from genloom.models import Transformer
    from genloom.train import Loader, TrainConfig

    spec = SPECS[name]
    rows = {split: TokenWindows(t, tokenizer, _WHOLE, add_bos=True, add_eos=True,
                                normalise=_reversed if spec.reverse else None)
            for split, t in (("train", texts["train"]), ("dev", texts["dev"][: config.eval_sentences]))}
    train, dev = rows["train"], rows["dev"]
    seed = config.seed + spec.seed_offset
    torch.manual_seed(seed)
    model = Transformer(spec.shape(tokenizer.vocab_size, max(train.lengths + dev.lengths)))
    if spec.kind == "masked":
        trained, loss_fn = model, masked_lm_loss
        collate: Callable = MaskedLMCollate(pad_id=tokenizer.pad_id, mask_id=mask_id_of(tokenizer), first_id=4,
                                            vocab_size=tokenizer.vocab_size - 1, rate=config.mask_rate)
    else:
        trained, loss_fn, collate = CausalLMObjective(model, tokenizer.pad_id), causal_lm_loss, PadRows(tokenizer.pad_id)
    loader = Loader(train, batch_size=config.batch_size, collate_fn=collate, lengths=train.lengths, seed=seed)
    dev_batches = [collate(dev.items[i: i + 128]) for i in range(0, len(dev), 128)]

    def evaluate(m: nn.Module) -> dict[str, float]:
        total = count = 0.0
        for b in dev_batches:
            loss, n = loss_fn(m, b)
            total += float(loss) * float(n)
            count += float(n)
        return {"loss": total / count}

    steps = config.steps if name in ("mlm", "forward", "backward") else max(1, config.steps // 2)
    train_cfg = TrainConfig(lr=config.lr, warmup_steps=min(100, steps // 10), schedule="cosine", min_lr_ratio=0.1,
                            max_steps=steps, max_minutes=config.minutes, ema_decay=0.995, ema_warmup=True,
                            eval_every=max(1, steps // 4), seed=seed, device="cpu", progress=config.progress,
                            log_every=20)
    out = Path(config.out)
    run_path, model_path = out / "runs" / name, out / name
    task = {"writer": "search", "model": name, **asdict(config)}
    if config.force:  # both built beside the old ones, which are replaced only once the new model is saved
        with atomic_directory(run_path, replace=True, what="run directory") as run_dir, \
                atomic_directory(model_path, replace=True, what="model directory") as model_dir:
            _fit_and_save(trained, model, tokenizer, loss_fn, loader, train_cfg, run_dir, model_dir,
                          evaluate if dev_batches else None, task, resume=False)
        return model_path
    resume = config.resume and latest_checkpoint(run_path / "checkpoints") is not None
    if resume:
        _check_same_run(run_path, task)
    elif run_path.is_dir() and any(run_path.iterdir()):
        raise UserError(f"{run_path} holds an earlier run: pass --resume to continue it, --force to replace it, "
                        "or pick another --out")
    run_path.mkdir(parents=True, exist_ok=True)  # in place, so that a stopped run can be resumed
    with atomic_directory(model_path, what="model directory") as model_dir:
        _fit_and_save(trained, model, tokenizer, loss_fn, loader, train_cfg, run_path, model_dir,
                      evaluate if dev_batches else None, task, resume=resume)
    return model_path


def _fit_and_save(trained: nn.Module, model: nn.Module, tokenizer: Any, loss_fn: Callable, loader: Any,
                  train_cfg: Any, run_dir: Path, model_dir: Path, eval_fn: Any, task: dict[str, Any], *,
                  resume: bool) -> None:
    """`train_one`'s training (continued from run_dir's last checkpoint with `resume`) and save."""
    from genloom.models import save
    from genloom.train import fit

    result = fit(trained, loss_fn, loader, config=train_cfg, run_dir=run_dir, eval_fn=eval_fn, task_config=task,
                 resume=resume)
    outdir.untrained(result)
    averaged = result.ema.averaged() if result.ema is not None else None
    if averaged is not None and trained is not model:  # the objective holds the LM as `lm`
        averaged = {k.removeprefix("lm."): v for k, v in averaged.items()}
    save(model, tokenizer, model_dir, ema=averaged)


_NOT_SETTINGS = ("force", "resume", "progress", "models", "out", "extra")  # may differ in a resumed run


def _check_same_run(run_dir: Path, task: dict[str, Any]) -> None:
    """--resume: the settings must be those the stopped run was started with."""
    config = outdir.read_json(run_dir / "config.json")
    if config is None:
        raise UserError(f"cannot resume {run_dir}: its config.json is missing or unreadable")
    outdir.check_same_run(run_dir, config.get("task", {}), task, may_differ=_NOT_SETTINGS)


def train_search_models(config: SearchModelsConfig) -> dict[str, Path]:
    """Train the models named in `config.models` (module docstring); returns name -> directory.

    Raises:
        UserError: an unknown model name, a model or run directory already there (without
            `force`), or a missing corpus package.
    """
    unknown = [m for m in config.models if m not in SPECS]
    if unknown:
        raise UserError(f"unknown model(s) {', '.join(unknown)} (choose from {', '.join(SPECS)})")
    out = Path(config.out)
    if config.force and config.resume:
        raise UserError("--force starts the runs over and --resume continues them: pass one")
    outdir.refuse_other(out, kind="search")  # another command's model, --force or not
    for name in config.models if not (config.force or config.resume) else ():  # before any work is spent
        if (out / "runs" / name).is_dir():
            raise UserError(f"{out / 'runs' / name} holds an earlier run: pass --resume to continue it, --force to "
                            "replace it, or pick another --out")
        if (out / name).is_dir() and any((out / name).iterdir()):
            raise UserError(f"{out / name} already holds a model: pick another --out, or pass --force")
    kept = [m for m in config.models if (out / m / "config.json").is_file()] if config.resume else []
    if config.resume and not kept and not any(latest_checkpoint(out / "runs" / m / "checkpoints")
                                              for m in config.models):
        raise UserError(f"nothing to resume: {out} holds no stopped search train-models run")
    config = replace(config, models=tuple(m for m in config.models if m not in kept))  # --resume keeps them
    done: dict[str, Path] = {m: out / m for m in kept}
    if any(SPECS[m].lang == "zh" for m in config.models):
        zh = {s: chinese_sentences(s, min_chars=config.min_chars, max_chars=config.max_chars) for s in ("train", "dev")}
        tokenizer = chinese_tokenizer(zh["train"], config.vocab_size)
        for name in (m for m in config.models if SPECS[m].lang == "zh"):
            done[name] = train_one(name, config, zh, tokenizer)
    if "eval-en" in config.models:
        from genloom.tokenizers import CharTokenizer

        sentences = stdlib_sentences("train")
        cut = len(sentences) // 20  # 5% of the train sentences for the evaluation loss
        en = {"train": sentences[cut:], "dev": sentences[:cut]}
        done["eval-en"] = train_one("eval-en", config, en, CharTokenizer.train(en["train"], min_count=2))
    return done


# ---- loading ------------------------------------------------------------------------------------


@dataclass
class ChineseModels:
    """The Chinese search models, loaded (eval mode)."""

    tokenizer: Any  # the shared CharTokenizer (with MASK_CHAR)
    mask_id: int  # id of MASK_CHAR
    mlm: nn.Module  # bidirectional masked LM
    forward: nn.Module  # left-to-right LM
    backward: nn.Module  # right-to-left LM (over reversed sentences)


def load_chinese_models(directory: str | Path) -> ChineseModels:
    """Load mlm / forward / backward from a `train-models` output directory."""
    from genloom.models import load

    root = Path(directory)
    missing = [m for m in ("mlm", "forward", "backward") if not (root / m / "config.json").is_file()]
    if missing:
        raise UserError(f"{root} lacks the model(s) {', '.join(missing)}: run `genloom search train-models "
                        f"--out {root}` first")
    mlm, tokenizer = load(root / "mlm")
    forward, _ = load(root / "forward")
    backward, _ = load(root / "backward")
    return ChineseModels(tokenizer=tokenizer, mask_id=mask_id_of(tokenizer), mlm=mlm, forward=forward,
                         backward=backward)
