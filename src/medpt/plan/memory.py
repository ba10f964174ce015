"""The peak memory of a training step, by part, from the model's shape and the training setup: no weights, no torch.

What a step holds at its peak (T = micro-batch × block tokens; c = bytes of a 16-bit or 32-bit activation):

1. Static, for the whole run: the frozen weights (bf16/fp16/fp32, or NF4 at 0.5 byte plus its quantisation
   constants), the trained parameters (LoRA adapters in fp32, as PEFT keeps them), their gradients and optimizer
   states, and under autocast the 16-bit copies autocast caches of trained fp32 weights.
2. Activations saved for backward, per decoder layer and token (`layer_activations`): each RMSNorm keeps its input in
   fp32; attention keeps q, k, v, its output and the log-sum-exp (SDPA's flash / memory-efficient kernels: no
   block × block matrix); the MLP keeps the gate output, its SiLU and the up output; every LoRA adapter keeps its
   (dropped-out) input and its rank-r middle. Measured against torch's saved-tensor hooks on the CPU
   (bench/memory.py --saved): exact to the byte for LoRA (fp32, bf16), QLoRA and full fine-tuning.
   With gradient checkpointing a layer keeps only its input, and one layer at a time is recomputed in backward.
3. The loss over the vocabulary: logits, their fp32 copy, log-softmax, and in backward two fp32 gradients of the
   same size: 12 bytes × T × vocab at the worst moment, a 7B step's largest part once checkpointing is on.
4. Backward workspace: the gradients of one layer's MLP and of the residual stream while they are computed.
5. The framework's fixed overhead (CUDA context, or on a CPU the Python/torch runtime) and the allocator's reserve
   (memory freed by tensors but kept by the allocator: CUDA's caching allocator, glibc's heap).

The peak is the largest of three moments (`_moments`): the loss, every layer's activations still held; with
checkpointing, a layer recomputed in backward; the end of backward, every gradient written (activations are freed
as the gradients they produce are written, so the two never add up in full).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from medpt.plan.shape import INPUT_GROUPS, LINEAR_MODULES, ModelShape

# NF4 with double quantisation (bitsandbytes, QLoRA): 4 bits per weight, one 8-bit absmax per 64 weights and one
# fp32 constant per 256 absmax values.
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
# Bytes of optimizer state per trained parameter: (states, bytes per state or None for the parameter's own dtype).
# torch's AdamW keeps exp_avg and exp_avg_sq in the parameter's dtype; bitsandbytes' 8-bit optimizers one byte each.
OPTIMIZER_STATES: dict[str, tuple[int, int | None]] = {
    "adamw_torch": (2, None), "adamw_torch_fused": (2, None), "adamw_torch_xla": (2, None),
    "adamw_torch_npu_fused": (2, None), "adamw_anyprecision": (2, None), "stable_adamw": (2, None),
    "paged_adamw_32bit": (2, 4), "adamw_bnb_8bit": (2, 1), "adamw_8bit": (2, 1), "paged_adamw_8bit": (2, 1),
    "adamw_torch_8bit": (2, 1), "adamw_torch_4bit": (2, 1),
    "ademamix": (3, None), "ademamix_8bit": (3, 1), "paged_ademamix_32bit": (3, 4), "paged_ademamix_8bit": (3, 1),
    "lion_32bit": (1, 4), "paged_lion_32bit": (1, 4), "lion_8bit": (1, 1), "paged_lion_8bit": (1, 1),
    "rmsprop": (1, None), "rmsprop_bnb": (1, 4), "rmsprop_bnb_32bit": (1, 4), "rmsprop_bnb_8bit": (1, 1),
    "adagrad": (1, None), "sgd": (0, None),
    # Adafactor's factored second moment is a row and a column per matrix: negligible next to the parameters.
    "adafactor": (0, None),
}  # fmt: skip
DEFAULT_OPTIM = "adamw_torch_fused"  # TrainingArguments' default (transformers 5)


@dataclass(frozen=True)
class Setup:
    """What a training run does, in the terms its memory depends on."""

    device: str  # "cpu", or a GPU: "cuda" (this machine's) or "gpu" (sized by --device_memory)
    method: str  # "lora", "qlora" (LoRA on an NF4 base) or "full"
    weight_bytes: int  # bytes per weight as loaded: 2 (bf16/fp16) or 4 (fp32); NF4 is method "qlora"
    autocast: bool  # bf16/fp16 mixed precision: matmuls and their outputs in 16 bits
    micro_batch: int
    block: int
    accumulation: int = 1
    checkpointing: bool = False
    rank: int = 8
    targets: tuple[str, ...] = LINEAR_MODULES
    dropout: float = 0.05
    dropout_mode: str = "shared"
    modules_to_save: tuple[str, ...] = ()
    dora: bool = False
    optim: str = DEFAULT_OPTIM
    attention: str = "sdpa"
    packing: str = "concat"
    fixed_bytes: int = 0  # the framework's fixed overhead on this device (see medpt.plan.devices)
    reserve: float = 0.0  # GPU: the caching allocator's reserve, a fraction of what comes and goes in a step
    heap_layers: float = 0.0  # CPU: what glibc's heap keeps beyond the tensors, in layers' worth of activations
    reference_copy: bool = False  # --replay_kl under full fine-tuning: a frozen copy of the starting weights

    @property
    def tokens(self) -> int:
        return self.micro_batch * self.block

    @property
    def act_bytes(self) -> int:
        """Bytes of a matmul output: 16-bit under autocast."""
        return 2 if self.autocast else 4

    @property
    def residual_bytes(self) -> int:
        """Bytes of the residual stream (and of RMSNorm outputs): the embeddings' dtype. QLoRA's preparation casts
        the embeddings and norms to fp32 (peft.prepare_model_for_kbit_training)."""
        return 4 if self.method == "qlora" else self.weight_bytes

    @property
    def mlp_bytes(self) -> int:
        """bitsandbytes' 4-bit linear casts its output back to its input's dtype: fp32 under QLoRA."""
        return 4 if self.method == "qlora" else self.act_bytes


@dataclass
class Estimate:
    """The parts of a step's peak (bytes), the moment it happens, and one layer's activations with and without
    checkpointing."""

    parts: dict[str, int] = field(default_factory=dict)
    moment: str = ""
    layer_bytes: int = 0  # one decoder layer's saved activations at this micro-batch
    checkpoint_bytes: int = 0  # what checkpointing keeps of a layer (its input)

    @property
    def peak(self) -> int:
        return sum(self.parts.values())


def estimate(shape: ModelShape, s: Setup) -> Estimate:
    """The peak of a training step: the largest of its moments (see the module docstring), by part."""
    layer = round(sum(layer_activations(shape, s).values()) * s.tokens)
    kept = shape.hidden * s.residual_bytes * s.tokens
    moments = {name: _with_overheads(parts, s, layer) for name, parts in _moments(shape, s, layer, kept).items()}
    moment = max(moments, key=lambda k: sum(moments[k].values()))
    return Estimate(moments[moment], moment, layer, kept)


def _moments(shape: ModelShape, s: Setup, layer: int, kept: int) -> dict[str, dict[str, int]]:
    """1) the loss, every layer's activations still held; 2) with checkpointing, a layer recomputed in backward;
    3) the end of backward, every gradient written."""
    static = static_parts(shape, s)
    grads = sum(n * size for n, size in trained_groups(shape, s))
    # Gradients appear as backward runs; a full fine-tune's first is the output head's. With accumulation the
    # previous micro-batches' gradients stay while the next one runs.
    held = (
        grads if s.accumulation > 1 or s.method != "full" else min(shape.vocab * shape.hidden * s.weight_bytes, grads)
    )
    saved = shape.layers * (kept if s.checkpointing else layer)
    workspace = (3 * shape.intermediate * s.mlp_bytes + 8 * shape.hidden) * s.tokens
    loss = (12 * shape.vocab + 4 * shape.hidden + 4) * s.tokens  # + the final norm's fp32 input and 1/rms
    moments = {"loss": {**static, "gradients": held, "activations": saved, "logits and loss": loss,
                        "backward workspace": workspace}}  # fmt: skip
    if s.checkpointing:
        moments["recomputed layer"] = {**static, "gradients": held, "activations": saved + layer,
                                       "logits and loss": 0, "backward workspace": workspace}  # fmt: skip
    moments["end of backward"] = {**static, "gradients": grads, "activations": 0, "logits and loss": 0,
                                  "backward workspace": workspace}  # fmt: skip
    return moments


def _with_overheads(parts: dict[str, int], s: Setup, layer: int) -> dict[str, int]:
    """The framework's fixed overhead, and the allocator's reserve (see medpt.plan.devices)."""
    changing = sum(parts[k] for k in ("gradients", "activations", "logits and loss", "backward workspace"))
    reserve = s.reserve * changing + s.heap_layers * layer
    return {**parts, "fixed overhead": s.fixed_bytes, "allocator reserve": round(reserve)}


def static_parts(shape: ModelShape, s: Setup) -> dict[str, int]:
    """Weights, trained parameters, optimizer states and autocast's weight copies: the same at every step."""
    groups = trained_groups(shape, s)
    states, state_bytes = OPTIMIZER_STATES.get(s.optim, OPTIMIZER_STATES[DEFAULT_OPTIM])
    # autocast keeps a 16-bit copy of each fp32 weight it multiplies; under QLoRA also of the fp32 output head,
    # cast for the loss and kept for backward
    copies = sum(n * 2 for n, size in groups if size == 4) if s.autocast else 0
    if s.autocast and s.method == "qlora":
        copies += shape.vocab * shape.hidden * 2
    parts = {
        "frozen weights": frozen_weight_bytes(shape, s),
        "trainable parameters": sum(n * size for n, size in groups),
        "optimizer states": sum(n * states * (state_bytes or size) for n, size in groups),
        "autocast weight copies": copies,
    }
    if s.reference_copy:  # LoRA's --replay_kl base is the same weights with the adapter off: no copy
        parts["frozen copy for --replay_kl"] = shape.parameters() * s.weight_bytes
    return parts


def trained_groups(shape: ModelShape, s: Setup) -> list[tuple[int, int]]:
    """(parameters, bytes each) of what is trained: full fine-tuning the weights as loaded; LoRA the adapters in
    fp32 (PEFT's autocast_adapter_dtype) and --modules_to_save copies in the weights' dtype."""
    if s.method == "full":
        return [(shape.parameters(), s.weight_bytes)]
    adapters = shape.lora_params(s.targets, s.rank)
    if s.dora:  # one magnitude per output feature of every adapted module
        adapters += shape.layers * sum(shape.linear(m)[1] for m in s.targets)
    return [(adapters, 4), (len(s.modules_to_save) * shape.vocab * shape.hidden, s.weight_bytes)]


def frozen_weight_bytes(shape: ModelShape, s: Setup) -> int:
    if s.method == "full":
        return 0
    linear = shape.layers * shape.layer_linear_params()
    rest = shape.embedding_params() + shape.norm_params()
    if s.method == "qlora":  # linear layers in NF4; embeddings, head and norms cast to fp32 by peft
        return round(linear * NF4_BYTES) + rest * 4
    # --modules_to_save trains a copy and keeps the original beside it, frozen
    return (linear + rest) * s.weight_bytes


def layer_activations(shape: ModelShape, s: Setup) -> dict[str, float]:
    """Bytes per token one decoder layer keeps for backward, by tensor (see the module docstring)."""
    h, i, c = shape.hidden, shape.intermediate, s.act_bytes
    full = s.method == "full"
    parts = {
        # fp32 input and 1/rms of both RMSNorms; a trained norm weight also keeps the normalised input
        "norms": 2 * (4 * h + 4) + (2 * h * s.residual_bytes if full else 0),
        # q, k, v and the output as SDPA keeps them, plus the fp32 log-sum-exp per head
        "attention": (2 * shape.q_dim + 2 * shape.kv_dim) * c + 4 * shape.heads,
        # gate output (SiLU's input), SiLU output, up output (the product's two inputs)
        "mlp": 3 * i * s.mlp_bytes,
    }
    if s.attention == "eager":  # no fused kernel: q, k, v and the block × block probabilities (fp32, and a
        # 16-bit copy under autocast) per head, instead of the output and log-sum-exp
        parts["attention"] = (shape.q_dim + 2 * shape.kv_dim) * c + shape.heads * s.block * (4 + (c if c != 4 else 0))
    if s.packing == "isolated":  # the per-document (block × block) mask each layer's attention keeps
        parts["attention"] += s.block * c
    parts["matmul inputs"] = sum(_group_inputs(shape, s, g) for g in INPUT_GROUPS)
    if not full:
        parts["lora middles"] = len(s.targets) * s.rank * c
    return parts


def _group_inputs(shape: ModelShape, s: Setup, group: str) -> float:
    """What the trained matmuls reading one tensor keep of it: the tensor itself, or LoRA's dropout masks and
    dropped-out copies; under autocast an fp32 input is cast to 16 bits by each matmul, which keeps its own copy
    instead (measured, QLoRA included: bench/memory.py --saved)."""
    modules = INPUT_GROUPS[group] if s.method == "full" else tuple(m for m in INPUT_GROUPS[group] if m in s.targets)
    if not modules:
        return 0
    dim = shape.group_dim(group)
    x = {"attn_in": s.residual_bytes, "mlp_in": s.residual_bytes, "o_in": s.act_bytes}.get(group, s.mlp_bytes)
    cast = s.autocast and x == 4
    casts = len(modules) * dim * 2 if cast else 0
    copy = 0 if cast else x  # bytes per element of the input (or dropped copy) a matmul keeps
    if s.method == "full" or s.dropout == 0:
        return (0 if group == "o_in" else dim * copy) + casts  # o_in is the very tensor SDPA keeps
    if s.device == "cpu":
        # medpt.train.dropout: the mask is a multiplier in the input's dtype; shared mode: one mask and copy per group
        masks = 1 if s.dropout_mode == "shared" else len(modules)
        return masks * dim * (x + copy) + casts
    return len(modules) * dim * (1 + copy) + casts  # torch's dropout on a GPU: a bool mask and a copy per adapter


def with_batch(s: Setup, micro_batch: int, checkpointing: bool | None = None) -> Setup:
    """The same setup at another micro-batch (and checkpointing), the accumulation set so that the global batch
    (micro-batch × accumulation) stays the same when the micro-batch divides it."""
    total = s.micro_batch * s.accumulation
    accumulation = total // micro_batch if total % micro_batch == 0 else 1
    checkpointing = s.checkpointing if checkpointing is None else checkpointing
    return replace(s, micro_batch=micro_batch, accumulation=accumulation, checkpointing=checkpointing)


def largest_fit(shape: ModelShape, s: Setup, memory: int, checkpointing: bool, limit: int = 4096) -> int:
    """The largest power-of-two micro-batch (up to `limit`) whose peak fits in `memory` bytes; 0 when 1 does not."""
    best, b = 0, 1
    while b <= limit and estimate(shape, with_batch(s, b, checkpointing)).peak <= memory:
        best, b = b, b * 2
    return best


def keeping_global(s: Setup, fits: int) -> tuple[int, int]:
    """(micro-batch, accumulation) for the global batch of `s` from a micro-batch that fits: the largest power of
    two up to `fits` that divides the global batch, so it is never changed (0, 0 when nothing fits)."""
    total = s.micro_batch * s.accumulation
    b = 1 if fits else 0
    while fits and b * 2 <= fits and total % (b * 2) == 0:
        b *= 2
    return (b, total // b) if b else (0, 0)
