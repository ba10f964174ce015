"""GGUF files for llama.cpp (targets gguf and llamacpp), written with the `gguf` package (gguf-py, llama.cpp's own
writer, on PyPI): a model, and a LoRA adapter.

What llama.cpp expects, and where it is written down (llama.cpp 0c1e57098, the one llama-cpp-python 0.3.36 vendors):
- `conversion/llama.py` LlamaModel: the `llama` architecture keys (context, embedding and feed-forward length, block
  count, heads, KV heads, RoPE base and dimension, RMS epsilon) and the Q/K row permutation (`LlamaModel.permute`):
  HF stores each head's rotary pairs as two halves, llama.cpp's RoPE kernel wants them interleaved.
- `conversion/base.py` `_set_vocab_llama_hf`: a tokenizer.json BPE with byte fallback (Metaspace, SentencePiece
  style) is a `llama` tokenizer model in GGUF. Its scores there are all -1000, which makes llama.cpp merge pieces in
  another order than the BPE merges; medpt scores each token by its merge rank instead (-rank: earlier merges first),
  so llama.cpp tokenizes exactly as transformers does (tested on Chinese medical text).
- A vocabulary padded past the tokenizer (the tiny models round it up to a multiple of 64) gets `[PAD{i}]` tokens of
  type UNUSED, as convert_hf_to_gguf.py does.

Limited on purpose to LlamaForCausalLM with a Metaspace/byte-fallback BPE tokenizer: anything else is refused with
the command that converts it with llama.cpp's own script. f16, bf16 and q8_0 are quantized here (gguf.quants);
k-quants (q4_k_m, q5_k_m, q6_k) by llama.cpp's own quantizer through llama-cpp-python (`pip install 'medpt[llamacpp]'`),
from an f16 file written first.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medpt.errors import MedptError


@dataclass(frozen=True)
class Quant:
    file_type: str  # gguf.LlamaFileType member
    tensor_type: str  # gguf.GGMLQuantizationType member for 2-D weights (1-D norms always stay F32)
    by_llama_cpp: bool = False  # k-quants: gguf-py cannot write them, llama.cpp's quantizer can


QUANTS: dict[str, Quant] = {
    "f16": Quant("MOSTLY_F16", "F16"),
    "bf16": Quant("MOSTLY_BF16", "BF16"),
    "q8_0": Quant("MOSTLY_Q8_0", "Q8_0"),
    "q4_k_m": Quant("MOSTLY_Q4_K_M", "F16", by_llama_cpp=True),
    "q5_k_m": Quant("MOSTLY_Q5_K_M", "F16", by_llama_cpp=True),
    "q6_k": Quant("MOSTLY_Q6_K", "F16", by_llama_cpp=True),
}
CONVERT_COMMAND = "python convert_hf_to_gguf.py {merged} --outtype f16 --outfile {out}"  # llama.cpp's own script


def gguf_name(quant: str) -> str:
    return f"model-{quant}.gguf"


def check_convertible(model_config: dict[str, Any], tokenizer_dir: Path) -> None:
    """Refuse, before anything is merged, what the minimal LLaMA path below does not write correctly (and say how
    to install the writer when it is missing)."""
    try:
        import gguf  # noqa: F401
    except ImportError:
        missing = "GGUF targets need the gguf package (llama.cpp's gguf-py): pip install 'medpt[export]'"
        raise MedptError(missing) from None
    archs = model_config.get("architectures") or []
    fallback = "export --target merged, then convert it with llama.cpp's convert_hf_to_gguf.py"
    if archs != ["LlamaForCausalLM"]:
        raise MedptError(f"--target gguf writes LlamaForCausalLM models; this base is {archs or 'unknown'}: {fallback}")
    rope = _rope(model_config)
    if rope.get("rope_type", "default") not in ("default", "linear"):
        raise MedptError(f"--target gguf: RoPE scaling {rope.get('rope_type')!r} is not written here: {fallback}")
    spec = _tokenizer_json(tokenizer_dir)
    model = spec.get("model", {})
    if (
        model.get("type") != "BPE"
        or not model.get("byte_fallback")
        or (spec.get("pre_tokenizer") or {}).get("type") != "Metaspace"
    ):
        raise MedptError(
            f"--target gguf writes SentencePiece-style tokenizers (BPE, Metaspace, byte fallback); {tokenizer_dir} "
            f"holds another kind (e.g. byte-level BPE, as deepseek-coder's): {fallback}"
        )


def write_gguf(model: Any, tokenizer: Any, tokenizer_dir: Path, path: Path, quant: str, name: str) -> None:
    """The model's weights (a LlamaForCausalLM in memory), its config and tokenizer, as a GGUF file at `path`;
    k-quants go through an f16 file beside it, removed afterwards."""
    if not QUANTS[quant].by_llama_cpp:
        _write_gguf(model, tokenizer, tokenizer_dir, path, quant, name)
        return
    import_llama_cpp(f"--quant {quant}")  # before minutes of writing, not after
    f16 = path.with_name(f".{path.name}.f16.tmp")
    try:
        _write_gguf(model, tokenizer, tokenizer_dir, f16, "f16", name)
        quantize_with_llama_cpp(f16, path, quant)
    finally:
        f16.unlink(missing_ok=True)


def _write_gguf(model: Any, tokenizer: Any, tokenizer_dir: Path, path: Path, quant: str, name: str) -> None:
    import gguf

    spec = QUANTS[quant]
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    cfg = model.config
    _write_architecture(writer, cfg, name, getattr(gguf.LlamaFileType, spec.file_type))
    _write_vocab(writer, tokenizer, tokenizer_dir, cfg.vocab_size)
    qtype = getattr(gguf.GGMLQuantizationType, spec.tensor_type)
    for gguf_tensor, array in _tensors(model):
        data, raw_type = _encode(array, qtype)
        writer.add_tensor(gguf_tensor, data, raw_dtype=raw_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _write_architecture(writer: Any, cfg: Any, name: str, file_type: int) -> None:
    import gguf

    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    writer.add_name(name)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(cfg.num_key_value_heads or heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    rope = _rope(cfg.to_dict())
    writer.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
    if rope.get("rope_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_file_type(file_type)


def _rope(model_config: dict[str, Any]) -> dict[str, Any]:
    """transformers 5 keeps rope_theta and the scaling in `rope_parameters`; 4.x in rope_theta / rope_scaling."""
    rope = dict(model_config.get("rope_parameters") or model_config.get("rope_scaling") or {})
    rope.setdefault("rope_theta", model_config.get("rope_theta", 10000.0))
    rope["rope_type"] = rope.get("rope_type") or rope.get("type") or "default"
    return rope


def _tokenizer_json(tokenizer_dir: Path) -> dict[str, Any]:
    path = Path(tokenizer_dir) / "tokenizer.json"
    if not path.is_file():
        raise MedptError(f"--target gguf needs a fast tokenizer (tokenizer.json); {tokenizer_dir} has none")
    return json.loads(path.read_text(encoding="utf-8"))


def vocab_entries(tokenizer_dir: Path, n_vocab: int) -> tuple[list[bytes], list[float], list[int]]:
    """Tokens, scores and types for a `llama` (SentencePiece-style) GGUF vocabulary of `n_vocab` entries."""
    import gguf

    spec = _tokenizer_json(tokenizer_dir)
    vocab: dict[str, int] = spec["model"]["vocab"]
    special = {t["id"]: t["content"] for t in spec.get("added_tokens", [])}
    by_id = {i: t for t, i in vocab.items()} | special
    # A token's score is minus the rank of the merge that makes it: llama.cpp's SentencePiece tokenizer merges the
    # highest-scoring adjacent pair first, which is then exactly BPE's order. Single characters are never merged.
    rank: dict[str, int] = {}
    for r, merge in enumerate(spec["model"]["merges"]):
        rank.setdefault("".join(merge if isinstance(merge, list) else merge.split(" ", 1)), r)
    tokens, scores, types = [], [], []
    for i in range(n_vocab):
        text = by_id.get(i)
        if text is None:  # the model's vocabulary is padded past the tokenizer's
            tokens.append(f"[PAD{i}]".encode())
            scores.append(-1000.0)
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(text.encode("utf-8"))
        scores.append(-float(rank[text]) if text in rank else 0.0)
        is_byte = len(text) == 6 and text.startswith("<0x") and text.endswith(">")
        types.append(
            gguf.TokenType.CONTROL if i in special else gguf.TokenType.BYTE if is_byte else gguf.TokenType.NORMAL
        )
    return tokens, scores, types


def _write_vocab(writer: Any, tokenizer: Any, tokenizer_dir: Path, n_vocab: int) -> None:
    tokens, scores, types = vocab_entries(tokenizer_dir, n_vocab)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    # The special ids and the BOS policy as transformers applies them (the tiny tokenizer's post-processor adds
    # BOS; tokenizer_config.json does not say so).
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    adds_bos = tokenizer.bos_token_id is not None and tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]
    writer.add_add_bos_token(adds_bos)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(True)  # Metaspace prepend_scheme "always"


def _tensors(model: Any) -> Iterator[tuple[str, Any]]:
    """(GGUF name, float32 numpy array) for each weight, Q and K permuted for llama.cpp's RoPE."""
    import gguf
    import torch

    cfg = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads or cfg.num_attention_heads
    for hf_name, tensor in model.state_dict().items():
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        new_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise MedptError(f"--target gguf: no GGUF name for the tensor {hf_name}; the model is not a plain LLaMA")
        array = tensor.detach().to(torch.float32).cpu().numpy()
        if hf_name.endswith("q_proj.weight"):
            array = permute_rotary(array, heads)
        elif hf_name.endswith("k_proj.weight"):
            array = permute_rotary(array, kv_heads)
        yield new_name, array


def permute_rotary(weights: Any, heads: int) -> Any:
    """HF's rotate-half layout → llama.cpp's interleaved pairs, per head (convert_hf_to_gguf LlamaModel.permute)."""
    rows = weights.shape[0]
    return weights.reshape(heads, 2, rows // heads // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def _encode(array: Any, qtype: Any) -> tuple[Any, Any]:
    """1-D tensors (norms) stay float32, as llama.cpp's converter keeps them; rows that do not fill whole quant
    blocks fall back to f16."""
    import gguf
    import numpy as np

    if array.ndim == 1:
        return array.astype(np.float32), gguf.GGMLQuantizationType.F32
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if array.shape[-1] % block:
        qtype = gguf.GGMLQuantizationType.F16
    return gguf.quants.quantize(array, qtype), qtype


def quantize_with_llama_cpp(source: Path, target: Path, quant: str) -> None:
    """k-quants through llama.cpp's own quantizer (llama_model_quantize), from the f16 file at `source`."""
    import ctypes

    llama_cpp = import_llama_cpp(f"--quant {quant}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_{QUANTS[quant].file_type}")
    params.nthread = os.cpu_count() or 1
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    if status != 0:
        raise RuntimeError(f"llama_model_quantize({source} → {quant}) returned {status}")


def import_llama_cpp(what: str) -> Any:
    try:
        import llama_cpp
    except ImportError:
        raise MedptError(
            f"{what} needs llama-cpp-python (llama.cpp's quantizer and loader): pip install 'medpt[llamacpp]' "
            "(it builds llama.cpp from source, about 8 minutes on 2 cores), or use --quant f16, bf16 or q8_0"
        ) from None
    return llama_cpp


def write_lora_gguf(adapter_dir: Path, model_config: Any, path: Path, alpha: float) -> None:
    """A PEFT LoRA adapter as a llama.cpp LoRA GGUF (what convert_lora_to_gguf.py writes): per base tensor a
    `.lora_a` (r × in) and `.lora_b` (out × r), B's rows permuted like the base's Q/K, and adapter.lora.alpha, which
    llama.cpp divides by r (src/llama-adapter.h get_scale: alpha / rank)."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    from medpt.rundir import ADAPTER_WEIGHTS

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, model_config.num_hidden_layers)
    heads = model_config.num_attention_heads
    kv_heads = model_config.num_key_value_heads or heads
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for key, array in sorted(load_file(str(adapter_dir / ADAPTER_WEIGHTS)).items()):
        part = "lora_a" if ".lora_A." in key else "lora_b" if ".lora_B." in key else None
        if part is None:  # DoRA magnitudes and modules_to_save are refused before this point
            raise MedptError(f"{adapter_dir / ADAPTER_WEIGHTS}: {key} is not a LoRA A/B tensor")
        hf_name = key.removeprefix("base_model.model.").replace(".lora_A.", ".").replace(".lora_B.", ".")
        base = names.get_name(hf_name, try_suffixes=(".weight",))
        array = array.astype(np.float32)
        if part == "lora_b" and hf_name.endswith(("q_proj.weight", "k_proj.weight")):
            array = permute_rotary(array, heads if "q_proj" in hf_name else kv_heads)
        writer.add_tensor(f"{base}.{part}", array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
