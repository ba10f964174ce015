"""Does llama.cpp compute what transformers computes? The exported GGUF, loaded through llama-cpp-python, against
the same model in transformers on one probe: the tokenizer's ids, the logits at every position, and greedy decoding.

f16 must match within F16_TOLERANCE (max |Δlogit| relative to the largest reference logit: f16 keeps 11 significant
bits, ~5e-4 relative per weight, and the error grows through the layers); other types report their difference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PROBE = "问:高血压患者每天应该吃多少盐？\n答:建议每日食盐摄入量不超过5克，并定期监测血压。"
F16_TOLERANCE = 0.01  # max |Δlogit| / max |logit|
GREEDY_TOKENS = 8


def llama_cpp_available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def open_gguf(path: Path, lora: Path | None = None, n_ctx: int = 512) -> Any:
    """A llama.cpp model with logits for every position (logits_all), quiet, on this machine's cores."""
    import os

    from llama_cpp import Llama

    return Llama(
        model_path=str(path), lora_path=str(lora) if lora else None, logits_all=True, n_ctx=n_ctx,
        n_threads=os.cpu_count(), verbose=False,
    )  # fmt: skip


def llama_logits(llm: Any, ids: list[int]) -> Any:
    import numpy as np

    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def hf_logits(model: Any, ids: list[int]) -> Any:
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def greedy_llama(llm: Any, ids: list[int], n: int) -> list[int]:
    import numpy as np

    llm.reset()
    llm.eval(ids)
    out: list[int] = []
    for _ in range(n):
        out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval(out[-1:])
    return out


def greedy_hf(model: Any, ids: list[int], n: int) -> list[int]:
    out: list[int] = []
    for _ in range(n):
        out.append(int(hf_logits(model, ids + out)[-1].argmax()))
    return out


def compare(llm: Any, model: Any, tokenizer: Any, quant: str, text: str = PROBE) -> dict[str, Any]:
    """Tokenizer ids, logits and greedy tokens of llama.cpp vs transformers on `text`."""
    import numpy as np

    ids = tokenizer(text)["input_ids"]
    cpp_ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
    ref = hf_logits(model, ids)
    got = llama_logits(llm, ids)[:, : ref.shape[1]]
    diff = float(np.abs(got - ref).max())
    relative = diff / float(np.abs(ref).max())
    ours, theirs = greedy_llama(llm, ids, GREEDY_TOKENS), greedy_hf(model, ids, GREEDY_TOKENS)
    agree = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), GREEDY_TOKENS)
    result = {
        "quant": quant,
        "probe_tokens": len(ids),
        "tokenizer_ids_match": cpp_ids == ids,
        "max_abs_logit_diff": diff,
        "relative_logit_diff": relative,
        "greedy_tokens_agree": agree,
        "greedy_tokens": GREEDY_TOKENS,
    }
    if quant == "f16":
        result["tolerance"] = F16_TOLERANCE
        result["ok"] = cpp_ids == ids and relative <= F16_TOLERANCE and agree == GREEDY_TOKENS
    return result


def verify(job: Any, model: Any, tokenizer: Any, gguf_file: Path, lora: Path | None = None) -> dict[str, Any]:
    """`compare` for an export job, logged; a note instead when llama-cpp-python is not installed."""
    if not llama_cpp_available():
        job.log("not verified with llama.cpp: pip install 'medpt[llamacpp]' (llama-cpp-python) to check the logits")
        return {"verified": False}
    llm = open_gguf(gguf_file, lora)
    try:
        result = {"verified": True, **compare(llm, model, tokenizer, job.quant)}
    finally:
        llm.close()
    verdict = {True: "[ok]", False: "[FAIL]", None: "[info]"}[result.get("ok")]
    job.log(
        f"{verdict} llama.cpp vs transformers on the probe: tokenizer ids "
        f"{'match' if result['tokenizer_ids_match'] else 'DIFFER'}, max |Δlogit| {result['max_abs_logit_diff']:.2e} "
        f"({result['relative_logit_diff']:.2e} of the largest logit"
        + (f"; tolerance {F16_TOLERANCE:g}" if "tolerance" in result else "")
        + f"), greedy tokens agree {result['greedy_tokens_agree']}/{GREEDY_TOKENS}"
    )
    return result


def verify_lora(job: Any, base: Any, tokenizer: Any, base_file: Path, adapter_file: Path) -> dict[str, Any]:
    """The GGUF base with the GGUF LoRA in llama.cpp against PEFT's base + adapter."""
    from peft import PeftModel

    if not llama_cpp_available():
        return verify(job, None, tokenizer, base_file, adapter_file)
    adapted = PeftModel.from_pretrained(base, str(job.adapter)).eval()
    if job.scale != 1:  # compared with the update llama.cpp was given: --adapter_scale folded into the alpha
        from medpt.model.adapter_scale import set_adapter_scale

        set_adapter_scale(adapted, job.scale)
    return verify(job, adapted, tokenizer, base_file, adapter_file)
