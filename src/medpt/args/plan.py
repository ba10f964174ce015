"""The section of `medpt plan` (and of `medpt train --auto_batch`): the memory plan's own flags."""

from __future__ import annotations

from dataclasses import dataclass

from medpt.args.fields import _arg, _comma_list
from medpt.errors import MedptError

_PLAN = ("plan",)


@dataclass
class PlanArguments:
    device_memory: list[str] | None = _arg(
        None,
        "Plan for GPUs with this much memory each (24GB 80GB; GB = GiB, as cards are sized) instead of the visible "
        "ones (or, without a GPU, this machine's free memory).",
        only=_PLAN,
    )
    json: bool = _arg(
        False,
        "Print the plan as JSON: bytes per part, peak_bytes, the largest micro-batch per memory size.",
        only=_PLAN,
    )
    auto_batch: bool = _arg(
        False,
        "Train with the largest micro-batch that fits the device by `medpt plan` (a power of two dividing the global "
        "batch, whose --gradient_accumulation_steps is adjusted to keep it); on an out-of-memory error at the first "
        "step, halve it once and say so.",
        only=("train",),
    )

    def __post_init__(self) -> None:
        self.device_memory = _comma_list(self.device_memory) or None
        for size in self.device_memory or []:
            parse_size(size, "device_memory")


_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
          "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40}  # fmt: skip


def parse_size(text: str, flag: str) -> int:
    """`24GB`, `24 GiB`, `80g`, `512MB` → bytes. GB means GiB: GPU memory is sized in binary units (a "24 GB" card
    holds 24 GiB less what the driver keeps)."""
    raw = str(text).strip().lower().replace(" ", "")
    number = raw.rstrip("kmgtib")
    unit = raw[len(number) :]
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in _UNITS or not value > 0:
        raise MedptError(f"--{flag} takes sizes such as 24GB, 80GiB or 512MB, got {text!r}")
    return int(value * _UNITS[unit])
