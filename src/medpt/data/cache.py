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
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from medpt.atomic import PathLock, check_free_space
from medpt.data.packing import Packed
from medpt.errors import MedptError
from medpt.strictjson import dumps

# Bump when the rendering, tokenization or layout changes, so old entries are not reused.
# 2: meta.json holds each array file's size and CRC-32. 3: named sources' splits hold segment_source.npy.
FORMAT_VERSION = 3
_ARRAYS = ("tokens", "block_offsets", "segment_offsets", "segment_doc")
_SOURCE_ARRAY = "segment_source"  # only in the splits of named sources, whose names meta.json lists
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


@contextlib.contextmanager
def lock(root: Path, key: str, log: Any = print) -> Any:
    """Hold the entry's lock file while preparing it: a second process preparing the same data (DDP ranks, parallel
    `medpt tune` workers) waits, then finds the finished entry instead of racing to write the same shards."""
    root.mkdir(parents=True, exist_ok=True)
    held = PathLock(root / f".{key}.lock", create=True)
    if not held.acquire(wait=False):
        log(f"waiting for another medpt process preparing the same data ({root / key})")
        held.acquire()
    try:
        yield
    finally:
        held.release()


def cache_key(parts: dict[str, Any]) -> str:
    blob = dumps({"version": FORMAT_VERSION, **parts}, sort_keys=True, ensure_ascii=False, default=str)
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
    """A split held in memory."""
    _check_space(directory, sum(getattr(packed, name).nbytes for name in _ARRAYS))
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for name in _ARRAYS:
        files.update(_save_array(directory / f"{name}.npy", getattr(packed, name)))
    if packed.segment_source is not None:
        files.update(_save_array(directory / f"{_SOURCE_ARRAY}.npy", packed.segment_source))
    _write_meta(directory, packed.block_size, packed.mode, files, packed.sources)


def _check_space(directory: Path, nbytes: int) -> None:
    check_free_space(
        directory, nbytes, f"caching the prepared {directory.name} data", elsewhere="--data_cache_dir (or MEDPT_CACHE)"
    )


def _save_array(path: Path, array: np.ndarray) -> dict[str, dict[str, int]]:
    np.save(path, array)
    # Read back rather than hashed while writing: np.save writes in its own chunks, and the file is still in the page
    # cache, so this costs little.
    return {path.name: {"bytes": path.stat().st_size, "crc32": file_crc32(path)}}


def _write_meta(directory: Path, block_size: int, mode: str, files: dict, sources: tuple[str, ...] = ()) -> None:
    meta = {"format_version": FORMAT_VERSION, "block_size": block_size, "mode": mode, "files": files}
    if sources:
        meta["sources"] = list(sources)
    (directory / "meta.json").write_text(dumps(meta), encoding="utf-8")


class StreamedSplit:
    """A split whose tokens are written piece by piece (a corpus larger than memory): `tokens.npy` gets its header for
    the final length first, then the pieces, its CRC computed on the way; `close` writes the layout arrays (and the
    source of each segment, for named sources)."""

    def __init__(self, directory: Path, n_tokens: int, layout: Any, segment_source: np.ndarray | None = None,
                 sources: tuple[str, ...] = ()):  # fmt: skip
        import io

        self.directory, self.n_tokens, self.layout, self.written = directory, n_tokens, layout, 0
        self.segment_source, self.sources = segment_source, sources
        small = sum(getattr(layout, name).nbytes for name in _ARRAYS[1:])
        _check_space(directory, n_tokens * 4 + small)
        directory.mkdir(parents=True, exist_ok=True)
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header,
            {
                "descr": np.lib.format.dtype_to_descr(np.dtype(np.int32)),
                "fortran_order": False,
                "shape": (n_tokens,),
            },  # fmt: skip
        )
        self.file = open(directory / "tokens.npy", "wb")
        self.crc = 0
        self._raw(header.getvalue())

    def _raw(self, data: bytes | memoryview) -> None:
        self.file.write(data)
        self.crc = zlib.crc32(data, self.crc)

    def write(self, tokens: np.ndarray) -> None:
        self._raw(memoryview(np.ascontiguousarray(tokens, dtype=np.int32)).cast("B"))
        self.written += len(tokens)

    def close(self) -> None:
        self.file.close()
        assert self.written == self.n_tokens, f"wrote {self.written:,} tokens, expected {self.n_tokens:,}"
        path = self.directory / "tokens.npy"
        files = {path.name: {"bytes": path.stat().st_size, "crc32": self.crc}}
        for name in _ARRAYS[1:]:
            files.update(_save_array(self.directory / f"{name}.npy", getattr(self.layout, name)))
        if self.segment_source is not None:
            files.update(_save_array(self.directory / f"{_SOURCE_ARRAY}.npy", self.segment_source))
        _write_meta(self.directory, self.layout.block_size, self.layout.mode, files, self.sources)


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
        sources = tuple(str(n) for n in meta.get("sources", ()))
        names = (*_ARRAYS, _SOURCE_ARRAY) if sources else _ARRAYS
        expected = {name: (int(files[f"{name}.npy"]["bytes"]), int(files[f"{name}.npy"]["crc32"])) for name in names}
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
    arrays = {name: np.load(directory / f"{name}.npy", mmap_mode="r") for name in expected}
    return Packed(**arrays, block_size=block_size, mode=mode, sources=sources)
