"""Training on the tiny model, on the CPU: artifacts, resuming, crash safety, the reference command, methods."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from medpt.cli import main
from medpt.samples import SAMPLE_QA
from tests.test_config import SEED_COMMAND


def _run(model_dir: Path, out: Path, *extra: str) -> int:
    argv = ["train", "--model_name_or_path", str(model_dir), "--train_file_dir", str(SAMPLE_QA),
            "--validation_split_percentage", "10", "--block_size", "64", "--per_device_train_batch_size", "4",
            "--per_device_eval_batch_size", "8", "--max_steps", "6", "--learning_rate", "3e-3", "--logging_steps", "1",
            "--output_dir", str(out), "--report_to", "none", "--disable_tqdm", "true", "--plot", "false",
            *extra]  # fmt: skip
    return main(argv)


def _losses(out: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_short_run_writes_a_self_describing_output_with_decreasing_loss(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    extra = ["--max_steps", "12", "--eval_strategy", "steps", "--eval_steps", "6", "--save_steps", "4",
             "--save_total_limit", "2", "--do_eval", "--report_to", "tensorboard", "--plot", "true"]  # fmt: skip
    assert _run(tiny_model_dir, out, *extra) == 0
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "medpt_config.yaml",
                 "data_report.json", "train_results.json", "eval_results.json", "all_results.json", "metrics.jsonl",
                 "loss_curve.png", "training_args.json"):  # fmt: skip
        assert (out / name).is_file(), name
    assert list((out / "runs").rglob("events.out.tfevents.*"))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-12", "checkpoint-8"]  # pruned to 2
    assert not (out / ".staging").exists() or not any((out / ".staging").iterdir())
    losses = _losses(out)
    assert len(losses) == 12 and all(math.isfinite(v) for v in losses.values())
    assert sum(list(losses.values())[-3:]) < sum(list(losses.values())[:3])
    evals = json.loads((out / "eval_results.json").read_text())
    assert evals["eval_perplexity"] == pytest.approx(math.exp(evals["eval_loss"]))
    assert 0 <= evals["eval_token_accuracy"] <= 1
    logged = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("eval_loss" in r and r["step"] == 6 for r in logged)
    assert any(r.get("tokens_per_second", 0) > 0 for r in logged)
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 8


def test_named_eval_sets_are_reported_side_by_side_while_training_and_at_the_end(tiny_model_dir, tmp_path):
    from medpt.samples import SAMPLE_GENERAL

    out = tmp_path / "run"
    extra = ["--max_steps", "4", "--eval_strategy", "steps", "--eval_steps", "2", "--do_eval", "--save_strategy",
             "no", "--eval_sets", f"general={SAMPLE_GENERAL}", f"medical={SAMPLE_QA}"]  # fmt: skip
    assert _run(tiny_model_dir, out, *extra) == 0
    evals = json.loads((out / "eval_results.json").read_text())
    for name in ("valid", "general", "medical"):
        loss = evals[f"eval_{name}_loss"]
        assert math.isfinite(loss) and evals[f"eval_{name}_perplexity"] == pytest.approx(math.exp(loss))
        assert 0 <= evals[f"eval_{name}_token_accuracy"] <= 1
    assert evals["eval_general_loss"] != evals["eval_medical_loss"]
    logged = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["step"] for r in logged if "eval_general_loss" in r} >= {2, 4}


def test_stock_peft_loads_the_adapter_and_it_changes_the_logits(tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    assert _run(tiny_model_dir, out) == 0
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.tensor([[0, 10, 20, 30, 40]])
    with torch.no_grad():
        before = base(ids).logits
        tuned = PeftModel.from_pretrained(base, out)
        after = tuned(ids).logits
    assert (after - before).abs().max() > 1e-4


def test_resume_after_a_crash_logs_the_same_losses(tiny_model_dir, tmp_path, monkeypatch):
    from medpt.train.trainer import MedptTrainer

    straight = tmp_path / "straight"
    assert _run(tiny_model_dir, straight, "--save_steps", "3") == 0
    crashed = tmp_path / "crashed"
    original = MedptTrainer.training_step

    def crash_in_step_5(self, *a, **k):
        if self.state.global_step == 4:
            raise RuntimeError("simulated crash")
        return original(self, *a, **k)

    monkeypatch.setattr(MedptTrainer, "training_step", crash_in_step_5)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(tiny_model_dir, crashed, "--save_steps", "3")
    monkeypatch.undo()
    assert [p.name for p in crashed.glob("checkpoint-*")] == ["checkpoint-3"]
    assert _run(tiny_model_dir, crashed, "--save_steps", "3") == 0  # same command: resumes automatically
    a, b = _losses(straight), _losses(crashed)
    assert sorted(b) == [1, 2, 3, 4, 5, 6]
    for step in (4, 5, 6):
        assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-6)
    # each step logged once (the crashed session's step 4 was dropped when resuming from checkpoint-3) ...
    rows = [json.loads(x) for x in (crashed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6]
    # ... and train_loss averages the whole run, not only the 3 resumed steps
    whole = json.loads((straight / "train_results.json").read_text())["train_loss"]
    resumed = json.loads((crashed / "train_results.json").read_text())
    assert resumed["train_loss"] == pytest.approx(whole, rel=1e-5)
    assert resumed["train_loss_since_resume"] == pytest.approx(sum(a[s] for s in (4, 5, 6)) / 3, rel=1e-5)
    assert resumed["train_loss_steps"] == 6 and resumed["train_loss_unlogged_steps"] == 0


def test_a_kill_while_saving_leaves_no_checkpoint_to_resume_from(tiny_model_dir, tmp_path, monkeypatch):
    from transformers import Trainer

    out = tmp_path / "run"

    def killed(self, output_dir):
        raise KeyboardInterrupt  # dies after the weights, before the optimizer state

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", killed)
    assert _run(tiny_model_dir, out, "--save_steps", "3") == 130  # medpt's exit status for an interrupt
    monkeypatch.undo()
    assert not list(out.glob("checkpoint-*"))  # the half-written one stayed in .staging
    assert _run(tiny_model_dir, out, "--save_steps", "3", "--overwrite_output_dir") == 0
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]


def test_nan_loss_stops_the_run_naming_the_step_and_last_good_checkpoint(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from transformers import Trainer

    original = Trainer.training_step

    def nan_at_step_5(self, *a, **k):
        loss = original(self, *a, **k)
        return loss * float("nan") if self.state.global_step == 4 else loss

    monkeypatch.setattr(Trainer, "training_step", nan_at_step_5)
    out = tmp_path / "run"
    assert _run(tiny_model_dir, out, "--save_steps", "2") == 2
    err = capsys.readouterr().err
    assert "loss became nan at step 5" in err and "checkpoint-4" in err
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]


def test_refuses_to_clobber_a_finished_run(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(tiny_model_dir, out, "--max_steps", "2", "--save_strategy", "no") == 0
    assert _run(tiny_model_dir, out, "--max_steps", "2", "--save_strategy", "no") == 2
    assert "already holds a run" in capsys.readouterr().err
    assert _run(tiny_model_dir, out, "--max_steps", "2", "--save_strategy", "no", "--overwrite_output_dir") == 0


def test_the_reference_command_trains_with_only_model_and_data_swapped(tiny_model_dir, tmp_path):
    argv = list(SEED_COMMAND)
    argv[argv.index("--model_name_or_path") + 1] = str(tiny_model_dir)
    i = argv.index("--dataset_name")
    argv[i : i + 2] = ["--train_file_dir", str(SAMPLE_QA)]
    argv[argv.index("--output_dir") + 1] = str(tmp_path / "seed-run")
    assert main(["train", *argv, "--report_to", "none", "--disable_tqdm", "true"]) == 0
    out = tmp_path / "seed-run"
    config = (out / "medpt_config.yaml").read_text()
    assert "lora_rank: 16  # set" in config and "gradient_checkpointing: true" in config
    assert json.loads((out / "adapter_config.json").read_text())["lora_alpha"] == 32
    assert math.isfinite(json.loads((out / "train_results.json").read_text())["train_loss"])


def test_isolated_packing_gives_each_document_the_logits_it_has_alone(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from medpt.data.batches import Collator
    from medpt.data.packing import pack

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa").eval()
    docs = [torch.randint(3, 500, (n,)).numpy() for n in (7, 12, 5)]
    tokens = torch.cat([torch.from_numpy(d) for d in docs]).numpy().astype("int32")
    offsets = torch.tensor([0, 7, 19, 24]).numpy()
    packed = pack(tokens, offsets, 32, "isolated")
    assert len(packed) == 1
    from medpt.data.batches import PackedDataset

    batch = Collator(pad_id=1, mode="isolated", pad_to=32)([PackedDataset(packed)[0]])
    assert "attention_mask" not in batch
    with torch.no_grad():
        # use_cache=False as in training (medpt sets it on the model): transformers only derives the per-document
        # mask from position_ids when no KV cache is in play.
        packed_logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[
            0
        ]
        for d, seg_start in zip(packed.segment_doc.tolist(), packed.segment_offsets[:-1].tolist()):
            alone = model(input_ids=torch.from_numpy(docs[d]).long()[None]).logits[0]
            inside = packed_logits[seg_start : seg_start + len(docs[d])]
            torch.testing.assert_close(inside, alone, atol=1e-5, rtol=1e-5)
    # labels: no loss on the first token of any document, nor on padding
    assert (batch["labels"][0][batch["position_ids"][0] == 0] == -100).all()


@pytest.mark.parametrize("mode", ["concat", "none"])
def test_right_padded_batches_need_no_mask_a_short_row_gets_its_own_logits_and_loss(tiny_model_dir, mode):
    from transformers import AutoModelForCausalLM

    from medpt.data.batches import Collator

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa").eval()
    rows = [torch.randint(3, 500, (n,)).numpy() for n in (16, 9)]
    batch = Collator(pad_id=1, mode=mode, pad_to=16)(
        [{"input_ids": r, "position_ids": np.arange(len(r))} for r in rows]
    )
    assert set(batch) == {"input_ids", "labels", "num_real_tokens"}  # nothing that would cost compile its fast path
    assert batch["num_real_tokens"].item() == 25 and (batch["labels"][1, 9:] == -100).all()
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], labels=batch["labels"], use_cache=False)
        short = model(input_ids=torch.from_numpy(rows[1]).long()[None], use_cache=False).logits[0]
        torch.testing.assert_close(out.logits[1, :9], short, atol=1e-5, rtol=1e-5)
        logits = out.logits[:, :-1].flatten(0, 1)
        targets = batch["labels"][:, 1:].flatten()
        by_hand = torch.nn.functional.cross_entropy(logits, targets, ignore_index=-100)
    torch.testing.assert_close(out.loss, by_hand)
    assert targets.ne(-100).sum() == 15 + 8  # every real next token, none of the padding


def test_methods_full_finetune_rslora_dora_and_modules_to_save(tiny_model_dir, tmp_path):
    from safetensors import safe_open

    full = tmp_path / "full"
    assert _run(tiny_model_dir, full, "--max_steps", "2", "--use_peft", "false") == 0
    assert (full / "model.safetensors").is_file() and not (full / "adapter_config.json").exists()
    from huggingface_hub import ModelCard

    card = ModelCard.load(full / "README.md")  # the run's card, no adapter: transformers loads it
    assert card.data.library_name == "transformers" and "full fine-tuning" in card.text
    lora = tmp_path / "lora"
    extra = ["--max_steps", "2", "--use_rslora", "--use_dora", "--modules_to_save", "embed_tokens,lm_head",
             "--embedding_learning_rate", "1e-4", "--target_modules", "q_proj,v_proj"]  # fmt: skip
    assert _run(tiny_model_dir, lora, *extra) == 0
    cfg = json.loads((lora / "adapter_config.json").read_text())
    assert cfg["use_rslora"] and cfg["use_dora"] and set(cfg["target_modules"]) == {"q_proj", "v_proj"}
    with safe_open(str(lora / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any("embed_tokens" in k for k in keys) and any("lm_head" in k for k in keys)


def test_continue_an_adapter_with_peft_path(tiny_model_dir, tmp_path):
    first = tmp_path / "first"
    assert _run(tiny_model_dir, first, "--max_steps", "2") == 0
    second = tmp_path / "second"
    assert _run(tiny_model_dir, second, "--max_steps", "2", "--peft_path", str(first)) == 0
    assert json.loads((second / "adapter_config.json").read_text())["r"] == 8


def test_qlora_step_on_the_cpu(tiny_model_dir, tmp_path):
    pytest.importorskip("bitsandbytes")
    out = tmp_path / "qlora"
    assert _run(tiny_model_dir, out, "--max_steps", "2", "--qlora", "--gradient_checkpointing", "true") == 0
    assert math.isfinite(json.loads((out / "train_results.json").read_text())["train_loss"])


def test_ctrl_c_saves_a_checkpoint_and_the_same_command_resumes(tiny_model_dir, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    argv = [sys.executable, "-m", "medpt", "train", "--model_name_or_path", str(tiny_model_dir),
            "--train_file_dir", str(SAMPLE_QA), "--block_size", "64", "--per_device_train_batch_size", "4",
            "--max_steps", "400", "--logging_steps", "1", "--save_steps", "1000", "--output_dir", str(out),
            "--report_to", "none", "--disable_tqdm", "true", "--plot", "false"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.time() + 300
    while time.time() < deadline and len(_losses(out) if (out / "metrics.jsonl").is_file() else {}) < 3:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, output[-2000:]
    assert "saving a checkpoint" in output and "Run the same command again to resume" in output
    saved = sorted(out.glob("checkpoint-*"))
    assert len(saved) == 1 and int(saved[0].name.split("-")[1]) >= 3
    at = argv.index("--max_steps") + 1
    more = [*argv[:at], str(int(saved[0].name.split("-")[1]) + 2), *argv[at + 1 :]]
    done = subprocess.run(more, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming from" in done.stdout


def test_the_shipped_tiny_cpu_config_trains(tiny_model_dir, tmp_path):
    config = Path(__file__).parents[1] / "configs" / "tiny-cpu.yaml"
    out = tmp_path / "tiny-cpu"
    flags = ["--model_name_or_path", str(tiny_model_dir), "--output_dir", str(out), "--max_steps", "3",
             "--train_file_dir", str(SAMPLE_QA), "--report_to", "none", "--disable_tqdm", "true"]  # fmt: skip
    assert main(["train", str(config), *flags]) == 0
    saved = (out / "medpt_config.yaml").read_text()
    assert "lora_rank: 16  # set" in saved and "block_size: 256  # set" in saved


def test_gradient_checkpointing_flag_reaches_the_trainer_non_reentrant_without_a_deprecation_warning(recwarn):
    from medpt.args.resolve import load_config
    from medpt.train.recipe import training_arguments

    args = training_arguments(load_config(["--output_dir", "x", "--gradient_checkpointing", "true"], "train"))
    assert args.gradient_checkpointing is True
    kwargs = getattr(args, "activation_checkpointing_kwargs", None) or args.gradient_checkpointing_kwargs
    assert kwargs == {"use_reentrant": False}
    assert not [w for w in recwarn if "checkpointing" in str(w.message)]


def test_named_sources_are_evaluated_each_on_its_own_during_and_after_training(tiny_model_dir, tmp_path):
    from medpt.samples import SAMPLE_GENERAL

    out = tmp_path / "run"
    extra = ["--train_file_dir", f"medical={SAMPLE_QA}", f"general={SAMPLE_GENERAL}", "--mix",
             "medical=0.9,general=0.1", "--max_steps", "4", "--eval_strategy", "steps", "--eval_steps", "2",
             "--do_eval", "--save_strategy", "no"]  # fmt: skip
    assert _run(tiny_model_dir, out, *extra) == 0
    logged = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    for name in ("medical", "general"):
        assert {r["step"] for r in logged if f"eval_{name}_perplexity" in r} >= {2, 4}
    evals = json.loads((out / "eval_results.json").read_text())
    assert "eval_loss" not in evals and evals["eval_general_loss"] != evals["eval_medical_loss"]
    shares = json.loads((out / "data_report.json").read_text())["sources"]
    assert abs(shares["general"]["mix"]["achieved_share"] - 0.1) < 0.01
    assert main(["eval", "--adapter", str(out)]) == 0  # the run's own sources, each a row
    results = json.loads((out / "eval" / "eval_results.json").read_text())
    assert set(results["sets"]) == {"medical", "general"}
    assert main(["report", str(out)]) == 0  # the forgetting chart and the per-source shares
    page = (out / "report.html").read_text()
    assert "Forgetting chart" in page and "share asked" in page and "90.0%" in page
    assert (out / "report_forgetting.png").stat().st_size > 1000
