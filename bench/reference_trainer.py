"""Baseline for bench/train_throughput.py: MedicalGPT's default training on a CPU, written for medpt's benchmarks.

A plain transformers.Trainer with stock PEFT LoRA (r16, alpha 32, dropout 0.05, all linear layers) in fp32: on a
CPU, MedicalGPT's pretraining.py runs fp32 unless given --use_cpu, because transformers refuses --bf16 without it.
The blocks are the same ones medpt trains on (prepared by medpt, concat packing, 512 tokens).

    python bench/reference_trainer.py MODEL_DIR CORPUS OUT_DIR [--steps 14]

Prints tokens_per_second=X (median over the steps after 3 warm-up steps).
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
    parser.add_argument("out")
    parser.add_argument("--steps", type=int, default=14)
    args = parser.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    blocks = prepared_blocks(args.model, args.corpus)
    full = sum(1 for i in range(len(blocks)) if len(blocks.block(i)) == 512)  # MedicalGPT keeps full blocks only

    class Blocks(torch.utils.data.Dataset):
        def __len__(self):
            return full

        def __getitem__(self, i):
            ids = torch.from_numpy(blocks.block(i).astype("int64"))
            return {"input_ids": ids, "labels": ids.clone()}

    model = AutoModelForCausalLM.from_pretrained(args.model)  # fp32
    model = get_peft_model(
        model, LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear")
    )
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            times.append(time.perf_counter())

    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=args.out,
            per_device_train_batch_size=4,
            max_steps=args.steps,
            logging_steps=1,
            report_to="none",
            save_strategy="no",
            disable_tqdm=True,
            learning_rate=2e-4,
        ),  # fmt: skip
        train_dataset=Blocks(),
        callbacks=[Clock()],
    )
    trainer.train()
    steps = [b - a for a, b in zip(times[3:], times[4:])]
    print(f"tokens_per_second={4 * 512 / statistics.median(steps):.1f}")


if __name__ == "__main__":
    main()
