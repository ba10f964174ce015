"""Rendering: the reference bytes exactly, nothing dropped, role spans right."""

import json

import pytest

from medpt.data.formats import Document
from medpt.data.templates import SEPARATOR, RenderedBatch, custom_format, make_renderer
from medpt.errors import MedptError
from medpt.samples import SAMPLE_QA


def reference_format(conversations: list[dict]) -> str:
    """The reference run's rendering function, as its users wrote it."""
    text = ""
    for turn in conversations:
        if turn["from"] == "human":
            text += f"问:{turn['value']}\n"
        elif turn["from"] == "gpt":
            text += f"答:{turn['value']}\n"
    text += "\n" + "=" * 50 + "\n\n"
    return text


def _doc(conversations: list[dict]) -> Document:
    return Document(turns=[(t["from"], t["value"]) for t in conversations])


def test_default_template_is_byte_identical_to_the_reference_on_the_whole_sample():
    render = make_renderer("qa_separator")
    records = [json.loads(line)["conversations"] for line in SAMPLE_QA.read_text(encoding="utf-8").splitlines()]
    for conversations in records:
        assert render(_doc(conversations)).text.encode() == reference_format(conversations).encode()


def test_system_turn_is_rendered_not_dropped():
    rendered = make_renderer("qa_separator")(Document(turns=[("system", "你是医生"), ("human", "q"), ("gpt", "a")]))
    assert rendered.text == "系统:你是医生\n问:q\n答:a\n" + SEPARATOR


def test_spans_cover_the_text_by_role():
    r = make_renderer("qa_separator")(Document(turns=[("human", "头痛"), ("gpt", "休息")]))
    pieces = [(r.text[a:b], role) for (a, role), (b, _) in zip(r.spans, r.spans[1:] + [(len(r.text), "")])]
    assert pieces == [
        ("问:", "template"),
        ("头痛", "human"),
        ("\n答:", "template"),
        ("休息", "gpt"),
        ("\n" + SEPARATOR, "template"),
    ]


def test_plain_qa_template_and_plain_text_documents():
    render = make_renderer("qa")
    assert render(Document(turns=[("human", "q"), ("gpt", "a")])).text == "问:q\n答:a\n"
    r = render(Document(text="一段正文"))
    assert r.text == "一段正文" and r.spans == [(0, "text")]


def test_custom_format_string():
    fmt = {"human": "Patient: {text}\n", "gpt": "Doctor: {text}\n", "end": "<end>"}
    r = make_renderer("custom", fmt)(Document(turns=[("system", "s"), ("human", "q"), ("gpt", "a")]))
    assert r.text == "s\nPatient: q\nDoctor: a\n<end>"
    with pytest.raises(MedptError, match="must contain {text} exactly once"):
        custom_format({"human": "Q:", "gpt": "A: {text}"})


def test_chat_template_uses_the_tokenizer_and_does_not_double_bos(tokenizer):
    r = make_renderer("chat_template", tokenizer=tokenizer)(Document(turns=[("human", "头痛"), ("gpt", "休息")]))
    assert r.text == "User: 头痛\nAssistant: 休息</s>\n"
    roles = {role for _, role in r.spans}
    assert {"human", "gpt", "template"} <= roles


def test_chat_template_missing_is_a_clear_error():
    class NoTemplate:
        chat_template = None

    with pytest.raises(MedptError, match="has no chat template"):
        make_renderer("chat_template", tokenizer=NoTemplate())


def test_rendered_batch_round_trips_take_and_pickle():
    import pickle

    render = make_renderer("qa_separator")
    docs = [render(Document(turns=[("human", f"q{i}"), ("gpt", "a" * i)])) for i in range(6)]
    docs.append(render(Document(text="plain")))
    batch = RenderedBatch()
    for d in docs:
        batch.append(d)
    assert list(batch) == docs
    assert list(pickle.loads(pickle.dumps(batch))) == docs
    assert list(batch.take([6, 2, 0])) == [docs[6], docs[2], docs[0]]
    assert list(RenderedBatch.concat(batch.chunks(4))) == docs
