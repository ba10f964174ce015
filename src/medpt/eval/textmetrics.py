"""Scores of generated answers against reference answers, at the character level (Chinese has no spaces between
words, so word-level metrics would depend on a segmenter).

Each metric scores one answer against its reference, 0-100, so base and adapted can be compared answer by answer
(the paired bootstrap in medpt.eval.stats resamples answers):

    chrf     sacrebleu's chrF (character n-grams up to 6, β = 2; whitespace ignored)
    bleu     sacrebleu's sentence BLEU with its Chinese tokenizer (each CJK character a token), exp smoothing and
             effective order, so a short answer with no 4-gram match is not scored 0 outright
    rouge_l  ROUGE-L F1 on characters, whitespace removed. rouge-score's tokenizer drops CJK characters entirely, so
             the longest common subsequence is computed here (bit-parallel, `lcs_length`)

sacrebleu is an optional dependency (`pip install 'medpt[eval]'`), imported only when answers are scored.
"""

from __future__ import annotations

import functools
from typing import Any

from medpt.errors import MedptError

METRICS = ("chrf", "bleu", "rouge_l")


def lcs_length(a: str, b: str) -> int:
    """Length of the longest common subsequence of two strings, in O(len(a) · len(b) / word size).

    Bit-parallel (Allison & Dix 1986; Hyyrö 2004): bit j of `row` is 0 where the LCS of the prefix of `a` read so far
    with b[: j + 1] grows by one at j; each character of `a` updates all of b's positions at once with one add, using
    the mask of the positions in b that hold that character. Python's integers are as wide as b needs."""
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for j, ch in enumerate(b):
        masks[ch] = masks.get(ch, 0) | (1 << j)
    full = (1 << len(b)) - 1
    row = full
    for ch in a:
        match = row & masks.get(ch, 0)
        row = ((row + match) | (row - match)) & full
    return len(b) - row.bit_count()


def rouge_l(hypothesis: str, reference: str) -> float:
    """ROUGE-L F1 (× 100) on characters, whitespace removed."""
    hyp, ref = "".join(hypothesis.split()), "".join(reference.split())
    common = lcs_length(hyp, ref)
    if not common:
        return 0.0
    precision, recall = common / len(hyp), common / len(ref)
    return 100 * 2 * precision * recall / (precision + recall)


@functools.cache
def sacrebleu_metrics() -> tuple[Any, Any]:
    """sacrebleu's chrF and BLEU (zh) scorers, or a one-line error saying how to install it (called before any model
    is loaded, so a missing extra costs nothing)."""
    try:
        from sacrebleu.metrics import BLEU, CHRF
    except ImportError:
        raise MedptError(
            "--generate_eval scores answers with sacrebleu, which is not installed: pip install 'medpt[eval]'"
        ) from None
    return CHRF(), BLEU(tokenize="zh", effective_order=True)


def score_answer(hypothesis: str, reference: str) -> dict[str, float]:
    """Every metric of one answer, each 0-100."""
    chrf, bleu = sacrebleu_metrics()
    return {
        "chrf": chrf.sentence_score(hypothesis, [reference]).score,
        "bleu": bleu.sentence_score(hypothesis, [reference]).score,
        "rouge_l": rouge_l(hypothesis, reference),
    }
