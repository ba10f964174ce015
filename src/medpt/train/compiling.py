"""`--torch_compile`, made to pay: compile each decoder layer (regional compilation), not the whole model.

transformers' `torch_compile` wraps the whole PEFT model in one `torch.compile`. On this CPU that made medpt slower
than eager (issue 14: 0.62×), while the same compiler made a hand-written loop 1.07× faster. What differs, seen with
`TORCH_LOGS=graph_breaks,recompiles`: the whole-model graph breaks around PEFT's per-adapter Python control flow and
the data-dependent bits of the loss, so inductor sees small pieces with guards re-checked every step, and the
embedding, head and loss (memory-bound, nothing to fuse) are traced for nothing. Compiling each decoder layer instead
gives one graph that every layer shares (the layers are the same code: compiled once, ~seconds, reused N times), the
part where fusion pays (RMSNorm, RoPE, SiLU·mul, the LoRA adds, the dropout multiplies), and nothing else.

medpt's dropout draws its masks with numpy, which dynamo cannot trace: its call is left out of the graph
(`torch.compiler.disable`: the draw and its two multiplies), so a layer is a few graphs around them.
"""

from __future__ import annotations

from typing import Any


def decoder_layers(model: Any) -> list[Any]:
    """The model's decoder layers (transformers marks them as GradientCheckpointingLayer)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def compile_layers(model: Any, log: Any = print) -> int:
    """Compile every decoder layer in place; returns how many (0: the model has none, so nothing is compiled)."""
    layers = decoder_layers(model)
    for layer in layers:
        layer.compile()
    if layers:
        log(f"torch.compile: {len(layers)} decoder layers compiled regionally (one graph, compiled on the first step)")
    return len(layers)
