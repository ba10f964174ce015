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

from medpt.config import DataArguments
from medpt.data.pipeline import prepare_data
from medpt.model import TokenizerSource
from tests.conftest import conv, write_jsonl


def _corpus(path: Path, n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    records = [conv(f"问题{i}：头痛{int(rng.integers(9))}天", "回答" * int(rng.integers(1, 30))) for i in range(n)]
    records += records[: n // 20]  # exact duplicates, dropped wherever their first copy was
    return write_jsonl(path, records)


def _prepare(tokenizer_dir: Path, cache: Path, **kw) -> tuple:
    args = DataArguments(**{"validation_split_percentage": 5.0, "block_size": 64, "data_cache_dir": str(cache), **kw})
    return prepare_data(args, TokenizerSource(str(tokenizer_dir)), seed=0, log=lambda _: None)


def _same(a, b) -> None:
    for split in ("train", "validation"):
        x, y = getattr(a, split), getattr(b, split)
        for name in ("tokens", "block_offsets", "segment_offsets", "segment_doc"):
            assert np.array_equal(np.asarray(getattr(x, name)), np.asarray(getattr(y, name))), (split, name)
    for key in ("records", "train", "validation", "inputs"):
        assert a.report[key] == b.report[key], key


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
    assert "resuming: 5 of" in resumed.stdout
    entry = next(p for p in (tmp_path / "cache").iterdir() if not p.name.startswith("."))
    straight = _prepare(tokenizer_dir, tmp_path / "cache2", train_file_dir=[str(data)], shard_mb=8,
                        validation_split_percentage=1.0, preprocessing_num_workers=1)  # fmt: skip
    from medpt.data.cache import load_split

    resumed_train = load_split(entry / "train")
    assert np.array_equal(np.asarray(resumed_train.tokens), np.asarray(straight.train.tokens))
    report = json.loads((tmp_path / "out" / "data_report.json").read_text())
    assert report["records"] == straight.report["records"] and report["train"] == straight.report["train"]


_PEAK = """
import resource, sys
from medpt.cli import main
code = main({argv!r})
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux
sys.exit(code)
"""


@pytest.mark.slow
def test_memory_stays_flat_as_the_corpus_grows(tokenizer_dir, tmp_path):
    """Peak memory (one process: no workers) for a corpus and one 4× larger. Measured on these records: the in-memory
    pipeline this replaced went 428 → 543 MB from 32k to 96k records and 910 MB at 300k; sharded, 395 → 423 → 450."""
    peaks = []
    for n in (24_000, 96_000):
        data = _corpus(tmp_path / f"d{n}.jsonl", n, seed=n)
        argv = ["prepare", "--model_name_or_path", str(tokenizer_dir), "--train_file_dir", str(data),
                "--block_size", "64", "--shard_mb", "0.5", "--preprocessing_num_workers", "1",
                "--output_dir", str(tmp_path / f"out{n}")]  # fmt: skip
        env = {**os.environ, "MEDPT_CACHE": str(tmp_path / f"cache{n}")}
        run = subprocess.run([sys.executable, "-c", textwrap.dedent(_PEAK.format(argv=argv))], env=env,
                             capture_output=True, text=True)  # fmt: skip
        assert run.returncode == 0, run.stderr
        peaks.append(int(run.stdout.strip().splitlines()[-1]) / 1024)
    assert peaks[1] - peaks[0] < 60, f"peak RSS {peaks[0]:.0f} MB → {peaks[1]:.0f} MB for 4× the records"
