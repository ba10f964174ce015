"""From the shards of a prepared corpus to its final splits, streaming tokens from disk to disk.

Only per-document numbers are held in memory (where each document's tokens are, and its length: 20 bytes a
document, ~54 MB for 2.7M documents); tokens are copied from the shard files to the split's `tokens.npy` in
bounded pieces, reading runs of consecutive documents with one `pread` each.

    per source: sample (--max_train_samples / --max_eval_samples) → mix (--mix) → the split's document order
    → packing layout (from lengths alone) → tokens copied in that layout → checksummed arrays + report statistics
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medpt.args import DataArguments
from medpt.data import cache
from medpt.data.hygiene import sample_indices
from medpt.data.mixing import interleave, plan_mix
from medpt.data.packing import layout
from medpt.data.report import split_stats
from medpt.data.shard_meta import SPLITS, Records, SplitTally
from medpt.data.shards import SHARD_PREFIX, SHARD_TOKENS, ShardStore
from medpt.data.skips import EMPTY_FILE, SKIP_REASONS
from medpt.data.tokenize import SPECIAL_ROLE, scale_roles
from medpt.strictjson import dumps

_COPY_TOKENS = 1 << 20  # tokens per copy step (4 MB of int32)


@dataclass
class DocTable:
    """Documents, in order: the shard holding each one and where its tokens start there, and its length."""

    shard: np.ndarray
    start: np.ndarray
    length: np.ndarray

    def __len__(self) -> int:
        return len(self.length)

    def take(self, index: np.ndarray) -> DocTable:
        return DocTable(self.shard[index], self.start[index], self.length[index])

    @classmethod
    def concat(cls, tables: list[DocTable]) -> DocTable:
        if not tables:
            return cls(np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, np.int64))
        return cls(*(np.concatenate([getattr(t, f) for t in tables]) for f in ("shard", "start", "length")))

    def offsets(self) -> np.ndarray:
        offsets = np.zeros(len(self) + 1, np.int64)
        np.cumsum(self.length, out=offsets[1:])
        return offsets


@dataclass
class Gathered:
    """Everything the shards hold except tokens, by source and split, plus the record accounting."""

    tables: dict[tuple[str, str], DocTable]
    roles: dict[tuple[str, str], SplitTally]  # (source, split) -> its documents' tokens by role, over all shards
    records: dict[str, Records]  # source -> its records, every skip counted
    inputs: list[dict[str, Any]]
    rejected: list[dict[str, Any]]
    names: list[str] = field(default_factory=list)
    shard_names: list[str] = field(default_factory=list)  # each shard's source (a shard holds one source's documents)
    hits: list[dict[str, Any]] = field(default_factory=list)  # benchmark items found, shard by shard (screening.scan)
    contaminated: int = 0  # training documents sharing an n-gram with a benchmark item
    screening: dict[str, Any] = field(default_factory=dict)  # report blocks of medpt.data.screening

    def drop_train(self, name: str, drop: list[int], reason: str) -> None:
        """Remove these training documents of a source (positions in its table), counting them under `reason`."""
        table = self.tables[(name, "train")]
        keep = np.ones(len(table), bool)
        keep[drop] = False
        self.tables[(name, "train")] = table.take(np.flatnonzero(keep))
        self.records[name].skipped[reason] += len(drop)


def gather_shards(store: ShardStore, n_shards: int, names: list[str]) -> Gathered:
    parts: dict[tuple[str, str], list[DocTable]] = {}
    roles: dict[tuple[str, str], SplitTally] = {}
    records = {n: Records() for n in names}
    inputs: dict[str, list[dict]] = {"train": [], "validation": []}
    rejected: dict[str, list[dict]] = {"train": [], "validation": []}
    shard_names, hits, contaminated = [], [], 0
    for i, meta in enumerate(store.metas(n_shards)):
        lengths = store.array(i, "lengths")
        starts = np.cumsum(lengths) - lengths
        first = 0
        for split in SPLITS:
            n = meta.splits[split].documents
            table = DocTable(np.full(n, i, np.int32), starts[first : first + n], lengths[first : first + n])
            parts.setdefault((meta.name, split), []).append(table)
            first += n
            roles.setdefault((meta.name, split), SplitTally()).add(meta.splits[split])
        records[meta.name].add(meta.records)
        last = inputs[meta.kind][-1] if inputs[meta.kind] else None
        entry = meta.input.to_json()
        if last and last["source"] == entry["source"] and last["split"] == entry["split"]:
            last["records"] += entry["records"]  # slices of one file
        else:
            inputs[meta.kind].append({**entry, "name": meta.name} if meta.name else entry)
        rejected[meta.kind] += meta.rejected
        shard_names.append(meta.name)
        hits += meta.contamination
        contaminated += meta.contaminated
    tables = {key: DocTable.concat(value) for key, value in parts.items()}
    return Gathered(tables, roles, records, inputs["train"] + inputs["validation"],
                    rejected["train"] + rejected["validation"], names, shard_names, hits, contaminated)  # fmt: skip


def records_block(records: Records, n_train: int, n_val: int, not_sampled: dict[str, int]) -> dict[str, Any]:
    """The report's "records" block of one source."""
    return {
        "read": records.read,
        "skipped": {reason: records.skipped[reason] for reason in SKIP_REASONS},
        "empty_files": records.skipped[EMPTY_FILE],
        "not_sampled": not_sampled,
        "documents": {"train": n_train, "validation": n_val},
        "ignored_fields": dict(records.ignored.most_common()),
    }


# --- selecting and ordering the documents of each split -------------------------------------------------------
@dataclass
class Plan:
    train: DocTable
    validation: DocTable
    validation_by_source: dict[str, DocTable]
    sampled: dict[tuple[str, str], DocTable]  # per (source, split), after sampling, before mixing
    mix: dict[str, Any] | None
    contributed: dict[str, int]  # training tokens per source


def plan_splits(g: Gathered, args: DataArguments, seed: int) -> Plan:
    sampled: dict[tuple[str, str], DocTable] = {}
    for name in g.names:
        for split, k, s in (("train", args.max_train_samples, seed), ("validation", args.max_eval_samples, seed + 1)):
            table = g.tables.get((name, split), DocTable.concat([]))
            sampled[(name, split)] = table.take(sample_indices(len(table), k, s))
    shares = args.shares()
    trains = {n: sampled[(n, "train")] for n in g.names}
    if shares is None:
        train = DocTable.concat(list(trains.values()))
        contributed = {n: int(t.length.sum()) for n, t in trains.items()}
        mix = None
    else:
        picks, plans = plan_mix({n: t.length for n, t in trains.items()}, shares, seed, args.mix_tokens)
        train = DocTable.concat([trains[n].take(idx) for n, idx in interleave(picks, seed)])
        contributed = {n: plans[n].selected_tokens for n in g.names}
        mix = {n: plans[n].to_dict() for n in g.names}
    validation = {n: sampled[(n, "validation")] for n in g.names}
    return Plan(train, DocTable.concat(list(validation.values())), validation, sampled, mix, contributed)


def roles_of(g: Gathered, plan: Plan, split: str, names: list[str]) -> tuple[dict[str, int], str]:
    """Per-role token counts of a split: each source's counts (exact, or scaled from every 8th document), scaled to
    the tokens the split holds from it when sampling or mixing changed that; they add up to the split's tokens."""
    total: Counter = Counter()
    estimated = False
    for name in names:
        r = g.roles.get((name, split))
        if r is None:
            continue
        text = Counter(r.roles)
        if r.every > 1:
            text = Counter(scale_roles(text, r.text_tokens))
            estimated = True
        counts = text + Counter({SPECIAL_ROLE: r.special_tokens})
        held = plan.contributed[name] if split == "train" else int(plan.validation_by_source[name].length.sum())
        if sum(counts.values()) != held:
            counts, estimated = Counter(scale_roles(counts, held)), True
        total.update(counts)
    basis = "exact" if not estimated else "estimated: per-role shares scaled to the split's tokens (totals exact)"
    return dict(sorted((k, v) for k, v in total.items() if v)), basis


# --- writing a split ----------------------------------------------------------------------------------------------
class _Reader:
    """Reads runs of tokens from the shard files with os.pread (no memory map: resident memory stays bounded)."""

    def __init__(self, store: ShardStore):
        self.store = store
        self.fds: dict[int, int] = {}

    def read(self, shard: int, start: int, count: int) -> np.ndarray:
        fd = self.fds.get(shard)
        if fd is None:
            if len(self.fds) >= 64:  # keep few files open
                os.close(self.fds.pop(next(iter(self.fds))))
            fd = self.fds[shard] = os.open(self.store.path(shard) / SHARD_TOKENS, os.O_RDONLY)
        data = os.pread(fd, count * 4, start * 4)
        assert len(data) == count * 4, "a shard file is shorter than its lengths say"
        return np.frombuffer(data, np.int32)

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)


def write_split(directory: Path, docs: DocTable, store: ShardStore, args: DataArguments, names: list[str],
                shard_names: list[str]) -> Any:  # fmt: skip
    """Pack `docs` (in this order) and write the split, with each segment's source when the sources are named
    (`shard_names`: each shard's source); returns its layout (for the statistics)."""
    offsets = docs.offsets()
    lay = layout(offsets, args.block_size, args.packing)
    if args.packing == "concat":  # the documents whole, in order
        doc = np.arange(len(docs))
        within, count = np.zeros(len(docs), np.int64), docs.length
    else:  # each piece lies inside one document
        doc = lay.segment_doc.astype(np.int64)
        within, count = lay.run_start - offsets[doc], lay.run_length
    segment_source = None
    if names != [""]:  # a shard holds one source's documents: a document's source is its shard's
        n_shards = int(docs.shard.max(initial=-1)) + 1
        shard_source = np.array([names.index(name) for name in shard_names[:n_shards]], np.int16)
        segment_source = shard_source[docs.shard[lay.segment_doc]] if len(lay.segment_doc) else np.zeros(0, np.int16)
    out = cache.StreamedSplit(directory, lay.n_tokens, lay, segment_source, tuple(names) if names != [""] else ())
    reader = _Reader(store)
    try:
        _copy(out, reader, docs.shard[doc], docs.start[doc] + within, count)
    finally:
        reader.close()
    out.close()
    return lay


def _copy(out: Any, reader: _Reader, shard: np.ndarray, start: np.ndarray, count: np.ndarray) -> None:
    """Copy the runs in order; consecutive runs contiguous in the same shard file are read at once."""
    if not len(count):
        return
    joined = (shard[1:] == shard[:-1]) & (start[1:] == start[:-1] + count[:-1])
    first = np.flatnonzero(np.concatenate([[True], ~joined]))
    ends = np.append(first[1:], len(count))
    cumulative = np.concatenate([[0], np.cumsum(count)])
    lengths = cumulative[ends] - cumulative[first]
    buffer: list[np.ndarray] = []
    held = 0
    for s, b, n in zip(shard[first].tolist(), start[first].tolist(), lengths.tolist()):
        while n:  # a run longer than a copy step is read in steps
            step = min(n, _COPY_TOKENS)
            buffer.append(reader.read(s, b, step))
            held += step
            b, n = b + step, n - step
            if held >= _COPY_TOKENS:
                out.write(np.concatenate(buffer))
                buffer, held = [], 0
    if buffer:
        out.write(np.concatenate(buffer))


def split_report(lay: Any, docs: DocTable, by_role: dict[str, int], basis: str) -> dict[str, Any]:
    return split_stats(lay.packed(np.zeros(0, np.int32)), docs.offsets(), by_role, basis)


def dump_texts(path_writer: Any, store: ShardStore, n_shards: int, plan: Plan, g: Gathered) -> int:
    """The rendered documents of every split (all of train, then all of validation), as selected (after sampling)."""
    keep: dict[tuple[str, str], np.ndarray] = {}
    for key, table in g.tables.items():
        mask = np.zeros(len(table), bool)
        chosen = plan.sampled[key]
        # the sampled rows are a subset of the table in its order: match by (shard, start)
        index = {(int(s), int(b)): j for j, (s, b) in enumerate(zip(table.shard, table.start))}
        for s, b in zip(chosen.shard.tolist(), chosen.start.tolist()):
            mask[index[(s, b)]] = True
        keep[key] = mask
    written = 0
    for split in ("train", "validation"):
        seen: Counter = Counter()
        for meta in store.metas(n_shards):
            name = meta.name
            for text in meta.texts[split]:
                if keep[(name, split)][seen[name]]:
                    extra = {"source": name} if name else {}
                    path_writer.write(dumps({"text": text, "split": split, **extra}, ensure_ascii=False) + "\n")
                    written += 1
                seen[name] += 1
    return written


def shard_count(directory: Path) -> int:
    return sum(1 for p in directory.iterdir() if p.name.startswith(SHARD_PREFIX) and not p.name.endswith(".tmp"))
