"""Sharded preparation: the same blocks however the input is cut, a killed run resumes to the identical result, and
memory does not grow with the corpus."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from medpt.args.resolve import DataArguments
from medpt.data.pipeline import prepare_data
from medpt.model.loading import TokenizerSource
from tests.conftest import conv, write_jsonl


def _corpus(path: Path, n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    records = [conv(f"问题{i}：头痛{int(rng.integers(9))}天", "回答" * int(rng.integers(1, 30))) for i in range(n)]
    records += records[: n // 20]  # exact duplicates, dropped wherever their first copy was
    return write_jsonl(path, records)


def _prepare(tokenizer_dir: Path, cache: Path, **kw) -> tuple:
    args = DataArguments(**{"validation_split_percentage": 5.0, "block_size": 64, "data_cache_dir": str(cache), **kw})
    return prepare_data(args, TokenizerSource(str(tokenizer_dir)), seed=0, log=lambda _: None)


def _same(a, b, roles: bool = True) -> None:
    for split in ("train", "validation"):
        x, y = getattr(a, split), getattr(b, split)
        for name in ("tokens", "block_offsets", "segment_offsets", "segment_doc"):
            assert np.array_equal(np.asarray(getattr(x, name)), np.asarray(getattr(y, name))), (split, name)
    for key in ("records", "train", "validation", "inputs"):
        if roles or key not in ("train", "validation"):
            assert a.report[key] == b.report[key], key
        else:  # a stream's size is unknown, so its per-role split is measured on every 8th document
            strip = lambda r: {k: v for k, v in r.items() if not k.startswith("tokens_by_role")}  # noqa: E731
            assert strip(a.report[key]) == strip(b.report[key]), key


@pytest.mark.parametrize("packing", ["concat", "isolated"])
@pytest.mark.parametrize("workers", [1, 2])
def test_many_small_shards_give_the_result_of_one_shard(tokenizer_dir, tmp_path, packing, workers, monkeypatch):
    from medpt.data import pipeline

    monkeypatch.setattr(pipeline, "_PARALLEL_MIN_BYTES", 0)
    data = _corpus(tmp_path / "d.jsonl", 3000)
    first = json.loads(data.read_text(encoding="utf-8").splitlines()[7])  # a training record, exactly
    val = write_jsonl(tmp_path / "v.jsonl", [first, conv("新的问题", "回答")])
    common = {"train_file_dir": [str(data)], "packing": packing, "preprocessing_num_workers": workers,
              "max_train_samples": 2500}  # fmt: skip
    whole = _prepare(tokenizer_dir, tmp_path / "c1", shard_mb=1024, **common)  # everything in one shard
    sliced = _prepare(tokenizer_dir, tmp_path / "c2", shard_mb=0.01, **common)  # ~10 KB of input per shard
    assert len(list((tmp_path / "c2").glob(".*.partial"))) == 0  # the shards are removed once assembled
    _same(whole, sliced)
    with_val = [_prepare(tokenizer_dir, tmp_path / f"v{mb}", shard_mb=mb, validation_file_dir=[str(val)], **common)
                for mb in (1024, 0.01)]  # fmt: skip
    _same(*with_val)
    assert with_val[0].report["records"]["skipped"]["in_validation_set"] >= 1


_KILL_AFTER = """
import os, signal, sys
from medpt.data import shards
real = shards.ShardStore.write
written = []
def write(self, *a, **k):
    real(self, *a, **k)
    written.append(1)
    if len(written) == {after}:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no atexit: a power cut
shards.ShardStore.write = write
from medpt.cli import main
sys.exit(main({argv!r}))
"""


def test_a_prepare_killed_midway_resumes_to_the_identical_result(tokenizer_dir, tmp_path):
    data = _corpus(tmp_path / "d.jsonl", 3000)
    argv = ["prepare", "--model_name_or_path", str(tokenizer_dir), "--train_file_dir", str(data), "--block_size",
            "64", "--shard_mb", "0.02", "--output_dir", str(tmp_path / "out"),
            "--preprocessing_num_workers", "1"]  # fmt: skip
    env = {**os.environ, "MEDPT_CACHE": str(tmp_path / "cache")}
    killed = subprocess.run([sys.executable, "-c", _KILL_AFTER.format(after=5, argv=argv)], env=env,
                            capture_output=True, text=True)  # fmt: skip
    assert killed.returncode == -9
    partial = next((tmp_path / "cache").glob(".*.partial"))
    assert len(list(partial.glob("shard-*[0-9]"))) == 5 and not any((tmp_path / "cache").glob("[0-9a-f]*"))
    resumed = subprocess.run([sys.executable, "-m", "medpt", *argv], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming: 5 shard(s)" in resumed.stdout
    entry = next(p for p in (tmp_path / "cache").iterdir() if not p.name.startswith("."))
    straight = _prepare(tokenizer_dir, tmp_path / "cache2", train_file_dir=[str(data)], shard_mb=8,
                        validation_split_percentage=1.0, preprocessing_num_workers=1)  # fmt: skip
    from medpt.data.cache import load_split

    resumed_train = load_split(entry / "train")
    assert np.array_equal(np.asarray(resumed_train.tokens), np.asarray(straight.train.tokens))
    report = json.loads((tmp_path / "out" / "data_report.json").read_text())
    assert report["records"] == straight.report["records"]
    assert report["train"] == straight.report["train"]  # blocks, per-role counts and all


# VmHWM, the peak of this process's own memory: getrusage's ru_maxrss would also count the memory of the pytest
# process it was forked from (Linux keeps the larger of the two across exec).
_PEAK = """
import sys
from medpt.cli import main
code = main({argv!r})
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM")))  # KiB
sys.exit(code)
"""


def _peak_mb(tokenizer_dir: Path, tmp_path: Path, n: int, shard_mb: str) -> float:
    data = tmp_path / f"d{n}.jsonl"
    if not data.exists():
        _corpus(data, n, seed=n)
    argv = ["prepare", "--model_name_or_path", str(tokenizer_dir), "--train_file_dir", str(data), "--block_size",
            "64", "--shard_mb", shard_mb, "--preprocessing_num_workers", "1",
            "--output_dir", str(tmp_path / f"o{n}{shard_mb}")]  # fmt: skip
    env = {**os.environ, "MEDPT_CACHE": str(tmp_path / f"cache{n}-{shard_mb}")}
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(_PEAK.format(argv=argv))], env=env,
                         capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0, run.stderr
    return int(run.stdout.strip().splitlines()[-1]) / 1024


@pytest.mark.slow
def test_memory_stays_flat_as_the_corpus_grows(tokenizer_dir, tmp_path):
    """Peak memory of one process (no workers) for a corpus and one 4× larger, in shards of 0.5 MB of input, against
    the larger one prepared as a single shard (everything in memory at once, as before sharding). Measured here:
    338 → 347 MB in shards from 24k to 96k records, 415 MB in one shard."""
    small = _peak_mb(tokenizer_dir, tmp_path, 24_000, "0.5")
    large = _peak_mb(tokenizer_dir, tmp_path, 96_000, "0.5")
    whole = _peak_mb(tokenizer_dir, tmp_path, 96_000, "1024")
    message = f"peak RSS {small:.0f} → {large:.0f} MB in shards, {whole:.0f} MB in one shard"
    assert large - small < (whole - small) / 2, message  # growth with the corpus: less than half of in-memory's
    assert whole - large > 40, message  # (and the single shard really holds the corpus: the test can fail)


def _hub_folder(tmp_path: Path, n: int) -> Path:
    folder = tmp_path / "hub-like"
    write_jsonl(folder / "train.jsonl", [conv(f"问题{i}", "回答" * (i % 7 + 1)) for i in range(n)])
    write_jsonl(folder / "validation.jsonl", [conv(f"验证{i}", "答") for i in range(5)])
    return folder


def test_a_streamed_dataset_gives_the_blocks_of_the_loaded_one(tokenizer_dir, tmp_path):
    folder = _hub_folder(tmp_path, 300)
    loaded = _prepare(tokenizer_dir, tmp_path / "c1", dataset_name=[str(folder)])
    streamed = _prepare(tokenizer_dir, tmp_path / "c2", dataset_name=[str(folder)], streaming=True, shard_mb=0.02)
    _same(loaded, streamed, roles=False)  # 20-row batches, read as they arrive


def test_a_killed_streaming_prepare_resumes_where_it_stopped(tokenizer_dir, tmp_path):
    folder = _hub_folder(tmp_path, 300)
    argv = ["prepare", "--model_name_or_path", str(tokenizer_dir), "--dataset_name", str(folder), "--streaming",
            "--shard_mb", "0.02", "--block_size", "64", "--output_dir", str(tmp_path / "out")]  # fmt: skip
    env = {**os.environ, "MEDPT_CACHE": str(tmp_path / "cache")}
    killed = subprocess.run([sys.executable, "-c", _KILL_AFTER.format(after=4, argv=argv)], env=env,
                            capture_output=True, text=True)  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    resumed = subprocess.run([sys.executable, "-m", "medpt", *argv], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming: 4 shard(s)" in resumed.stdout
    straight = _prepare(tokenizer_dir, tmp_path / "c3", dataset_name=[str(folder)], validation_split_percentage=1.0)
    report = json.loads((tmp_path / "out" / "data_report.json").read_text())
    assert report["records"] == straight.report["records"]
    assert report["train"]["tokens"] == straight.report["train"]["tokens"]
