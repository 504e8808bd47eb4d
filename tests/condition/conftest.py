"""Shared tiny fixtures of the condition tests: a synthetic corpus whose two labels use disjoint
alphabets (with a sentence vector per text), and the task's models trained on it briefly
through the CLI, once per session."""

from __future__ import annotations

import json
import random
from collections.abc import Callable

import pytest
import torch

from genloom.cli import main

ALPHABETS = {"neg": "差烂坏糟恨苦", "pos": "好棒赞美爱乐"}
SMALL = ["--layers", "2", "--width", "32", "--heads", "2", "--max-chars", "14", "--cond-dim", "8",
         "--steps", "100", "--batch-size", "16", "--lr", "3e-3", "--quiet"]


def write_corpus(path, n: int = 500, seed: int = 0) -> None:
    """Texts of 5-12 characters, each label drawing from its own alphabet, with a sentence vector
    per text: the bag of characters times a fixed random matrix (a stand-in sentence encoder)."""
    rng = random.Random(seed)
    alphabet = ALPHABETS["neg"] + ALPHABETS["pos"]
    proj = torch.randn(len(alphabet), 8, generator=torch.Generator().manual_seed(seed))
    seen: set[str] = set()
    with open(path, "w", encoding="utf-8") as f:
        while len(seen) < n:
            label = rng.choice(sorted(ALPHABETS))
            text = "".join(rng.choice(ALPHABETS[label]) for _ in range(rng.randint(5, 12)))
            if text in seen:
                continue
            seen.add(text)
            bag = torch.tensor([text.count(c) for c in alphabet], dtype=torch.float32)
            vec = (bag / bag.sum()) @ proj
            f.write(json.dumps({"text": text, "label": label, "vec": vec.tolist()}, ensure_ascii=False) + "\n")


@pytest.fixture(scope="session")
def alphabets() -> dict[str, str]:
    """Label -> the characters its texts are drawn from."""
    return dict(ALPHABETS)


@pytest.fixture(scope="session")
def in_alphabet() -> Callable[[list[str], str], float]:
    """in_alphabet(texts, label): the share of the texts' characters that belong to `label`'s alphabet."""

    def share(texts: list[str], label: str) -> float:
        chars = "".join(texts)
        return sum(c in ALPHABETS[label] for c in chars) / max(1, len(chars))

    return share


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """One synthetic corpus (root/syn.jsonl) and the task's models trained on it through the CLI:
    root/cln, root/prefix, root/vec (CLN on the vectors), root/plain and root/judge."""
    root = tmp_path_factory.mktemp("condition")
    data = root / "syn.jsonl"
    write_corpus(data)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    runs = {"cln": ["--arch", "cln"], "prefix": ["--arch", "prefix"],
            "vec": ["--arch", "cln", "--vector-field", "vec"], "plain": ["--arch", "plain"]}
    for name, extra in runs.items():
        assert main(["condition", "train", "--data", str(data), "--out", str(root / name), *extra, *SMALL]) == 0
    assert main(["condition", "train", "--arch", "judge", "--data", str(data), "--out", str(root / "judge"),
                 "--steps", "60", "--batch-size", "32", "--quiet"]) == 0
    torch.set_num_threads(threads)
    return root
