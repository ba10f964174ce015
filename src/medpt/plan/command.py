"""`medpt plan [CONFIG.yaml] [--flags]`: what `medpt train` with the same flags would hold at its peak, by part, and
the largest micro-batch that fits each visible GPU (or --device_memory), with and without gradient checkpointing.

Reads the model's config.json and nothing else (for a hub id, only that file is fetched). `--json` prints the same
plan for scripts; `medpt train --dry_run` prints it as YAML comments after the resolved configuration.
"""

from __future__ import annotations

from typing import Any

from medpt.errors import MedptError
from medpt.plan.planner import Fit, Plan, make_plan
from medpt.strictjson import dumps


def run_plan(config: Any) -> int:
    """`medpt plan`."""
    plan = make_plan(config)
    print(dumps(plan.to_json(), indent=2) if config.plan.json else format_plan(plan))
    return 0


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
