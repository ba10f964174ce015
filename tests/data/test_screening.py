"""Near-duplicate removal and the contamination check inside `prepare`: what is dropped is exactly what was planted,
counted in the report, listed beside it with file:line, and the same however the input is cut into shards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medpt.args.resolve import DataArguments
from medpt.data.pipeline import prepare_data
from medpt.errors import MedptError
from medpt.model.loading import TokenizerSource
from tests.conftest import conv, write_jsonl

BENCH_QUESTION = "患者男性四十五岁反复上腹部疼痛三年伴反酸嗳气最可能的诊断是什么"  # 31 CJK characters


def _distinct(i: int) -> str:
    rng = np.random.default_rng(i)
    return "".join(chr(0x4E00 + int(c)) for c in rng.integers(0, 3000, 40))


def _prepare(tokenizer_dir: Path, tmp_path: Path, cache: str = "c", **kw):
    args = DataArguments(
        **{"validation_split_percentage": 0.0, "block_size": 64, "data_cache_dir": str(tmp_path / cache), **kw}
    )
    out = tmp_path / f"out-{cache}"
    return prepare_data(args, TokenizerSource(str(tokenizer_dir)), seed=0, output_dir=out, log=lambda _: None), out


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def test_dedup_none_keeps_exact_duplicates(tokenizer_dir, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [conv("同一个问题", "同一个回答")] * 3 + [conv("另一个", "回答")])
    kept, _ = _prepare(tokenizer_dir, tmp_path, "none", train_file_dir=[str(data)], dedup="none")
    exact, _ = _prepare(tokenizer_dir, tmp_path, "exact", train_file_dir=[str(data)], dedup="exact")
    assert kept.report["records"]["documents"]["train"] == 4
    assert exact.report["records"]["documents"]["train"] == 2
    assert exact.report["records"]["skipped"]["duplicate"] == 2


def _near_corpus(path: Path) -> tuple[Path, list[int]]:
    """40 distinct documents; documents 10, 20 and 30 are copies of 0, 1 and 2 with two characters changed."""
    texts = [_distinct(i) for i in range(40)]
    answers = ["回答" + t[::-1] for t in texts]
    planted = [10, 20, 30]
    for k, i in enumerate(planted):
        texts[i], answers[i] = texts[k][:5] + "甲乙" + texts[k][7:], answers[k]
    write_jsonl(path, [conv(t, a) for t, a in zip(texts, answers)])
    return path, planted


@pytest.mark.parametrize("shard_mb", [1024, 0.001])
def test_near_dedup_drops_the_planted_edits_only(tokenizer_dir, tmp_path, shard_mb):
    data, planted = _near_corpus(tmp_path / "d.jsonl")
    prepared, out = _prepare(tokenizer_dir, tmp_path, train_file_dir=[str(data)], dedup="near", shard_mb=shard_mb)
    records = prepared.report["records"]
    assert records["skipped"]["near_duplicate"] == 3
    assert records["documents"]["train"] == 37
    listed = _lines(out / "near_duplicates.jsonl")
    assert [row["dropped"] for row in listed] == [f"{data}:{i + 1}" for i in planted]
    assert [row["kept"] for row in listed] == [f"{data}:{k + 1}" for k in range(3)]
    exact, _ = _prepare(tokenizer_dir, tmp_path, "exact", train_file_dir=[str(data)], dedup="exact")
    assert exact.report["records"]["documents"]["train"] == 40  # the edits are not exact duplicates


def test_near_dedup_results_do_not_depend_on_sharding(tokenizer_dir, tmp_path):
    data, _ = _near_corpus(tmp_path / "d.jsonl")
    a, _ = _prepare(tokenizer_dir, tmp_path, "one", train_file_dir=[str(data)], dedup="near", shard_mb=1024)
    b, _ = _prepare(tokenizer_dir, tmp_path, "many", train_file_dir=[str(data)], dedup="near", shard_mb=0.001)
    assert np.array_equal(np.asarray(a.train.tokens), np.asarray(b.train.tokens))
    assert a.report["records"] == b.report["records"]


def test_near_copy_of_a_validation_document_leaves_training(tokenizer_dir, tmp_path):
    held = _distinct(99)
    val = write_jsonl(tmp_path / "v.jsonl", [conv(held, "回答" + held[::-1])])
    copy = held[:5] + "甲乙" + held[7:]
    data = write_jsonl(tmp_path / "d.jsonl", [conv(copy, "回答" + held[::-1]), conv(_distinct(1), "回答")])
    prepared, out = _prepare(tokenizer_dir, tmp_path, train_file_dir=[str(data)], validation_file_dir=[str(val)],
                             dedup="near")  # fmt: skip
    assert prepared.report["records"]["documents"] == {"train": 1, "validation": 1}
    (row,) = _lines(out / "near_duplicates.jsonl")
    assert row["dropped"] == f"{data}:1" and row["kept"] == f"{val}:1" and row["kept_split"] == "validation"


def _benchmark(path: Path) -> Path:
    return write_jsonl(
        path,
        [
            {"question": BENCH_QUESTION, "choices": {"A": "胃溃疡", "B": "胆囊炎"}, "answer": "A", "subject": "内科"},
            {"question": "短问题", "choices": {"A": "是", "B": "否"}, "answer": "A", "subject": "内科"},
        ],
    )


def _contaminated_corpus(path: Path) -> Path:
    records = [conv(_distinct(i), "回答") for i in range(20)]
    records[4] = conv("请问：" + BENCH_QUESTION[3:16] + "，谢谢", "回答")  # 13 characters of the question: found
    records[9] = conv("某" + BENCH_QUESTION[3:15] + "某", "回答")  # only 12: not found
    records[14] = conv(BENCH_QUESTION, "回答：胃溃疡")  # the whole question: found
    return write_jsonl(path, records)


@pytest.mark.parametrize("shard_mb", [1024, 0.001])
def test_contamination_is_reported_and_decontaminate_drops_exactly_those(tokenizer_dir, tmp_path, shard_mb):
    bench = _benchmark(tmp_path / "bench" / "test.jsonl")
    data = _contaminated_corpus(tmp_path / "d.jsonl")
    common = {"train_file_dir": [str(data)], "check_contamination": [str(bench)], "shard_mb": shard_mb}
    checked, out = _prepare(tokenizer_dir, tmp_path, "check", **common)
    block = checked.report["contamination"]
    assert block["contaminated_items"] == 1 and block["contaminated_documents"] == 2
    assert block["benchmarks"]["bench"] == {"items": 2, "contaminated": 1, "too_short": 1}
    assert checked.report["records"]["documents"]["train"] == 20  # reported, kept
    (row,) = _lines(out / "contamination.jsonl")
    assert row["item"] == f"{bench}:1" and row["document"] == f"{data}:5" and row["documents"] == 2
    dump = tmp_path / "dump.jsonl"
    dropped, _ = _prepare(tokenizer_dir, tmp_path, "drop", decontaminate=True, dump_text=str(dump), **common)
    records = dropped.report["records"]
    assert records["skipped"]["contaminated"] == 2 and records["documents"]["train"] == 18
    texts = [row["text"] for row in _lines(dump)]
    assert len(texts) == 18 and not any(BENCH_QUESTION[3:16] in t for t in texts)
    assert any(BENCH_QUESTION[3:15] in t for t in texts)  # the 12-character overlap stays


def test_decontaminate_needs_benchmarks(tmp_path):
    with pytest.raises(MedptError, match="--decontaminate needs benchmarks"):
        DataArguments(train_file_dir=[str(tmp_path)], decontaminate=True)
