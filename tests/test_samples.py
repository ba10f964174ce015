"""The bundled samples have exactly the shapes the rest of medpt (and its tests) rely on."""

import json

from medpt.samples import SAMPLE_GENERAL, SAMPLE_MCQ, SAMPLE_QA, SAMPLE_QUESTIONS


def _lines(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_medical_qa_sample_is_reference_sharegpt_shape():
    records = _lines(SAMPLE_QA)
    assert len(records) == 320
    for r in records:
        assert list(r) == ["conversations"]
        turns = r["conversations"]
        assert len(turns) in (2, 4)
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        assert all(set(t) == {"from", "value"} and t["value"].strip() for t in turns)
    assert sum(len(r["conversations"]) == 4 for r in records) == 20


def test_other_samples_have_their_shapes():
    general, mcq, questions = _lines(SAMPLE_GENERAL), _lines(SAMPLE_MCQ), _lines(SAMPLE_QUESTIONS)
    assert len(general) == 60 and all(list(g) == ["text"] for g in general)
    assert len(mcq) == 40
    for q in mcq:
        assert set(q) == {"question", "choices", "answer", "subject"}
        assert list(q["choices"]) == ["A", "B", "C", "D"] and q["answer"] in q["choices"]
    assert len(questions) == 12 and all(list(q) == ["question"] for q in questions)
