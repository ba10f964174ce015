"""`--target vllm`: the LoRA adapter for `vllm serve --enable-lora`.

Limits checked, from vLLM's own code (vllm/lora/peft_helper.py, PEFTHelper, as in vLLM 0.10.0, the version of
LLaMA-Factory #9545, through 0.11; vllm/config/lora.py for the ranks):
- `modules_to_save`: `_validate_features` raises "vLLM only supports modules_to_save being None." → refused.
- DoRA: `_validate_features` raises "vLLM does not yet support DoRA." → refused (the merged model works).
- rsLoRA: `__post_init__` sets vllm_lora_scaling_factor = lora_alpha / sqrt(r) when use_rslora → exported as is.
- rank: `validate_legal` refuses r > --max-lora-rank, whose choices are MaxLoRARanks = 1, 8, 16, 32, 64, 128, 256,
  320, 512 (vllm/config/lora.py): the printed command names the smallest choice ≥ r; r > 512 is refused.
"""

from __future__ import annotations

from medpt.errors import MedptError
from medpt.export.plan import AS_IS, Handling, Job, write_peft_adapter

ACCEPTS: dict[str, Handling] = {
    "lora": AS_IS,
    "rslora": AS_IS,
    "dora": Handling(
        "refuse",
        'vLLM refuses DoRA adapters ("vLLM does not yet support DoRA.", vllm/lora/peft_helper.py '
        "PEFTHelper._validate_features, vLLM 0.10-0.11)",
        "merged",
    ),
    "modules_to_save": Handling(
        "refuse",
        'vLLM refuses them ("vLLM only supports modules_to_save being None.", vllm/lora/peft_helper.py '
        "PEFTHelper._validate_features, vLLM 0.10-0.11)",
        "merged",
    ),
}
MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm/config/lora.py MaxLoRARanks


def max_lora_rank(rank: int) -> int:
    for allowed in MAX_LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise MedptError(
        f"--target vllm: LoRA rank {rank} is above vLLM's largest --max-lora-rank ({MAX_LORA_RANKS[-1]}, "
        "vllm/config/lora.py MaxLoRARanks); use --target merged instead"
    )


def write(job: Job) -> list[str]:
    rank = max_lora_rank(job.facts.rank)
    write_peft_adapter(job)
    return [
        f"vllm serve {job.named_base} --enable-lora --lora-modules medpt={job.out / 'adapter'} --max-lora-rank {rank}"
    ]
