"""medpt export: every cell of the target × adapter table (refused with the engine's reason, or converted and
checked by value), and the GGUF round trip through llama.cpp (llama-cpp-python; those tests skip without it)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from medpt.cli import main
from medpt.export.command import TARGETS
from medpt.export.plan import FEATURES
from medpt.samples import SAMPLE_QA

gguf = pytest.importorskip("gguf")
needs_llama_cpp = pytest.mark.skipif(
    not __import__("medpt.export.probe", fromlist=["x"]).llama_cpp_available(),
    reason="llama-cpp-python not installed (pip install 'medpt[llamacpp]')",
)
KINDS = {"lora": [], "rslora": ["--use_rslora", "true"], "dora": ["--use_dora", "true"],
         "modules_to_save": ["--modules_to_save", "embed_tokens,lm_head"]}  # fmt: skip
PROBE_TEXTS = [
    "问:高血压患者每天应该吃多少盐？\n答:每日食盐不超过5克。",
    "糖尿病 patients 需要 monitor 血糖 120mg/dL；",
    "\n\n  ㈠ 胸痛 ✓",
]


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One short run per adapter kind (3 steps: enough for non-zero B, magnitudes and embeddings)."""
    runs = {}
    cache = tmp_path_factory.mktemp("cache")
    for kind, extra in KINDS.items():
        out = tmp_path_factory.mktemp("adapters") / kind
        argv = ["train", "--model_name_or_path", str(tiny_model_dir), "--train_file_dir", str(SAMPLE_QA),
                "--validation_split_percentage", "10", "--block_size", "64", "--per_device_train_batch_size", "4",
                "--max_steps", "3", "--learning_rate", "1e-2", "--lora_rank", "8", "--output_dir", str(out),
                "--data_cache_dir", str(cache), "--report_to", "none", "--disable_tqdm", "true", "--plot", "false",
                "--save_strategy", "no", "--eval_strategy", "no", *extra]  # fmt: skip
        assert main(argv) == 0
        runs[kind] = out
    return runs


def _export(adapter: Path, target: str, out: Path, *extra: str) -> int:
    return main(["export", "--adapter", str(adapter), "--target", target, "--output_dir", str(out), *extra])


def _peft(adapter: Path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter)).eval()


IDS = torch.randint(3, 500, (2, 24), generator=torch.Generator().manual_seed(0))


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


# --- the table: every cell ------------------------------------------------------------------------------------------
# (target, adapter kind, what happens: the action, and for a refusal the engine's words and the target that works)
TABLE = [
    ("vllm", "lora", "as_is", None),
    ("vllm", "rslora", "as_is", None),
    ("vllm", "dora", "refuse", ("vLLM does not yet support DoRA", "merged")),
    ("vllm", "modules_to_save", "refuse", ("vLLM only supports modules_to_save being None", "merged")),
    ("sglang", "lora", "as_is", None),
    ("sglang", "rslora", "rescale_alpha", None),
    ("sglang", "dora", "refuse", ("SGLang applies no DoRA magnitude vectors", "merged")),
    ("sglang", "modules_to_save", "refuse", ("would silently not be served", "merged")),
    ("llamacpp", "lora", "as_is", None),
    ("llamacpp", "rslora", "rescale_alpha", None),
    ("llamacpp", "dora", "refuse", ("stops at lora_magnitude_vector tensors", "gguf")),
    ("llamacpp", "modules_to_save", "refuse", ("stops at full embed_tokens/lm_head tensors", "gguf")),
    *[("merged", kind, "merge", None) for kind in KINDS],
    *[("gguf", kind, "merge", None) for kind in KINDS],
]


def test_the_table_covers_every_target_and_feature():
    assert {(t, k) for t, k, _, _ in TABLE} == {(t, k) for t in TARGETS for k in KINDS}
    for target, kind, action, _ in TABLE:
        assert set(TARGETS[target].ACCEPTS) == set(FEATURES)
        assert TARGETS[target].ACCEPTS[kind].action == action, (target, kind)


@pytest.mark.parametrize("target,kind,action,refusal", TABLE, ids=[f"{t}-{k}" for t, k, _, _ in TABLE])
def test_each_target_refuses_or_exports_each_adapter_as_designed(adapters, tmp_path, capsys, target, kind, action,
                                                                 refusal):  # fmt: skip
    out = tmp_path / "out"
    code = _export(adapters[kind], target, out)
    if refusal is not None:
        engine_words, instead = refusal
        err = capsys.readouterr().err
        assert code == 2 and f"--target {target} cannot take this adapter" in err
        assert engine_words in err and f"Use --target {instead} instead" in err
        assert not out.exists()  # refused before anything was written
        assert TARGETS[instead].ACCEPTS[kind].action == "merge"  # the target named takes it (its own row, below)
        return
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "export.json").read_text())
    assert report["target"] == target and report["features"][kind]["done"] == action
    assert set(report["features"]) == {"lora", kind}
    assert report["commands"] and all(str(out) in c for c in report["commands"])


# --- conversions, by value -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["lora", "rslora"])
def test_vllm_gets_the_adapter_unchanged_and_the_rank_it_needs(adapters, tmp_path, capsys, kind):
    out = tmp_path / "vllm"
    assert _export(adapters[kind], "vllm", out) == 0
    weights = "adapter_model.safetensors"
    assert (out / "adapter" / weights).read_bytes() == (adapters[kind] / weights).read_bytes()
    assert json.loads((out / "adapter/adapter_config.json").read_text()) == json.loads(
        (adapters[kind] / "adapter_config.json").read_text()
    )
    printed = capsys.readouterr().out
    assert f"--lora-modules medpt={out / 'adapter'} --max-lora-rank 8" in printed and "vllm serve " in printed


@pytest.mark.parametrize("rank,allowed", [(1, 1), (8, 8), (9, 16), (300, 320), (512, 512)])
def test_vllm_max_lora_rank_is_the_smallest_choice_that_fits(rank, allowed):
    from medpt.export.vllm import max_lora_rank

    assert max_lora_rank(rank) == allowed


def test_vllm_refuses_a_rank_above_its_largest_choice():
    from medpt.errors import MedptError
    from medpt.export.vllm import max_lora_rank

    with pytest.raises(MedptError, match="LoRA rank 513 is above vLLM's largest --max-lora-rank"):
        max_lora_rank(513)


def test_sglang_gets_rslora_as_alpha_times_sqrt_r_with_the_same_outputs(adapters, tmp_path, capsys):
    out = tmp_path / "sglang"
    assert _export(adapters["rslora"], "sglang", out) == 0
    written = json.loads((out / "adapter/adapter_config.json").read_text())
    trained = json.loads((adapters["rslora"] / "adapter_config.json").read_text())
    assert written["use_rslora"] is False and trained["use_rslora"] is True
    assert written["lora_alpha"] == pytest.approx(trained["lora_alpha"] * math.sqrt(trained["r"]))
    assert "lora_alpha 16 → 45.2548" in capsys.readouterr().out
    # SGLang scales by alpha/r, as PEFT does without rsLoRA: the converted adapter must compute what was trained.
    torch.testing.assert_close(_logits(_peft(out / "adapter")), _logits(_peft(adapters["rslora"])))


@pytest.mark.parametrize("kind", list(KINDS))
def test_merged_has_the_logits_of_base_plus_adapter(adapters, tmp_path, kind):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "merged"
    assert _export(adapters[kind], "merged", out) == 0
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    torch.testing.assert_close(_logits(merged), _logits(_peft(adapters[kind])), atol=1e-5, rtol=1e-5)


# --- GGUF ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lora_gguf(adapters: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The LoRA run exported to GGUF f16 once, for the tests that read the file."""
    out = tmp_path_factory.mktemp("gguf") / "lora"
    assert _export(adapters["lora"], "gguf", out) in (0, 1)  # 1: written, but llama.cpp disagreed (asserted below)
    return out


def test_gguf_file_holds_the_llama_metadata_vocabulary_and_every_weight(lora_gguf, tiny_model_dir):
    from transformers import AutoConfig, AutoTokenizer

    reader = gguf.GGUFReader(lora_gguf / "model-f16.gguf")
    config = AutoConfig.from_pretrained(tiny_model_dir)

    def field(key):
        return reader.fields[key].contents()

    assert field("general.architecture") == "llama" and field("tokenizer.ggml.model") == "llama"
    assert field("llama.block_count") == config.num_hidden_layers
    assert field("llama.embedding_length") == config.hidden_size
    assert field("llama.attention.head_count") == config.num_attention_heads
    tokens = field("tokenizer.ggml.tokens")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert len(tokens) == config.vocab_size
    assert tokens[: len(tokenizer)] == [tokenizer.convert_ids_to_tokens(i) for i in range(len(tokenizer))]
    assert tokens[-1] == f"[PAD{config.vocab_size - 1}]"
    # 9 tensors per block (4 attention, 3 MLP, 2 norms) + embeddings, final norm, output head
    assert len(reader.tensors) == 9 * config.num_hidden_layers + 3
    assert {t.tensor_type.name for t in reader.tensors} == {"F16", "F32"}


def test_modelfile_asks_in_the_run_template_and_stops_at_the_next_turn(lora_gguf):
    text = (lora_gguf / "Modelfile").read_text(encoding="utf-8")
    assert text.splitlines()[:2] == ["FROM ./model-f16.gguf", 'TEMPLATE """问:{{ .Prompt }}']
    assert '答:"""' in text and 'PARAMETER stop "\\n问:"' in text and 'PARAMETER stop "=========="' in text


def test_q_and_k_rows_are_permuted_per_head_to_llama_cpp_interleaved_pairs():
    import numpy as np

    from medpt.export.gguf_writer import permute_rotary

    heads, head_dim = 2, 4
    w = np.arange(heads * head_dim)[:, None].astype(np.float32)  # row i holds i
    # per head: HF halves [0 1 | 2 3] → llama.cpp pairs [0 2 1 3]
    assert permute_rotary(w, heads)[:, 0].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


@pytest.mark.parametrize("config,tokenizer,message", [
    ({"architectures": ["MistralForCausalLM"]}, "metaspace", "writes LlamaForCausalLM models"),
    ({"architectures": ["LlamaForCausalLM"], "rope_scaling": {"type": "yarn", "factor": 4}}, "metaspace",
     "RoPE scaling 'yarn'"),
    ({"architectures": ["LlamaForCausalLM"]}, "bytelevel", "byte-level BPE, as deepseek-coder's"),
])  # fmt: skip
def test_gguf_refuses_what_the_llama_path_does_not_write(tmp_path, config, tokenizer, message):
    from medpt.errors import MedptError
    from medpt.export.gguf_writer import check_convertible

    pre = {"metaspace": {"type": "Metaspace"}, "bytelevel": {"type": "ByteLevel"}}[tokenizer]
    spec = {"model": {"type": "BPE", "byte_fallback": tokenizer == "metaspace"}, "pre_tokenizer": pre}
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(MedptError, match="--target gguf") as e:
        check_convertible(config, tmp_path)
    assert message in str(e.value) and "convert_hf_to_gguf.py" in str(e.value)


# --- through llama.cpp ----------------------------------------------------------------------------------------------
@needs_llama_cpp
@pytest.mark.parametrize("kind", list(KINDS))
def test_gguf_f16_matches_transformers_in_llama_cpp(adapters, tmp_path, capsys, kind):
    from medpt.export.probe import F16_TOLERANCE, GREEDY_TOKENS

    out = tmp_path / "gguf"
    assert _export(adapters[kind], "gguf", out) == 0
    check = json.loads((out / "export.json").read_text())["llama_cpp_check"]
    assert check["ok"] and check["tokenizer_ids_match"]
    assert check["relative_logit_diff"] <= F16_TOLERANCE == check["tolerance"]
    assert check["greedy_tokens_agree"] == GREEDY_TOKENS
    assert "[ok] llama.cpp vs transformers" in capsys.readouterr().out


@needs_llama_cpp
def test_llama_cpp_tokenizes_chinese_medical_text_as_transformers_does(adapters, lora_gguf):
    from transformers import AutoTokenizer

    from medpt.export.probe import open_gguf

    tokenizer = AutoTokenizer.from_pretrained(adapters["lora"])
    llm = open_gguf(lora_gguf / "model-f16.gguf")
    try:
        for text in PROBE_TEXTS + [json.loads(x)["conversations"][1]["value"] for x in SAMPLE_QA.open()][:40]:
            assert llm.tokenize(text.encode(), add_bos=True) == tokenizer(text)["input_ids"], text
    finally:
        llm.close()


@needs_llama_cpp
def test_quantized_gguf_report_their_difference_larger_than_f16(adapters, lora_gguf, tmp_path):
    diffs = {}
    for quant in ("f16", "q8_0", "q4_k_m"):
        out = lora_gguf if quant == "f16" else tmp_path / quant
        assert quant == "f16" or _export(adapters["lora"], "gguf", out, "--quant", quant) == 0
        check = json.loads((out / "export.json").read_text())["llama_cpp_check"]
        assert check["quant"] == quant and check["tokenizer_ids_match"]
        diffs[quant] = check["relative_logit_diff"]
    assert diffs["f16"] < diffs["q8_0"] < diffs["q4_k_m"] < 0.5
    assert (tmp_path / "q4_k_m/model-q4_k_m.gguf").stat().st_size < (lora_gguf / "model-f16.gguf").stat().st_size
    assert not list((tmp_path / "q4_k_m").glob(".*.tmp"))  # the f16 intermediate is gone


@needs_llama_cpp
def test_llamacpp_lora_needs_the_rslora_alpha_rescale(adapters, tmp_path):
    """The GGUF LoRA on the GGUF base in llama.cpp matches PEFT only with alpha·√r; with the trained alpha (what
    llama.cpp's own converter writes) it is √r times too weak."""
    from transformers import AutoConfig

    from medpt.export.gguf_writer import write_lora_gguf
    from medpt.export.probe import F16_TOLERANCE, compare, open_gguf

    strong = tmp_path / "strong"  # a large update, so a wrong scale shows far above f16 rounding
    shutil.copytree(adapters["rslora"], strong)
    weights = load_file(str(strong / "adapter_model.safetensors"))
    save_file(
        {k: v * 20 if "lora_B" in k else v for k, v in weights.items()}, str(strong / "adapter_model.safetensors")
    )
    out = tmp_path / "llamacpp"
    assert _export(strong, "llamacpp", out) == 0
    check = json.loads((out / "export.json").read_text())["llama_cpp_check"]
    assert check["ok"] and check["relative_logit_diff"] <= F16_TOLERANCE
    unconverted = tmp_path / "unconverted.gguf"
    write_lora_gguf(strong, AutoConfig.from_pretrained(json.loads((strong / "adapter_config.json").read_text())[
        "base_model_name_or_path"]), unconverted, alpha=16.0)  # fmt: skip
    from transformers import AutoTokenizer

    llm = open_gguf(out / "base-f16.gguf", unconverted)
    try:
        wrong = compare(llm, _peft(strong), AutoTokenizer.from_pretrained(strong), "f16")
    finally:
        llm.close()
    assert wrong["relative_logit_diff"] > 10 * F16_TOLERANCE and not wrong["ok"]


# --- the base an exported adapter names ------------------------------------------------------------------------------
def _trained_from_a_relative_path(adapters: dict[str, Path], tmp_path: Path) -> Path:
    """A run as PEFT writes it when training was given a relative --model_name_or_path (`work/M`): its
    adapter_config.json records the base as typed; medpt_config.yaml records it absolute."""
    run = tmp_path / "run"
    shutil.copytree(adapters["lora"], run)
    config = json.loads((run / "adapter_config.json").read_text())
    (run / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "work/M"}))
    return run


@pytest.mark.parametrize("target", ["vllm", "sglang"])
def test_an_exported_adapter_names_its_base_by_an_absolute_path(adapters, tiny_model_dir, tmp_path, capsys,
                                                                monkeypatch, target):  # fmt: skip
    from peft import AutoPeftModelForCausalLM

    run, out = _trained_from_a_relative_path(adapters, tmp_path), tmp_path / "out"
    assert _export(run, target, out) == 0
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model_dir)
    printed = capsys.readouterr().out
    assert f"the adapter's base: {tiny_model_dir} (as trained; --base_model names another)" in printed
    assert f" {tiny_model_dir} --enable-lora" in printed or f"--model-path {tiny_model_dir} " in printed
    assert json.loads((out / "export.json").read_text())["base_model"] == str(tiny_model_dir)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # as a user loading the export from another folder (offline: a hub lookup fails)
    model = AutoPeftModelForCausalLM.from_pretrained(str(out / "adapter"))
    assert torch.equal(_logits(model.eval()), _logits(_peft(adapters["lora"])))


def test_base_model_names_a_base_somewhere_else(adapters, tmp_path, capsys):
    out = tmp_path / "out"
    assert _export(adapters["lora"], "vllm", out, "--base_model", "/models/deepseek-coder-7b-base") == 0
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "/models/deepseek-coder-7b-base"
    printed = capsys.readouterr().out
    assert "the adapter's base: /models/deepseek-coder-7b-base (--base_model)" in printed
    assert "vllm serve /models/deepseek-coder-7b-base --enable-lora" in printed
    assert _export(adapters["lora"], "merged", tmp_path / "merged", "--base_model", "org/name") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--base_model names the base of an exported adapter" in err


# --- the command line ------------------------------------------------------------------------------------------------
def test_export_needs_a_target_and_an_output_dir(adapters, tmp_path, capsys):
    assert main(["export", "--adapter", str(adapters["lora"]), "--output_dir", str(tmp_path / "o")]) == 2
    assert "export needs --target (vllm | sglang | llamacpp | merged | gguf)" in capsys.readouterr().err
    assert main(["export", "--adapter", str(adapters["lora"]), "--target", "vllm"]) == 2
    assert "export needs --output_dir" in capsys.readouterr().err
    assert _export(adapters["lora"], "tensorrt", tmp_path / "o") == 2
    assert "--target" in capsys.readouterr().err


def test_export_replaces_only_its_own_earlier_export(adapters, tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert _export(adapters["lora"], "vllm", out, "--overwrite_output_dir") == 2
    assert "must hold nothing else" in capsys.readouterr().err and (out / "keep.txt").read_text() == "mine"
    fresh = tmp_path / "fresh"
    assert _export(adapters["lora"], "vllm", fresh) == 0
    assert _export(adapters["lora"], "vllm", fresh) == 2
    assert _export(adapters["lora"], "sglang", fresh, "--overwrite_output_dir") == 0
    assert json.loads((fresh / "export.json").read_text())["target"] == "sglang"


def test_export_takes_only_its_own_flags(adapters, tmp_path, capsys):
    assert _export(adapters["lora"], "vllm", tmp_path / "o", "--lora_rank", "4") == 2
    assert "--lora_rank is a train flag, not an export flag" in capsys.readouterr().err
