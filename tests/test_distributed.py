"""DDP on the CPU: 2 processes over gloo (torchrun) train like 1 process at the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medpt.samples import SAMPLE_QA


def _args(model_dir: Path, out: Path, per_device: int) -> list[str]:
    return ["train", "--model_name_or_path", str(model_dir), "--train_file_dir", str(SAMPLE_QA),
            "--validation_split_percentage", "0", "--block_size", "64",
            "--per_device_train_batch_size", str(per_device),
            "--max_steps", "3", "--learning_rate", "3e-3", "--logging_steps", "1", "--lora_dropout", "0",
            "--output_dir", str(out), "--report_to", "none", "--disable_tqdm", "true", "--plot", "false",
            "--save_strategy", "no"]  # fmt: skip


def _losses(out: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tiny_model_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MEDPT_CACHE": str(tmp_path / "cache")}
    one = subprocess.run([sys.executable, "-m", "medpt", *_args(tiny_model_dir, tmp_path / "one", 4)],
                         capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
         "-m", "medpt", *_args(tiny_model_dir, tmp_path / "ddp", 2)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "2 process(es) × 2" in ddp.stdout
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "ddp")
    assert len(a) == len(b) == 3
    assert b == pytest.approx(a, rel=1e-4)


@pytest.mark.slow
def test_accelerate_launch_multi_gpu_flag_runs_ddp_over_gloo_on_a_cpu(tiny_model_dir, tmp_path):
    # `accelerate launch --cpu --num_processes 2` silently runs one process; --multi_gpu runs DDP (gloo on a CPU).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MEDPT_CACHE": str(tmp_path / "cache")}
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "29531",
    ]
    run = subprocess.run([*launch, "-m", "medpt", *_args(tiny_model_dir, tmp_path / "acc", 2)],
                         capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("2 process(es) × 2") == 1  # two processes, one log line (rank 0)
    assert len(_losses(tmp_path / "acc")) == 3


@pytest.mark.parametrize(
    "name, kind", [("fsdp", "FSDP"), ("deepspeed_zero2", "DEEPSPEED"), ("deepspeed_zero3", "DEEPSPEED")]
)
def test_shipped_accelerate_configs_parse_and_use_known_options(name, kind):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    path = Path(__file__).parents[1] / "configs" / "accelerate" / f"{name}.yaml"
    config = load_config_from_file(str(path))
    assert config.distributed_type.value == kind and config.mixed_precision == "bf16"
    options = {action.dest for action in launch_command_parser()._actions}
    section = config.fsdp_config if kind == "FSDP" else config.deepspeed_config
    unknown = set(section) - options
    assert not unknown, f"{path.name}: options accelerate launch does not know: {unknown}"
