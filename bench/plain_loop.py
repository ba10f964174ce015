"""Yardstick for bench/train_throughput.py: the fastest obvious hand-written LoRA loop, no Trainer, no medpt runtime.

Stock PEFT LoRA (r16, alpha 32, all linear layers) on the tiny model, frozen weights in the run's dtype, AdamW on the
LoRA weights, `torch.autocast` for bf16, optionally `torch.compile`; the same 512-token blocks medpt trains on
(prepared by medpt, concat packing), batch 4. This is the kind of loop the issue's reference figures came from, run
on the same machine as medpt, so the comparison does not depend on how FLOPs are counted.

    python bench/plain_loop.py MODEL_DIR CORPUS [--dtype bfloat16] [--dropout 0.0] [--compile] [--steps 14]

Prints tokens_per_second=X (median over the steps after the warm-up steps).
"""

from __future__ import annotations

import argparse
import statistics
import time

from blocks import prepared_blocks  # bench/ is on sys.path: this script's folder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("corpus")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--steps", type=int, default=14)
    args = parser.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    blocks = prepared_blocks(args.model, args.corpus)
    dtype = getattr(torch, args.dtype)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype, attn_implementation="sdpa")
    model.config.use_cache = False
    config = LoraConfig(
        task_type="CAUSAL_LM", r=16, lora_alpha=32, lora_dropout=args.dropout, target_modules="all-linear"
    )
    model = get_peft_model(model, config).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4, weight_decay=0.01)
    step_fn = torch.compile(model) if args.compile else model
    times = [time.perf_counter()]
    for step in range(args.steps):
        ids = torch.stack([torch.from_numpy(blocks.block(4 * step + k).astype("int64")) for k in range(4)])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bfloat16"):
            loss = step_fn(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter())
    warmup = 4 if args.compile else 3
    steps = [b - a for a, b in zip(times[warmup:], times[warmup + 1 :])]
    print(f"tokens_per_second={4 * 512 / statistics.median(steps):.1f}")


if __name__ == "__main__":
    main()
