"""The training loss of named sources: logged per source (adding up to the total), and --replay_kl (0 for a zero
adapter, positive otherwise, its gradient only in the trainable weights)."""

from __future__ import annotations

import json

import pytest
import torch

from medpt.cli import main
from medpt.samples import SAMPLE_GENERAL, SAMPLE_QA


def _train(tiny_model_dir, out, *extra: str) -> list[dict]:
    argv = ["train", "--model_name_or_path", str(tiny_model_dir), "--train_file_dir", f"medical={SAMPLE_QA}",
            f"general={SAMPLE_GENERAL}", "--mix", "medical=0.7,general=0.3", "--block_size", "64",
            "--per_device_train_batch_size", "4", "--max_steps", "3", "--learning_rate", "5e-3", "--logging_steps",
            "1", "--output_dir", str(out), "--report_to", "none", "--disable_tqdm", "true", "--save_strategy", "no",
            "--validation_split_percentage", "0", *extra]  # fmt: skip
    assert main(argv) == 0
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]


@pytest.mark.parametrize("packing", ["concat", "isolated"])
def test_per_source_train_losses_add_up_to_the_logged_loss_token_weighted(packing, tiny_model_dir, tmp_path):
    logged = _train(tiny_model_dir, tmp_path / "run", "--packing", packing)
    assert len(logged) == 3
    for row in logged:  # a source without tokens in a step is not logged for it
        tokens = {n: row.get(f"train_{n}_tokens", 0) for n in ("medical", "general")}
        assert 0 < sum(tokens.values()) <= 4 * 63  # tokens with a label: at most 63 of a row's 64
        weighted = sum(row[f"train_{n}_loss"] * t for n, t in tokens.items() if t) / sum(tokens.values())
        assert weighted == pytest.approx(row["loss"], rel=1e-5)
        assert "train_replay_kl" not in row  # no --replay_kl
    both = [r for r in logged if "train_general_loss" in r and "train_medical_loss" in r]
    assert both and both[0]["train_medical_loss"] != both[0]["train_general_loss"]


def test_replay_kl_logs_the_kl_and_adds_it_to_the_loss(tiny_model_dir, tmp_path):
    plain = _train(tiny_model_dir, tmp_path / "plain", "--per_device_train_batch_size", "8")
    kl = _train(tiny_model_dir, tmp_path / "kl", "--replay_kl", "2", "--per_device_train_batch_size", "8")
    assert kl[0]["loss"] == pytest.approx(plain[0]["loss"], rel=1e-6)  # LoRA B starts at 0: no KL at step 1
    assert kl[0].get("train_replay_kl", 0.0) == 0.0 and max(r.get("train_replay_kl", 0) for r in kl) > 0
    for row in kl[1:]:  # loss = Σ CE / N + W × Σ KL / N over the step's N tokens, KL on the general ones
        tokens = {n: row.get(f"train_{n}_tokens", 0) for n in ("medical", "general")}
        n = sum(tokens.values())
        ce = sum(row[f"train_{s}_loss"] * t for s, t in tokens.items() if t) / n
        kl_sum = row.get("train_replay_kl", 0.0) * tokens["general"]
        assert row["loss"] == pytest.approx(ce + 2 * kl_sum / n, rel=1e-5)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--train_file_dir", str(SAMPLE_QA), "--replay_kl", "1"], "--replay_kl needs named sources"),
        (
            [
                "--train_file_dir",
                f"medical={SAMPLE_QA}",
                f"general={SAMPLE_GENERAL}",
                "--replay_kl",
                "1",
                "--replay_kl_sources",
                "generl",
            ],
            "--replay_kl_sources generl: no such source",
        ),  # fmt: skip
        (
            ["--train_file_dir", f"medical={SAMPLE_QA}", f"general={SAMPLE_GENERAL}", "--replay_kl_sources", "general"],
            "add --replay_kl",
        ),  # fmt: skip
        (["--train_file_dir", str(SAMPLE_QA), "--replay_kl", "-1"], "--replay_kl must be at least 0"),
    ],
)
def test_bad_replay_kl_flags_are_one_line_before_anything_loads(extra, message, tiny_model_dir, tmp_path, capsys):
    argv = ["train", "--model_name_or_path", str(tiny_model_dir), "--output_dir", str(tmp_path / "o"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "o").exists()


# --- the KL term itself ----------------------------------------------------------------------------------------
def _batch(vocab: int) -> tuple[dict, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (2, 24), generator=g)
    sources = torch.zeros_like(ids)
    sources[0, 10:] = 1  # general tokens in row 0 only: the base forward runs on that row alone
    return {"input_ids": ids, "labels": ids.clone()}, sources


def _loss(objective, model, inputs, sources) -> torch.Tensor:
    return objective.loss(model, dict(inputs), sources, None)


def _lora_model(tiny_model_dir):
    from medpt.args import LoraArguments
    from medpt.args.resolve import load_config
    from medpt.model.loading import load_model
    from medpt.train.lora import add_lora

    config = load_config(["--model_name_or_path", str(tiny_model_dir)], "train")
    base = load_model(config.model, torch.float32)
    return add_lora(base, LoraArguments(lora_rank=4, lora_dropout=0.0), gradient_checkpointing=False).train()


def test_kl_is_zero_for_a_zero_adapter_and_positive_otherwise_its_gradient_only_in_lora(tiny_model_dir):
    from medpt.train.replay_kl import SourceObjective

    model = _lora_model(tiny_model_dir)
    inputs, sources = _batch(model.config.vocab_size)
    with_kl = SourceObjective(("medical", "general"), 1.0, ["general"], model)
    without = SourceObjective(("medical", "general"), 0.0, [], model)
    assert with_kl.reference is None  # LoRA: the base is the same weights, adapter off
    # 1. LoRA B starts at zero: the adapted model is the base, KL(base ‖ adapted) = 0
    assert _loss(with_kl, model, inputs, sources).item() == _loss(without, model, inputs, sources).item()
    assert with_kl.logs(lambda t: t)["train_replay_kl"] == 0.0
    # 2. a non-zero adapter: KL > 0, and its gradient reaches the LoRA weights and nothing else
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    model.zero_grad()
    kl = _loss(with_kl, model, inputs, sources) - _loss(without, model, inputs, sources)
    assert kl.item() > 0 and with_kl.logs(lambda t: t)["train_replay_kl"] > 0
    kl.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is None for n, g in grads.items() if "lora_" not in n)  # the frozen base: no gradient at all
    assert all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "lora_A" in n or "lora_B" in n)


def test_full_fine_tuning_compares_with_a_frozen_copy_that_gets_no_gradient(tiny_model_dir):
    from medpt.args.resolve import load_config
    from medpt.model.loading import load_model
    from medpt.train.replay_kl import SourceObjective

    model = load_model(load_config(["--model_name_or_path", str(tiny_model_dir)], "train").model, torch.float32)
    inputs, sources = _batch(model.config.vocab_size)
    objective = SourceObjective(("medical", "general"), 1.0, ["general"], model)
    without = SourceObjective(("medical", "general"), 0.0, [], model)
    assert objective.reference is not None and objective.reference is not model
    assert _loss(objective, model, inputs, sources).item() == pytest.approx(
        _loss(without, model, inputs, sources).item()
    )
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.add_(0.05)  # the trained model moves; the copy must not
    kl = _loss(objective, model, inputs, sources) - _loss(without, model, inputs, sources)
    assert kl.item() > 0
    kl.backward()
    assert all(p.grad is None for p in objective.reference.parameters())
    assert model.model.layers[0].mlp.down_proj.weight.grad.abs().sum() > 0
