"""Record shapes → documents; every bad record names its field."""

import pytest

from medpt.data.formats import Document, detect_format, to_document
from medpt.data.records import Record
from medpt.errors import BadRecordError


def _doc(value, fmt=None):
    record = Record("f.jsonl", 7, value)
    return to_document(record, fmt or detect_format(record))


def test_sharegpt_with_user_assistant_roles_and_top_level_system():
    doc = _doc(
        {"system": "你是医生", "conversations": [{"from": "user", "value": "q"}, {"from": "assistant", "value": "a"}]}
    )
    assert doc.turns == [("system", "你是医生"), ("human", "q"), ("gpt", "a")]


def test_messages_alpaca_and_text():
    assert _doc({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]}).turns == [
        ("system", "s"),
        ("human", "q"),
    ]
    alpaca = _doc({"instruction": "指令", "input": "输入", "output": "答", "history": [["q0", "a0"]]})
    assert alpaca.turns == [("human", "q0"), ("gpt", "a0"), ("human", "指令\n输入"), ("gpt", "答")]
    assert _doc({"instruction": "指令", "input": "", "output": "答"}).turns == [("human", "指令"), ("gpt", "答")]
    assert _doc({"text": "正文", "id": 3}) == Document(text="正文", ignored=("id",))


def test_unused_keys_are_reported_not_silently_dropped():
    assert _doc({"conversations": [{"from": "human", "value": "q"}], "source": "x", "id": 1}).ignored == (
        "source",
        "id",
    )


@pytest.mark.parametrize(
    "value, fmt, field, reason",
    [
        ([1, 2], None, None, "expected a JSON object per record, got list"),
        ({"question": "q"}, None, None, "cannot tell the record shape"),
        ({"conversations": "hi"}, "sharegpt", "conversations", "expected a non-empty list of turns"),
        ({"conversations": []}, "sharegpt", "conversations", "expected a non-empty list of turns"),
        (
            {"conversations": [{"from": "doctor", "value": "x"}]},
            "sharegpt",
            "conversations[0].from",
            "unknown role 'doctor'",
        ),
        (
            {"conversations": [{"from": "human", "value": 12}]},
            "sharegpt",
            "conversations[0].value",
            "expected a string, got int",
        ),
        (
            {"conversations": [{"from": "human"}]},
            "sharegpt",
            "conversations[0].value",
            "expected a string, got NoneType",
        ),
        ({"conversations": [{"value": "x"}]}, "sharegpt", "from", "missing"),
        ({"text": "x"}, "sharegpt", "conversations", "missing"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "messages",
            "messages[0].content",
            "expected a string",
        ),
        ({"instruction": "q"}, "alpaca", "output", "missing"),
        ({"instruction": "q", "output": "a", "history": [["only one"]]}, "alpaca", "history[0]", "pair"),
        ({"text": None}, "text", "text", "expected a string"),
    ],
)
def test_bad_records_name_file_line_and_field(value, fmt, field, reason):
    with pytest.raises(BadRecordError) as e:
        _doc(value, fmt)
    assert (e.value.source, e.value.line, e.value.field) == ("f.jsonl", 7, field)
    assert reason in e.value.reason
    assert str(e.value).startswith("f.jsonl:7: ")
    assert e.value.to_json()["record"] == value  # the rejected record is kept whole


def test_split_key_is_the_first_question():
    assert _doc({"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "q"}]}).split_key == "q"
    assert _doc({"text": "t"}).split_key == "t"


def test_empty_documents():
    assert _doc({"conversations": [{"from": "human", "value": " "}, {"from": "gpt", "value": ""}]}).is_empty()
    assert not _doc({"conversations": [{"from": "human", "value": ""}, {"from": "gpt", "value": "a"}]}).is_empty()
