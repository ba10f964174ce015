"""One batch of answers decoding together: its rows' KV cache and attention mask, kept aligned on the left.

Rows start at different times and have prompts of different lengths, so every row is left-padded to the batch's
length: the attention mask marks the padding (0) and each row's positions count only its real tokens, so a row's
logits are those it would have alone (tested: a batch gives the tokens each row gives alone). Rows that join a
running batch (continuous batching) are prefilled together, then their cache is padded on the left to the batch's
length and stacked under it; finished rows are dropped, and columns that have become padding in every row are cut, so
the cache never outgrows the longest live row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

# (rows, model inputs) -> the model output (logits, past_key_values); the engine binds the model and adapter choice.
Forward = Callable[..., Any]


class Lane:
    """The rows that share one forward pass (one model, or a PEFT model with a per-row adapter choice)."""

    def __init__(self, forward: Forward, pad_id: int, cache_name: str = "cache"):
        self.forward, self.pad_id = forward, pad_id
        self.cache_name = cache_name  # the KV cache's argument (and output) name: "cache", "past_key_values" < v5.2x
        self.rows: list[Any] = []
        self.cache: Any = None  # transformers DynamicCache, [rows, heads, columns, head_dim] per layer
        self.mask: torch.Tensor | None = None  # [rows, columns]: 1 a real token, 0 left padding

    def admit(self, rows: list[Any], prompts: list[list[int]], every_position: bool = False) -> torch.Tensor:
        """Prefill new rows (left-padded together) and add them under the running ones; their next-token logits
        [rows, vocab], or with `every_position` the logits of every position [rows, columns, vocab] as the model
        returned them (to score the prompts)."""
        ids, mask = left_pad(prompts, self.pad_id)
        positions = (mask.cumsum(1) - 1).clamp(min=0)  # position 0 is each row's first real token
        keep = 0 if every_position else 1  # transformers' logits_to_keep: 0 keeps every position
        out = self.forward(rows, input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                           logits_to_keep=keep)  # fmt: skip
        if self.rows:
            self.cache, self.mask = stack_caches(self.cache, self.mask, out[self.cache_name], mask)
        else:
            self.cache, self.mask = out[self.cache_name], mask
        self.rows += rows
        return out.logits if every_position else out.logits[:, -1].float()

    def step(self, last_tokens: list[int]) -> torch.Tensor:
        """One decoding step for every row: feed each row's last token; the next-token logits, [rows, vocab]."""
        ids = torch.tensor(last_tokens, dtype=torch.long).unsqueeze(1)
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], dim=1)
        positions = self.mask.sum(1, keepdim=True) - 1
        out = self.forward(self.rows, input_ids=ids, attention_mask=self.mask, position_ids=positions, use_cache=True,
                           **{self.cache_name: self.cache})  # fmt: skip
        self.cache = out[self.cache_name]
        return out.logits[:, -1].float()

    def keep(self, alive: list[bool]) -> None:
        """Drop the finished rows, then the leading columns that are padding in every row left."""
        if all(alive):
            return
        self.rows = [r for r, keep in zip(self.rows, alive) if keep]
        if not self.rows:
            self.cache = self.mask = None
            return
        index = torch.tensor([i for i, keep in enumerate(alive) if keep])
        self.cache.batch_select_indices(index)
        self.mask = self.mask[index]
        first = int(self.mask.any(0).long().argmax())  # the first column some row still uses
        if first:
            self.mask = self.mask[:, first:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p) :] = 1
    return ids, mask


def stack_caches(cache: Any, mask: torch.Tensor, new: Any, new_mask: torch.Tensor) -> tuple[Any, torch.Tensor]:
    """`new`'s rows under `cache`'s, the shorter one padded on the left (zeros, masked out) to the longer's length.
    Only full-attention caches (LLaMA-style models) can be stacked this way: a sliding-window layer keeps a window
    relative to its own length."""
    from transformers.cache_utils import DynamicLayer

    width = max(mask.shape[1], new_mask.shape[1])
    for old_layer, new_layer in zip(cache.layers, new.layers):
        if type(old_layer) is not DynamicLayer or type(new_layer) is not DynamicLayer:
            raise NotImplementedError("continuous batching needs full-attention KV caches; use --batching dynamic")
        old_layer.keys = torch.cat([_pad_left(old_layer.keys, width), _pad_left(new_layer.keys, width)])
        old_layer.values = torch.cat([_pad_left(old_layer.values, width), _pad_left(new_layer.values, width)])
    return cache, torch.cat([_pad_left(mask, width, dim=1), _pad_left(new_mask, width, dim=1)])


def _pad_left(t: torch.Tensor, width: int, dim: int = 2) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)
