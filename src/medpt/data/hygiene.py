"""Pure text hygiene: optional normalisation, content hashes for dedup and the stable split, seeded sampling."""

from __future__ import annotations

import hashlib
import re
import unicodedata

import numpy as np

_TRAILING_SPACE = re.compile(r"[ \t\u3000]+\n")
_MANY_NEWLINES = re.compile(r"\n{3,}")


def normalize_text(text: str, mode: str) -> str:
    """`none` returns the text untouched (the reference rendering stays byte-exact). `nfc`/`nfkc` apply that
    Unicode normal form, turn CRLF into LF, drop trailing spaces on each line, collapse 3+ newlines into one
    blank line and strip the ends. NFKC also folds full-width punctuation (，→,), which changes Chinese text:
    prefer nfc unless that folding is wanted."""
    if mode == "none":
        return text
    text = unicodedata.normalize(mode.upper(), text).replace("\r\n", "\n").replace("\r", "\n")
    text = _TRAILING_SPACE.sub("\n", text + "\n")
    return _MANY_NEWLINES.sub("\n\n", text).strip()


def content_hash(text: str) -> bytes:
    """16-byte digest used for exact dedup; blake2b is fast and collisions at this size are not a concern."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def in_validation(split_key: str, percentage: float) -> bool:
    """Stable split: a document's side depends only on its content, never on file order or the seed.

    The first 8 bytes of SHA-1 give a uniform number in [0, 1); the document is held out when it falls below the
    percentage. Adding data later never moves an existing document across the split.
    """
    if percentage <= 0:
        return False
    digest = hashlib.sha1(split_key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < percentage / 100


def sample_indices(n: int, k: int | None, seed: int) -> np.ndarray:
    """A seeded random sample of k of n indices (all of them when k is None or >= n), in their original order."""
    if k is None or k >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=k, replace=False))
