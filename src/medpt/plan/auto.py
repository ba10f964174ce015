"""`medpt train --auto_batch`: the largest micro-batch the plan says fits, the global batch kept; and one retry at
half the micro-batch when the first step runs out of memory anyway (the plan is an estimate).

The global batch (micro-batch × --gradient_accumulation_steps per device) is what the learning rate and schedule
were chosen for: it never changes. The micro-batch is a power of two dividing it, and the accumulation the quotient.
"""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import Callable
from typing import Any

from medpt.errors import MedptError
from medpt.plan.memory import estimate, keeping_global, largest_fit, with_batch
from medpt.plan.planner import make_plan

BATCH, ACCUMULATION = "per_device_train_batch_size", "gradient_accumulation_steps"


def pick_batch(config: Any, log: Any) -> Any:
    """The configuration with the micro-batch and accumulation --auto_batch chooses (a copy; `config` is kept)."""
    plan = make_plan(config)
    s = plan.setup
    # Several GPUs: each process trains on one, so the smallest card decides.
    label, memory = min(plan.memories, key=lambda m: m[1])
    micro, accumulation = keeping_global(s, largest_fit(plan.shape, s, memory, s.checkpointing))
    if not micro:
        needs = estimate(plan.shape, with_batch(s, 1)).peak
        raise MedptError(
            f"--auto_batch: even micro-batch 1 needs {_gib(needs)} by the plan, more than the {_gib(memory)} of "
            f"{label}; try --gradient_checkpointing true, --qlora, or a smaller --block_size (see `medpt plan`)"
        )
    peak = estimate(plan.shape, with_batch(s, micro)).peak
    log(f"--auto_batch: micro-batch {micro} × accumulation {accumulation} (was {s.micro_batch} × {s.accumulation}; "
        f"global batch {s.micro_batch * s.accumulation} per device kept), planned peak {_gib(peak)} of "
        f"{_gib(memory)} ({label})")  # fmt: skip
    return with_trainer(config, micro, accumulation)


def with_trainer(config: Any, micro: int, accumulation: int) -> Any:
    return dataclasses.replace(config, trainer={**config.trainer, BATCH: micro, ACCUMULATION: accumulation})


def train_halving_once(config: Any, trainer: Any, rebuild: Callable[[Any], Any], resume: str | None,
                       log: Any) -> tuple[Any, Any, Any]:  # fmt: skip
    """trainer.train(); on an out-of-memory error before the first step completes, build the trainer again at half
    the micro-batch and twice the accumulation and train once more. Returns (config, trainer, result) as run."""
    import torch

    try:
        return config, trainer, trainer.train(resume_from_checkpoint=resume)
    except torch.OutOfMemoryError:
        # Retried outside this block: the exception's traceback holds the failed step's tensors.
        if trainer.state.global_step > 0:
            raise
    micro, accumulation = trainer.args.per_device_train_batch_size, trainer.args.gradient_accumulation_steps
    if micro == 1:
        raise MedptError(
            "out of memory at the first step with micro-batch 1; try --gradient_checkpointing true, --qlora, or a "
            "smaller --block_size (see `medpt plan`)"
        )
    _release(trainer)
    del trainer
    config = with_trainer(config, micro // 2, accumulation * 2)
    log(f"--auto_batch: out of memory at the first step with micro-batch {micro}; retrying once with "
        f"{micro // 2} × accumulation {accumulation * 2} (global batch kept)")  # fmt: skip
    trainer = rebuild(config)
    try:
        return config, trainer, trainer.train(resume_from_checkpoint=resume)
    except torch.OutOfMemoryError:
        if trainer.state.global_step > 0:
            raise
    raise MedptError(
        f"out of memory at the first step again with micro-batch {micro // 2}; pass a smaller "
        "--per_device_train_batch_size without --auto_batch, or --gradient_checkpointing true"
    )


def _release(trainer: Any) -> None:
    """Free what the failed attempt allocated: gradients, optimizer state, cached GPU blocks."""
    import torch

    trainer.model.zero_grad(set_to_none=True)
    trainer.optimizer = trainer.lr_scheduler = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"
