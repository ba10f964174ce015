"""Multiple-choice records are checked field by field: every bad shape is a one-line error naming file:line and the
field, never a TypeError from deep inside scoring."""

import json
import re
from pathlib import Path

import pytest

from medpt.errors import MedptError
from medpt.eval.mcq import read_questions
from tests.conftest import write_jsonl

OPTIONS = 'expected an object of options {"A": "...", "B": "...", ...}'
GOOD = {"question": "高血压的诊断标准？", "choices": {"A": "140/90", "B": "120/80"}, "answer": "A"}


def _with(**changes) -> dict:
    return {**GOOD, **changes}


@pytest.mark.parametrize(
    "record, message",
    [
        (["q", {"A": "x"}, "A"], "expected an object with question, choices, answer, got a list"),
        ("just text", "expected an object with question, choices, answer, got a string"),
        ({k: v for k, v in GOOD.items() if k != "answer"}, "field 'answer': missing"),
        (_with(question=["高血压？"]), "field 'question': expected a string, got a list"),
        (_with(question=None), "field 'question': expected a string, got null"),
        (_with(question=3), "field 'question': expected a string, got a number"),
        (_with(choices=["140/90", "120/80"]), f"field 'choices': {OPTIONS}, got a list"),
        (_with(choices="A. 140/90 B. 120/80"), f"field 'choices': {OPTIONS}, got a string"),
        (_with(choices={"A": "140/90"}), f"field 'choices': {OPTIONS} with 2 to 26 options (A to Z), got 1"),
        (_with(choices={}), f"field 'choices': {OPTIONS} with 2 to 26 options (A to Z), got 0"),
        (
            _with(choices={f"{a}{b}": "x" for a in "AB" for b in "ABCDEFGHIJKLMN"}),
            f"field 'choices': {OPTIONS} with 2 to 26 options (A to Z), got 28",
        ),
        (
            _with(choices={"A": "140/90", "B": "120/80", "D": "130/85"}),
            "field 'choices': the option letters must be A, B, C in that order, got 'A', 'B', 'D'",
        ),
        (
            _with(choices={"B": "120/80", "A": "140/90"}),
            "field 'choices': the option letters must be A, B in that order, got 'B', 'A'",
        ),
        (
            _with(choices={"a": "140/90", "b": "120/80"}, answer="a"),
            "field 'choices': the option letters must be A, B in that order, got 'a', 'b'",
        ),
        (
            _with(choices={"1": "140/90", "2": "120/80"}, answer="1"),
            "field 'choices': the option letters must be A, B in that order, got '1', '2'",
        ),
        (
            _with(choices={"B": "140/90", "C": "120/80"}, answer="B"),
            "field 'choices': the option letters must be A, B in that order, got 'B', 'C'",
        ),
        (_with(choices={"A": ["140/90"], "B": "120/80"}), "field 'choices': option 'A': expected a string, got a list"),
        (_with(choices={"A": 140, "B": "120/80"}), "field 'choices': option 'A': expected a string, got a number"),
        (_with(choices={"A": None, "B": "120/80"}), "field 'choices': option 'A': expected a string, got null"),
        (_with(choices={"A": "140/90", "B": " "}), "field 'choices': option 'B' is empty; remove it or give its text"),
        (
            _with(choices={"": "140/90", "B": "120/80"}, answer="B"),
            "field 'choices': the option letters must be A, B in that order, got '', 'B'",
        ),
        (
            _with(choices={"A ": "140/90", "B": "120/80"}, answer="B"),
            "field 'choices': the option letters must be A, B in that order, got 'A ', 'B'",
        ),
        (_with(answer=["A"]), "field 'answer': expected a string (one of the letters ['A', 'B']), got a list"),
        (_with(answer={"A": True}), "field 'answer': expected a string (one of the letters ['A', 'B']), got an object"),
        (_with(answer=0), "field 'answer': expected a string (one of the letters ['A', 'B']), got a number"),
        (_with(answer=True), "field 'answer': expected a string (one of the letters ['A', 'B']), got true/false"),
        (_with(answer="a"), "field 'answer': 'a' is not one of the choices ['A', 'B']"),
        (_with(answer="C"), "field 'answer': 'C' is not one of the choices ['A', 'B']"),
        (_with(answer="A "), "field 'answer': 'A ' is not one of the choices ['A', 'B']"),
        (_with(answer=""), "field 'answer': '' is not one of the choices ['A', 'B']"),
        (_with(subject=["内科"]), "field 'subject': expected a string or a number, got a list"),
        (_with(subject={"name": "内科"}), "field 'subject': expected a string or a number, got an object"),
        (_with(subject=False), "field 'subject': expected a string or a number, got true/false"),
    ],
)
def test_bad_question_shapes_name_file_line_and_field(tmp_path: Path, record, message):
    path = write_jsonl(tmp_path / "q.jsonl", [GOOD, json.dumps(record, ensure_ascii=False)])
    with pytest.raises(MedptError, match="^" + re.escape(f"{path}:2: {message}")):
        read_questions([str(path)])


@pytest.mark.parametrize("count", [2, 3, 5, 25, 26])
def test_2_to_26_options_lettered_a_onwards_are_read_as_given(tmp_path: Path, count: int):
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[:count]
    record = _with(choices={letter: f"选项{letter}" for letter in letters}, answer=letters[-1])
    path = write_jsonl(tmp_path / "q.jsonl", [GOOD, record])
    q = read_questions([str(path)])[1]
    assert list(q.choices) == list(letters) and q.answer == letters[-1] and q.choices[q.answer] == f"选项{letters[-1]}"


@pytest.mark.parametrize(
    "subject, expected",
    [(None, "all"), ("内科", "内科"), (3, "3"), (2.5, "2.5")],
)
def test_subject_may_be_a_string_a_number_null_or_absent(tmp_path: Path, subject, expected):
    record = GOOD if subject is None else _with(subject=subject)
    path = write_jsonl(tmp_path / "q.jsonl", [record, _with(subject=None)])
    assert [q.subject for q in read_questions([str(path)])] == [expected, "all"]


def test_unreadable_question_lines_name_file_and_line(tmp_path: Path):
    path = write_jsonl(tmp_path / "q.jsonl", [GOOD, "[" * 100_000 + "]" * 100_000])
    with pytest.raises(MedptError, match=re.escape(f"{path}:2: nested deeper than 100 levels")):
        read_questions([str(path)])
