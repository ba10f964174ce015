"""Prepared blocks as a torch Dataset, and the collator that turns them into model inputs.

Labels are the input ids (the model shifts them by one internally) with -100 wherever nothing should be learned:
padding, located by position (a tokenizer without a pad token pads with EOS, whose real occurrences must keep
their loss), and, for isolated packing, the first token of every document piece, which would otherwise be
"predicted" from the end of an unrelated document.

Isolated packing keeps attention inside each document without building a mask here: the collator passes
position_ids that restart at 0 for every piece (padding is a piece of its own) and no attention_mask, and
transformers then builds the block-diagonal causal mask itself (`find_packed_sequence_indices`), for sdpa, eager,
flex and flash attention alike. It does so only without a KV cache, which is why the model is run with
use_cache=False (medpt sets it on the model for training and scoring).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from medpt.data.packing import Packed

IGNORE_INDEX = -100
REAL_TOKENS = "num_real_tokens"  # collator output for tokens/s accounting; removed before the model sees the batch
SOURCE_IDS = "source_ids"  # collator output: each token's source (-1: padding); the trainer takes it out of the batch


class PackedDataset(torch.utils.data.Dataset):
    """Row i = block i of a prepared split: its token ids and position ids (memory-mapped until read), and with
    `sources` each token's source index (a split of named sources only)."""

    def __init__(self, packed: Packed, sources: bool = False):
        self.packed = packed
        self.sources = sources and packed.segment_source is not None

    def __len__(self) -> int:
        return len(self.packed)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        row = {"input_ids": self.packed.block(i).astype(np.int64), "position_ids": self.packed.positions(i)}
        if self.sources:
            row[SOURCE_IDS] = self.packed.source_ids(i)
        return row

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per row, for length-grouped sampling (--group_by_length with --packing none)."""
        return np.diff(np.asarray(self.packed.block_offsets))


class Collator:
    """Pads a batch to `pad_to` (block_size) or to its longest row, and builds labels and masks."""

    def __init__(self, pad_id: int, mode: str, pad_to: int | None = None):
        self.pad_id, self.mode, self.pad_to = pad_id, mode, pad_to

    def __call__(self, rows: list[dict[str, np.ndarray]]) -> dict[str, Any]:
        width = self.pad_to or max(len(r["input_ids"]) for r in rows)
        n = len(rows)
        input_ids = np.full((n, width), self.pad_id, dtype=np.int64)
        labels = np.full((n, width), IGNORE_INDEX, dtype=np.int64)
        real = np.zeros((n, width), dtype=bool)
        for i, row in enumerate(rows):
            k = len(row["input_ids"])
            input_ids[i, :k], labels[i, :k], real[i, :k] = row["input_ids"], row["input_ids"], True
        batch: dict[str, Any] = {"input_ids": torch.from_numpy(input_ids)}
        if self.mode == "isolated":
            positions = np.zeros((n, width), dtype=np.int64)
            for i, row in enumerate(rows):
                k = len(row["input_ids"])
                positions[i, :k] = row["position_ids"]
                positions[i, k:] = np.arange(width - k)  # padding: a piece of its own, starting at position 0
            labels[positions == 0] = IGNORE_INDEX  # no loss across a document boundary
            batch["position_ids"] = torch.from_numpy(positions)
        # Otherwise padding is only ever on the right, which a causal model's real tokens never attend to, and their
        # positions are the default 0..k-1: no attention_mask or position_ids needed, and passing them costs speed.
        # Under torch.compile transformers cannot look at their values, so it builds a full 4D mask and sdpa loses
        # its causal fast path (measured, 25m bf16 compiled: 0.83x a plain compiled loop with them, 0.85-1.00x without).
        batch["labels"] = torch.from_numpy(labels)
        if SOURCE_IDS in rows[0]:
            sources = np.full((n, width), -1, dtype=np.int64)
            for i, row in enumerate(rows):
                sources[i, : len(row[SOURCE_IDS])] = row[SOURCE_IDS]
            batch[SOURCE_IDS] = torch.from_numpy(sources)
        batch[REAL_TOKENS] = torch.tensor(int(real.sum()))
        return batch
