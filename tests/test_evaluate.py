"""Metric maths against a hand computation, and `medpt eval` base vs adapted in one process."""

import json
import math

import pytest
import torch

from medpt.cli import main
from medpt.eval.metrics import TokenStats, stats_from_sums, token_sums
from medpt.samples import SAMPLE_GENERAL


def test_token_sums_match_a_hand_computation_with_shift_and_masking():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0], [5.0, 0.0, 0.0]]])
    labels = torch.tensor([[0, 1, -100, 0]])  # position 2's label is masked; position 0 has no predecessor
    # predictions come from positions 0..2 for labels at 1..3: (pos0 → 1), (pos1 → -100, skipped), (pos2 → 0)
    lp0 = math.log(math.exp(0.0) / (math.exp(2.0) + 2))  # logit of class 1 at position 0
    lp2 = math.log(math.exp(0.0) / (2 + math.exp(1.0)))  # logit of class 0 at position 2
    loss_sum, correct, tokens = token_sums(logits, labels).tolist()
    assert tokens == 2
    assert loss_sum == pytest.approx(-(lp0 + lp2))
    assert correct == 0  # argmax at pos 0 is class 0 (label 1), at pos 2 is class 2 (label 0)
    m = stats_from_sums(torch.tensor([loss_sum, correct, tokens], dtype=torch.float64)).metrics()
    assert m["perplexity"] == pytest.approx(math.exp(m["loss"]))
    assert m["loss"] == pytest.approx(-(lp0 + lp2) / 2)


def test_accuracy_counts_only_unmasked_shifted_tokens():
    logits = torch.zeros(1, 4, 5)
    logits[0, 0, 3] = logits[0, 1, 4] = logits[0, 2, 1] = 9.0
    labels = torch.tensor([[7, 3, 4, -100]])
    sums = token_sums(logits, labels)
    assert sums[1].item() == 2 and sums[2].item() == 2


def test_stats_accumulate_token_weighted():
    a, b = TokenStats(10.0, 3, 5), TokenStats(2.0, 1, 1)
    a.add(b)
    assert a.metrics()["loss"] == pytest.approx(12.0 / 6)  # not the mean of per-batch losses (2.0 and 2.0)


def test_eval_table_base_vs_adapted_on_two_sets(trained_run, tmp_path, capsys):
    assert main(["eval", "--adapter", str(trained_run), "--eval_sets", f"general={SAMPLE_GENERAL}"]) == 0
    results = json.loads((trained_run / "eval" / "eval_results.json").read_text())
    assert set(results["sets"]) == {"validation", "general"}
    held = results["sets"]["validation"]
    assert held["base"]["tokens"] == held["adapted"]["tokens"] > 0
    assert held["adapted"]["loss"] < held["base"]["loss"]  # the adapter learned the domain
    assert held["adapted"]["perplexity"] == pytest.approx(math.exp(held["adapted"]["loss"]))
    delta, (low, high) = held["adapted"]["loss"] - held["base"]["loss"], held["delta_loss_ci"]
    assert low <= delta <= high and high < 0  # the gain is larger than the noise between blocks
    assert held["perplexity_change_ci"] == pytest.approx([math.expm1(low), math.expm1(high)])
    table = (trained_run / "eval" / "eval.md").read_text()
    assert "| validation |" in table and "| general |" in table and "Δ ppl" in table and "95% CI Δ loss" in table
    assert "| validation |" in capsys.readouterr().out


def test_eval_is_independent_of_batch_size(trained_run, tmp_path):
    outs = []
    for batch in ("1", "7"):
        out = tmp_path / batch
        flags = ["--adapter", str(trained_run), "--per_device_eval_batch_size", batch, "--output_dir", str(out)]
        assert main(["eval", *flags]) == 0
        outs.append(json.loads((out / "eval_results.json").read_text())["sets"]["validation"]["adapted"])
    assert outs[0]["loss"] == pytest.approx(outs[1]["loss"], rel=1e-4)
    assert outs[0]["tokens"] == outs[1]["tokens"]
