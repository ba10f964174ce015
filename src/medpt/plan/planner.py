"""The plan of `medpt train` with a configuration: its Setup, the peak of a step, and the largest micro-batch that
fits each memory size, with and without gradient checkpointing. Used by `medpt plan` (command), `--dry_run` and
`--auto_batch` (auto)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from medpt.errors import MedptError
from medpt.plan.devices import memories, overheads
from medpt.plan.memory import DEFAULT_OPTIM, Estimate, Setup, estimate, keeping_global, largest_fit, with_batch
from medpt.plan.shape import ModelShape, resolve_targets

# TrainingArguments' defaults (transformers 5) for the trainer flags a plan reads when they are not set.
TRAINER_DEFAULTS = {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 1}


@dataclass
class Fit:
    """At one memory size, with checkpointing on or off: the largest micro-batch that fits, and the micro-batch ×
    accumulation that keeps the configured global batch (0 × 0 when even 1 does not fit)."""

    largest_micro_batch: int
    micro_batch: int
    gradient_accumulation_steps: int
    peak_bytes: int


@dataclass
class Plan:
    model: str
    shape: ModelShape
    setup: Setup
    estimate: Estimate
    memories: list[tuple[str, int]]
    fits: list[dict[str, Fit]]  # per memory: {"off": Fit, "on": Fit}

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "device": self.setup.device,
            "shape": asdict(self.shape),
            "setup": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self.setup).items()},
            "parts": self.estimate.parts,
            "peak_at": self.estimate.moment,
            "peak_bytes": self.estimate.peak,
            "activations_per_layer_bytes": {
                "without_checkpointing": self.estimate.layer_bytes,
                "with_checkpointing": self.estimate.checkpoint_bytes,
            },  # fmt: skip
            "largest_batch": [
                {"memory": label, "memory_bytes": size, **{f"checkpointing_{k}": asdict(v) for k, v in fit.items()}}
                for (label, size), fit in zip(self.memories, self.fits)
            ],
        }


def make_plan(config: Any) -> Plan:
    """The plan of `medpt train` with this configuration, on the visible device (or --device_memory)."""
    from medpt.model.loading import model_config

    name = config.model.model_name_or_path
    if not name:
        raise MedptError("medpt plan needs --model_name_or_path (a hub id, or a folder holding config.json)")
    shape = ModelShape.from_config(model_config(config.model), f"{name}/config.json")
    kind, sizes = memories(config.plan.device_memory)
    setup = setup_of(config, kind)
    fits = [{k: fit(shape, setup, size, k == "on") for k in ("off", "on")} for _, size in sizes]
    return Plan(name, shape, setup, estimate(shape, setup), sizes, fits)


def setup_of(config: Any, kind: str) -> Setup:
    """The Setup `medpt train` would run with these flags on a device of this kind."""
    from medpt.model.loading import resolve_precision, weight_dtype_name

    m, lora, t = config.model, config.lora, config.trainer
    bf16, fp16 = resolve_precision(config.run.bf16, config.run.fp16, kind)
    method = "full" if not lora.use_peft else "qlora" if lora.qlora or m.load_in_4bit else "lora"
    weights = weight_dtype_name(m.torch_dtype, bf16, fp16, full_finetune=method == "full")
    return Setup(
        device=kind,
        method=method,
        weight_bytes=4 if weights == "float32" else 2,
        autocast=bf16 or fp16,
        micro_batch=int(t.get("per_device_train_batch_size", TRAINER_DEFAULTS["per_device_train_batch_size"])),
        block=config.data.block_size,
        accumulation=int(t.get("gradient_accumulation_steps", TRAINER_DEFAULTS["gradient_accumulation_steps"])),
        checkpointing=bool(t.get("gradient_checkpointing") or t.get("activation_checkpointing")),
        rank=lora.lora_rank,
        targets=resolve_targets(lora.target_modules),
        dropout=lora.lora_dropout,
        dropout_mode=lora.lora_dropout_mode,
        modules_to_save=tuple(lora.modules_to_save or ()),
        dora=lora.use_dora,
        optim=str(t.get("optim") or DEFAULT_OPTIM),
        attention=m.attn_implementation or "sdpa",
        packing=config.data.packing,
        reference_copy=method == "full" and bool(lora.replay_kl),
        **overheads(kind),
    )


def fit(shape: ModelShape, setup: Setup, memory: int, checkpointing: bool) -> Fit:
    largest = largest_fit(shape, setup, memory, checkpointing)
    micro, accumulation = keeping_global(setup, largest)
    peak = estimate(shape, with_batch(setup, micro, checkpointing)).peak if micro else 0
    return Fit(largest, micro, accumulation, peak)
