"""--adapter_scale: 0 is the base and 1 the adapter as trained, in eval (the frontier), merge and export; a scale in
between is PEFT's own update scaled (its per-layer `scaling`, set here by hand as the reference)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from medpt.cli import main

IDS = torch.randint(3, 500, (2, 24), generator=torch.Generator().manual_seed(0))


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


@pytest.fixture(scope="module")
def references(trained_run):
    """Logits of the base, of the adapter, and of the adapter with every LoRA scaling halved by hand."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM

    base_name = json.loads((trained_run / "adapter_config.json").read_text())["base_model_name_or_path"]
    base = _logits(AutoModelForCausalLM.from_pretrained(base_name).eval())
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_name), str(trained_run)).eval()
    adapted = _logits(model)
    for layer in model.modules():
        if isinstance(layer, LoraLayer):
            layer.scaling["default"] = layer.scaling["default"] * 0.5
    return {0.0: base, 1.0: adapted, 0.5: _logits(model)}


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scale", [0.0, 0.5, 1.0])
def test_eval_merge_and_export_apply_the_scale(scale, trained_run, references, tmp_path):
    from transformers import AutoModelForCausalLM

    from medpt.args.resolve import load_config
    from medpt.model.adapter import load_variants

    assert not torch.equal(references[0.0], references[1.0])  # the adapter changes the logits
    # eval: the adapted variant at this scale (the base variant stays the base)
    config = load_config(["--adapter", str(trained_run), "--adapter_scale", f"{scale:g}"], command="eval")
    variants = load_variants(config, log=lambda *_: None)
    with variants.use("adapted") as model:
        _close(_logits(model), references[scale])
    with variants.use("base") as model:
        _close(_logits(model), references[0.0])
    # merge: the scaled update folded into the weights
    merged = tmp_path / "merged"
    argv = ["merge", "--adapter", str(trained_run), "--output_dir", str(merged), "--torch_dtype", "float32"]
    assert main([*argv, "--adapter_scale", f"{scale:g}"]) == 0
    _close(_logits(AutoModelForCausalLM.from_pretrained(merged).eval()), references[scale])
    assert json.loads((merged / "medpt_merge.json").read_text())["adapter_scale"] == scale
    # export for vLLM: the adapter itself, the scale folded into its alpha
    exported = tmp_path / "vllm"
    argv = ["export", "--adapter", str(trained_run), "--target", "vllm", "--output_dir", str(exported)]
    assert main([*argv, "--adapter_scale", f"{scale:g}"]) == 0
    _close(_logits(_peft(exported / "adapter")), references[scale])
    assert json.loads((exported / "export.json").read_text())["adapter_scale"] == scale


def _peft(adapter):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter)).eval()


def test_eval_prints_the_frontier_and_report_draws_it(trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)  # eval and report write into the run: leave the shared one alone
    assert main(["eval", "--adapter", str(run), "--adapter_scale", "0,0.5,1", "--bootstrap_resamples", "1000"]) == 0
    results = json.loads((run / "eval" / "eval_results.json").read_text())
    (name, main_row), rows = next(iter(results["sets"].items())), results["frontier"]
    assert [r["scale"] for r in rows] == [0, 0.5, 1]
    assert rows[0]["sets"][name]["perplexity"] == pytest.approx(main_row["base"]["perplexity"], rel=1e-9)
    assert rows[0]["sets"][name]["perplexity_change"] == pytest.approx(0, abs=1e-9)
    assert rows[2]["sets"][name]["perplexity"] == pytest.approx(main_row["adapted"]["perplexity"], rel=1e-9)
    low, high = rows[1]["sets"][name]["perplexity_change_ci"]
    assert low <= rows[1]["sets"][name]["perplexity_change"] <= high
    assert "| adapter scale |" in capsys.readouterr().out
    assert main(["report", str(run)]) == 0
    assert (run / "report_frontier.png").stat().st_size > 1000
    assert "Adapter-scale frontier" in (run / "report.html").read_text()


@pytest.mark.parametrize(
    "command, scale, message",
    [
        ("merge", "0.5,1", "--adapter_scale takes one value for merge"),
        ("export", "0.5,1", "--adapter_scale takes one value for export"),
        ("eval", "-1", "--adapter_scale takes numbers ≥ 0"),
        ("eval", "x", "--adapter_scale takes a number"),
    ],
)
def test_a_bad_adapter_scale_is_one_line(command, scale, message, trained_run, tmp_path, capsys):
    extra = {"export": ["--target", "vllm"]}.get(command, [])
    argv = [command, "--adapter", str(trained_run), "--output_dir", str(tmp_path / "o"), *extra]
    assert main([*argv, "--adapter_scale", scale]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "o").exists()
