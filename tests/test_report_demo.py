"""The report of a run, and the offline demo end to end."""

import json

import pytest

from medpt.cli import main
from medpt.samples import SAMPLE_GENERAL, SAMPLE_MCQ, SAMPLE_QUESTIONS


def test_report_gathers_config_data_curves_eval_verify_and_answers(trained_run):
    flags = ["--eval_sets", f"general={SAMPLE_GENERAL}", "--mcq_file", str(SAMPLE_MCQ), "--mcq_scoring", "letter"]
    assert main(["eval", "--adapter", str(trained_run), *flags]) == 0
    assert main(["verify", "--adapter", str(trained_run)]) == 0
    flags = ["--adapter", str(trained_run), "--questions", str(SAMPLE_QUESTIONS), "--max_new_tokens", "6"]
    assert main(["compare", *flags]) == 0
    assert main(["report", str(trained_run)]) == 0
    page = (trained_run / "report.html").read_text()
    for expected in ("medpt run: run", "block_size: 64  # set", "records read", "data:image/png;base64,",
                     "Base vs adapted", "<td>general</td>", "Adapter verification", "LoRA B non-zero",
                     "Answers, base vs adapted", "Multiple choice, letter scoring",
                     "alt='multiple choice: accuracy and Δ, 95% intervals' src='data:image/png;base64,"):  # fmt: skip
        assert expected in page, expected
    assert "http" not in page.split("<body>")[-1].replace("https://", "")  # nothing fetched from the network
    md = (trained_run / "report.md").read_text()
    assert "| validation |" in md and "![loss curves](loss_curve.png)" in md
    assert "](report_mcq_ci.png)" in md and (trained_run / "report_mcq_ci.png").stat().st_size > 1000


def test_report_of_a_non_run_says_so(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "is not a medpt run" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, capsys):
    assert main(["demo", "--output_dir", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "[6/6] report" in out and "Held-out perplexity" in out
    run = tmp_path / "demo" / "run"
    for name in ("adapter_model.safetensors", "report.html", "report.md", "verify.json", "loss_curve.png"):
        assert (run / name).is_file(), name
    results = json.loads((run / "eval" / "eval_results.json").read_text())
    held = results["sets"]["validation"]
    assert held["adapted"]["perplexity"] < held["base"]["perplexity"]
    assert {"validation", "general"} == set(results["sets"])
    assert results["mcq"]["benchmarks"]["medical_mcq_zh"]["questions"] == 40
