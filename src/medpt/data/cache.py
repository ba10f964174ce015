"""The on-disk cache of prepared data, keyed by everything that can change the result.

Key = input bytes + tokenizer files + every data flag that affects the output + seed + format version. A result
becomes visible under its key only by an atomic rename of a complete directory, so a run killed half-way leaves
at most a temporary directory that no later run reads (it is cleaned up on the next run).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from medpt.data.packing import Packed

FORMAT_VERSION = 1  # bump when the rendering, tokenization or layout changes, so old entries are not reused
_ARRAYS = ("tokens", "block_offsets", "segment_offsets", "segment_doc")


def cache_root(data_cache_dir: str | None) -> Path:
    if data_cache_dir:
        return Path(data_cache_dir)
    if os.environ.get("MEDPT_CACHE"):
        return Path(os.environ["MEDPT_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "medpt"


def cache_key(parts: dict[str, Any]) -> str:
    blob = json.dumps({"version": FORMAT_VERSION, **parts}, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:24]


def save_split(directory: Path, packed: Packed) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in _ARRAYS:
        np.save(directory / f"{name}.npy", getattr(packed, name))
    meta = {"block_size": packed.block_size, "mode": packed.mode}
    (directory / "meta.json").write_text(json.dumps(meta), encoding="utf-8")


def load_split(directory: Path) -> Packed:
    """Memory-mapped: opening a large prepared corpus costs no RAM until blocks are read."""
    meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
    arrays = {name: np.load(directory / f"{name}.npy", mmap_mode="r") for name in _ARRAYS}
    return Packed(**arrays, block_size=meta["block_size"], mode=meta["mode"])


def remove_stale_temporaries(root: Path, older_than_s: float = 3600) -> None:
    """Temporary directories of interrupted runs (never trusted) are removed once they are an hour old."""
    if not root.is_dir():
        return
    now = time.time()
    for entry in root.iterdir():
        if entry.name.startswith(".") and entry.name.endswith(".tmp") and now - entry.stat().st_mtime > older_than_s:
            shutil.rmtree(entry, ignore_errors=True)
