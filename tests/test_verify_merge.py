"""verify catches a zero-B adapter and a wrong base; merge gives the logits of base + adapter."""

import json
import shutil

import torch
from safetensors.torch import load_file, save_file

from medpt.cli import main


def test_verify_passes_on_a_trained_adapter(trained_run, capsys):
    assert main(["verify", "--adapter", str(trained_run)]) == 0
    report = json.loads((trained_run / "verify.json").read_text())
    assert report["ok"] and report["max_abs_logit_change"] > 0 and report["trainable_parameters"] > 0
    assert "[ok] LoRA B non-zero" in capsys.readouterr().out


def test_verify_fails_on_an_all_zero_adapter(trained_run, tmp_path, capsys):
    broken = tmp_path / "zero"
    shutil.copytree(trained_run, broken)
    weights = load_file(str(broken / "adapter_model.safetensors"))
    save_file({k: torch.zeros_like(v) if "lora_B" in k else v for k, v in weights.items()},
              str(broken / "adapter_model.safetensors"))  # fmt: skip
    assert main(["verify", "--adapter", str(broken)]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] LoRA B non-zero" in out and "[FAIL] changes the logits" in out


def test_verify_fails_on_a_wrong_base(trained_run, tmp_path, capsys):
    from medpt.data.pipeline import read_texts
    from medpt.model.init_tiny import init_tiny
    from medpt.samples import SAMPLE_QA

    other = tmp_path / "other-base"
    init_tiny(other, "5m", read_texts([str(SAMPLE_QA)]), seed=123)  # same shape, other weights
    assert main(["verify", "--adapter", str(trained_run), "--model_name_or_path", str(other)]) == 1
    assert "is not the base the adapter was trained on" in capsys.readouterr().out


def test_merged_model_has_the_logits_of_base_plus_adapter(trained_run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "merged"
    assert main(["merge", "--adapter", str(trained_run), "--output_dir", str(out), "--torch_dtype", "float32"]) == 0
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert not (out / "adapter_config.json").exists()
    base_name = json.loads((trained_run / "adapter_config.json").read_text())["base_model_name_or_path"]
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_name), str(trained_run)).eval()
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(3, 500, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, reference(ids).logits, atol=1e-5, rtol=1e-5)


def test_merge_refuses_a_non_empty_directory(trained_run, tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["merge", "--adapter", str(trained_run), "--output_dir", str(out)]) == 2
    assert "is not empty; pass --overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
    # --overwrite replaces only a merged model medpt wrote: the user's file is never deleted
    assert main(["merge", "--adapter", str(trained_run), "--output_dir", str(out), "--overwrite"]) == 2
    assert "must hold nothing else" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
    merged = tmp_path / "merged"
    assert main(["merge", "--adapter", str(trained_run), "--output_dir", str(merged)]) == 0
    assert main(["merge", "--adapter", str(trained_run), "--output_dir", str(merged)]) == 2
    assert main(["merge", "--adapter", str(trained_run), "--output_dir", str(merged), "--overwrite"]) == 0
    assert (merged / "model.safetensors").is_file()


def test_merge_needs_an_output_dir(trained_run, capsys):
    assert main(["merge", "--adapter", str(trained_run)]) == 2
    assert "merge needs --output_dir" in capsys.readouterr().err
