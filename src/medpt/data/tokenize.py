"""Batched tokenization in worker processes, with exact token counts per role.

Each document becomes `prefix + ids + suffix + [EOS]`, where prefix/suffix are the special tokens the tokenizer's
own policy adds (BOS for LLaMA-family tokenizers, nothing for others), detected once rather than assumed. Unlike
scripts that overwrite the first token with BOS, no real token is ever replaced.

Workers receive the tokenizer as its `tokenizers` JSON and call the Rust encoder directly: this skips importing
transformers in each process and its per-call Python overhead, and gives the same ids as the fast tokenizer
(the JSON is the loaded tokenizer's own backend, after any adjustment transformers made when loading it).
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from medpt.data.parallel import Workers
from medpt.data.templates import Rendered, RenderedBatch
from medpt.errors import MedptError

SPECIAL_ROLE = "special"  # BOS/EOS and other tokens the pipeline adds around a document
CHUNK = 2048  # documents per task: large enough to amortise pickling, small enough to balance two workers


@dataclass(frozen=True)
class TokenizerInfo:
    """What tokenization needs from a tokenizer; picklable, so it can travel to worker processes."""

    backend_json: str | None  # the fast tokenizer's `tokenizers` JSON; None for slow-only tokenizers
    prefix: tuple[int, ...]  # special ids the tokenizer puts before text (e.g. BOS)
    suffix: tuple[int, ...]  # ... and after it
    eos_id: int
    pad_id: int  # the eos id when the tokenizer has no pad token; padding is always masked by position, not id
    vocab_size: int


def tokenizer_info(tokenizer: Any) -> TokenizerInfo:
    """Read the add-special-tokens policy off the tokenizer by encoding a probe with and without it."""
    if tokenizer.eos_token_id is None:
        raise MedptError("the tokenizer has no EOS token, so documents cannot be separated; set eos_token on it")
    probe = "medpt 医学"
    plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(probe)["input_ids"])
    at = next((i for i in range(len(full) - len(plain) + 1) if full[i : i + len(plain)] == plain), None)
    if at is None:
        prefix, suffix = (), ()  # a policy that rewrites text tokens: use no special tokens rather than guess
    else:
        prefix, suffix = tuple(full[:at]), tuple(full[at + len(plain) :])
    backend = getattr(tokenizer, "backend_tokenizer", None)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return TokenizerInfo(
        backend_json=backend.to_str() if backend is not None else None,
        prefix=prefix,
        suffix=suffix,
        eos_id=int(tokenizer.eos_token_id),
        pad_id=int(pad_id),
        vocab_size=len(tokenizer),
    )


@dataclass
class TokenizedDocs:
    tokens: np.ndarray  # int32, all documents one after another (special tokens included)
    offsets: np.ndarray  # int64, n_docs + 1: document i is tokens[offsets[i]:offsets[i+1]]
    by_role: dict[str, int]  # tokens per role (system / human / gpt / template / text / special)
    roles_basis: str  # "exact", or how the per-role split was estimated


# Role counts need token offsets, and encoding with offsets costs ~60% more than without (measured here on the
# tiny tokenizer). Large splits therefore get offsets for every 8th document only and the per-role split is
# scaled from that sample to the exact total; the total and every block are always exact.
EXACT_ROLES_UP_TO = 20_000
ROLE_SAMPLE_EVERY = 8


@dataclass
class _Part:
    tokens: np.ndarray
    lengths: np.ndarray
    sampled_roles: Counter  # text tokens per role, over the documents encoded with offsets
    text_tokens: int  # text tokens (no special tokens) of all documents of the part
    n_special: int


def load_tokenizer_info(source: Any) -> TokenizerInfo:
    """Runs in a worker while the parent reads the data: loading a tokenizer means importing transformers."""
    return tokenizer_info(source.load())


def tokenize_documents(
    docs: RenderedBatch, info: TokenizerInfo, workers: Workers, json_path: str | None, fallback: Any = None
) -> TokenizedDocs:
    """Tokenize in order. In-process, the Rust encoder uses its own threads; in workers, one thread each."""
    every = 1 if len(docs) <= EXACT_ROLES_UP_TO else ROLE_SAMPLE_EVERY
    chunks = docs.chunks(CHUNK)
    if info.backend_json is None:
        if fallback is None:
            raise MedptError("this tokenizer has no fast (tokenizers) version; medpt needs one for batched encoding")
        _set_encoder(fallback)
        parts = [_encode_chunk(c, info, every) for c in chunks]
    elif workers.pool is None or json_path is None:
        from tokenizers import Tokenizer

        _set_encoder(Tokenizer.from_str(info.backend_json))
        parts = [_encode_chunk(c, info, every) for c in chunks]
    else:
        light = TokenizerInfo(None, info.prefix, info.suffix, info.eos_id, info.pad_id, info.vocab_size)
        parts = workers.map(functools.partial(_encode_task, info=light, json_path=json_path, every=every), chunks)
    return _join(parts, len(docs), every)


def _join(parts: list[_Part], n_docs: int, every: int) -> TokenizedDocs:
    tokens = np.concatenate([p.tokens for p in parts]) if parts else np.zeros(0, np.int32)
    lengths = np.concatenate([p.lengths for p in parts]) if parts else np.zeros(0, np.int64)
    offsets = np.zeros(n_docs + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    sampled: Counter = Counter()
    for p in parts:
        sampled.update(p.sampled_roles)
    text_tokens = sum(p.text_tokens for p in parts)
    by_role = dict(sampled) if every == 1 else scale_roles(sampled, text_tokens)
    by_role[SPECIAL_ROLE] = sum(p.n_special for p in parts)
    basis = "exact" if every == 1 else f"estimated from every {every}th document (totals exact)"
    return TokenizedDocs(tokens, offsets, dict(sorted(by_role.items())), basis)


def scale_roles(sampled: Counter, total: int) -> dict[str, int]:
    """Scale sampled per-role counts to `total`, rounding so the parts still add up exactly (largest remainder)."""
    seen = sum(sampled.values())
    if not seen:
        return {"mixed": total} if total else {}
    shares = {role: count * total / seen for role, count in sampled.items()}
    result = {role: int(share) for role, share in shares.items()}
    for role in sorted(shares, key=lambda r: shares[r] - result[r], reverse=True)[: total - sum(result.values())]:
        result[role] += 1
    return result


_encoder: Any = None  # per process: a tokenizers.Tokenizer, or a transformers tokenizer for the slow fallback
_encoder_path: str | None = None


def _set_encoder(encoder: Any, path: str | None = None) -> None:
    global _encoder, _encoder_path
    _encoder, _encoder_path = encoder, path


def encode_task(docs: RenderedBatch, info: TokenizerInfo, json_path: str, every: int) -> _Part:
    """Tokenize one chunk of documents. In a worker, `info` comes without the tokenizer's JSON, which is read from
    `json_path` once per process (not pickled into every task); in-process, `info` carries it."""
    if info.backend_json is not None:
        key = f"memory:{hash(info.backend_json)}"
        if _encoder_path != key:
            from tokenizers import Tokenizer

            _set_encoder(Tokenizer.from_str(info.backend_json), key)
    elif _encoder_path != json_path:
        from tokenizers import Tokenizer

        _set_encoder(Tokenizer.from_file(json_path), json_path)
    return _encode_chunk(docs, info, every)


_encode_task = encode_task


def _encode_chunk(docs: RenderedBatch, info: TokenizerInfo, every: int) -> _Part:
    encodings, with_offsets = _encode(docs.texts, every)
    closing = list(info.suffix) + ([] if info.suffix[-1:] == (info.eos_id,) else [info.eos_id])
    n_special = len(info.prefix) + len(closing)
    prefix, closing_arr = np.asarray(info.prefix, np.int32), np.asarray(closing, np.int32)
    arrays, lengths = [], np.empty(len(docs), np.int64)
    roles: Counter = Counter()
    for i, enc in enumerate(encodings):
        ids = np.asarray(enc.ids, np.int32)
        arrays += [prefix, ids, closing_arr]
        lengths[i] = len(ids) + n_special
        if with_offsets[i]:
            for role, count in _role_counts(docs[i], enc, len(ids)):
                roles[role] += count
    tokens = np.concatenate(arrays) if arrays else np.zeros(0, np.int32)
    return _Part(tokens, lengths, roles, int(lengths.sum()) - n_special * len(docs), n_special * len(docs))


def _encode(texts: list[str], every: int) -> tuple[list[Any], list[bool]]:
    """Encodings in order, and whether each has offsets: every `every`-th text does, the rest skip them."""
    if not hasattr(_encoder, "encode_batch"):
        # Slow tokenizer fallback: ids only; _role_counts reports such documents as one "mixed" role.
        ids = [_encoder(t, add_special_tokens=False)["input_ids"] for t in texts]
        return [_SlowEncoding(x) for x in ids], [True] * len(texts)
    if every == 1:
        return _encoder.encode_batch(texts, add_special_tokens=False), [True] * len(texts)
    exact = _encoder.encode_batch(texts[::every], add_special_tokens=False)
    rest = [t for i, t in enumerate(texts) if i % every]
    fast = iter(_encoder.encode_batch_fast(rest, add_special_tokens=False)) if rest else iter(())
    exact_iter = iter(exact)
    flags = [i % every == 0 for i in range(len(texts))]
    return [next(exact_iter) if f else next(fast) for f in flags], flags


class _SlowEncoding:
    def __init__(self, ids: list[int]):
        self.ids = ids


def _role_counts(doc: Rendered, enc: Any, n_tokens: int) -> Iterator[tuple[str, int]]:
    """Tokens per role span. A token belongs to the span holding its first character; only span boundaries are
    looked up (a few per document), not the offsets of every token."""
    if len(doc.spans) == 1 or isinstance(enc, _SlowEncoding):
        yield (doc.spans[0][1] if len(doc.spans) == 1 else "mixed"), n_tokens
        return
    starts = [0] + [_first_token_at(enc, start, n_tokens, len(doc.text)) for start, _ in doc.spans[1:]] + [n_tokens]
    for (_, role), a, b in zip(doc.spans, starts, starts[1:]):
        yield role, max(0, b - a)


def _first_token_at(enc: Any, char: int, n_tokens: int, n_chars: int) -> int:
    """Index of the first token that starts at or after character `char`."""
    token = None
    pos = char
    while token is None and pos < n_chars:  # only a character no token covers (stripped whitespace) is skipped
        token = enc.char_to_token(pos)
        pos += 1
    if token is None:
        return n_tokens
    while token < n_tokens and enc.token_to_chars(token)[0] < char:
        token += 1
    return token
