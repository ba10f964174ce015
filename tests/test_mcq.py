"""Multiple choice by log-likelihood: a model rigged to prefer the right answers scores 100%, a random one chance."""

import json
import random
from types import SimpleNamespace

import pytest
import torch

from medpt.cli import main
from medpt.errors import MedptError
from medpt.eval.mcq import (
    Question,
    build_prompt,
    continuation_logprobs,
    pick_shots,
    read_questions,
    score_questions,
    split_ids,
)
from medpt.samples import SAMPLE_MCQ
from tests.conftest import write_jsonl


def _synthetic(n: int, seed: int = 0) -> list[Question]:
    rng = random.Random(seed)
    words = ["发热", "咳嗽", "头痛", "乏力", "腹泻", "皮疹", "胸闷", "失眠"]
    out = []
    for i in range(n):
        choices = {letter: "".join(rng.sample(words, 2)) + str(i) for letter in "ABCD"}
        out.append(Question(f"第{i}题：下列哪项正确？", choices, rng.choice("ABCD"), f"s{i % 3}", f"x:{i}"))
    return out


class Rigged(torch.nn.Module):
    """Wraps a model and adds +50 to the logits of the right answer's tokens, wherever they are scored: after the
    question's prompt followed by its correct text, and, for one-token answers (the letters, scored from one pass of
    the prompt alone), at the prompt's last position. A model that 'knows' every answer (asked with `shots`, the
    few-shot examples of each question; none by default)."""

    def __init__(self, inner, tokenizer, questions, shots=None):
        super().__init__()
        self.inner = inner
        self.correct = {}  # sequence -> [(logit row, token)]
        for q, s in zip(questions, shots or [[] for _ in questions]):
            prompt = build_prompt(q, s)
            for cont in (q.answer, q.choices[q.answer]):
                ctx, ids = split_ids(tokenizer, prompt, cont)
                seq = tuple(ctx) if len(ids) == 1 else tuple(ctx + ids)
                self.correct.setdefault(seq, []).extend((len(ctx) - 1 + k, t) for k, t in enumerate(ids))

    def forward(self, input_ids, attention_mask=None, use_cache=False):  # no KV cache: scored with full passes
        logits = self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits.clone()
        for row in range(input_ids.shape[0]):
            seq = tuple(input_ids[row][attention_mask[row].bool()].tolist())
            for position, token in self.correct.get(seq, []):
                logits[row, position, token] += 50.0
        return SimpleNamespace(logits=logits)


def test_shared_context_scores_equal_one_pass_per_pair(tiny):
    model, tokenizer = tiny
    q = read_questions([str(SAMPLE_MCQ)])[0]
    prompt = build_prompt(q, [])
    pairs = [split_ids(tokenizer, prompt, c) for c in [*q.choices, *q.choices.values()]]
    pairs.append(split_ids(tokenizer, "另一个问题\n答案：", "A"))
    assert sum(len(cont) == 1 for _, cont in pairs) >= 4  # the letters do share a context
    naive = []
    with torch.no_grad():
        for ctx, cont in pairs:
            logits = model(input_ids=torch.tensor([ctx + cont])).logits[0].float().log_softmax(-1)
            naive.append(sum(logits[len(ctx) - 1 + k, t].item() for k, t in enumerate(cont)))
    shared = continuation_logprobs(model, pairs, tokenizer.pad_token_id, 3)
    assert shared == pytest.approx(naive, abs=1e-4)


def test_prefix_cache_gives_the_predictions_of_full_passes(tiny):
    """Option texts scored on a shared KV cache of the (few-shot) prompt: the same predictions as one full pass per
    option, and log-likelihoods equal up to float rounding."""
    model, tokenizer = tiny
    questions = _synthetic(10, seed=3) + read_questions([str(SAMPLE_MCQ)])[:10]
    shots = [pick_shots(q, questions, 2) for q in questions]
    pairs = [
        split_ids(tokenizer, build_prompt(q, s), text) for q, s in zip(questions, shots) for text in q.choices.values()
    ]
    assert sum(len(cont) > 1 for _, cont in pairs) > len(pairs) // 2  # most options are several tokens
    calls = []

    class Counting(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, **kw):
            calls.append(tuple(kw["input_ids"].shape))
            return self.inner(**kw)

    cached = continuation_logprobs(Counting(), pairs, tokenizer.pad_token_id, 8)
    assert any(shape[0] == 4 and shape[1] < 40 for shape in calls)  # the options ran on a cache, not full passes
    full = continuation_logprobs(model, pairs, tokenizer.pad_token_id, 8, prefix_cache=False)
    assert cached == pytest.approx(full, abs=1e-3)
    a = score_questions(model, tokenizer, questions, shots, ["text"], 8)
    assert a == score_questions(model, tokenizer, questions, shots, ["text"], 8, prefix_cache=False)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from medpt.model.loading import load_tokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), load_tokenizer(str(tiny_model_dir))


def test_rigged_model_scores_100_percent_in_both_modes(tiny):
    model, tokenizer = tiny
    questions = _synthetic(30) + read_questions([str(SAMPLE_MCQ)])[:10]
    rigged = Rigged(model, tokenizer, questions)
    predicted = score_questions(rigged, tokenizer, questions, [[] for _ in questions], ["letter", "text"], 7)
    answers = [q.answer for q in questions]
    assert predicted["letter"] == answers
    assert predicted["text"] == answers


def test_random_model_scores_about_chance(tiny):
    model, tokenizer = tiny
    questions = _synthetic(200, seed=1)
    predicted = score_questions(model, tokenizer, questions, [[] for _ in questions], ["letter"], 16)
    accuracy = sum(p == q.answer for p, q in zip(predicted["letter"], questions)) / len(questions)
    assert 0.14 < accuracy < 0.36  # chance is 25%; this is ±3.7 standard deviations


def test_prompt_shape_and_fewshot_pick():
    q, shot = _synthetic(2)
    text = build_prompt(q, [shot])
    assert text.startswith("以下是医学考试的单项选择题")
    assert f"{shot.question}\nA. {shot.choices['A']}\n" in text and f"答案：{shot.answer}\n\n" in text
    assert text.endswith(f"D. {q.choices['D']}\n答案：")
    en = Question("Which is a vitamin?", {"A": "C", "B": "rock"}, "A", "x", "x:1")
    assert build_prompt(en, []).endswith("A. C\nB. rock\nAnswer:")
    pool = _synthetic(6)
    shots = pick_shots(pool[0], pool, 2)
    assert pool[0] not in shots and shots[0].subject == pool[0].subject


def test_continuation_split_keeps_boundary_tokens_whole(tokenizer):
    ctx, cont = split_ids(tokenizer, "问题\n答案：", "B")
    assert ctx + cont == list(tokenizer("问题\n答案：B")["input_ids"]) and cont


@pytest.mark.parametrize(
    "record, message",
    [
        ({"question": "q", "choices": {"A": "x"}, "answer": "A"}, "field 'choices'"),
        ({"question": "q", "choices": {"A": "x", "B": "y"}, "answer": "C"}, "field 'answer': 'C' is not one of"),
        ({"choices": {"A": "x", "B": "y"}, "answer": "A"}, "field 'question': missing"),
    ],
)
def test_bad_questions_name_file_line_and_field(tmp_path, record, message):
    path = write_jsonl(
        tmp_path / "q.jsonl", [{"question": "ok", "choices": {"A": "a", "B": "b"}, "answer": "A"}, record]
    )
    with pytest.raises(MedptError, match=f"q.jsonl:2: {message}"):
        read_questions([str(path)])


def test_eval_mcq_end_to_end_with_fewshot(trained_run):
    flags = ["--adapter", str(trained_run), "--mcq_file", str(SAMPLE_MCQ), "--fewshot_file", str(SAMPLE_MCQ),
             "--num_fewshot", "2", "--output_dir", str(trained_run / "eval-mcq")]  # fmt: skip
    assert main(["eval", *flags]) == 0
    results = json.loads((trained_run / "eval-mcq" / "eval_results.json").read_text())
    mcq = results["mcq"]
    bench = mcq["benchmarks"]["medical_mcq_zh"]  # --mcq_file: one benchmark, named after the file
    assert bench["questions"] == 40 and bench["num_fewshot"] == 2 and bench["chance"] == pytest.approx(0.25)
    for mode in ("letter", "text"):
        m = bench["modes"][mode]
        for variant in ("base", "adapted"):
            assert 0 <= m["accuracy"][variant] <= 1 and sum(s["n"] for s in m["by_subject"].values()) == 40
            assert sum(m["letters"][variant].values()) == pytest.approx(1)
        assert m["delta"] == pytest.approx(m["accuracy"]["adapted"] - m["accuracy"]["base"])
        assert m["ci"][0] <= m["delta"] <= m["ci"][1] and 0 < m["mcnemar_p"] <= 1
    # every accuracy has its 95% interval in the JSON (benchmark, subjects, micro, macro; both models and modes) ...
    from tests.test_mcq_options import accuracies

    found = accuracies(results)
    subjects = len(bench["modes"]["letter"]["by_subject"])
    assert len(found) == 2 * 2 * (1 + subjects + 2) and subjects > 1
    # ... and in the Markdown table: 27.5% (21.8–34.0)
    table = (trained_run / "eval-mcq" / "eval.md").read_text(encoding="utf-8")
    for mode in ("letter", "text"):
        section = next(s for s in table.split("Multiple choice, ") if s.startswith(mode))
        for row, m in (("| medical_mcq_zh |", bench["modes"][mode]), ("| **micro** |", mcq["overall"][mode]["micro"])):
            line = next(x for x in section.splitlines() if x.startswith(row))
            for which, (low, high) in m["accuracy_ci"].items():
                assert f"{m['accuracy'][which]:.1%} ({100 * low:.1f}–{100 * high:.1f})" in line
    rows = [json.loads(x) for x in (trained_run / "eval-mcq" / "mcq" / "medical_mcq_zh.predictions.jsonl").open()]
    assert len(rows) == 40
    for row in rows:
        for variant in ("base", "adapted"):
            for mode in ("letter", "text"):
                scored = row[variant][mode]
                assert set(scored["logprob"]) == set("ABCD") and scored["predicted"] in "ABCD"
                assert scored["logprob"][scored["predicted"]] == max(scored["logprob"].values()) or mode == "text"


def test_a_prompt_longer_than_the_model_is_cut_from_the_left(tiny):
    model, tokenizer = tiny
    q = _synthetic(1, seed=9)[0]
    shots = [_synthetic(400, seed=10)]  # a prompt far beyond the tiny model's positions
    logged = []
    from medpt.eval.mcq import option_logprobs

    out = option_logprobs(model, tokenizer, [q], shots, ["letter"], 4, log=logged.append)
    assert "cut from the left" in logged[0] and len(out["letter"][0]) == 4
