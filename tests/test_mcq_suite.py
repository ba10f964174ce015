"""The multiple-choice suite: position bias made visible and removable, paired statistics on rigged models, the
benchmark folder convention, and predictions kept per benchmark."""

import contextlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from medpt.args.resolve import load_config
from medpt.errors import MedptError
from medpt.eval.mcq import Question, build_prompt, split_ids
from medpt.eval.mcq_suite import chance, format_suite, load_benchmarks, rotations, run_suite
from tests.conftest import write_jsonl
from tests.test_mcq import Rigged, _synthetic


class AlwaysLetter(torch.nn.Module):
    """Wraps a model and adds +50 to one letter's logit everywhere: it answers that letter to every question."""

    def __init__(self, inner, token: int):
        super().__init__()
        self.inner, self.token = inner, token

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        logits = self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits.clone()
        logits[:, :, self.token] += 50.0
        return SimpleNamespace(logits=logits)


class Pair:
    """The two models `medpt eval` compares, as medpt.model.adapter.Variants presents them."""

    names = ["base", "adapted"]

    def __init__(self, tokenizer, base, adapted):
        self.tokenizer, self.base, self.adapted = tokenizer, base, adapted

    @contextlib.contextmanager
    def use(self, which):
        yield self.base if which == "base" else self.adapted


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from medpt.model.loading import load_tokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), load_tokenizer(str(tiny_model_dir))


def _suite(tmp_path, questions: list[Question], pair: Pair, *flags: str) -> dict:
    path = write_jsonl(tmp_path / "bench" / "test.jsonl", [
        {"question": q.question, "choices": q.choices, "answer": q.answer, "subject": q.subject} for q in questions
    ])  # fmt: skip
    config = load_config(["--mcq", f"rigged={path}", "--mcq_scoring", "letter", *flags], command="eval")
    loaded = load_benchmarks(config)
    return run_suite(config, loaded, pair, tmp_path / "out", log=lambda *_: None)


def _letter_token(tokenizer, letter: str) -> int:
    _, ids = split_ids(tokenizer, build_prompt(_synthetic(1)[0], []), letter)
    assert len(ids) == 1
    return ids[0]


def test_a_model_that_always_answers_d_is_flagged_and_scores_nothing_under_circular(tiny, tmp_path):
    model, tokenizer = tiny
    questions = _synthetic(40, seed=3)
    pair = Pair(tokenizer, model, AlwaysLetter(model, _letter_token(tokenizer, "D")))
    plain = _suite(tmp_path / "plain", questions, pair)
    m = plain["benchmarks"]["rigged"]["modes"]["letter"]
    share_d = sum(q.answer == "D" for q in questions) / len(questions)
    assert m["letters"]["adapted"] == {"D": 1.0} and m["bias"]["adapted"] == "D 100%"
    # (the random-init base is flagged too when one letter takes over half of its answers, as it often does)
    assert ("base" in m["bias"]) is (max(m["letters"]["base"].values()) > 0.5)
    assert m["accuracy"]["adapted"] == pytest.approx(share_d)  # its "score" is the share of D answers
    table = format_suite(plain)
    assert "⚠ adapted answers D 100%" in table and "⚠ position bias: adapted answers D to 100% of rigged" in table
    circular = _suite(tmp_path / "circular", questions, pair, "--circular")
    c = circular["benchmarks"]["rigged"]
    assert c["modes"]["letter"]["accuracy"]["adapted"] == 0.0 <= c["chance"]  # right only if every rotation is
    assert c["chance"] == pytest.approx(0.25**4)
    rows = (tmp_path / "circular" / "out" / "mcq" / "rigged.predictions.jsonl").read_text().splitlines()
    assert len(rows) == 4 * len(questions)  # every rotation of every question, each with its options


def test_a_model_that_knows_every_answer_gains_with_a_ci_above_zero(tiny, tmp_path):
    model, tokenizer = tiny
    questions = _synthetic(60, seed=4)
    asked = [r for q in questions for r in rotations(q)]
    pair = Pair(tokenizer, model, Rigged(model, tokenizer, asked))
    results = _suite(tmp_path, questions, pair, "--circular", "--bootstrap_resamples", "2000")
    m = results["benchmarks"]["rigged"]["modes"]["letter"]
    assert m["accuracy"]["adapted"] == 1.0
    assert m["ci"][0] > 0 and m["ci"][0] <= m["delta"] <= m["ci"][1]
    base_right = round(m["accuracy"]["base"] * 60)
    assert m["mcnemar_p"] == pytest.approx(2 * 0.5 ** (60 - base_right))  # every discordant question is a win
    assert results["overall"]["letter"]["micro"]["ci"] == m["ci"]  # one benchmark: micro is that benchmark


def test_identical_models_differ_by_zero(tiny, tmp_path):
    model, tokenizer = tiny
    results = _suite(tmp_path, _synthetic(30, seed=5), Pair(tokenizer, model, model))
    m = results["benchmarks"]["rigged"]["modes"]["letter"]
    assert m["delta"] == 0 and m["ci"] == [0.0, 0.0] and m["mcnemar_p"] == 1.0


def test_rotations_move_the_texts_and_the_answer():
    q = Question("哪项正确？", {"A": "甲", "B": "乙", "C": "丙"}, "B", "s", "f:1")
    rotated = rotations(q)
    assert [r.choices for r in rotated] == [
        {"A": "甲", "B": "乙", "C": "丙"},
        {"A": "乙", "B": "丙", "C": "甲"},
        {"A": "丙", "B": "甲", "C": "乙"},
    ]
    assert [r.answer for r in rotated] == ["B", "A", "C"]
    assert all(r.choices[r.answer] == "乙" for r in rotated)
    assert chance([q], circular=False) == pytest.approx(1 / 3) and chance([q], circular=True) == pytest.approx(1 / 27)


def _mcq(question: str, subject: str = "s") -> dict:
    return {"question": question, "choices": {"A": "甲", "B": "乙"}, "answer": "A", "subject": subject}


def test_the_folder_convention_and_few_shot_from_dev(tmp_path):
    write_jsonl(tmp_path / "data" / "medical_mcq_a" / "test.jsonl", [_mcq(f"甲{i}") for i in range(5)])
    write_jsonl(tmp_path / "data" / "medical_mcq_a" / "dev.jsonl", [_mcq(f"示例{i}") for i in range(3)])
    write_jsonl(tmp_path / "data" / "general_mcq_b" / "test.jsonl", [_mcq(f"乙{i}") for i in range(4)])
    write_jsonl(tmp_path / "data" / "medical_qa_zh" / "test.jsonl", [_mcq("不是选择题")])  # not a benchmark name
    write_jsonl(tmp_path / "data" / "medical_mcq_c" / "dev.jsonl", [_mcq("没有测试集")])  # no test.jsonl
    extra = write_jsonl(tmp_path / "x" / "mine.jsonl", [_mcq("丙")])
    beside = write_jsonl(tmp_path / "y" / "test.jsonl", [_mcq("丁")])
    write_jsonl(tmp_path / "y" / "dev.jsonl", [_mcq("丁的示例")])
    flags = ["--mcq_dir", str(tmp_path / "data"), "--num_fewshot", "2", "--mcq", f"mine={extra}", f"beside={beside}",
             f"folder={tmp_path / 'data' / 'medical_mcq_a'}"]  # fmt: skip
    notes = []
    loaded = {b.name: b for b in load_benchmarks(load_config(flags, command="eval"), log=notes.append)}
    assert list(loaded) == ["mine", "beside", "folder", "general_mcq_b", "medical_mcq_a"]
    assert [len(b.questions) for b in loaded.values()] == [1, 1, 5, 4, 5]
    assert [s.question for s in loaded["beside"].shots[0]] == ["丁的示例"]  # the dev.jsonl beside FILE
    assert loaded["folder"].fewshot_from == str(tmp_path / "data" / "medical_mcq_a" / "dev.jsonl")
    a = loaded["medical_mcq_a"]
    assert a.num_fewshot == 2 and [s.question for s in a.shots[0]] == ["示例0", "示例1"]
    assert loaded["general_mcq_b"].num_fewshot == 0 and any("general_mcq_b has no dev.jsonl" in n for n in notes)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--circular"], "--circular applies to multiple-choice benchmarks"),
        (["--mcq", "a.jsonl"], "--mcq takes NAME=PATH items"),
        (["--mcq", "a=x.jsonl", "a=y.jsonl"], "--mcq: the name 'a' is given twice"),
        (["--mcq_file", "q.jsonl", "--num_fewshot", "2"], "--num_fewshot needs solved questions"),
        (["--mcq_file", "q.jsonl", "--bootstrap_resamples", "999"], "--bootstrap_resamples must be at least 1,000"),
        (["--generate_file", "q.jsonl"], "--generate_file says where --generate_eval N takes its questions"),
        (["--generate_eval", "0"], "--generate_eval must be at least 1"),
        (["--circular", "--mcq_dir", "d", "--check_contamination", "x"], "--check_contamination is a"),
    ],
)
def test_flag_mistakes_are_one_line_errors(flags, message):
    with pytest.raises(MedptError, match=message):
        load_config(flags, command="eval")


def test_two_benchmarks_named_alike_are_refused(tmp_path):
    a = write_jsonl(tmp_path / "a" / "test.jsonl", [_mcq("甲")])
    config = load_config(["--mcq", f"a={a}", "--mcq_file", str(a)], command="eval")
    with pytest.raises(MedptError, match="two benchmarks are named 'a'"):
        load_benchmarks(config)


def test_predictions_are_kept_per_benchmark_and_contamination_is_flagged(trained_run, tmp_path):
    """Two evals of different benchmarks into one run: both prediction files stay. A question copied from the
    training data is reported beside its benchmark."""
    from medpt.cli import main
    from medpt.data.contamination import normalize
    from medpt.data.pipeline import read_texts
    from medpt.samples import SAMPLE_QA

    # The shared run without its evaluations: other tests evaluate other benchmarks into it, and the list of
    # prediction files below is exact.
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=lambda folder, _: ["eval"] if Path(folder) == trained_run else [])
    trained_on = next(t for t in read_texts([str(SAMPLE_QA)]) if len(t) > 60)  # most documents are trained on
    copied = trained_on.split("\n")[0].removeprefix("问:")[:30]
    leak = write_jsonl(tmp_path / "leak.jsonl", [_mcq(copied), _mcq("完全无关的问题一二三四五六七八九十甲乙丙丁")])
    clean = write_jsonl(tmp_path / "clean.jsonl", [_mcq("另一个完全无关的问题")])
    assert main(["eval", "--adapter", str(run), "--mcq", f"leak={leak}", "--mcq_scoring", "letter"]) == 0
    results = json.loads((run / "eval" / "eval_results.json").read_text())
    if results["mcq"]["benchmarks"]["leak"]["contaminated"] == 0:  # the copied question fell in the held-out 10%
        pytest.skip("the copied document is in the validation split")
    assert results["mcq"]["benchmarks"]["leak"]["contaminated"] == 1
    row = json.loads((run / "eval" / "contamination.jsonl").read_text())
    assert row["benchmark"] == "leak" and row["item"].endswith("leak.jsonl:1")
    assert row["ngram"] in normalize(copied)
    assert "⚠ 1 in training data" in (run / "eval" / "eval.md").read_text()
    assert main(["eval", "--adapter", str(run), "--mcq", f"clean={clean}", "--mcq_scoring", "letter"]) == 0
    kept = sorted(p.name for p in (run / "eval" / "mcq").iterdir() if not p.name.startswith("."))
    assert kept == ["clean.predictions.jsonl", "leak.predictions.jsonl"]
