"""The run's model card: written by train, rewritten by eval, read back by huggingface_hub, no placeholder left."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from medpt.cli import main
from medpt.report.card import write_card
from medpt.rundir import RunDir
from medpt.samples import SAMPLE_GENERAL

PEFT_PLACEHOLDER = "[More Information Needed]"


def _copy(run: Path, tmp_path: Path) -> Path:
    """A private copy of the shared run (its manifest included), for tests that change it."""
    copy = tmp_path / run.name
    shutil.copytree(run, copy)
    return copy


def test_every_run_gets_a_card_that_huggingface_hub_parses_and_that_says_what_was_done(trained_run, tmp_path):
    run = _copy(trained_run, tmp_path)
    card = ModelCard.load(run / "README.md")
    text = (run / "README.md").read_text(encoding="utf-8")
    assert PEFT_PLACEHOLDER not in text
    assert card.data.library_name == "peft" and "lora" in card.data.tags and "medpt" in card.data.tags
    assert card.data.base_model is None  # a local base folder is no hub id; the text names it instead
    assert str(json.loads((run / "base_model.json").read_text())["name"]) in text
    for heading in ("## What the run did", "## Data", "## Base vs adapted", "## How to use", "## Limits"):
        assert heading in text
    assert "| method | LoRA r 8, alpha 16, dropout 0.05 |" in text
    report = json.loads((run / "data_report.json").read_text())
    assert f"| tokens | {report['train']['tokens']:,} |" in text
    assert "AutoPeftModelForCausalLM" in text and "--enable-lora" in text and "--lora adapter.gguf" in text
    assert RunDir.open(run).entries["README.md"] == "train"


def test_medpt_eval_writes_its_numbers_into_the_model_index(trained_run, tmp_path):
    from medpt.samples import SAMPLE_MCQ

    run = _copy(trained_run, tmp_path)
    argv = ["eval", "--adapter", str(run), "--eval_sets", f"general={SAMPLE_GENERAL}", "--mcq",
            f"sample={SAMPLE_MCQ}", "--max_mcq_questions", "12", "--bootstrap_resamples", "1000"]  # fmt: skip
    assert main(argv) == 0
    results = json.loads((run / "eval" / "eval_results.json").read_text())
    card = ModelCard.load(run / "README.md")
    assert card.data.model_name == run.name
    by_set = {(r.dataset_name, r.metric_type, r.metric_config): r for r in card.data.eval_results}
    for name, r in results["sets"].items():
        entry = by_set[(name, "perplexity", None)]
        assert entry.metric_value == pytest.approx(r["adapted"]["perplexity"], abs=1e-4)
        assert entry.metric_args["base"] == pytest.approx(r["base"]["perplexity"], abs=1e-4)
        assert entry.metric_args["change_ci95"] == pytest.approx(r["perplexity_change_ci"])
        assert "95% CI" in entry.metric_name
    for mode, m in results["mcq"]["benchmarks"]["sample"]["modes"].items():
        entry = by_set[("sample", "accuracy", mode)]
        assert entry.metric_value == pytest.approx(m["accuracy"]["adapted"], abs=1e-4)
        assert entry.metric_args["delta_ci95"] == pytest.approx(m["ci"])
        assert entry.metric_args["ci95"] == pytest.approx(m["accuracy_ci"]["adapted"])
        assert entry.metric_args["base_ci95"] == pytest.approx(m["accuracy_ci"]["base"])
        low, high = m["accuracy_ci"]["adapted"]
        assert f"95% interval [{low:.1%}, {high:.1%}]" in entry.metric_name
    text = (run / "README.md").read_text(encoding="utf-8")
    assert "**Forgetting** (general: general text): perplexity" in text
    assert "| general |" in text and PEFT_PLACEHOLDER not in text


def test_the_card_copies_license_and_language_from_the_base_models_card(trained_run, tiny_model_dir, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    (base / "README.md").write_text("---\nlicense: apache-2.0\nlanguage:\n- zh\n- en\n---\n\n# a base\n")
    run = _copy(trained_run, tmp_path)
    config = run / "medpt_config.yaml"
    lines = config.read_text().splitlines()
    config.write_text("\n".join(f"model_name_or_path: {base}" if x.startswith("model_name_or_path:") else x
                                for x in lines) + "\n")  # fmt: skip
    write_card(run)
    card = ModelCard.load(run / "README.md")
    assert card.data.license == "apache-2.0" and card.data.language == ["zh", "en"]


def test_a_readme_medpt_did_not_write_is_left_alone(trained_run, tmp_path, capsys):
    run = _copy(trained_run, tmp_path)
    RunDir.open(run).forget(["README.md"])
    (run / "README.md").write_text("my own notes\n")
    assert write_card(run) is None
    assert (run / "README.md").read_text() == "my own notes\n"
    assert "was not written by medpt; left as it is" in capsys.readouterr().out


def test_hub_datasets_go_into_the_metadata_local_folders_do_not(trained_run, tmp_path):
    run = _copy(trained_run, tmp_path)
    config = run / "medpt_config.yaml"
    text = config.read_text().replace("dataset_name: null", f"dataset_name: [shibing624/medical, {tmp_path}]")
    config.write_text(text)
    write_card(run)
    assert ModelCard.load(run / "README.md").data.datasets == ["shibing624/medical"]
