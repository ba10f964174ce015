"""`--target merged`: the adapter folded into its base, a standalone transformers model that any engine loads as an
ordinary model (vLLM and SGLang without --enable-lora). Takes every adapter PEFT can merge: LoRA, rsLoRA (PEFT
merges with its own alpha/√r scale), DoRA (PEFT folds the magnitude vector in) and modules_to_save (the trained
embed_tokens / lm_head replace the base's)."""

from __future__ import annotations

from medpt.export.plan import MERGED, Handling, Job

ACCEPTS: dict[str, Handling] = {feature: MERGED for feature in ("lora", "rslora", "dora", "modules_to_save")}


def write(job: Job) -> list[str]:
    from medpt.export.merging import merge_adapter, save_merged

    merged = merge_adapter(job.config, job.adapter, job.out, job.log)
    save_merged(merged, job.tmp, "export")
    return [
        f"vllm serve {job.out}",
        f"python -m sglang.launch_server --model-path {job.out}",
    ]
