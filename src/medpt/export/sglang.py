"""`--target sglang`: the LoRA adapter for `python -m sglang.launch_server --enable-lora --lora-paths`.

Limits checked, from SGLang's own code (python/sglang/srt/lora/lora.py, LoRAAdapter, SGLang main as of 2026; the
same line since its LoRA support began):
- rsLoRA: `self.scaling = self.config.lora_alpha / self.config.r`; use_rslora is never read, so an rsLoRA adapter
  would be served √r times too weak. Converted: lora_alpha·√r with use_rslora false (alpha'/r = alpha/√r).
- `modules_to_save`: `initialize_weights` keeps embed_tokens / lm_head tensors only when they are LoRA target
  modules and otherwise skips them with a debug log: the fully trained embeddings would silently not be served →
  refused (the merged model works).
- DoRA: LoRAConfig reads use_dora but the loader has no magnitude path (lora_magnitude_vector tensors are not
  applied) → refused.
"""

from __future__ import annotations

from medpt.export.plan import AS_IS, Handling, Job, write_peft_adapter

_WHERE = "python/sglang/srt/lora/lora.py LoRAAdapter"
ACCEPTS: dict[str, Handling] = {
    "lora": AS_IS,
    "rslora": Handling("rescale_alpha", f"SGLang scales every adapter by lora_alpha / r ({_WHERE}.__init__)"),
    "dora": Handling("refuse", f"SGLang applies no DoRA magnitude vectors ({_WHERE}.initialize_weights)", "merged"),
    "modules_to_save": Handling(
        "refuse",
        f"SGLang skips embed_tokens/lm_head weights that are not LoRA targets ({_WHERE}.initialize_weights), so "
        "they would silently not be served",
        "merged",
    ),
}


def write(job: Job) -> list[str]:
    adapter = write_peft_adapter(job, alpha=job.facts.alpha_for_alpha_over_r())
    rank = job.facts.rank
    return [
        f"python -m sglang.launch_server --model-path {job.named_base} --enable-lora "
        f"--lora-paths medpt={job.out / adapter.name} --max-lora-rank {rank}"
    ]
