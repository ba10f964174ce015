"""The on-disk cache of prepared data, keyed by everything that can change the result.

Key = input bytes + tokenizer files + every data flag that affects the output + seed + format version. A result
becomes visible under its key only by an atomic rename of a complete directory, so a run killed half-way leaves
at most a temporary directory that no later run reads (it is cleaned up on the next run).

Each split's meta.json records the size and CRC-32 of every array file, checked before the arrays are mapped: a
cache entry damaged later (a truncated copy, a full disk during a sync, a flipped bit) stops the run with the file
named instead of training on garbage or failing with a numpy traceback.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from medpt.atomic import check_free_space, stale_leftover
from medpt.data.packing import Packed
from medpt.errors import MedptError

# Bump when the rendering, tokenization or layout changes, so old entries are not reused.
# 2: meta.json holds each array file's size and CRC-32.
FORMAT_VERSION = 2
_ARRAYS = ("tokens", "block_offsets", "segment_offsets", "segment_doc")
# CRC-32 streamed in 1 MiB chunks ran at about 2,700 MB/s (zlib 1.2.13, files in the page cache, AMD EPYC; a
# 120 MB int32 array in 0.045 s), so checking costs well under a second per GB read; blake2b ran at 700 MB/s. A
# CRC catches truncation and accidental bit flips, which is all this is for (the cache is not a security boundary).
_CHUNK = 1 << 20


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


def file_crc32(path: Path) -> int:
    """CRC-32 of a file, streamed through one reused buffer (no copy of the file in memory)."""
    crc = 0
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            crc = zlib.crc32(view[:n], crc)
    return crc


def save_split(directory: Path, packed: Packed) -> None:
    arrays = {name: getattr(packed, name) for name in _ARRAYS}
    check_free_space(
        directory,
        sum(a.nbytes for a in arrays.values()),
        f"caching the prepared {directory.name} data",
        elsewhere="--data_cache_dir (or MEDPT_CACHE)",
    )
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, array in arrays.items():
        path = directory / f"{name}.npy"
        np.save(path, array)
        # Read back rather than hashed while writing: np.save writes in its own chunks, and the file is still in
        # the page cache, so this costs little.
        files[path.name] = {"bytes": path.stat().st_size, "crc32": file_crc32(path)}
    meta = {"format_version": FORMAT_VERSION, "block_size": packed.block_size, "mode": packed.mode, "files": files}
    (directory / "meta.json").write_text(json.dumps(meta), encoding="utf-8")


def _damaged(directory: Path, file: str, problem: str) -> MedptError:
    return MedptError(
        f"prepared-data cache entry {directory.parent} ({directory.name} split): {directory / file}: {problem}; the "
        "cache is damaged: rerun with --overwrite_cache to prepare the data again"
    )


def load_split(directory: Path) -> Packed:
    """Verified, then memory-mapped: opening a large prepared corpus costs one read of it and no RAM until blocks
    are used."""
    try:
        meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
        if isinstance(meta, dict) and "files" not in meta:
            raise _damaged(directory, "meta.json", "written by an older medpt (no checksums)")
        files = meta["files"]
        block_size, mode = int(meta["block_size"]), str(meta["mode"])
        expected = {name: (int(files[f"{name}.npy"]["bytes"]), int(files[f"{name}.npy"]["crc32"])) for name in _ARRAYS}
    except FileNotFoundError:
        raise _damaged(directory, "meta.json", "missing") from None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        # ValueError covers bad JSON; KeyError and TypeError an entry from another format version or edited by hand.
        raise _damaged(directory, "meta.json", f"unreadable ({type(e).__name__}: {e})") from None
    for name, (size, crc) in expected.items():
        path = directory / f"{name}.npy"
        try:
            actual = path.stat().st_size
            if actual != size:
                raise _damaged(directory, path.name, f"{actual:,} bytes, expected {size:,} (truncated or overwritten)")
            if file_crc32(path) != crc:
                raise _damaged(directory, path.name, "checksum mismatch (the file changed after it was written)")
        except FileNotFoundError:
            raise _damaged(directory, path.name, "missing") from None
        except OSError as e:
            raise _damaged(directory, path.name, f"cannot be read ({e.strerror or e})") from None
    arrays = {name: np.load(directory / f"{name}.npy", mmap_mode="r") for name in _ARRAYS}
    return Packed(**arrays, block_size=block_size, mode=mode)


def remove_stale_temporaries(root: Path, older_than_s: float = 3600) -> None:
    """Remove what interrupted runs left in the cache (never trusted): temporary entries, and old entries a kill
    caught between the two renames that replace one. `stale_leftover` says which may go, by owner PID and age."""
    if not root.is_dir():
        return
    for entry in root.iterdir():
        with contextlib.suppress(OSError):  # another run may be removing the same leftover at this moment
            if not stale_leftover(entry, older_than_s):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink()
