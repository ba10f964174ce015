"""Golden losses: the first 10 training losses of a seeded tiny LoRA run, pinned (torchtune pins its recipes' losses
the same way). Any change to the data pipeline (rendering, tokenizing, packing, order), the LoRA setup (init, dropout,
targets) or the training math (loss, optimizer, schedule) moves them; a refactor must not.

fp32 on purpose: bf16 would make the numbers depend on whether the CPU has native bf16. rtol 1e-5 leaves room for the
summation order of different CPUs' GEMM kernels (~1e-7 relative per op), not for a changed computation.
If a change is *meant* to move them, update GOLDEN in the same commit and say why in its message.
"""

from __future__ import annotations

import json

import pytest

from medpt.cli import main
from medpt.samples import SAMPLE_QA

# Recorded on main 1a66198 (torch 2.13.0 CPU, transformers as pinned by scripts/setup.sh), step 1 .. 10.
GOLDEN = [8.740092277526855, 8.769957542419434, 8.76988410949707, 8.77193546295166, 8.785400390625,
          8.723280906677246, 8.672126770019531, 8.665823936462402, 8.641833305358887, 8.652655601501465]  # fmt: skip


def test_the_first_ten_losses_of_a_seeded_tiny_run_are_pinned(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--model_name_or_path", str(tiny_model_dir), "--train_file_dir", str(SAMPLE_QA),
            "--validation_split_percentage", "10", "--block_size", "64", "--per_device_train_batch_size", "4",
            "--max_steps", "10", "--learning_rate", "1e-2", "--logging_steps", "1", "--seed", "42",
            "--lora_rank", "16", "--lora_alpha", "32", "--lora_dropout", "0.05", "--target_modules", "all",
            "--bf16", "false", "--save_strategy", "no", "--output_dir", str(out), "--report_to", "none",
            "--disable_tqdm", "true", "--plot", "false"]  # fmt: skip
    assert main(argv) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses == pytest.approx(GOLDEN, rel=1e-5, abs=0)
