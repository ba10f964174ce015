"""Contamination: planted n-gram overlaps are found (exactly those), shorter ones are not."""

import json

import numpy as np
import pytest

from medpt.data import contamination
from medpt.data.contamination import ContaminationIndex, Item, normalize, read_benchmark_items
from medpt.errors import MedptError
from tests.conftest import write_jsonl

Q1 = "患者男性五十岁反复上腹部疼痛三年伴反酸嗳气最可能的诊断是"  # 29 CJK characters
Q2 = "下列哪一种药物属于血管紧张素转换酶抑制剂类降压药"  # 24
Q3 = "A 45-year-old woman presents with fatigue, weight gain and cold intolerance for six months; what is next"
FILLER = "今天天气很好我们去公园散步然后回家吃饭" * 3


def _items() -> list[Item]:
    return [
        Item("cmexam", "test.jsonl:1", (Q1, "胃溃疡", "十二指肠溃疡")),
        Item("cmexam", "test.jsonl:2", (Q2, "卡托普利", "硝苯地平")),
        Item("usmle", "test.jsonl:1", (Q3, "TSH")),
        Item("cmexam", "test.jsonl:3", ("短题", "甲", "乙")),  # no part of 13 units: cannot be checked
    ]


def _docs() -> list[str]:
    return [
        FILLER,
        FILLER + Q1[3:16] + FILLER,  # 0: exactly 13 characters of Q1 → contaminated
        FILLER + Q2[:12] + FILLER,  # 12 characters of Q2: shorter than n → not
        "问：" + Q2[2:20].replace("血管", "血 管，") + "\n答：",  # 18 characters of Q2, re-punctuated → contaminated
        FILLER + " ".join(Q3.split()[2:15]) + " ok",  # 13 English words → contaminated
        FILLER + " ".join(Q3.split()[2:14]),  # 12 words, though ≫ 13 characters → not
        Q1[:8] + "。" + Q1[8:20],  # 20 characters of Q1, split by a document-internal full stop: still a match
    ]


def test_planted_overlaps_are_found_and_shorter_ones_ignored():
    result = ContaminationIndex(_items(), n=13).scan(_docs())
    assert [(h.item.where, h.item.benchmark, h.document) for h in result.hits] == [
        ("test.jsonl:1", "cmexam", 1),
        ("test.jsonl:2", "cmexam", 3),
        ("test.jsonl:1", "usmle", 4),
    ]
    assert result.documents.tolist() == [1, 3, 4, 6]  # what --decontaminate drops: exactly these
    assert [h.documents for h in result.hits] == [2, 1, 1]
    assert result.hits[0].ngram == Q1[3:16]
    assert result.hits[2].ngram == " ".join(Q3.lower().split()[2:15]).replace(",", "").replace(";", "")
    assert result.summary() == {
        "cmexam": {"items": 3, "contaminated": 2, "too_short": 1},
        "usmle": {"items": 1, "contaminated": 1, "too_short": 0},
    }


def test_n_is_configurable():
    result = ContaminationIndex(_items(), n=12).scan(_docs())
    assert result.documents.tolist() == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize(
    "doc, found",
    [
        (Q1[:13], True),
        ("Ｘ" + Q1[:13], True),  # full-width letters fold (NFKC)
        (Q1[:7] + "，\n  " + Q1[7:13], True),  # punctuation and whitespace do not count
        (Q1[:7] + "X" + Q1[7:13], False),  # an inserted word breaks the n-gram
        (Q1[:12], False),
        (Q1[-6:] + "胃溃疡" + "十二指肠溃疡", False),  # never across an item's parts (question | options)
    ],
)
def test_normalisation_and_boundaries(doc, found):
    result = ContaminationIndex(_items(), n=13).scan([doc])
    assert bool(result.hits) is found


def test_an_ngram_never_spans_two_documents():
    result = ContaminationIndex(_items(), n=13).scan([Q1[:7], Q1[7:13]])
    assert not result.hits and not len(result.documents)


def test_chunked_scan_equals_one_pass(monkeypatch):
    docs = _docs() * 5
    whole = ContaminationIndex(_items()).scan(docs)
    monkeypatch.setattr(contamination, "_CHUNK_CHARS", 50)
    chunked = ContaminationIndex(_items()).scan(iter(docs))
    assert chunked.documents.tolist() == whole.documents.tolist() == [i + 7 * k for k in range(5) for i in (1, 3, 4, 6)]
    assert [(h.document, h.documents) for h in chunked.hits] == [(h.document, h.documents) for h in whole.hits]


def test_hash_collisions_never_match(monkeypatch):
    """Every window hashed alike: every window is a candidate, and only real n-gram matches survive."""
    monkeypatch.setattr(contamination, "window_hashes", lambda ids, n: np.zeros(max(len(ids) - n + 1, 0), np.uint64))
    result = ContaminationIndex(_items(), n=13).scan(_docs())
    assert result.documents.tolist() == [1, 3, 4, 6]


def test_normalize():
    assert normalize("高血压，１４０／９０ mmHg\n") == "高血压 140 90 mmhg"


def test_reads_mcq_files_folders_and_other_records(tmp_path):
    mcq = {"question": Q1, "choices": {"A": "胃溃疡", "B": "胃癌"}, "answer": "A"}
    write_jsonl(tmp_path / "data" / "medical_mcq_x" / "test.jsonl", [mcq, mcq])
    write_jsonl(tmp_path / "data" / "medical_mcq_x" / "dev.jsonl", [mcq])
    write_jsonl(tmp_path / "data" / "general_mcq_y" / "test.jsonl", [mcq])
    write_jsonl(tmp_path / "data" / "notes" / "test.jsonl", [mcq])  # not a benchmark folder name
    sets = write_jsonl(tmp_path / "qa.jsonl", [{"conversations": [{"from": "human", "value": Q2}, {"from": "gpt",
                                               "value": "卡托普利"}]}])  # fmt: skip
    items = read_benchmark_items([str(tmp_path / "data"), str(tmp_path / "data" / "medical_mcq_x"), str(sets)])
    assert [(i.benchmark, i.where.split("/")[-1], i.parts) for i in items] == [
        ("general_mcq_y", "test.jsonl:1", (Q1, "胃溃疡", "胃癌")),
        ("medical_mcq_x", "test.jsonl:1", (Q1, "胃溃疡", "胃癌")),
        ("medical_mcq_x", "test.jsonl:2", (Q1, "胃溃疡", "胃癌")),
        ("medical_mcq_x", "test.jsonl:1", (Q1, "胃溃疡", "胃癌")),
        ("medical_mcq_x", "test.jsonl:2", (Q1, "胃溃疡", "胃癌")),
        ("qa", "qa.jsonl:1", (Q2,)),
    ]


def test_bad_benchmark_files_are_one_line_errors(tmp_path):
    (tmp_path / "b.jsonl").write_text('{"question": "q", "choices": {"A": "x", "B": "y"}, "answer": "C"}\n')
    with pytest.raises(MedptError, match="b.jsonl:1: field 'answer'"):
        read_benchmark_items([str(tmp_path / "b.jsonl")])
    (tmp_path / "c.jsonl").write_text(json.dumps({"question": "q"}) + "\n{bad\n")
    with pytest.raises(MedptError, match="c.jsonl:2"):
        read_benchmark_items([str(tmp_path / "c.jsonl")])
    with pytest.raises(MedptError, match="no medical_mcq_"):
        read_benchmark_items([str(tmp_path)])
