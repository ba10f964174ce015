"""GPU check: medpt's training engine on the 7B shape of deepseek-coder-7b-base-v1.5, random weights.

    PYTHONPATH=src python3 bench/gpu_check.py            # on a GPU machine (bench/gpu_check.sh), < 8 minutes
    PYTHONPATH=src python bench/gpu_check.py --shape tiny --steps 4   # the same code path on a CPU, seconds

Shape: hidden 4096, 30 layers, 32 heads (MHA), intermediate 11008, vocab 102400; LoRA r16 on all linear layers,
block 512, bf16 autocast on bf16 weights, through MedptTrainer (the same trainer, collator and LoRA setup as
`medpt train`), with and without gradient checkpointing. Prints tokens/s, peak GPU memory and MFU, with FLOPs per
token = 4·N_matmul + 6·N_lora + 12·layers·hidden·block, against the bf16 matmul rate measured first (8192³) and
against the H100's dense bf16 peak (989 TFLOP/s). Targets: MFU ≥ 45% on an H100; one configuration under 24 GB.

Beside each measured peak, `medpt plan`'s estimate of the same step (medpt.plan: no weights, from the shape): the
planned tensors against torch.cuda.max_memory_allocated, and the planned allocator reserve against
max_memory_reserved − max_memory_allocated (the plan assumes 10% until this check measures it).
`--plan_only` prints the plans alone (no GPU needed).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

SHAPES = {
    "7b": dict(
        hidden_size=4096, num_hidden_layers=30, num_attention_heads=32, intermediate_size=11008, vocab_size=102400
    ),
    "tiny": dict(hidden_size=512, num_hidden_layers=6, num_attention_heads=8, intermediate_size=1408, vocab_size=8192),
}
H100_BF16_PEAK = 989e12
# (batch, gradient checkpointing): the fast one, and one meant to fit a 24 GB card.
CONFIGS = {"7b": [(8, False), (8, True), (1, True)], "tiny": [(4, False), (4, True)]}


def matmul_tflops(device: str, n: int) -> float:
    import torch

    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    _sync(device)
    t = time.perf_counter()
    for _ in range(10):
        a @ b
    _sync(device)
    return 2 * n**3 * 10 / (time.perf_counter() - t) / 1e12


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def run_config(shape: dict, device: str, batch: int, ckpt: bool, steps: int, block: int) -> dict:
    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments

    from medpt.args import LoraArguments
    from medpt.data.batches import Collator, PackedDataset
    from medpt.data.packing import pack
    from medpt.train.lora import add_lora, speed_up
    from medpt.train.trainer import MedptTrainer

    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    config = LlamaConfig(**shape, num_key_value_heads=shape["num_attention_heads"], max_position_embeddings=4096,
                         tie_word_embeddings=False, use_cache=False)  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa")
    lora = LoraArguments(lora_rank=16, lora_alpha=32, lora_dropout=0.05, target_modules=["all"])
    model = add_lora(model, lora, gradient_checkpointing=ckpt)
    speed_up(model, autocast=True, compiled=False)
    n_blocks = batch * (steps + 2)
    tokens = np.random.default_rng(0).integers(3, shape["vocab_size"], n_blocks * block).astype(np.int32)
    data = PackedDataset(pack(tokens, np.arange(0, n_blocks * block + 1, block), block, "concat"))
    out = tempfile.mkdtemp(prefix="gpu-check-")
    args = TrainingArguments(
        output_dir=out, per_device_train_batch_size=batch, max_steps=steps, logging_steps=1, learning_rate=2e-4,
        bf16=True, use_cpu=device == "cpu", gradient_checkpointing=ckpt,
        gradient_checkpointing_kwargs={"use_reentrant": False}, report_to="none", save_strategy="no",
        disable_tqdm=True, remove_unused_columns=False, dataloader_pin_memory=device == "cuda",
    )  # fmt: skip
    trainer = MedptTrainer(model=model, args=args, train_dataset=data, data_collator=Collator(0, "concat", block))
    trainer.train()
    rates = [r["tokens_per_second"] for r in trainer.state.log_history if "tokens_per_second" in r][2:]
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    reserved = torch.cuda.max_memory_reserved() / 2**30 if device == "cuda" else float("nan")
    del trainer, model
    return {"batch": batch, "ckpt": ckpt, "tokens_per_second": statistics.median(rates), "peak_gib": peak,
            "reserved_gib": reserved, **planned(shape, device, batch, ckpt, block)}  # fmt: skip


def planned(shape: dict, device: str, batch: int, ckpt: bool, block: int) -> dict:
    """The plan of this step (medpt.plan.memory): all tensors (what max_memory_allocated counts), and the reserve."""
    from medpt.plan.memory import Setup, estimate
    from medpt.plan.shape import ModelShape

    heads = shape["num_attention_heads"]
    model = ModelShape(shape["hidden_size"], shape["num_hidden_layers"], heads, heads, shape["hidden_size"] // heads,
                       shape["intermediate_size"], shape["vocab_size"])  # fmt: skip
    setup = Setup(device="cuda" if device == "cuda" else "cpu", method="lora", weight_bytes=2, autocast=True,
                  micro_batch=batch, block=block, checkpointing=ckpt, rank=16)  # fmt: skip
    parts = estimate(model, setup).parts  # no fixed overhead or reserve in this Setup: tensors only
    return {"planned_gib": sum(parts.values()) / 2**30, "planned_parts_gib": {k: v / 2**30 for k, v in parts.items()}}


def flops_per_token(shape: dict, block: int, rank: int = 16) -> float:
    h, i, layers, v = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"], shape["vocab_size"]
    n_matmul = layers * (4 * h * h + 3 * h * i) + h * v
    n_lora = layers * rank * (4 * 2 * h + 3 * (h + i))
    return 4 * n_matmul + 6 * n_lora + 12 * layers * h * block


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=list(SHAPES), default="7b")
    parser.add_argument("--device", default=None)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--block", type=int, default=512)
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    parser.add_argument("--plan_only", action="store_true", help="print medpt plan's estimates; run nothing")
    args = parser.parse_args()
    if args.plan_only:
        for batch, ckpt in CONFIGS[args.shape]:
            plan = planned(SHAPES[args.shape], "cuda", batch, ckpt, args.block)
            print(f"batch {batch}, checkpointing {'on' if ckpt else 'off'}: {plan['planned_gib']:.2f} GiB planned")
        return
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    shape = SHAPES[args.shape]
    configs = CONFIGS[args.shape]
    measured = matmul_tflops(device, 8192 if device == "cuda" else 1024)
    print(
        f"{torch.cuda.get_device_name() if device == 'cuda' else 'CPU'}: bf16 matmul {measured:.1f} TFLOP/s", flush=True
    )
    fpt = flops_per_token(shape, args.block)
    results = []
    for batch, ckpt in configs:
        t = time.perf_counter()
        r = run_config(shape, device, batch, ckpt, args.steps, args.block)
        r["mfu_measured"] = r["tokens_per_second"] * fpt / (measured * 1e12)
        r["mfu_h100_peak"] = r["tokens_per_second"] * fpt / H100_BF16_PEAK
        r["wall_s"] = round(time.perf_counter() - t, 1)
        results.append(r)
        print(json.dumps(r), flush=True)
    print(f"\n{args.shape} shape, block {args.block}, LoRA r16 all-linear, bf16; {fpt / 1e9:.2f} GFLOP/token")
    print(f"{'batch':>6}{'ckpt':>6}{'tok/s':>10}{'peak GiB':>10}{'planned':>9}{'error':>8}{'reserved':>10}"
          f"{'MFU (measured)':>16}{'MFU (989 TF)':>14}")  # fmt: skip
    for r in results:
        error = r["planned_gib"] / r["peak_gib"] - 1 if r["peak_gib"] == r["peak_gib"] else float("nan")
        print(f"{r['batch']:>6}{'yes' if r['ckpt'] else 'no':>6}{r['tokens_per_second']:>10,.0f}{r['peak_gib']:>10.1f}"
              f"{r['planned_gib']:>9.1f}{error:>+8.0%}{r['reserved_gib']:>10.1f}{r['mfu_measured']:>16.0%}"
              f"{r['mfu_h100_peak']:>14.0%}")  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps({"matmul_tflops": measured, "results": results}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
