"""LoRA dropout on a CPU at (almost) no cost: bulk masks, cheap multiplies, one mask per shared input.

PEFT applies `lora_dropout` separately in every adapted layer: on the 25m tiny model with the reference 0.05 that is 7
masks and 7 dropped copies of the activations per decoder layer and step, and it cost 22% of a training step (bench/
train_throughput.py). Where the time went (one thread, 4×512×512 bf16 activations, this 2-core VM):

    torch's CPU dropout (serial mt19937 mask)           ~35 ms   → masks drawn by numpy in bulk       ~3-4 ms
    int16 → bool compare + torch.where(mask, x, 0)      ~10 ms   → a {0, 1} multiplier in x's dtype,
                                                                    made by numpy from the same draws    ~0.4 ms
                                                                    x * m, then × 1/(1−p)              ~1.2 ms
    backward: torch.where(mask, grad, 0) × 1/(1−p)      ~6.6 ms  → grad * m × 1/(1−p)                  ~1.2 ms

and with the shared input (below) 7 masks per layer become 4. The two multiplies give exactly the values of
where-then-scale (x·1 = x, and the same rounding of x·scale), up to the sign of a dropped zero.

Sharing (`lora_dropout_mode shared`, the default): q_proj, k_proj and v_proj read the same tensor (the attention
input), as do gate_proj and up_proj (the MLP input). One dropout module per decoder layer keeps the last input it saw
(by weak reference) and its dropped copy: a second adapter reading the same tensor gets the same dropped copy, so the
three query/key/value adapters see one mask instead of three, and autograd sums their gradients before one masked
multiply. Each adapter's input is still every element kept with probability 1−p and scaled by 1/(1−p), so every
adapter's expected input, loss and gradient are those of per-module dropout: the same regulariser in expectation.
What changes is only that the noise of adapters reading one tensor is correlated (as if dropout were applied once to
that tensor before them). `lora_dropout_mode per_module` keeps one mask per adapter (the masks medpt drew before).

Masks come from numpy's PCG64, seeded by one draw of torch's generator per mask, so `set_seed`, checkpoint RNG
restores and gradient checkpointing's recomputation reproduce them. 16-bit uniforms: p is exact to 1/65536.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
import torch

# The bit pattern of 1.0 in each dtype: the keep multiplier is built by numpy as raw integers and viewed as the dtype.
_ONE = {
    torch.bfloat16: (np.uint16, 0x3F80),
    torch.float16: (np.uint16, 0x3C00),
    torch.float32: (np.uint32, 0x3F800000),
}


class _Keep(torch.autograd.Function):
    """y = x · m · s, with m ∈ {0, 1} in x's dtype and s = 1/(1−p); only m is kept for the backward pass. With
    s = None, m already holds {0, 1/(1−p)} (fp32, see FastDropout.keep_multiplier): one multiply instead of two."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, keep: torch.Tensor, scale: float | None) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        y = torch.mul(x, keep)
        return y if scale is None else y.mul_(scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (keep,) = ctx.saved_tensors
        g = torch.mul(grad, keep)
        return (g if ctx.scale is None else g.mul_(ctx.scale)), None, None


class FastDropout(torch.nn.Module):
    """Inverted dropout with bulk masks; with `shared`, one module serves every adapter of a layer and reuses the
    dropped copy for adapters that read the same tensor (see the module docstring)."""

    def __init__(self, p: float, shared: bool = False):
        super().__init__()
        self.p, self.shared = p, shared
        self.threshold = int(round(p * 65536)) - 32768  # keep where a uniform int16 >= threshold
        self.scale = 1.0 / (1.0 - (self.threshold + 32768) / 65536)
        self._last: tuple[Any, int, torch.Tensor] | None = None  # (weakref to the input, its version, the output)

    @torch.compiler.disable  # numpy draws the masks: left out of a compiled layer's graph (medpt.train.compiling)
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu" or x.dtype not in _ONE:
            return torch.nn.functional.dropout(x, self.p, self.training)
        if self.shared and self._last is not None:
            ref, version, out = self._last
            if ref() is x and x._version == version:
                return out
        folded = x.dtype == torch.float32
        out = _Keep.apply(x, self.keep_multiplier(x, folded), None if folded else self.scale)
        if self.shared:
            # A weak reference: once the input is freed (after the layer's forward, or its backward), the cached
            # output goes too, instead of living on until this layer's next forward.
            self._last = (weakref.ref(x, self._forget), x._version, out)
        return out

    def _forget(self, ref: Any) -> None:
        if self._last is not None and self._last[0] is ref:  # not a newer entry's
            self._last = None

    def keep_multiplier(self, x: torch.Tensor, folded: bool = False) -> torch.Tensor:
        """{0, 1} in x's dtype; with `folded` (fp32 only), {0, 1/(1−p)}: x · float32(1/(1−p)) is exactly what
        x · 1 then · scale gives in fp32 (torch multiplies a float32 tensor by a Python float in float32), so the
        scale folds into the mask. In bf16/fp16 it does not (the scale itself would be rounded to 8 or 11 bits)."""
        # One draw from torch's generator seeds the mask: set_seed and checkpoint RNG restores cover it.
        seed = int(torch.randint(0, 2**62, (1,)).item())
        n = x.numel()
        raw = np.random.Generator(np.random.PCG64(seed)).bit_generator.random_raw(-(-n // 4))
        keep = raw.view(np.int16)[:n] >= self.threshold
        kind, one = _ONE[x.dtype]
        if folded:
            one = int(np.array(self.scale, np.float32).view(np.uint32))
        multiplier = keep.view(np.uint8).astype(kind)
        multiplier *= kind(one)
        return torch.from_numpy(multiplier).view(x.dtype).view(x.shape)

    def extra_repr(self) -> str:
        return f"p={self.p}, shared={self.shared}"


def install(model: Any, mode: str) -> int:
    """Replace PEFT's dropout modules by FastDropout (one per decoder layer when shared); returns how many."""
    count = 0
    per_layer: dict[int, FastDropout] = {}
    for name, module in model.named_modules():
        dropouts = getattr(module, "lora_dropout", None)
        if dropouts is None:
            continue
        for adapter, layer in dropouts.items():
            if not (isinstance(layer, torch.nn.Dropout) and layer.p > 0):
                continue
            if mode == "shared":
                key = _layer_key(name)
                fast = per_layer.setdefault(key, FastDropout(layer.p, shared=True))
            else:
                fast = FastDropout(layer.p)
            dropouts[adapter] = fast.train(layer.training)  # a new module would start in training mode
            count += 1
    return count


def _layer_key(name: str) -> int:
    """The decoder layer a module belongs to (`...layers.3.self_attn.q_proj` → 3); -1 outside the layers. Modules of
    different layers never share: their inputs differ anyway, and one module per layer keeps its cache small."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part in ("layers", "h", "blocks") and parts[i + 1].isdigit():
            return int(parts[i + 1])
    return -1
