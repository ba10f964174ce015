"""Baseline for bench/data_pipeline.py: the data stage of MedicalGPT's pretraining.py, as its users run it.

Written for medpt's benchmarks (not copied): it follows the same steps as that script and as transformers'
run_clm example it derives from: `datasets.load_dataset("json")` on pre-rendered {"text"} records, a batched
`map` that tokenizes with the transformers tokenizer (`preprocessing_num_workers` processes), then a batched
`map` that concatenates each batch of 1000 documents and cuts it into block_size blocks, dropping each batch's
remainder. Prints the number of blocks and of tokens kept.

    python bench/reference_grouping.py TEXT.jsonl TOKENIZER_DIR --block_size 512 --num_proc 2
"""

from __future__ import annotations

import argparse
from itertools import chain


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("text_file")
    parser.add_argument("tokenizer")
    parser.add_argument("--block_size", type=int, default=512)
    parser.add_argument("--num_proc", type=int, default=2)
    parser.add_argument("--cache_dir", default=None)
    args = parser.parse_args()

    from datasets import load_dataset
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    raw = load_dataset("json", data_files={"train": args.text_file}, cache_dir=args.cache_dir)

    def tokenize(examples):
        return tokenizer(examples["text"])

    tokenized = raw.map(tokenize, batched=True, num_proc=args.num_proc, remove_columns=["text"])
    block = args.block_size

    def group(examples):
        concatenated = {k: list(chain(*examples[k])) for k in examples.keys()}
        total = len(concatenated["input_ids"])
        total = (total // block) * block  # the remainder of every 1000-document batch is dropped
        result = {k: [t[i : i + block] for i in range(0, total, block)] for k, t in concatenated.items()}
        result["labels"] = result["input_ids"].copy()
        return result

    grouped = tokenized.map(group, batched=True, num_proc=args.num_proc)
    import pyarrow.compute as pc

    n_in = pc.sum(pc.list_value_length(tokenized["train"].data.column("input_ids"))).as_py()
    n_blocks = len(grouped["train"])
    print(f"blocks={n_blocks} tokens_in={n_in} tokens_kept={n_blocks * block} dropped={n_in - n_blocks * block}")


if __name__ == "__main__":
    main()
