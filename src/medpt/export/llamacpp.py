"""`--target llamacpp`: the base model as GGUF plus the adapter as a llama.cpp LoRA GGUF, for
`llama-server -m base.gguf --lora adapter.gguf` (the adapter stays separate: switch it off, or scale it, at serve
time).

Limits checked, from llama.cpp's own code (0c1e57098, the llama.cpp of llama-cpp-python 0.3.36):
- `convert_lora_to_gguf.py` LoraModel.get_tensors: any tensor that is not lora_A/lora_B (modules_to_save's full
  embed_tokens/lm_head, DoRA's lora_magnitude_vector) is "Unexpected name ... Not a lora_A or lora_B tensor" and the
  script exits → refused here (the merged GGUF, --target gguf, works).
- `src/llama-adapter.h` get_scale: scale = alpha / rank for every adapter; rsLoRA trained with alpha/√r, so it
  would be served √r times too weak. Converted: adapter.lora.alpha = alpha·√r.
"""

from __future__ import annotations

from medpt.export.plan import AS_IS, Handling, Job

_CONVERT = "convert_lora_to_gguf.py LoraModel.get_tensors, llama.cpp 0c1e57098"
ACCEPTS: dict[str, Handling] = {
    "lora": AS_IS,
    "rslora": Handling("rescale_alpha", "llama.cpp scales every adapter by alpha / rank (src/llama-adapter.h)"),
    "dora": Handling("refuse", f"llama.cpp's converter stops at lora_magnitude_vector tensors ({_CONVERT})", "gguf"),
    "modules_to_save": Handling(
        "refuse", f"llama.cpp's converter stops at full embed_tokens/lm_head tensors ({_CONVERT})", "gguf"
    ),
}
BASE_FILE, ADAPTER_FILE = "base-{quant}.gguf", "adapter-f32.gguf"


def write(job: Job) -> list[str]:
    import torch

    from medpt.export.gguf_writer import check_convertible, write_gguf, write_lora_gguf
    from medpt.export.probe import verify_lora
    from medpt.model.adapter import run_tokenizer_dir
    from medpt.model.loading import load_model, load_tokenizer, model_config

    m = job.config.model
    tokenizer_dir = run_tokenizer_dir(m, job.adapter, job.base_name)
    check_convertible(model_config(m, job.base_name), tokenizer_dir)
    base = load_model(m, torch.float32, name=job.base_name).eval()
    tokenizer = load_tokenizer(str(tokenizer_dir), m.trust_remote_code)
    base_file = job.tmp / BASE_FILE.format(quant=job.quant)
    write_gguf(base, tokenizer, tokenizer_dir, base_file, job.quant, job.base_name)
    alpha = job.facts.alpha_for_alpha_over_r()
    if alpha != job.facts.alpha:
        job.notes.append(f"adapter.lora.alpha {job.facts.alpha:g} → {alpha:g}: llama.cpp's alpha/r = rsLoRA's alpha/√r")
    if job.scale != 1:  # llama.cpp scales the update by alpha/r: linear in alpha
        job.notes.append(f"adapter.lora.alpha {alpha:g} → {alpha * job.scale:g}: --adapter_scale {job.scale:g}")
        alpha *= job.scale
    write_lora_gguf(job.adapter, base.config, job.tmp / ADAPTER_FILE, alpha)
    job.report.update(verify_lora(job, base, tokenizer, base_file, job.tmp / ADAPTER_FILE))
    out_base, out_adapter = job.out / base_file.name, job.out / ADAPTER_FILE
    return [f"llama-server -m {out_base} --lora {out_adapter} --host 127.0.0.1 --port 8080"]
