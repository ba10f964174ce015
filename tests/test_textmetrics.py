"""Generated-answer metrics on pairs checked by hand."""

import random
import sys

import pytest

pytest.importorskip("sacrebleu")

from medpt.errors import MedptError  # noqa: E402
from medpt.eval.textmetrics import lcs_length, rouge_l, sacrebleu_metrics, score_answer  # noqa: E402


def _lcs_table(a: str, b: str) -> int:
    """The textbook dynamic programme, to check the bit-parallel version against."""
    prev = [0] * (len(b) + 1)
    for ch in a:
        cur = [0]
        for j, other in enumerate(b):
            cur.append(prev[j] + 1 if ch == other else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ("ABCBDAB", "BDCABA", 4),  # the textbook example (BCBA)
        ("高血压患者", "高血糖患者", 4),  # 高血患者
        ("", "高血压", 0),
        ("心", "心", 1),
        ("abc", "xyz", 0),
    ],
)
def test_lcs_hand_cases(a, b, expected):
    assert lcs_length(a, b) == expected == lcs_length(b, a)


def test_lcs_equals_the_table_on_random_strings():
    rng = random.Random(0)
    for _ in range(300):
        a = "".join(rng.choice("甲乙丙丁ab") for _ in range(rng.randrange(0, 90)))
        b = "".join(rng.choice("甲乙丙丁ab") for _ in range(rng.randrange(0, 90)))
        assert lcs_length(a, b) == _lcs_table(a, b)


@pytest.mark.parametrize(
    "hypothesis, reference, metric, expected",
    [
        # ROUGE-L: LCS 4 of 5 characters each way: P = R = F = 0.8
        ("高血糖患者", "高血压患者", "rouge_l", 80.0),
        # LCS 4, P = 4/6, R = 4/7: F = 2PR / (P + R) = 32/52; whitespace does not count
        ("B D C A B A", "ABCBDAB", "rouge_l", 100 * 32 / 52),
        # chrF: 1-grams 2/3 match, 2-grams 1/2, 3-grams 0/1 (orders 4-6 absent on both sides): P = R = 7/18
        ("高血糖", "高血压", "chrf", 100 * 7 / 18),
        ("高 血 压", "高血压", "chrf", 100.0),  # chrF ignores whitespace
        # BLEU with the zh tokenizer (one token per character): p1 = 4/5, p2 = 2/4; p3, p4 have no match and are
        # exp-smoothed to 1/(2·3) and 1/(4·2); brevity penalty 1
        ("高血糖患者", "高血压患者", "bleu", 100 * (0.8 * 0.5 * (1 / 6) * (1 / 8)) ** 0.25),
        ("多喝水，注意休息。", "多喝水，注意休息。", "bleu", 100.0),
        ("", "高血压患者", "bleu", 0.0),
        ("", "高血压患者", "chrf", 0.0),
        ("", "高血压患者", "rouge_l", 0.0),
    ],
)
def test_metrics_on_hand_checked_pairs(hypothesis, reference, metric, expected):
    assert score_answer(hypothesis, reference)[metric] == pytest.approx(expected)
    if metric == "rouge_l":
        assert rouge_l(hypothesis, reference) == pytest.approx(expected)


def test_missing_sacrebleu_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "sacrebleu.metrics", None)  # what an absent package looks like to import
    sacrebleu_metrics.cache_clear()
    with pytest.raises(MedptError, match=r"pip install 'medpt\[eval\]'"):
        sacrebleu_metrics()
    sacrebleu_metrics.cache_clear()
