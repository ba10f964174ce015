"""A model's shape, read from its config.json alone: the sizes every part of the memory plan is computed from.

LLaMA-style decoders (LLaMA, Mistral, Qwen2, deepseek-coder, Yi, ...: every layer an attention block of q/k/v/o and
a gated MLP of gate/up/down, RMSNorm before each) are described by six numbers; config.json names them the same way
in all of them. Mixture-of-experts and other layouts are refused by name rather than planned wrongly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from medpt.errors import MedptError
from medpt.model.files import CONFIG

LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Modules that read the same input tensor: one dropout copy per group under medpt's shared LoRA dropout.
INPUT_GROUPS = {"attn_in": ("q_proj", "k_proj", "v_proj"), "o_in": ("o_proj",), "mlp_in": ("gate_proj", "up_proj"),
                "down_in": ("down_proj",)}  # fmt: skip
_REQUIRED = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
_MOE_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_intermediate_size")


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a LLaMA-style decoder (numbers of elements, not bytes)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool = False
    positions: int | None = None
    model_type: str = "llama"

    @classmethod
    def from_config(cls, config: dict[str, Any], name: str = CONFIG) -> ModelShape:
        if any(config.get(k) for k in _MOE_KEYS):
            raise MedptError(f"{name}: a mixture-of-experts model ({config.get('model_type')}); medpt plan covers "
                             "dense LLaMA-style decoders only")  # fmt: skip
        missing = [k for k in _REQUIRED if not isinstance(config.get(k), int)]
        if missing:
            raise MedptError(f"{name}: no {', '.join(missing)}; medpt plan needs a LLaMA-style config.json "
                             f"(model_type {config.get('model_type')!r})")  # fmt: skip
        heads = config["num_attention_heads"]
        return cls(
            hidden=config["hidden_size"],
            layers=config["num_hidden_layers"],
            heads=heads,
            kv_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            intermediate=config["intermediate_size"],
            vocab=config["vocab_size"],
            tied=bool(config.get("tie_word_embeddings", False)),
            positions=config.get("max_position_embeddings"),
            model_type=str(config.get("model_type", "")),
        )

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def linear(self, module: str) -> tuple[int, int]:
        """(in_features, out_features) of one linear module of a layer."""
        h, i = self.hidden, self.intermediate
        shapes = {"q_proj": (h, self.q_dim), "k_proj": (h, self.kv_dim), "v_proj": (h, self.kv_dim),
                  "o_proj": (self.q_dim, h), "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}  # fmt: skip
        return shapes[module]

    def group_dim(self, group: str) -> int:
        """Width of the tensor a group of modules reads (see INPUT_GROUPS)."""
        return self.linear(INPUT_GROUPS[group][0])[0]

    def layer_linear_params(self) -> int:
        return sum(i * o for i, o in map(self.linear, LINEAR_MODULES))

    def embedding_params(self) -> int:
        """Input embedding plus output head (one matrix when tied)."""
        return self.vocab * self.hidden * (1 if self.tied else 2)

    def norm_params(self) -> int:
        return (2 * self.layers + 1) * self.hidden

    def parameters(self) -> int:
        return self.layers * self.layer_linear_params() + self.embedding_params() + self.norm_params()

    def lora_params(self, targets: tuple[str, ...], rank: int) -> int:
        """LoRA A (r × in) and B (out × r) of every targeted module, over all layers."""
        return self.layers * sum(rank * sum(self.linear(m)) for m in targets)


def resolve_targets(target_modules: list[str]) -> tuple[str, ...]:
    """--target_modules as module names: `all` is every linear layer but the output head (PEFT's all-linear)."""
    if target_modules == ["all"]:
        return LINEAR_MODULES
    unknown = [t for t in target_modules if t not in LINEAR_MODULES]
    if unknown:
        raise MedptError(f"--target_modules {','.join(unknown)}: medpt plan knows the linear layers "
                         f"{', '.join(LINEAR_MODULES)} (or all)")  # fmt: skip
    return tuple(m for m in LINEAR_MODULES if m in target_modules)
