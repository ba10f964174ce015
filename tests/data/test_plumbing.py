"""The typed plumbing of `prepare`: every skip reason is one name counted under it, a shard's meta.json round-trips
through ShardMeta unchanged, each input is hashed once, and the report a fresh preparation returns is the one a reuse
reads back."""

from __future__ import annotations

import ast
import json
import shutil
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from medpt.args.resolve import DataArguments
from medpt.data import pipeline
from medpt.data.pipeline import prepare_data
from medpt.data.records import FileSource
from medpt.model.loading import TokenizerSource
from medpt.rundir import DATA_REPORT
from medpt.strictjson import dumps
from tests.conftest import conv, write_jsonl
from tests.data.test_screening import BENCH_QUESTION, _benchmark, _distinct

SRC = Path(pipeline.__file__).parents[1]


def _every_skip(tmp_path: Path) -> dict:
    """Inputs that give each skip reason at least one record, and the flags that make them skip."""
    held = _distinct(100)
    records = [conv(_distinct(i), "回答" + _distinct(50 + i)) for i in range(12)]
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    lines += [
        "{not json",  # bad_record
        json.dumps(conv("长" * 15_000, "答"), ensure_ascii=False),  # too_large: 45,000 bytes over 0.03 MiB
        json.dumps(conv("  ", ""), ensure_ascii=False),  # empty
        lines[0],  # duplicate
        json.dumps(conv(held, "回答"), ensure_ascii=False),  # in_validation_set
        json.dumps(conv(_distinct(3)[:-1] + "某", "回答" + _distinct(53)), ensure_ascii=False),  # near_duplicate
        json.dumps(conv(BENCH_QUESTION, "胃溃疡"), ensure_ascii=False),  # contaminated
    ]
    train = write_jsonl(tmp_path / "train.jsonl", lines)
    validation = write_jsonl(tmp_path / "valid.jsonl", [conv(held, "回答")])
    return {"train_file_dir": [f"medical={train}"], "validation_file_dir": [f"medical={validation}"],
            "on_bad_record": "skip", "max_record_mb": 0.03, "dedup": "near", "decontaminate": True,
            "check_contamination": [str(_benchmark(tmp_path / "bench" / "test.jsonl"))]}  # fmt: skip


def _prepare(tokenizer_dir: Path, tmp_path: Path, out: str = "out", **kw):
    args = DataArguments(**{"block_size": 64, "data_cache_dir": str(tmp_path / "cache"), **kw})
    return prepare_data(args, TokenizerSource(str(tokenizer_dir)), seed=0, output_dir=tmp_path / out, log=print)


def test_each_skip_reason_is_counted_under_its_one_name(tokenizer_dir, tmp_path):
    from medpt.data.skips import SKIP_REASONS

    prepared = _prepare(tokenizer_dir, tmp_path, **_every_skip(tmp_path))
    for block in (prepared.report["records"], prepared.report["sources"]["medical"]["records"]):
        assert list(block["skipped"]) == list(SKIP_REASONS)  # the report lists every reason, in this order
        assert block["skipped"] == dict.fromkeys(SKIP_REASONS, 1), block["skipped"]
        assert block["read"] == 12 + 7 + 1 and block["documents"] == {"train": 12, "validation": 1}


# Reasons that are only ever a skip reason; "empty" and "contaminated" are also ordinary words of other reports (an
# empty answer, a benchmark's contaminated items), so the test above is what holds them to their name.
_ONLY_REASONS = {"bad_record", "too_large", "duplicate", "in_validation_set", "near_duplicate", "empty_file"}


def test_no_module_spells_a_skip_reason_itself():
    from medpt.data import skips

    assert _ONLY_REASONS <= {*skips.SKIP_REASONS, skips.EMPTY_FILE}
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "skips.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in _ONLY_REASONS:
                found.append(f"{path.relative_to(SRC)}:{node.lineno}: {node.value!r}")
    assert found == [], "skip reasons are medpt.data.skips constants:\n" + "\n".join(found)


def test_a_shard_meta_round_trips_through_its_type_unchanged(tokenizer_dir, tmp_path, monkeypatch):
    """Every field a shard can carry (named source, rejects, contamination hits, texts for --dedup near): the file a
    ShardMeta writes is the file it was read from, so a run killed by another medpt version resumes from it."""
    from medpt.data.shard_meta import ShardMeta

    kept = SimpleNamespace(rmtree=lambda *a, **k: None, copyfileobj=shutil.copyfileobj)
    monkeypatch.setattr(pipeline, "shutil", kept)  # keep the shards the preparation removes once assembled
    _prepare(tokenizer_dir, tmp_path, shard_mb=0.001, **_every_skip(tmp_path))
    metas = sorted((tmp_path / "cache").glob(".*.partial/shard-*/meta.json"))
    assert len(metas) > 3
    fields = Counter()
    for path in metas:
        text = path.read_text(encoding="utf-8")
        meta = ShardMeta.from_json(json.loads(text))
        assert dumps(meta.to_json(), ensure_ascii=False) == text, path
        fields.update(k for k, v in json.loads(text).items() if v)
    assert {"rejected", "contamination", "contaminated", "texts", "lines"} <= set(fields), fields


def test_each_input_is_hashed_once(tokenizer_dir, tmp_path, monkeypatch):
    """The cache key and the shard plan both need each file's content hash: a cache miss reads the corpus once for
    it, not twice (a 2 GB corpus takes seconds per pass)."""
    hashed: Counter = Counter()
    original = FileSource.fingerprint

    def counted(self):
        hashed[self.path.name] += 1
        return original(self)

    monkeypatch.setattr(FileSource, "fingerprint", counted)
    a = write_jsonl(tmp_path / "a.jsonl", [conv(_distinct(i), "回答") for i in range(40)])
    b = write_jsonl(tmp_path / "b.jsonl", [conv(_distinct(100 + i), "回答") for i in range(40)])
    flags = {"train_file_dir": [f"one={a}", f"two={b}"], "shard_mb": 0.001}
    _prepare(tokenizer_dir, tmp_path, **flags)
    assert hashed == {"a.jsonl": 1, "b.jsonl": 1}
    hashed.clear()
    _prepare(tokenizer_dir, tmp_path, "again", **flags)  # a cache hit hashes for the key only
    assert hashed == {"a.jsonl": 1, "b.jsonl": 1}


@pytest.mark.parametrize("named", [False, True])
def test_the_report_a_fresh_run_returns_is_the_one_a_reuse_reads(tokenizer_dir, tmp_path, named):
    flags = _every_skip(tmp_path)
    if not named:
        flags = {**flags, "train_file_dir": [flags["train_file_dir"][0].split("=", 1)[1]], "validation_file_dir": None}
    fresh = _prepare(tokenizer_dir, tmp_path, **flags)
    reused = _prepare(tokenizer_dir, tmp_path, "again", **flags)
    assert (fresh.reused, reused.reused) == (False, True)
    assert fresh.report == {**reused.report, "cache": {**reused.report["cache"], "reused": False}}
    on_disk = json.loads((fresh.cache_dir / DATA_REPORT).read_text(encoding="utf-8"))
    assert fresh.report == on_disk
