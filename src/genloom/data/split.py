"""Deterministic splits by a hash of the text: the same text lands in the same split on every
machine and run, and adding texts never moves the old ones (no seed, no shuffling)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from genloom.errors import UserError


def hash_bucket(text: str, buckets: int, *, digest_size: int = 8) -> int:
    """The BLAKE2b hash of the UTF-8 text (big-endian, `digest_size` bytes) modulo `buckets`."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=digest_size).digest()
    return int.from_bytes(digest, "big") % buckets


def hash_split(text: str, percent: Sequence[tuple[str, int]] = (("train", 90), ("dev", 5), ("test", 5)),
               *, digest_size: int = 8) -> str:
    """The split of one text: bucket 0-99 of its hash, the splits taking `percent` of them in order."""
    bucket, edge = hash_bucket(text, 100, digest_size=digest_size), 0
    for name, share in percent:
        edge += share
        if bucket < edge:
            return name
    raise UserError(f"split shares {list(percent)} do not add up to 100")
