"""Every JSON file medpt writes is strict JSON: a NaN or infinite value (a diverged loss, logits that overflow, an
fp16 gradient norm) is written as null, never as the bare NaN / Infinity that JSON parsers other than Python's
reject. Checked on the files of real runs (train, eval, verify, compare, report) with values forced non-finite, and
on the source: every writer goes through medpt.strictjson."""

from __future__ import annotations

import ast
import json
import math
import shutil
from pathlib import Path

import pytest

from medpt.cli import main
from medpt.samples import SAMPLE_MCQ, SAMPLE_QA, SAMPLE_QUESTIONS
from medpt.strictjson import dumps, finite

SRC = Path(__file__).resolve().parents[1] / "src" / "medpt"


def _refuse(word: str):
    raise AssertionError(f"not JSON: {word}")


def strict_files(folder: Path) -> dict[str, object]:
    """Every .json and .jsonl file under `folder`, parsed by a strict parser (NaN / Infinity raise)."""
    parsed: dict[str, object] = {}
    for path in sorted(folder.rglob("*.json*")):
        if path.suffix not in (".json", ".jsonl") or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        try:
            if path.suffix == ".json":
                parsed[str(path.relative_to(folder))] = json.loads(text, parse_constant=_refuse)
            else:
                rows = [json.loads(x, parse_constant=_refuse) for x in text.splitlines() if x.strip()]
                parsed[str(path.relative_to(folder))] = rows
        except AssertionError as e:
            raise AssertionError(f"{path}: {e}") from None
    return parsed


@pytest.mark.parametrize(
    "value, expected",
    [
        (float("nan"), None),
        (float("inf"), None),
        (-math.inf, None),
        (1.5, 1.5),
        (0, 0),
        (True, True),
        ("NaN", "NaN"),
        (
            {"a": [1.0, float("nan"), (math.inf, 2)], "b": {"c": -math.inf}},
            {"a": [1.0, None, [None, 2]], "b": {"c": None}},
        ),
    ],
)
def test_non_finite_floats_become_null_at_any_depth(value, expected):
    assert finite(value) == expected
    assert json.loads(dumps(value), parse_constant=_refuse) == expected


def test_a_non_finite_value_that_slips_past_is_an_error_not_a_bare_nan():
    class Odd:
        pass

    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        dumps({"x": Odd()}, default=lambda _: float("nan"))


def test_no_json_writer_bypasses_strict_json():
    """json.dump / json.dumps appear only in medpt.strictjson: a new writer cannot forget allow_nan=False."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "strictjson.py" and path.parent == SRC:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in ("dump", "dumps"):
                if isinstance(node.value, ast.Name) and node.value.id == "json":
                    found.append(f"{path.relative_to(SRC)}:{node.lineno}")
            if isinstance(node, ast.ImportFrom) and node.module == "json":
                if any(alias.name in ("dump", "dumps") for alias in node.names):
                    found.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert found == []


@pytest.fixture(scope="module")
def overflowing_model(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with its final norm scaled to 3e38 (finite, the float32 maximum is 3.4e38): its hidden states
    overflow to inf, so every logit is inf or NaN, as an fp16 model's can. Its weights pass every finiteness check."""
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("overflow") / "model"
    shutil.copytree(tiny_model_dir, out)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.model.norm.weight.data.fill_(3e38)
    model.save_pretrained(out)
    return out


def _small_set(tmp_path: Path) -> Path:
    """The first 16 records of the sample: an eval set that costs seconds."""
    lines = SAMPLE_QA.read_text(encoding="utf-8").splitlines()[:16]
    path = tmp_path / "qa.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_eval_of_a_model_whose_logits_overflow_writes_null_not_nan(overflowing_model, tmp_path):
    out = tmp_path / "eval"
    qa = _small_set(tmp_path)
    argv = ["eval", "--model_name_or_path", str(overflowing_model), "--eval_sets", f"qa={qa}", "--mcq_file",
            str(SAMPLE_MCQ), "--max_mcq_questions", "4", "--mcq_scoring", "both", "--output_dir", str(out)]  # fmt: skip
    assert main(argv) == 0
    files = strict_files(out)
    results = files["eval_results.json"]
    assert results["sets"]["qa"]["base"]["loss"] is None and results["sets"]["qa"]["base"]["perplexity"] is None
    rows = files["mcq/medical_mcq_zh.predictions.jsonl"]
    assert len(rows) == 4 and all(v is None for row in rows for v in row["base"]["text"]["logprob"].values())
    assert "| qa |" in (out / "eval.md").read_text(encoding="utf-8")


def test_every_json_file_of_a_run_is_strict_json(trained_run, overflowing_model, tmp_path, capsys):
    """eval (on a base whose logits overflow), verify, compare and report write into one run; none of its files
    holds NaN or Infinity, and the report shows the unmeasured values as n/a."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    argv = ["eval", "--adapter", str(run), "--model_name_or_path", str(overflowing_model), "--allow_base_mismatch",
            "--eval_sets", f"qa={_small_set(tmp_path)}", "--mcq_file", str(SAMPLE_MCQ), "--max_mcq_questions", "3",
            "--mcq_scoring", "both"]  # fmt: skip
    assert main(argv) == 0
    assert main(["verify", "--adapter", str(run)]) == 0
    assert main(["compare", "--adapter", str(run), "--questions", str(SAMPLE_QUESTIONS), "--max_new_tokens", "4"]) == 0
    assert main(["report", str(run)]) == 0
    files = strict_files(run)
    assert {"eval/eval_results.json", "verify.json", "compare/compare.jsonl", "trainer_state.json"} <= set(files)
    sets = files["eval/eval_results.json"]["sets"]
    assert sets["qa"]["base"]["loss"] is None and sets["qa"]["adapted"]["loss"] is None
    assert "n/a" in (run / "report.md").read_text(encoding="utf-8")


def test_a_training_run_with_non_finite_metrics_writes_strict_json(tiny_model_dir, tmp_path, monkeypatch):
    """An fp16 run logs an inf gradient norm on the steps the loss scaler skips, and an eval loss can overflow while
    the training loss does not: both are injected; trainer_state.json (Trainer's log history, in the run and in each
    checkpoint), metrics.jsonl, eval_results.json and all_results.json hold null there."""
    from transformers import Trainer

    from medpt.train.trainer import MedptTrainer

    evaluate = MedptTrainer.evaluate

    def overflowing_eval(self, *args, **kwargs):
        return {**evaluate(self, *args, **kwargs), "eval_loss": math.nan}

    monkeypatch.setattr(Trainer, "_get_grad_norm", lambda self, model, grad_norm=None: float("inf"))
    monkeypatch.setattr(MedptTrainer, "evaluate", overflowing_eval)
    out = tmp_path / "run"
    argv = ["train", "--model_name_or_path", str(tiny_model_dir), "--train_file_dir", str(SAMPLE_QA),
            "--validation_split_percentage", "10", "--block_size", "64", "--per_device_train_batch_size", "4",
            "--max_steps", "4", "--logging_steps", "1", "--save_steps", "2", "--eval_strategy", "steps",
            "--eval_steps", "2", "--do_eval", "--output_dir", str(out), "--report_to", "none", "--disable_tqdm",
            "true", "--plot", "false"]  # fmt: skip
    assert main(argv) == 0
    files = strict_files(out)
    history = files["trainer_state.json"]["log_history"]
    assert [r["grad_norm"] for r in history if "loss" in r] == [None] * 4
    assert files["checkpoint-2/trainer_state.json"]["log_history"][0]["grad_norm"] is None
    assert files["eval_results.json"]["eval_loss"] is None and files["all_results.json"]["eval_loss"] is None
    assert all(math.isfinite(r["loss"]) for r in files["metrics.jsonl"] if "loss" in r)  # the training went on
