"""The tiny offline model: LLaMA architecture, safetensors, loadable by the Auto classes with no network."""

import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from medpt.model.loading import TokenizerSource


def test_tiny_model_loads_offline_with_auto_classes(tiny_model_dir):
    assert (tiny_model_dir / "model.safetensors").is_file()
    assert not list(tiny_model_dir.glob("*.bin"))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert not model.config.tie_word_embeddings  # untied head, like deepseek-coder-7b-base-v1.5
    ids = tokenizer("问:高血压怎么办？", return_tensors="pt").input_ids
    assert ids[0, 0].item() == tokenizer.bos_token_id
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], model.config.vocab_size) and torch.isfinite(logits).all()
    info = json.loads((tiny_model_dir / "medpt_tiny.json").read_text())
    assert 3e6 < info["parameters"] < 8e6 and model.config.vocab_size % 64 == 0


def test_tokenizer_round_trips_any_text(tokenizer):
    for text in ["问:头痛\n答:休息。\n", "mixed 中英 text  with  spaces", "罕见字：龘靐齉 😀"]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text


def test_tokenizer_fingerprint_is_the_files_not_the_path(tokenizer_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tokenizer_dir, copy)
    assert TokenizerSource(str(copy)).fingerprint() == TokenizerSource(str(tokenizer_dir)).fingerprint()
