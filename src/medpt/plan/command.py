"""`medpt plan [CONFIG.yaml] [--flags]`: what `medpt train` with the same flags would hold at its peak, by part, and
the largest micro-batch that fits each visible GPU (or --device_memory), with and without gradient checkpointing.

Reads the model's config.json and nothing else (for a hub id, only that file is fetched). `--json` prints the same
plan for scripts; `medpt train --dry_run` prints it as YAML comments after the resolved configuration.
"""

from __future__ import annotations

import json
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


def run_plan(config: Any) -> int:
    """`medpt plan`."""
    plan = make_plan(config)
    print(json.dumps(plan.to_json(), indent=2) if config.plan.json else format_plan(plan))
    return 0


def make_plan(config: Any) -> Plan:
    """The plan of `medpt train` with this configuration, on the visible device (or --device_memory)."""
    from medpt.model import model_config

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
    from medpt.model import resolve_precision, weight_dtype_name

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


# --- the table -------------------------------------------------------------------------------------------------
def format_plan(plan: Plan) -> str:
    s, e, shape = plan.setup, plan.estimate, plan.shape
    method = {"lora": "LoRA", "qlora": "QLoRA (NF4 base)", "full": "full fine-tuning"}[s.method]
    adapter = f" r{s.rank} on {len(s.targets)} module type(s)" if s.method != "full" else ""
    precision = f"weights {'fp32' if s.weight_bytes == 4 else '16-bit'}, {'16-bit autocast' if s.autocast else 'fp32'}"
    lines = [
        f"memory plan: {plan.model} ({shape.model_type}, {_count(shape.parameters())} parameters: hidden "
        f"{shape.hidden}, {shape.layers} layers, vocabulary {shape.vocab:,})",
        f"training: {method}{adapter}, {precision}, block {s.block}, micro-batch {s.micro_batch} × accumulation "
        f"{s.accumulation}, gradient checkpointing {'on' if s.checkpointing else 'off'}, {s.optim}, on "
        f"{_DEVICES[s.device]}",
        "",
        f"peak of a step (at the {e.moment}):",
    ]
    width = max(len(k) for k in e.parts) + 2
    lines += [f"  {name:<{width}}{_size(size):>12}" for name, size in e.parts.items()]
    lines += [f"  {'total':<{width}}{_size(e.peak):>12}", ""]
    lines.append(f"activations per layer: {_size(e.layer_bytes)} without checkpointing, {_size(e.checkpoint_bytes)} "
                 "with (the layer's input; one layer is recomputed at a time)")  # fmt: skip
    total = s.micro_batch * s.accumulation
    lines += ["", f"largest micro-batch that fits (powers of two); micro × accumulation keeping the global batch of "
              f"{total}:"]  # fmt: skip
    rows = [("memory", "checkpointing off", "checkpointing on")]
    for (label, size), fits in zip(plan.memories, plan.fits):
        rows.append((f"{label} ({_size(size)})", _fit_cell(fits["off"]), _fit_cell(fits["on"])))
    widths = [max(len(r[i]) for r in rows) + 3 for i in range(3)]
    lines += ["  " + "".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


_DEVICES = {"cuda": "this machine's GPU", "gpu": "a GPU (--device_memory)", "cpu": "the CPU (host memory)"}


def _fit_cell(f: Fit) -> str:
    if not f.largest_micro_batch:
        return "does not fit"
    return f"{f.largest_micro_batch}: {f.micro_batch} × {f.gradient_accumulation_steps} ({_size(f.peak_bytes)})"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def print_dry_run(config: Any) -> None:
    """What `medpt train --dry_run` adds after the resolved configuration: the plan, as YAML comments (the output
    stays a valid configuration file)."""
    try:
        text = format_plan(make_plan(config))
    except MedptError as e:
        text = f"memory plan: not available ({e})"
    print("\n" + "\n".join(f"# {line}".rstrip() for line in text.splitlines()))
