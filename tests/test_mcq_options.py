"""Questions with 2 to 26 options mixed in one file (CMExam mixes 4 and 5): every multiple-choice path (letter and
text scoring, few-shot prompts, --circular, prediction files, per-subject/micro/macro accuracy, the position-bias flag,
McNemar and bootstrap, the report chart, the contamination check) works per question, never assuming one count."""

import dataclasses
import json
import random
import string
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from medpt.args.resolve import load_config
from medpt.cli import main
from medpt.eval.mcq import Question, build_prompt, read_questions
from medpt.eval.mcq_suite import chance, format_suite, load_benchmarks, rotations, run_suite, summarize_mode
from medpt.report.curves import plot_mcq
from tests.conftest import write_jsonl
from tests.test_mcq import Rigged
from tests.test_mcq_suite import Pair

CMEXAM = Path("/work/shared/data/medical_mcq_cmexam/test.jsonl")
WORDS = ["发热", "咳嗽", "头痛", "乏力", "腹泻", "皮疹", "胸闷", "失眠", "水肿", "黄疸"]


def _mixed(counts, seed: int = 0, tag: str = "题") -> list[Question]:
    """One question per option count, the answer at a random letter, options all different."""
    rng = random.Random(seed)
    out = []
    for i, k in enumerate(counts):
        letters = string.ascii_uppercase[:k]
        choices = {letter: f"{rng.choice(WORDS)}{i}{letter}" for letter in letters}
        out.append(Question(f"第{i}{tag}（{k}个选项）：哪项正确？", choices, rng.choice(letters), f"k{k % 3}", ""))
    return out


def _record(q: Question) -> dict:
    return {"question": q.question, "choices": q.choices, "answer": q.answer, "subject": q.subject}


def _bench(folder: Path, questions: list[Question], shots: list[Question] | None = None) -> Path:
    path = write_jsonl(folder / "test.jsonl", [_record(q) for q in questions])
    if shots:
        write_jsonl(folder / "dev.jsonl", [_record(q) for q in shots])
    return path


def _run(tmp_path: Path, path: Path, pair, *flags: str) -> dict:
    config = load_config(["--mcq", f"mixed={path}", *flags], command="eval")
    loaded = load_benchmarks(config)
    return run_suite(config, loaded, pair, tmp_path / "out", log=lambda *_: None)


def _predictions(tmp_path: Path) -> list[dict]:
    return [json.loads(x) for x in (tmp_path / "out" / "mcq" / "mixed.predictions.jsonl").open(encoding="utf-8")]


class Oracle(Rigged):
    """Rigged without a network, so hundreds of long prompts cost milliseconds: every logit is 0 (every option
    ties, so it answers the first letter) except +50 on the right answer's tokens; the scoring code runs unchanged.
    With nothing to know, it is a model that always answers A."""

    def __init__(self, tokenizer, questions=(), shots=None):
        super().__init__(None, tokenizer, list(questions), shots)
        self.vocab = len(tokenizer)
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # scoring reads the device from the parameters

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        logits = torch.zeros((*input_ids.shape, self.vocab))
        for row in range(input_ids.shape[0]):
            seq = tuple(input_ids[row][attention_mask[row].bool()].tolist())
            for position, token in self.correct.get(seq, []):
                logits[row, position, token] += 50.0
        return SimpleNamespace(logits=logits)


ALL = list(range(2, 27))
SOME = [2, 3, 4, 5, 7, 10, 26]


def test_rotations_of_every_count_keep_the_letters_and_move_the_answer():
    for q in _mixed(ALL):
        k = len(q.choices)
        rotated = rotations(q)
        assert len(rotated) == k  # one rotation per option
        assert all(list(r.choices) == list(q.choices) for r in rotated)  # the letters stay
        assert all(r.choices[r.answer] == q.choices[q.answer] for r in rotated)  # the answer's text follows
        assert sorted(r.answer for r in rotated) == list(q.choices)  # every letter is the answer exactly once


def test_prompts_list_every_option_of_each_question_and_of_each_shot():
    two, twenty_six = _mixed([2, 26])
    prompt = build_prompt(two, [twenty_six])
    assert prompt.endswith(f"B. {two.choices['B']}\n答案：") and "C. " not in prompt.split("答案：")[-2]
    assert f"Z. {twenty_six.choices['Z']}\n答案：{twenty_six.answer}\n\n" in prompt


@pytest.mark.parametrize(
    "circular, mode, shots",
    [(False, "letter", 0), (True, "letter", 0), (True, "letter", 2), (False, "text", 2), (True, "text", 0)],
)
def test_a_model_that_knows_every_answer_scores_100_percent_on_2_to_26_options(tokenizer, tmp_path, circular, mode,
                                                                                shots):  # fmt: skip
    """One file mixing 2..26 options: the oracle is right everywhere, the base (always A) right where A is the answer
    (never under --circular); the statistics are per question; the predictions hold one row per rotation (as many as
    the question has options), every option scored."""
    counts = SOME if circular else ALL  # rotations: Σk prompts and Σk² options; 2..26 would be 350 and 6,149
    questions = _mixed(counts, seed=1)
    dev = _mixed([2, 3, 26, 4, 5, 6], seed=2, tag="例") if shots else None  # shots of other counts than the question
    path = _bench(tmp_path / "bench", questions, dev)
    config = load_config(["--mcq", f"mixed={path}", "--num_fewshot", str(shots)], command="eval")
    loaded = load_benchmarks(config)[0]
    asked = [(r, s) for q, s in zip(loaded.questions, loaded.shots) for r in (rotations(q) if circular else [q])]
    assert all(len(s) == shots for s in loaded.shots)
    oracle = Oracle(tokenizer, [r for r, _ in asked], [s for _, s in asked])
    flags = ["--mcq_scoring", mode, "--num_fewshot", str(shots)] + (["--circular"] if circular else [])
    results = _run(tmp_path, path, Pair(tokenizer, Oracle(tokenizer), oracle), *flags)
    b = results["benchmarks"]["mixed"]
    m = b["modes"][mode]
    n = len(questions)
    assert b["questions"] == n and b["num_fewshot"] == shots
    assert m["accuracy"]["adapted"] == 1.0 and results["overall"][mode]["micro"]["accuracy"]["adapted"] == 1.0
    assert results["overall"][mode]["macro"]["accuracy"]["adapted"] == 1.0
    if mode == "letter":  # the base ties everywhere: it answers A
        base_right = 0 if circular else sum(q.answer == "A" for q in questions)
        assert m["accuracy"]["base"] == base_right / n and m["letters"]["base"] == {"A": 1.0}
        assert m["mcnemar_p"] == pytest.approx(min(1.0, 2 * 0.5 ** (n - base_right)))
    assert b["chance"] == pytest.approx(sum((1 / k) ** (k if circular else 1) for k in counts) / n)
    assert m["delta"] == pytest.approx(1.0 - m["accuracy"]["base"]) and m["ci"][0] <= m["delta"] <= m["ci"][1]
    subjects = Counter(q.subject for q in questions)
    assert {s: v["n"] for s, v in m["by_subject"].items()} == dict(sorted(subjects.items()))
    assert all(v["adapted"] == 1.0 for v in m["by_subject"].values())
    rows = _predictions(tmp_path)
    per_question = Counter(r["where"] for r in rows)
    assert [per_question[q.where] for q in loaded.questions] == [k if circular else 1 for k in counts]
    by_where = {q.where: q for q in loaded.questions}
    for row in rows:
        scored = row["adapted"][mode]
        assert set(scored["logprob"]) == set(by_where[row["where"]].choices) and scored["predicted"] == row["answer"]
    assert m["letters"]["adapted"] == pytest.approx(m["answers"])  # right everywhere: it predicts the answers
    assert plot_mcq(results, tmp_path / "chart.png").stat().st_size > 1000  # the report's chart of the Δs


def test_circular_counts_a_question_right_only_if_every_rotation_is(tokenizer, tmp_path):
    """The oracle misses one rotation of the 3-, 7- and 26-option questions: exactly those three are wrong with
    --circular, and none without it (the unrotated questions are ones it knows)."""
    questions = _mixed(ALL, seed=3)
    for q in questions:  # one subject per question: by_subject shows which questions count as right
        q.subject = f"{len(q.choices):02d} options"
    path = _bench(tmp_path / "bench", questions)
    loaded = read_questions([str(path)])
    # the rotation it misses is not the unrotated question (0), nor one whose answer is A (rotation r moves the
    # answer from letter a to a - r; where it knows nothing the oracle answers A)
    missed = {q.where: 2 if q.answer == "B" else 1 for q in loaded if len(q.choices) in (3, 7, 26)}
    known = [r for q in loaded for i, r in enumerate(rotations(q)) if missed.get(q.where) != i]
    pair = Pair(tokenizer, Oracle(tokenizer), Oracle(tokenizer, known))
    circular = _run(tmp_path / "c", path, pair, "--mcq_scoring", "letter", "--circular")["benchmarks"]["mixed"]
    m = circular["modes"]["letter"]
    assert m["accuracy"]["adapted"] == pytest.approx((len(ALL) - 3) / len(ALL))
    assert {s: v["adapted"] for s, v in m["by_subject"].items()} == {
        f"{k:02d} options": 0.0 if k in (3, 7, 26) else 1.0 for k in ALL
    }
    rows = _predictions(tmp_path / "c")
    wrong = Counter(r["where"] for r in rows if r["adapted"]["letter"]["predicted"] != r["answer"])
    assert sorted(len(q.choices) for q in loaded if wrong[q.where]) == [3, 7, 26]
    assert all(wrong[q.where] <= 1 for q in loaded)  # the oracle misses no other rotation
    plain = _run(tmp_path / "p", path, pair, "--mcq_scoring", "letter")["benchmarks"]["mixed"]
    assert plain["modes"]["letter"]["accuracy"]["adapted"] == 1.0


def test_a_model_that_always_answers_a_is_flagged_and_scores_zero_under_circular(tokenizer, tmp_path):
    questions = _mixed(SOME, seed=4)
    path = _bench(tmp_path / "bench", questions)
    pair = Pair(tokenizer, Oracle(tokenizer), Oracle(tokenizer))
    plain = _run(tmp_path / "p", path, pair, "--mcq_scoring", "letter")["benchmarks"]["mixed"]["modes"]["letter"]
    assert plain["letters"]["adapted"] == {"A": 1.0} and plain["bias"]["adapted"] == "A 100%"
    assert plain["accuracy"]["adapted"] == pytest.approx(sum(q.answer == "A" for q in questions) / len(questions))
    circular = _run(tmp_path / "c", path, pair, "--mcq_scoring", "letter", "--circular")
    assert circular["benchmarks"]["mixed"]["modes"]["letter"]["accuracy"]["adapted"] == 0.0


@pytest.mark.parametrize(
    "counts, share, flagged",
    [
        ([4] * 20, 0.55, True),  # more than half of 4-option answers: flagged, as always
        ([4] * 20, 0.45, False),
        ([3] * 20, 0.55, True),
        ([2] * 20, 0.70, False),  # two options: uniform guessing gives A half the answers; 70% is no sign of bias
        ([2] * 20, 0.80, True),
        ([2] * 20, 1.00, True),
        ([2] * 10 + [4] * 10, 0.55, False),  # uniform guessing: A 37.5%; flagged above 56.25%
        ([2] * 10 + [4] * 10, 0.60, True),
    ],
)
def test_the_position_bias_flag_allows_for_the_option_count(counts, share, flagged):
    import numpy as np

    from medpt.eval.mcq_suite import LoadedBenchmark

    questions = _mixed(counts)
    a = round(share * len(questions))
    # the other answers spread over the other letters of each question, so no other letter takes over
    predicted = ["A"] * a + [string.ascii_uppercase[1 + i % (len(q.choices) - 1)] for i, q in enumerate(questions[a:])]
    b = LoadedBenchmark("b", questions, [[] for _ in questions], 0, None)
    scored = {"base": {"predicted": {"letter": predicted}}}
    right = {"base": np.array([p == q.answer for p, q in zip(predicted, questions)])}
    m = summarize_mode(b, questions, right, scored, "letter", 1000, 0)
    assert m["letters"]["base"]["A"] == pytest.approx(share)
    assert m["bias"] == ({"base": f"A {share:.0%}"} if flagged else {})


def test_eval_on_mixed_options_end_to_end(tiny_model_dir, tmp_path):
    """`medpt eval` as a user runs it: 2..9 options in one file, circular, both scorings, few-shot from dev.jsonl
    (shots of other counts than their question)."""
    counts = [2, 3, 5, 9]
    path = _bench(tmp_path / "bench", _mixed(counts, seed=5), _mixed([2, 3, 4], seed=6, tag="例"))
    out = tmp_path / "eval"
    argv = ["eval", "--model_name_or_path", str(tiny_model_dir), "--mcq", f"mixed={path}", "--num_fewshot", "2",
            "--circular", "--mcq_scoring", "both", "--output_dir", str(out)]  # fmt: skip
    assert main(argv) == 0
    b = json.loads((out / "eval_results.json").read_text(encoding="utf-8"))["mcq"]["benchmarks"]["mixed"]
    assert b["questions"] == len(counts) and b["num_fewshot"] == 2
    assert b["chance"] == pytest.approx(sum((1 / k) ** k for k in counts) / len(counts))
    rows = [json.loads(x) for x in (out / "mcq" / "mixed.predictions.jsonl").open(encoding="utf-8")]
    assert sorted(Counter(r["where"] for r in rows).values()) == counts
    for mode in ("letter", "text"):
        m = b["modes"][mode]
        assert sum(v["n"] for v in m["by_subject"].values()) == len(counts)
        assert m["accuracy"]["base"] in {i / len(counts) for i in range(len(counts) + 1)}
    assert "| mixed | 4 | 2 |" in (out / "eval.md").read_text(encoding="utf-8")


def test_contamination_is_found_in_any_option_of_any_count(tmp_path):
    from medpt.data.contamination import ContaminationIndex, read_benchmark_items

    questions = _mixed(ALL, seed=7)
    leaked = next(q for q in questions if len(q.choices) == 26)
    leaked.choices["Z"] = "患者出现持续性右上腹疼痛并向右肩背部放射伴有发热和黄疸应首先考虑急性胆囊炎"
    path = _bench(tmp_path / "bench", questions)
    items = read_benchmark_items([str(path)])
    assert len(items) == len(ALL)
    result = ContaminationIndex(items, 13).scan(["病历：" + leaked.choices["Z"] + "。"])
    assert [hit.item.text for hit in result.hits] == [leaked.question]


@pytest.mark.skipif(not CMEXAM.is_file(), reason="CMExam is not in /work/shared/data")
def test_cmexam_with_its_4_and_5_option_questions_under_circular(tiny_model_dir, tmp_path):
    """The reported crash: CMExam mixes 5-option questions with a few 4-option ones."""
    records = [json.loads(line) for line in CMEXAM.open(encoding="utf-8")]
    four = [r for r in records if len(r["choices"]) == 4][:6]
    five = [r for r in records if len(r["choices"]) == 5][:6]
    if len(four) < 6 or len(five) < 6:
        pytest.skip("this copy of CMExam no longer mixes 4- and 5-option questions")
    path = write_jsonl(tmp_path / "medical_mcq_cmexam" / "test.jsonl", five[:3] + four + five[3:])
    out = tmp_path / "eval"
    argv = ["eval", "--model_name_or_path", str(tiny_model_dir), "--mcq_file", str(path), "--circular",
            "--mcq_scoring", "letter", "--output_dir", str(out)]  # fmt: skip
    assert main(argv) == 0
    b = json.loads((out / "eval_results.json").read_text(encoding="utf-8"))["mcq"]["benchmarks"]["medical_mcq_cmexam"]
    assert b["questions"] == 12 and b["chance"] == pytest.approx((6 * 0.25**4 + 6 * 0.2**5) / 12)
    rows = [json.loads(x) for x in (out / "mcq" / "medical_mcq_cmexam.predictions.jsonl").open(encoding="utf-8")]
    assert len(rows) == 6 * 4 + 6 * 5


def test_chance_is_the_mean_over_questions_of_their_own_option_counts():
    questions = _mixed([2, 26])
    assert chance(questions, circular=False) == pytest.approx((1 / 2 + 1 / 26) / 2)
    assert chance(questions, circular=True) == pytest.approx((1 / 4 + (1 / 26) ** 26) / 2)


# --- every accuracy with its 95% interval ------------------------------------------------------------------------
def accuracies(results: dict) -> list[tuple[str, str, float, list]]:
    """Every accuracy in eval results, as (where, model, accuracy, its 95% interval). An accuracy is a model's share
    of right answers under "accuracy" (benchmark, micro, macro) or in a "by_subject" entry; each must have
    "accuracy_ci" beside it, [low, high] around it. A number under a model's name anywhere else (but seconds) is an
    accuracy this walk does not know: it fails, so a new one cannot go without its interval unnoticed."""
    found = []

    def walk(node, path: tuple) -> None:
        if isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, (*path, str(i)))
        if not isinstance(node, dict):
            return
        held = node if path[-2:-1] == ("by_subject",) else node.get("accuracy")
        held = held if isinstance(held, dict) else {}
        models = {w: v for w, v in held.items() if w in ("base", "adapted")}
        if models:
            assert set(node.get("accuracy_ci", {})) == set(models), f"{'/'.join(path)}: no interval"
            found.extend(("/".join(path), w, v, node["accuracy_ci"][w]) for w, v in models.items())
        for key, value in node.items():
            loose = key in ("base", "adapted") and isinstance(value, float) and node is not held
            assert not loose or path[-1:] == ("seconds",), f"an accuracy without an interval: {'/'.join(path)}/{key}"
            if key != "accuracy":
                walk(value, (*path, key))

    walk(results, ())
    for where, which, value, (low, high) in found:
        assert 0 <= low <= value <= high <= 1, (where, which, value, low, high)
    return found


def _not_a(questions: list[Question], seed: int) -> list[Question]:
    """The questions with their answers moved off A: a model that always answers A gets every one wrong."""
    rng = random.Random(seed)
    return [dataclasses.replace(q, answer=rng.choice(list(q.choices)[1:])) for q in questions]


@pytest.mark.parametrize("circular", [False, True])
def test_an_all_right_and_an_all_wrong_model_get_one_sided_intervals_everywhere(tokenizer, tmp_path, circular):
    """Two benchmarks of different sizes, several subjects, letter scoring (where the base, all logits equal, always
    answers A): the oracle is right everywhere, the base wrong everywhere; each of their accuracies (benchmark,
    subject, micro, macro) has an interval that touches 100% (0%) and stays strictly inside at the other end. The
    table prints them, the report draws them."""
    small, big = (
        _not_a(_mixed([2, 3, 4, 5, 6], seed=8), 1),
        _not_a(_mixed([2, 3, 4, 5, 7, 10] * 2, seed=9, tag="问"), 2),
    )
    paths = [_bench(tmp_path / "small", small), _bench(tmp_path / "big", big)]
    asked = [r for q in [*small, *big] for r in (rotations(q) if circular else [q])]
    config = load_config(["--mcq", f"small={paths[0]}", f"big={paths[1]}", "--mcq_scoring", "letter"]
                         + (["--circular"] if circular else []), command="eval")  # fmt: skip
    pair = Pair(tokenizer, Oracle(tokenizer), Oracle(tokenizer, asked))
    results = run_suite(config, load_benchmarks(config), pair, tmp_path / "out", log=lambda *_: None)
    found = accuracies(results)
    subjects = sum(len(b["modes"]["letter"]["by_subject"]) for b in results["benchmarks"].values())
    assert len(found) == 2 * (2 + subjects + 2)  # models × (benchmarks + subjects + micro and macro)
    for where, which, value, (low, high) in found:
        if which == "adapted":
            assert value == 1.0 and high == 1.0 and 0 < low < 1, where
        else:
            assert value == 0.0 and low == 0.0 and 0 < high < 1, where
    table = format_suite(results)
    for name, row in (("small", "| small |"), ("big", "| big |"), ("micro", "| **micro** |"), ("macro", "| **macro")):
        m = results["overall"]["letter"].get(name) or results["benchmarks"][name]["modes"]["letter"]
        line = next(x for x in table.splitlines() if x.startswith(row))
        assert f"0.0% (0.0–{100 * m['accuracy_ci']['base'][1]:.1f})" in line
        assert f"100.0% ({100 * m['accuracy_ci']['adapted'][0]:.1f}–100.0)" in line
    charted = [(which, low, high) for where, which, _, (low, high) in found if "by_subject" not in where]
    assert _drawn_intervals(results) == sorted((w, round(100 * lo, 6), round(100 * hi, 6)) for w, lo, hi in charted)


def _drawn_intervals(results: dict) -> list:
    """The report chart's accuracy error bars, as (model, left end, right end) in percent, sorted."""
    from unittest import mock

    from medpt.report import curves

    figures = []
    with mock.patch.object(curves, "_save", lambda fig, path: figures.append(fig) or Path(path)):
        assert plot_mcq(results, "unused.png") is not None
    drawn = []
    for bars in figures[0].axes[0].containers:
        which = bars.get_label().split(",")[0]
        drawn += [(which, round(x0, 6), round(x1, 6)) for (x0, _), (x1, _) in bars.lines[2][0].get_segments()]
    return sorted(drawn)


def test_at_25_percent_of_200_questions_the_interval_is_lm_evals_within_a_point(tokenizer, tmp_path):
    """A model that knows 50 of 200 questions (and answers A, always wrong here, to the rest): 25.0%, and each end
    of its interval within one point of lm-eval's acc ± 1.96·stderr."""
    questions = _not_a(_mixed(ALL * 8, seed=10), 3)
    path = _bench(tmp_path / "bench", questions)
    pair = Pair(tokenizer, Oracle(tokenizer), Oracle(tokenizer, questions[:50]))
    m = _run(tmp_path, path, pair, "--mcq_scoring", "letter")["benchmarks"]["mixed"]["modes"]["letter"]
    assert len(questions) == 200 and m["accuracy"]["adapted"] == 0.25
    half = 1.96 * (0.25 * 0.75 / 200) ** 0.5
    low, high = m["accuracy_ci"]["adapted"]
    assert low == pytest.approx(0.25 - half, abs=0.01) and high == pytest.approx(0.25 + half, abs=0.01)
