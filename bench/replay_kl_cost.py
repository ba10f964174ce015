"""The cost of `--replay_kl` per training step: forward + backward of a micro-batch with and without the KL term.

    PYTHONPATH=src python bench/replay_kl_cost.py [--size 5m] [--batch 8] [--block 256] [--share 0.25] [--repeats 9]

A micro-batch of `batch` rows of `block` tokens, cut from documents of ~100 tokens of which a `share` are replayed
(general) ones, as concat packing lays out a --mix; the KL term needs the base's logits on every row that holds a
replayed token (LoRA: the same model with the adapter off; full fine-tuning: a frozen copy). The two variants are
timed alternately (median of --repeats), so a machine shared with other jobs slows both alike.

Measured (2-core AMD EPYC VM shared with other jobs at load 8-10, OMP_NUM_THREADS=1, --batch 16 --repeats 5, 69% of
the rows holding replayed tokens): LoRA r16 3,579 → 4,770 ms per step (+33%), full fine-tuning 4,640 → 9,351 ms
(+102%; the frozen copy's forward and the fp32 softmaxes over the 8k vocabulary, which dominate a 5m model).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def batch(vocab: int, rows: int, block: int, share: float, seed: int = 0) -> tuple[dict, torch.Tensor]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(50, 150, rows * block // 50)
    source = (rng.random(len(lengths)) < share).astype(np.int64)
    ids = torch.from_numpy(np.repeat(source, lengths)[: rows * block].reshape(rows, block))
    tokens = torch.randint(5, vocab, (rows, block))
    return {"input_ids": tokens, "labels": tokens.clone()}, ids


def step_seconds(objective, model, inputs: dict, sources: torch.Tensor) -> float:
    t = time.perf_counter()
    loss = objective.loss(model, dict(inputs), sources, None)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - t


def measure(model, inputs: dict, sources: torch.Tensor, repeats: int) -> dict[str, float]:
    from medpt.train.replay_kl import SourceObjective

    plain = SourceObjective(("medical", "general"), 0.0, [], model)
    kl = SourceObjective(("medical", "general"), 1.0, ["general"], model)
    times: dict[str, list[float]] = {"plain": [], "kl": []}
    for _ in range(2):  # warm-up
        step_seconds(plain, model, inputs, sources), step_seconds(kl, model, inputs, sources)
    for _ in range(repeats):
        times["plain"].append(step_seconds(plain, model, inputs, sources))
        times["kl"].append(step_seconds(kl, model, inputs, sources))
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="5m")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--block", type=int, default=256)
    parser.add_argument("--share", type=float, default=0.25)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM

    from medpt.args import LoraArguments
    from medpt.data.pipeline import read_texts
    from medpt.model.init_tiny import init_tiny
    from medpt.samples import SAMPLE_QA
    from medpt.train.lora import add_lora

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        init_tiny(Path(tmp) / "m", args.size, read_texts([str(SAMPLE_QA)]), seed=0)
        full = AutoModelForCausalLM.from_pretrained(Path(tmp) / "m").train()
        lora = add_lora(AutoModelForCausalLM.from_pretrained(Path(tmp) / "m"), LoraArguments(lora_rank=16,
                        lora_alpha=32, lora_dropout=0.0)).train()  # fmt: skip
    inputs, sources = batch(full.config.vocab_size, args.batch, args.block, args.share)
    rows = float((sources[:, 1:] == 1).any(1).float().mean())
    print(f"{args.size}, {args.batch} × {args.block} tokens, {args.share:.0%} replayed tokens, rows holding some: "
          f"{rows:.0%}, torch threads {torch.get_num_threads()}")  # fmt: skip
    for name, model in (("lora r16", lora), ("full", full)):
        t = measure(model, inputs, sources, args.repeats)
        print(f"{name}: {1000 * t['plain']:.0f} ms/step without, {1000 * t['kl']:.0f} ms with --replay_kl "
              f"({t['kl'] / t['plain'] - 1:+.0%})")  # fmt: skip


if __name__ == "__main__":
    main()
