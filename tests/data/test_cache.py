"""The prepared-data cache: checksummed entries, leftovers of killed runs, and the free-space check."""

import collections
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from medpt import atomic
from medpt.atomic import atomic_dir, check_free_space
from medpt.data import cache
from medpt.data.packing import Packed
from medpt.errors import MedptError
from tests.conftest import conv, write_jsonl
from tests.data.test_pipeline import _prepare

Usage = collections.namedtuple("Usage", "total used free")


def _packed() -> Packed:
    return Packed(
        tokens=np.arange(1000, dtype=np.int32),
        block_offsets=np.array([0, 500, 1000], dtype=np.int64),
        segment_offsets=np.array([0, 600, 1000], dtype=np.int64),
        segment_doc=np.array([0, 1], dtype=np.int32),
        block_size=500,
        mode="concat",
        segment_source=np.array([1, 0], dtype=np.int16),
        sources=("medical", "general"),
    )


def test_saved_split_loads_memory_mapped_after_its_checksums_match(tmp_path: Path):
    split = tmp_path / "entry" / "train"
    cache.save_split(split, _packed())
    meta = json.loads((split / "meta.json").read_text())
    assert meta["format_version"] == cache.FORMAT_VERSION == 3 and meta["sources"] == ["medical", "general"]
    assert meta["files"]["tokens.npy"] == {
        "bytes": (split / "tokens.npy").stat().st_size,
        "crc32": cache.file_crc32(split / "tokens.npy"),
    }
    loaded = cache.load_split(split)
    for name in ("tokens", "block_offsets", "segment_offsets", "segment_doc", "segment_source"):
        assert isinstance(getattr(loaded, name), np.memmap)
        assert np.array_equal(getattr(loaded, name), getattr(_packed(), name))
    assert (loaded.block_size, loaded.mode, len(loaded), loaded.sources) == (500, "concat", 2, ("medical", "general"))
    assert loaded.source_ids(0).tolist() == [1] * 500 and loaded.source_ids(1).tolist() == [1] * 100 + [0] * 400


def _truncate(split: Path) -> None:
    with open(split / "tokens.npy", "r+b") as f:
        f.truncate((split / "tokens.npy").stat().st_size - 100)


def _flip_a_bit(split: Path) -> None:
    data = bytearray((split / "tokens.npy").read_bytes())
    data[-3] ^= 0x10  # inside the last token: numpy would read the file without complaint
    (split / "tokens.npy").write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage, file, problem",
    [
        (_truncate, "tokens.npy", "4,028 bytes, expected 4,128 (truncated or overwritten)"),
        (_flip_a_bit, "tokens.npy", "checksum mismatch (the file changed after it was written)"),
        (lambda s: (s / "segment_doc.npy").unlink(), "segment_doc.npy", "missing"),
        (lambda s: (s / "segment_source.npy").unlink(), "segment_source.npy", "missing"),
        (
            lambda s: np.save(s / "segment_source.npy", np.array([0, 1], np.int16)),
            "segment_source.npy",
            "checksum mismatch (the file changed after it was written)",
        ),  # fmt: skip
        (lambda s: (s / "meta.json").unlink(), "meta.json", "missing"),
        (lambda s: (s / "meta.json").write_text("{not json"), "meta.json", "unreadable (JSONDecodeError: "),
        (lambda s: (s / "meta.json").write_bytes(b"\xff\xfe"), "meta.json", "unreadable (UnicodeDecodeError: "),
        (lambda s: (s / "meta.json").write_text("[]"), "meta.json", "unreadable (TypeError: "),
        (
            lambda s: (s / "meta.json").write_text('{"block_size": 500, "mode": "concat"}'),
            "meta.json",
            "written by an older medpt (no checksums)",
        ),
    ],
    ids=[
        "truncated",
        "bit-flip",
        "array-missing",
        "sources-missing",
        "sources-changed",
        "meta-missing",
        "meta-bad-json",
        "meta-not-utf8",
        "meta-list",
        "format-1",
    ],  # fmt: skip
)
def test_damaged_entry_names_entry_and_file_and_says_overwrite_cache(tmp_path: Path, damage, file, problem):
    entry = tmp_path / "0123abcd"
    cache.save_split(entry / "train", _packed())
    damage(entry / "train")
    with pytest.raises(MedptError) as e:
        cache.load_split(entry / "train")
    message = str(e.value)
    assert message.startswith(f"prepared-data cache entry {entry} (train split): {entry / 'train' / file}: {problem}")
    assert message.endswith("the cache is damaged: rerun with --overwrite_cache to prepare the data again")
    assert "\n" not in message


def test_prepare_stops_on_a_damaged_entry_and_overwrite_cache_rebuilds_it(tokenizer_dir, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [conv(f"问题{i}", f"回答{i}" * 3) for i in range(40)])
    first, _ = _prepare(tokenizer_dir, train_file_dir=[str(data)])
    tokens = np.array(first.train.tokens)  # a copy: first.train maps the file damaged next
    _flip_a_bit(first.cache_dir / "train")
    with pytest.raises(MedptError, match=r"train/tokens\.npy: checksum mismatch .* rerun with --overwrite_cache"):
        _prepare(tokenizer_dir, train_file_dir=[str(data)])
    rebuilt, _ = _prepare(tokenizer_dir, train_file_dir=[str(data)], overwrite_cache=True)
    again, _ = _prepare(tokenizer_dir, train_file_dir=[str(data)])
    assert not rebuilt.reused and again.reused
    assert np.array_equal(np.asarray(again.train.tokens), tokens)


def _dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True).stdout)


_KILLED_BETWEEN_RENAMES = """
import os, sys
from pathlib import Path
from medpt import atomic
rename = os.replace
def rename_then_die(src, dst):
    rename(src, dst)
    os._exit(9)
os.replace = rename_then_die
with atomic.atomic_dir(Path(sys.argv[1])) as tmp:
    (tmp / "version").write_text("new")
"""


def test_leftovers_of_killed_runs_are_removed_and_live_ones_kept(tmp_path: Path):
    root = tmp_path / "cache"
    entry = root / "0123abcd"
    entry.mkdir(parents=True)
    (entry / "version").write_text("old")
    # 1. A run replacing `entry` is killed between its two renames: the old entry and the new one are both hidden.
    killed = subprocess.run([sys.executable, "-c", _KILLED_BETWEEN_RENAMES, str(entry)], capture_output=True)
    assert killed.returncode == 9, killed.stderr
    leftovers = sorted(p.name for p in root.iterdir())
    assert len(leftovers) == 2 and not entry.exists()
    assert leftovers[0].startswith(".0123abcd.old-") and leftovers[1].startswith(".0123abcd.pid")
    assert leftovers[1].endswith(".tmp")
    # 2. Older medpt names, another machine's, a live run's, and things that are not leftovers at all.
    an_hour_ago = time.time() - 3700
    dead = _dead_pid()
    for name in (f".legacy.old-{dead}", ".legacy.k2j3h4l5.tmp", ".stale.q9w8e7r6.tmp", f".far.pid{dead}@00000000.a.tmp",
                 ".keep", "4567cdef"):  # fmt: skip
        (root / name).mkdir()
    (root / ".file.x1y2z3w4.tmp").write_text("an atomic_writer leftover")
    for name in (".stale.q9w8e7r6.tmp", ".file.x1y2z3w4.tmp", ".keep", "4567cdef"):
        os.utime(root / name, (an_hour_ago, an_hour_ago))
    with atomic_dir(root / "busy") as busy:
        os.utime(busy, (an_hour_ago, an_hour_ago))  # a run tokenizing for over an hour keeps its work
        atomic.remove_stale_leftovers(root, untagged=True)
        assert busy.exists()
    assert sorted(p.name for p in root.iterdir()) == [
        f".far.pid{dead}@00000000.a.tmp",  # another machine's PID cannot be judged here, and it is young
        ".keep",
        ".legacy.k2j3h4l5.tmp",  # an older medpt's name: judged by age, and it is young
        "4567cdef",
        "busy",
    ]


def test_live_writers_tmp_name_carries_its_pid(tmp_path: Path):
    with atomic_dir(tmp_path / "out") as tmp:
        assert tmp.name.startswith(f".out.pid{os.getpid()}@") and tmp.name.endswith(".tmp")
        assert not atomic.stale_leftover(tmp, older_than_s=0)
    with atomic.atomic_writer(tmp_path / "f.txt"):
        assert [p.name for p in tmp_path.glob(f".f.txt.pid{os.getpid()}@*.tmp")] != []


def test_check_free_space_asks_the_nearest_existing_folder(tmp_path: Path, monkeypatch):
    asked = []

    def disk_usage(path):
        asked.append(Path(path))
        return Usage(total=10**9, used=10**9 - 5_000_000, free=5_000_000)

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    target = tmp_path / "not" / "yet"
    check_free_space(target, 4_000_000, "writing x")
    assert asked == [tmp_path]
    with pytest.raises(MedptError) as e:
        check_free_space(target, 123_400_000, "caching the prepared train data", elsewhere="--data_cache_dir")
    assert str(e.value) == (
        f"caching the prepared train data needs about 123 MB in {target}, but only 5.0 MB are free; free some space "
        "or point --data_cache_dir elsewhere"
    )


def test_save_split_checks_free_space_before_writing(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(total=10**9, used=10**9 - 1000, free=1000))
    split = tmp_path / "entry" / "train"
    with pytest.raises(MedptError) as e:
        cache.save_split(split, _packed())
    assert str(e.value) == (
        f"caching the prepared train data needs about 0.004 MB in {split}, but only 0.001 MB are free; free some "
        "space or point --data_cache_dir (or MEDPT_CACHE) elsewhere"
    )
    assert not (tmp_path / "entry").exists()
