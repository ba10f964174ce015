"""Packing tokenized documents into training blocks. Pure numpy; no token is dropped or reordered within a document.

All three modes produce the same layout: the kept tokens laid out block after block (`tokens`), where each block
starts (`block_offsets`), and where each document piece starts (`segment_offsets`, `segment_doc`). A block shorter
than block_size is padded when batched, and the padding is masked by position (never by token id: a tokenizer
without a pad token pads with EOS, and real EOS tokens must keep their loss).

1. concat (the reference behaviour): all documents joined and cut every block_size tokens. Unlike scripts that
   pack each 1000-document batch separately and drop every batch's tail, only the final block can be short, and it
   is kept (padded) rather than dropped.
2. isolated: each document is cut into block_size pieces; full pieces are blocks of their own and the remainders
   are bin-packed (best fit, longest first), each piece with positions restarting at 0, so attention and
   positions can stay inside a document. A document's full pieces keep their order; its last, shorter piece
   may land in an earlier block.
3. none: one document piece per row.

Every piece lies inside one document (concat cuts at document and block boundaries alike), so a split that knows
each piece's source (`segment_source`, an index into `sources`) knows every token's: training logs its loss per
source and `--replay_kl` picks the tokens it regularises, in every mode and after mixing.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

MODES = ("concat", "isolated", "none")


@dataclass
class Packed:
    tokens: np.ndarray  # int32: the kept tokens, block after block
    block_offsets: np.ndarray  # int64, n_blocks + 1
    segment_offsets: np.ndarray  # int64, n_segments + 1: starts of document pieces in `tokens`
    segment_doc: np.ndarray  # int32, n_segments: which document each piece comes from
    block_size: int
    mode: str
    segment_source: np.ndarray | None = None  # int16, n_segments: index into `sources` (named sources only)
    sources: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.block_offsets) - 1

    @property
    def n_tokens(self) -> int:
        return int(self.block_offsets[-1])

    def block(self, i: int) -> np.ndarray:
        return np.asarray(self.tokens[self.block_offsets[i] : self.block_offsets[i + 1]])

    def positions(self, i: int) -> np.ndarray:
        """Position ids of block i: 0..n-1 for concat (the reference), restarting at each piece otherwise."""
        start, end = int(self.block_offsets[i]), int(self.block_offsets[i + 1])
        if self.mode == "concat":
            return np.arange(end - start, dtype=np.int64)
        first = int(np.searchsorted(self.segment_offsets, start, side="right")) - 1
        last = int(np.searchsorted(self.segment_offsets, end, side="left"))
        seg_starts = np.clip(self.segment_offsets[first : last + 1], start, end) - start
        lengths = np.diff(seg_starts)
        # arange minus the start of the piece each token is in
        return np.arange(end - start, dtype=np.int64) - np.repeat(seg_starts[:-1], lengths)

    def source_ids(self, i: int) -> np.ndarray:
        """The source index of every token of block i (int64; a split without named sources has none)."""
        assert self.segment_source is not None, "this split does not record its sources"
        start, end = int(self.block_offsets[i]), int(self.block_offsets[i + 1])
        first = int(np.searchsorted(self.segment_offsets, start, side="right")) - 1
        last = int(np.searchsorted(self.segment_offsets, end, side="left"))
        bounds = np.clip(self.segment_offsets[first : last + 1], start, end)
        return np.repeat(np.asarray(self.segment_source[first:last], np.int64), np.diff(bounds))

    def padding(self) -> int:
        """Slots that are padding when every block is padded to block_size."""
        return len(self) * self.block_size - self.n_tokens

    def segments_per_block(self) -> np.ndarray:
        starts = self.segment_offsets[:-1]
        return np.diff(np.searchsorted(starts, self.block_offsets, side="left"))


@dataclass
class Layout:
    """Where every token of a packed split comes from, computed from document lengths alone (no tokens needed), so
    a corpus larger than memory is packed by streaming its tokens through `Layout.copy_runs`.

    The output is the source pieces `run_start[i] : run_start[i] + run_length[i]` (positions in the documents laid
    end to end) in this order; blocks and segments are as in `Packed`."""

    block_offsets: np.ndarray
    segment_offsets: np.ndarray
    segment_doc: np.ndarray
    run_start: np.ndarray  # int64, per output run: where it starts in the documents' token space
    run_length: np.ndarray  # int64
    block_size: int
    mode: str

    @property
    def n_tokens(self) -> int:
        return int(self.block_offsets[-1])

    def packed(self, tokens: np.ndarray, doc_source: np.ndarray | None = None, sources: tuple[str, ...] = ()) -> Packed:
        """The split of these tokens; `doc_source` (the source index of each document) gives its segments'."""
        segment_source = None if doc_source is None else np.asarray(doc_source, np.int16)[self.segment_doc]
        return Packed(tokens, self.block_offsets, self.segment_offsets, self.segment_doc, self.block_size, self.mode,
                      segment_source, tuple(sources))  # fmt: skip


def pack(
    tokens: np.ndarray,
    doc_offsets: np.ndarray,
    block_size: int,
    mode: str,
    doc_source: np.ndarray | None = None,
    sources: tuple[str, ...] = (),
) -> Packed:
    """Pack documents held in memory (the same layout `layout` gives a streamed corpus); `doc_source`: each
    document's index into `sources`, carried to every token."""
    lay = layout(doc_offsets, block_size, mode)
    if mode == "concat":
        return lay.packed(tokens, doc_source, sources)
    src = np.repeat(lay.run_start - np.cumsum(lay.run_length) + lay.run_length, lay.run_length) + np.arange(
        lay.n_tokens
    )
    return lay.packed(tokens[src], doc_source, sources)


def layout(doc_offsets: np.ndarray, block_size: int, mode: str) -> Layout:
    if mode == "concat":
        return _concat(doc_offsets, block_size)
    pieces_start, pieces_len, pieces_doc = _pieces(doc_offsets, block_size)
    if mode == "none":
        order = np.arange(len(pieces_len))
        block_of_piece = order
    elif mode == "isolated":
        order, block_of_piece = _best_fit(pieces_len, block_size)
    else:
        raise ValueError(f"unknown packing mode {mode!r}")
    return _arrange(pieces_start, pieces_len, pieces_doc, order, block_of_piece, block_size, mode)


def _concat(doc_offsets: np.ndarray, block_size: int) -> Layout:
    total = int(doc_offsets[-1])
    block_offsets = (
        np.append(np.arange(0, total, block_size, dtype=np.int64), total) if total else np.zeros(1, np.int64)
    )
    # Pieces: a document cut by block boundaries counts as one piece per block it touches.
    seg = np.union1d(doc_offsets[:-1], block_offsets[:-1])
    seg = seg[seg < total] if total else seg[:0]
    segment_doc = (np.searchsorted(doc_offsets, seg, side="right") - 1).astype(np.int32)
    whole = np.array([0, total][: 2 if total else 0], np.int64)  # one run: everything, in order
    return Layout(block_offsets, np.append(seg, total).astype(np.int64), segment_doc, whole[:1], whole[1:],
                  block_size, "concat")  # fmt: skip


def _pieces(doc_offsets: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut every document into consecutive pieces of at most block_size tokens."""
    lengths = np.diff(doc_offsets)
    n_pieces = np.maximum(1, -(-lengths // block_size))  # ceil; an empty document would still be one (empty) piece
    doc = np.repeat(np.arange(len(lengths)), n_pieces)
    first_piece = np.repeat(np.cumsum(n_pieces) - n_pieces, n_pieces)
    index_in_doc = np.arange(len(doc)) - first_piece
    start = doc_offsets[doc] + index_in_doc * block_size
    length = np.minimum(block_size, doc_offsets[doc + 1] - start)
    keep = length > 0
    return start[keep], length[keep], doc[keep].astype(np.int32)


def _best_fit(lengths: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Best-fit decreasing bin packing. Returns the pieces in output order and the block of each of them.

    `free` is a sorted list of the distinct free capacities of open blocks, and `blocks_with` maps a capacity to
    its blocks, so each piece costs one bisect on at most block_size entries instead of a scan over all blocks.
    """
    block_of = np.empty(len(lengths), np.int64)
    free: list[int] = []
    blocks_with: dict[int, list[int]] = {}
    n_blocks = 0
    for piece in np.argsort(-lengths, kind="stable").tolist():
        need = int(lengths[piece])
        k = bisect.bisect_left(free, need)
        if k < len(free):
            capacity = free[k]
            block = blocks_with[capacity].pop()
            if not blocks_with[capacity]:
                del blocks_with[capacity], free[k]
        else:
            capacity, block = block_size, n_blocks
            n_blocks += 1
        block_of[piece] = block
        left = capacity - need
        if left > 0:
            if left not in blocks_with:
                blocks_with[left] = []
                bisect.insort(free, left)
            blocks_with[left].append(block)
    # Blocks in order of their earliest piece, and pieces inside a block in source order, so the layout follows
    # the corpus order as closely as packing allows.
    first_piece = np.full(n_blocks, len(lengths), np.int64)
    np.minimum.at(first_piece, block_of, np.arange(len(lengths)))
    rank = np.empty(n_blocks, np.int64)
    rank[np.argsort(first_piece, kind="stable")] = np.arange(n_blocks)
    block_rank = rank[block_of]
    order = np.lexsort((np.arange(len(lengths)), block_rank))
    return order, block_rank[order]


def _arrange(
    start: np.ndarray,
    length: np.ndarray,
    doc: np.ndarray,
    order: np.ndarray,
    block_of_piece: np.ndarray,
    block_size: int,
    mode: str,
) -> Layout:
    """Lay the pieces out in `order`; `block_of_piece[j]` is the block of the j-th piece in that order."""
    lengths = length[order]
    out_offsets = np.zeros(len(order) + 1, np.int64)
    np.cumsum(lengths, out=out_offsets[1:])
    n_blocks = int(block_of_piece[-1]) + 1 if len(order) else 0
    block_offsets = np.zeros(n_blocks + 1, np.int64)
    np.add.at(block_offsets, block_of_piece + 1, lengths)
    np.cumsum(block_offsets, out=block_offsets)
    assert np.all(np.diff(block_offsets) <= block_size)
    return Layout(block_offsets, out_offsets, doc[order], start[order].astype(np.int64), lengths.astype(np.int64),
                  block_size, mode)  # fmt: skip
