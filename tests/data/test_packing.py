"""Packing invariants: no token lost or reordered, block lengths, isolated-packing boundaries and positions."""

import numpy as np
import pytest

from medpt.data.packing import pack


def _docs(lengths: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Documents whose tokens encode (document, position), so any loss or reordering is visible."""
    tokens = np.concatenate([np.arange(n, dtype=np.int32) + 1000 * (d + 1) for d, n in enumerate(lengths)])
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return tokens, offsets


LENGTHS = [5, 17, 3, 40, 16, 1, 9, 33, 16, 2, 7]  # block size 16: long documents, exact fits, tiny ones


def test_concat_keeps_every_token_in_order_and_pads_only_the_last_block():
    tokens, offsets = _docs(LENGTHS)
    p = pack(tokens, offsets, 16, "concat")
    assert np.array_equal(np.concatenate([p.block(i) for i in range(len(p))]), tokens)
    sizes = np.diff(p.block_offsets)
    assert (sizes[:-1] == 16).all() and 0 < sizes[-1] <= 16
    assert p.padding() == 16 * len(p) - len(tokens)
    assert np.array_equal(p.positions(1), np.arange(16))


@pytest.mark.parametrize("mode", ["isolated", "none"])
def test_isolated_and_none_keep_every_document_whole_and_in_order(mode):
    tokens, offsets = _docs(LENGTHS)
    p = pack(tokens, offsets, 16, mode)
    assert (np.diff(p.block_offsets) <= 16).all()
    assert p.n_tokens == len(tokens)
    # Reassemble each document from its pieces: all but the last are exactly block_size long and appear in order
    # (the last, shorter piece may be bin-packed into an earlier block). Identical to the input.
    pieces: dict[int, list[list[int]]] = {}
    for s, doc in enumerate(p.segment_doc):
        pieces.setdefault(int(doc), []).append(p.tokens[p.segment_offsets[s] : p.segment_offsets[s + 1]].tolist())
    for d in range(len(LENGTHS)):
        ordered = sorted(pieces[d], key=lambda piece: len(piece) < 16)
        assert sum(ordered, []) == tokens[offsets[d] : offsets[d + 1]].tolist()
    # No piece crosses a block boundary, and positions restart at 0 at every piece.
    assert set(p.block_offsets.tolist()) <= set(p.segment_offsets.tolist())
    for i in range(len(p)):
        block, pos = p.block(i), p.positions(i)
        starts = pos == 0
        assert starts[0]
        # a position-0 token is the first token of a piece: its value's position part is a multiple of 16
        assert all((t % 1000) % 16 == 0 for t in block[starts])
        assert np.array_equal(np.diff(pos)[~starts[1:]], np.ones((~starts[1:]).sum()))


def test_isolated_packs_tightly():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 200, size=2000).tolist()
    tokens, offsets = _docs(lengths)
    p = pack(tokens, offsets, 512, "isolated")
    lower_bound = -(-sum(lengths) // 512)
    assert len(p) <= lower_bound * 1.01 + 1  # best-fit decreasing is within a block or two of optimal here
    none = pack(tokens, offsets, 512, "none")
    assert len(none) == len(lengths)


def test_empty_input():
    tokens, offsets = np.zeros(0, np.int32), np.zeros(1, np.int64)
    for mode in ("concat", "isolated", "none"):
        p = pack(tokens, offsets, 8, mode)
        assert len(p) == 0 and p.n_tokens == 0


@pytest.mark.parametrize("mode", ["concat", "isolated", "none"])
def test_every_token_keeps_its_documents_source_through_packing(mode):
    tokens, offsets = _docs(LENGTHS)
    doc_source = np.array([0, 1, 1, 0, 2, 1, 0, 0, 2, 1, 0], np.int16)  # a shuffled mix of three sources
    p = pack(tokens, offsets, 16, mode, doc_source, ("medical", "general", "dialog"))
    for i in range(len(p)):
        document = p.block(i) // 1000 - 1  # the tokens encode their document
        assert np.array_equal(p.source_ids(i), doc_source[document]), i
    counted = np.bincount(np.concatenate([p.source_ids(i) for i in range(len(p))]), minlength=3)
    assert counted.tolist() == [sum(n for n, s in zip(LENGTHS, doc_source) if s == k) for k in range(3)]
