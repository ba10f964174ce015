"""A run killed (SIGKILL: no cleanup) after its first checkpoint: no final adapter, no all_results.json. `medpt report`
and `medpt eval --adapter RUN` work on it, from its latest checkpoint, and say that it was stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medpt.cli import main
from medpt.samples import SAMPLE_QA


def _train_argv(model_dir: Path, out: Path, max_steps: int, *extra: str) -> list[str]:
    return ["train", "--model_name_or_path", str(model_dir), "--train_file_dir", str(SAMPLE_QA),
            "--validation_split_percentage", "10", "--block_size", "64", "--per_device_train_batch_size", "4",
            "--max_steps", str(max_steps), "--save_steps", "2", "--logging_steps", "1", "--learning_rate", "3e-3",
            "--output_dir", str(out), "--report_to", "none", "--disable_tqdm", "true", "--plot", "false",
            *extra]  # fmt: skip


def _killed_after_first_checkpoint(model_dir: Path, out: Path, *extra: str) -> int:
    """Train with a checkpoint every 2 steps and far more steps than the test waits for; SIGKILL the process as soon
    as checkpoint-2 is there (a checkpoint appears whole, by a rename). Returns the step of the latest checkpoint."""
    argv = [sys.executable, "-m", "medpt", *_train_argv(model_dir, out, 5000, *extra)]
    src = str(Path(__file__).parents[1] / "src")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 300
    while not (out / "checkpoint-2").is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err[-3000:]
    steps = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    assert steps and steps[0] == 2, (steps, err[-3000:])
    assert not (out / "all_results.json").exists() and not (out / "adapter_model.safetensors").exists()
    return steps[-1]


def _evaluated_line(run: Path, step: int, capsys: pytest.CaptureFixture) -> dict:
    """`medpt eval --adapter RUN` on the stopped run: exit 0, one line saying so, results in RUN/eval."""
    assert main(["eval", "--adapter", str(run)]) == 0
    out = capsys.readouterr().out
    checkpoint = run / f"checkpoint-{step}"
    expected = f"{run} was stopped at step {step} (no final adapter): evaluating its latest checkpoint, {checkpoint}"
    assert [line for line in out.splitlines() if "was stopped" in line] == [expected], out
    results = json.loads((run / "eval" / "eval_results.json").read_text(encoding="utf-8"))
    assert results["adapter"] == str(checkpoint) and results["stopped_at_step"] == step
    loss = results["sets"]["validation"]
    assert loss["adapted"]["loss"] != loss["base"]["loss"]  # the checkpoint's weights were the ones evaluated
    assert not (run / "README.md").exists()  # the model card describes a run's final adapter; this one has none
    return results


@pytest.mark.slow
def test_report_and_eval_work_on_a_lora_run_killed_after_its_first_checkpoint(tiny_model_dir, tmp_path, capsys):
    run = tmp_path / "run"
    step = _killed_after_first_checkpoint(tiny_model_dir, run)
    checkpoint = run / f"checkpoint-{step}"
    # Each checkpoint describes the run it belongs to, as the run does.
    for name in ("medpt_config.yaml", "base_model.json", "training_args.json"):
        assert (checkpoint / name).read_bytes() == (run / name).read_bytes(), name

    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    expected = f"{run} was stopped at step {step} (no final adapter): reporting its latest checkpoint, {checkpoint}"
    assert [line for line in out.splitlines() if "was stopped" in line] == [expected], out
    for page in ("report.md", "report.html"):
        assert f"stopped at step {step} of 5,000" in (run / page).read_text(encoding="utf-8"), page

    _evaluated_line(run, step, capsys)
    assert main(["report", str(run)]) == 0  # the page now shows the evaluation, and still says the run was stopped
    capsys.readouterr()
    page = (run / "report.md").read_text(encoding="utf-8")
    assert "Base vs adapted" in page and f"stopped at step {step}" in page

    # RUN/eval does not stand in the way of the run: the same train command continues it, and it is then finished.
    assert main(_train_argv(tiny_model_dir, run, step + 2)) == 0
    assert main(["report", str(run)]) == 0
    assert "was stopped" not in capsys.readouterr().out
    assert "stopped at step" not in (run / "report.md").read_text(encoding="utf-8")


@pytest.mark.slow
def test_eval_works_on_a_full_finetune_killed_after_its_first_checkpoint(tiny_model_dir, tmp_path, capsys):
    run = tmp_path / "run"
    step = _killed_after_first_checkpoint(tiny_model_dir, run, "--use_peft", "false")
    assert (run / f"checkpoint-{step}" / "medpt_config.yaml").is_file()
    _evaluated_line(run, step, capsys)
