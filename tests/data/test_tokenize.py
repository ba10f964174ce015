"""Tokenization: the tokenizer's own BOS policy, EOS after every document, nothing overwritten, roles counted."""

import numpy as np
import pytest

from medpt.data.formats import Document
from medpt.data.parallel import Workers
from medpt.data.templates import RenderedBatch, make_renderer
from medpt.data.tokenize import scale_roles, tokenize_documents, tokenizer_info

QA = [("头痛发热怎么办？", "多喝水，注意休息，持续高热请就医。"), ("高血压要吃药吗", "需要医生评估。"), ("咳嗽", "")]


def _batch(pairs) -> RenderedBatch:
    render = make_renderer("qa_separator")
    batch = RenderedBatch()
    for q, a in pairs:
        batch.append(render(Document(turns=[("human", q), ("gpt", a)])))
    return batch


def test_documents_get_bos_by_policy_and_eos_always(tokenizer):
    info = tokenizer_info(tokenizer)
    assert info.prefix == (tokenizer.bos_token_id,) and info.suffix == ()
    batch = _batch(QA)
    out = tokenize_documents(batch, info, Workers(1), None)
    for i, text in enumerate(batch.texts):
        doc = out.tokens[out.offsets[i] : out.offsets[i + 1]].tolist()
        # exactly what the tokenizer itself produces (BOS included), then EOS: no real token replaced
        assert doc == tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
    assert sum(out.by_role.values()) == out.offsets[-1] and out.roles_basis == "exact"
    assert out.by_role["special"] == 2 * len(QA)


def test_tokenizer_without_bos_and_one_that_adds_eos(tokenizer):
    from tokenizers import processors

    for single, prefix, suffix in (("$A", (), ()), ("<s> $A </s>", (0,), (1,))):
        tok = tokenizer.__class__(tokenizer_object=_copy(tokenizer), bos_token="<s>", eos_token="</s>")
        tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single=single, special_tokens=[("<s>", 0), ("</s>", 1)]
        )
        info = tokenizer_info(tok)
        assert (info.prefix, info.suffix) == (prefix, suffix)
        out = tokenize_documents(_batch(QA[:1]), info, Workers(1), None)
        ids = out.tokens.tolist()
        assert ids[-1] == 1 and ids[-2] != 1  # one EOS, never two
        assert ids[: len(prefix)] == list(prefix)


def _copy(tokenizer):
    from tokenizers import Tokenizer

    return Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())


def test_role_counts_match_tokenizing_each_span(tokenizer):
    info = tokenizer_info(tokenizer)
    batch = _batch([("问题" * 5, "回答" * 9)])
    out = tokenize_documents(batch, info, Workers(1), None)
    assert out.by_role["special"] == 2
    assert out.by_role["human"] + out.by_role["gpt"] + out.by_role["template"] == out.offsets[-1] - 2
    assert out.by_role["gpt"] >= 5 and out.by_role["human"] >= 3


def test_sampled_role_counts_still_add_up_exactly():
    from collections import Counter

    scaled = scale_roles(Counter({"human": 3, "gpt": 5, "template": 1}), 1001)
    assert sum(scaled.values()) == 1001
    assert scaled["gpt"] > scaled["human"] > scaled["template"]


def test_workers_give_the_same_tokens_as_one_process(tokenizer, tmp_path):
    info = tokenizer_info(tokenizer)
    batch = _batch(QA * 50)
    json_path = tmp_path / "tok.json"
    json_path.write_text(info.backend_json, encoding="utf-8")
    one = tokenize_documents(batch, info, Workers(1), None)
    with Workers(2) as workers:
        two = tokenize_documents(batch, info, workers, str(json_path))
    assert np.array_equal(one.tokens, two.tokens) and np.array_equal(one.offsets, two.offsets)
    assert one.by_role == two.by_role


def test_tokenizer_without_eos_is_refused():
    class NoEos:
        eos_token_id = None

    with pytest.raises(Exception, match="no EOS token"):
        tokenizer_info(NoEos())
