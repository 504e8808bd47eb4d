"""The models search-based generation needs (issue 11), trained with genloom's `fit` loop.

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

The Chinese models share one character vocabulary (the most frequent characters of the train
sentences) plus `MASK_CHAR`, a private-use character that never occurs in text and serves as the
masked LM's [MASK] (the char tokenizer has no slot for extra specials, so the mask is a
vocabulary entry). Sentences are the train split of `chinese_lm_texts` (People's Daily, reviews,
inews train titles and contents) cut by `split_sentences`; the dev split gives the evaluation
loss. Every sequence is [BOS] sentence [EOS]. Each model trains a fixed number of optimizer steps
(warm-up then cosine decay, EMA weights saved as the defaults) with a wall-clock cap per model as
a safety net; the defaults take about 5-8 CPU-minutes per model on one core, far more wall time
on a busy machine. The run's metrics.jsonl and curves.png (under `--out`/runs/NAME) have the
losses; they are small models, trained briefly, and read as such.

English sentences for the benchmark and for `eval-en` come from the docstrings of the Python
standard library (parsed with `ast`, never imported); a BLAKE2b hash of each sentence puts one in
ten in the "test" split, so `eval-en` never sees the benchmark's sentences.
"""

from __future__ import annotations

import ast
import functools
import re
import sysconfig
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from genloom.data.split import hash_bucket
from genloom.errors import UserError

MASK_CHAR = "\ue000"  # the masked LM's [MASK]: a private-use code point, never in real text
ZH_MODELS = ("mlm", "forward", "backward", "eval-zh")
ALL_MODELS = (*ZH_MODELS, "eval-en")
_HAN = re.compile(r"[\u4e00-\u9fff]")


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
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes stored in config.json


# ---- sentences ------------------------------------------------------------------------------


def chinese_sentences(split: str, *, min_chars: int = 4, max_chars: int = 48) -> list[str]:
    """Sentences of `chinese_lm_texts(split)` with min..max characters, mostly Han characters."""
    from genloom.data import chinese_lm_texts, split_sentences

    out = []
    for text in chinese_lm_texts(split):
        for s in split_sentences(text):
            s = s.replace(MASK_CHAR, "")
            if min_chars <= len(s) <= max_chars and len(_HAN.findall(s)) >= 0.6 * len(s):
                out.append(s)
    return out


_EN_SENTENCE = re.compile(r"^[A-Z][A-Za-z ,'\-]+\.$")


def _docstrings(path: Path) -> list[str]:
    """Module, class and function docstrings of one source file ([] if it does not parse)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
        return []
    nodes = [tree, *(n for n in ast.walk(tree)
                     if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))]
    return [d for d in (ast.get_docstring(n) for n in nodes) if d]


def docstring_sentences(path: Path) -> list[str]:
    """Plain English sentences of 6-16 words from one file's docstrings (no code, no e.g./i.e.)."""
    out = []
    for doc in _docstrings(path):
        for para in doc.split("\n\n"):
            for s in re.split(r"(?<=\.)\s+", " ".join(para.split())):
                if 6 <= len(s.split()) <= 16 and _EN_SENTENCE.match(s) and "e.g" not in s and "i.e" not in s:
                    out.append(s)
    return out


@functools.lru_cache(maxsize=1)
def _all_stdlib_sentences() -> tuple[str, ...]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = ("test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo", "ensurepip")
    seen: dict[str, None] = {}
    for path in sorted(root.rglob("*.py")):
        if not any(part in skip for part in path.relative_to(root).parts):
            for s in docstring_sentences(path):
                seen.setdefault(s)
    if not seen:
        raise UserError(f"found no docstring sentences under {root}")
    return tuple(seen)


def hash_split(sentences: Sequence[str], split: str) -> list[str]:
    """"test": the one in ten sentences whose BLAKE2b hash is 0 mod 10; "train": the others."""
    if split not in ("train", "test"):
        raise UserError(f"no split {split!r} of the docstring sentences (train, test)")

    return [s for s in sentences if (hash_bucket(s, 10, digest_size=4) == 0) == (split == "test")]


def stdlib_sentences(split: str) -> list[str]:
    """English sentences of the standard library's docstrings, split by `hash_split` (module
    docstring); the whole library is parsed once per process (tens of seconds on a busy machine)."""
    return hash_split(_all_stdlib_sentences(), split)


# ---- data and losses --------------------------------------------------------------------------


class Sentences(Dataset):
    """Encoded [BOS] sentence [EOS] rows (1-D long tensors), optionally reversed."""

    def __init__(self, texts: Sequence[str], tokenizer: Any, *, reverse: bool = False) -> None:
        self.items = [torch.tensor(tokenizer.encode(t[::-1] if reverse else t, add_bos=True, add_eos=True))
                      for t in texts]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Tensor:
        return self.items[i]


def pad_rows(items: Sequence[Tensor], pad_id: int) -> tuple[Tensor, Tensor]:
    """Right-pad 1-D rows: ids (B, T) and valid (B, T) bool."""
    width = max(len(x) for x in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    for row, x in enumerate(items):
        ids[row, : len(x)] = x
    valid = torch.arange(width)[None] < torch.tensor([len(x) for x in items])[:, None]
    return ids, valid


class CausalCollate:
    """Batch for a causal LM: inputs ids[:, :-1], targets ids[:, 1:] (-100 at padding)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: list[Tensor]) -> dict[str, Tensor]:
        ids, valid = pad_rows(items, self.pad_id)
        return {"inputs": ids[:, :-1], "targets": ids[:, 1:].masked_fill(~valid[:, 1:], -100)}


class MaskedCollate:
    """BERT masking of the characters between BOS and EOS: each is chosen with `rate` (at least
    one per row); a chosen one becomes the mask 80%, a random character 10%, itself 10%. Runs
    under the RNG the Loader seeds per batch, so the masks are reproducible."""

    def __init__(self, *, pad_id: int, mask_id: int, first_char: int, vocab_size: int, rate: float) -> None:
        self.pad_id, self.mask_id, self.first, self.vocab, self.rate = pad_id, mask_id, first_char, vocab_size, rate

    def __call__(self, items: list[Tensor]) -> dict[str, Tensor]:
        ids, valid = pad_rows(items, self.pad_id)  # (B, T)
        lengths = valid.sum(1)
        col = torch.arange(ids.shape[1])[None]
        inner = (col >= 1) & (col < lengths[:, None] - 1)  # (B, T) characters, not BOS/EOS/pad
        chosen = inner & (torch.rand(ids.shape) < self.rate)
        forced = torch.randint(0, 1 << 30, (ids.shape[0],)) % (lengths - 2).clamp(min=1) + 1  # (B,)
        chosen[torch.arange(ids.shape[0]), forced] |= inner[torch.arange(ids.shape[0]), forced]
        u = torch.rand(ids.shape)
        random_chars = torch.randint(self.first, self.vocab, ids.shape)
        inputs = torch.where(chosen & (u < 0.8), torch.full_like(ids, self.mask_id), ids)
        inputs = torch.where(chosen & (u >= 0.8) & (u < 0.9), random_chars, inputs)
        return {"inputs": inputs, "valid": valid, "targets": ids.masked_fill(~chosen, -100)}


def causal_loss(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Mean next-token cross-entropy over the real targets, and their number."""
    logits = model(batch["inputs"])  # (B, T, V)
    n = (batch["targets"] != -100).sum()
    return F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten(), ignore_index=-100), n


def masked_loss(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy over the chosen (masked) characters, and their number."""
    logits = model(batch["inputs"], attention_mask=batch["valid"])  # (B, T, V)
    n = (batch["targets"] != -100).sum()
    return F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten(), ignore_index=-100), n


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


def chinese_tokenizer(sentences: Sequence[str], vocab_size: int) -> Any:
    """Character tokenizer of the most frequent characters, plus MASK_CHAR as the last id."""
    from genloom.tokenizers import CharTokenizer

    base = CharTokenizer.train(sentences, max_size=vocab_size - 1)
    chars = [base.id_to_token(i) for i in range(4, base.vocab_size)]
    return CharTokenizer([*chars, MASK_CHAR])


def mask_id_of(tokenizer: Any) -> int:
    """The id of MASK_CHAR (a UserError if the tokenizer was not made by `chinese_tokenizer`)."""
    mid = tokenizer.token_to_id(MASK_CHAR)
    if mid is None:
        raise UserError("this tokenizer has no mask entry: the masked LM was not trained by "
                        "`genloom search train-models`")
    return mid


def train_one(name: str, config: SearchModelsConfig, texts: dict[str, list[str]], tokenizer: Any) -> Path:
    """Train model `name` on `texts` ({"train", "dev"}) and save it under config.out/name."""
    from genloom.models import Transformer, save
    from genloom.train import Loader, TrainConfig, fit

    spec = SPECS[name]
    train = Sentences(texts["train"], tokenizer, reverse=spec.reverse)
    dev = Sentences(texts["dev"][: config.eval_sentences], tokenizer, reverse=spec.reverse)
    max_len = max(len(x) for x in (*train.items, *dev.items))
    torch.manual_seed(config.seed + spec.seed_offset)
    model = Transformer(spec.shape(tokenizer.vocab_size, max_len))
    if spec.kind == "masked":
        collate: Callable = MaskedCollate(pad_id=tokenizer.pad_id, mask_id=mask_id_of(tokenizer), first_char=4,
                                          vocab_size=tokenizer.vocab_size - 1, rate=config.mask_rate)
        loss_fn = masked_loss
    else:
        collate, loss_fn = CausalCollate(tokenizer.pad_id), causal_loss
    loader = Loader(train, batch_size=config.batch_size, collate_fn=collate, lengths=[len(x) for x in train.items],
                    seed=config.seed + spec.seed_offset)
    dev_batches = [collate(dev.items[i: i + 128]) for i in range(0, len(dev.items), 128)]

    def evaluate(m: nn.Module) -> dict[str, float]:
        total = count = 0.0
        for b in dev_batches:
            loss, n = loss_fn(m, b)
            total += float(loss) * float(n)
            count += float(n)
        return {"loss": total / count}

    run_dir = Path(config.out) / "runs" / name
    steps = config.steps if name in ("mlm", "forward", "backward") else max(1, config.steps // 2)
    train_cfg = TrainConfig(lr=config.lr, warmup_steps=min(100, steps // 10), schedule="cosine", min_lr_ratio=0.1,
                            max_steps=steps, max_minutes=config.minutes, ema_decay=0.995, ema_warmup=True,
                            eval_every=max(1, steps // 4), seed=config.seed + spec.seed_offset, device="cpu",
                            progress=config.progress, log_every=20)
    result = fit(model, loss_fn, loader, config=train_cfg, run_dir=run_dir, eval_fn=evaluate,
                 task_config={"model": name, **asdict(config)}, resume=False)
    averaged = result.ema.averaged() if result.ema is not None else None
    return save(model, tokenizer, Path(config.out) / name, ema=averaged)


def train_search_models(config: SearchModelsConfig) -> dict[str, Path]:
    """Train the models named in `config.models` (module docstring); returns name -> directory.

    Raises:
        UserError: an unknown model name, a run directory that already holds checkpoints, or a
            missing corpus package.
    """
    unknown = [m for m in config.models if m not in SPECS]
    if unknown:
        raise UserError(f"unknown model(s) {', '.join(unknown)} (choose from {', '.join(SPECS)})")
    for name in config.models:
        if (Path(config.out) / "runs" / name / "checkpoints").is_dir():
            raise UserError(f"{Path(config.out) / 'runs' / name} holds an earlier run: pick another --out")
    out: dict[str, Path] = {}
    if any(SPECS[m].lang == "zh" for m in config.models):
        zh = {s: chinese_sentences(s, min_chars=config.min_chars, max_chars=config.max_chars) for s in ("train", "dev")}
        tokenizer = chinese_tokenizer(zh["train"], config.vocab_size)
        for name in (m for m in config.models if SPECS[m].lang == "zh"):
            out[name] = train_one(name, config, zh, tokenizer)
    if "eval-en" in config.models:
        from genloom.tokenizers import CharTokenizer

        sentences = stdlib_sentences("train")
        cut = len(sentences) // 20  # 5% of the train sentences for the evaluation loss
        en = {"train": sentences[cut:], "dev": sentences[:cut]}
        out["eval-en"] = train_one("eval-en", config, en, CharTokenizer.train(en["train"], min_count=2))
    return out


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
