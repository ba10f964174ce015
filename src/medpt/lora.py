"""LoRA on top of PEFT: the adapter itself, and two fixes for slow paths PEFT takes on a CPU.

1. Input casting. PEFT casts each LoRA input to the adapter's dtype (fp32) before lora_A. Under bf16/fp16
   autocast the matmul casts it straight back, so for 7 modules × layers the cast is a full extra copy of the
   activations each way for nothing; medpt switches it off when autocast is on (the math is identical).
2. Dropout. torch's CPU dropout draws its mask from a serial mt19937: with lora_dropout 0.05 on the 25m tiny model
   that was a third of each training step here (42 masks of 4×512×512 per step). FastDropout draws the same
   Bernoulli mask from numpy's PCG64 in bulk (16-bit uniforms: p is exact to 1/65536), seeded from torch's RNG so
   runs stay reproducible and resumable. Under torch.compile the stock dropout is kept (inductor generates its own).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from medpt.errors import MedptError
from medpt.hub import resolve_local


def add_lora(model: Any, lora: Any, gradient_checkpointing: bool = False) -> Any:
    """Wrap the model with a trainable LoRA adapter: a new one from `lora` (LoraArguments builds the
    peft.LoraConfig), or --peft_path to continue an existing one."""
    from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "is_loaded_in_4bit", False):
        # Casts norms to fp32 and enables input gradients, which 4-bit training with checkpointing needs.
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    if lora.peft_path:
        return PeftModel.from_pretrained(model, resolve_local(lora.peft_path, None), is_trainable=True)
    try:
        return get_peft_model(model, lora.to_peft_config())
    except ValueError as e:  # PEFT's message for target modules that match nothing
        raise MedptError(f"--target_modules {','.join(lora.target_modules)}: {e}") from None


def speed_up(model: Any, autocast: bool, compiled: bool) -> None:
    """Apply the two fixes above to every LoRA layer of a PEFT model (in place)."""
    for module in model.modules():
        if autocast and hasattr(module, "cast_input_dtype_enabled"):
            module.cast_input_dtype_enabled = False
        dropouts = getattr(module, "lora_dropout", None)
        if dropouts is not None and not compiled:
            for name, layer in dropouts.items():
                if isinstance(layer, torch.nn.Dropout) and layer.p > 0:
                    dropouts[name] = FastDropout(layer.p)


class _MaskedScale(torch.autograd.Function):
    """y = x·mask/(1−p); only the 1-byte mask is kept for the backward pass."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.where(keep, x, 0).mul_(scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad, 0).mul_(ctx.scale), None, None


class FastDropout(torch.nn.Module):
    """Inverted dropout with a bulk-generated mask (see the module docstring for why)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.threshold = int(round(p * 65536)) - 32768  # keep where a uniform int16 >= threshold
        self.scale = 1.0 / (1.0 - (self.threshold + 32768) / 65536)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return torch.nn.functional.dropout(x, self.p, self.training)
        # One draw from torch's generator seeds the mask: set_seed and checkpoint RNG restores cover it.
        seed = int(torch.randint(0, 2**62, (1,)).item())
        raw = np.random.Generator(np.random.PCG64(seed)).bit_generator.random_raw(-(-x.numel() // 4))
        uniform = torch.from_numpy(raw.view(np.int16)[: x.numel()]).view(x.shape)
        return _MaskedScale.apply(x, uniform >= self.threshold, self.scale)

    def extra_repr(self) -> str:
        return f"p={self.p}"
