"""Preparation in shards: read, render, deduplicate, split and tokenize one slice of the input at a time, and write
each finished shard to disk, so peak memory depends on the shard size (--shard_mb), not on the corpus; a run killed
at any point resumes from its completed shards.

1. Jobs: every input file cut into slices of about --shard_mb (.jsonl at line ends; other formats one job per file;
   hub datasets in row batches), in input order, the validation files first (their documents must be known before a
   training document identical to one of them can be dropped).
2. Workers read and render a job's records; in this process, in job order, exact duplicates are dropped (the first
   8 bytes of each document's 16-byte blake2b digest, kept per source in a sorted array: 8 bytes a document) and
   each document is assigned to its split; the kept documents go back to the workers to be tokenized while the next
   jobs are read. At most a few jobs are in flight.
3. Each job becomes a shard folder under the cache's `.KEY.partial/`: its kept documents' tokens, lengths, split and
   hashes, and its counts; written to a temporary folder, then renamed, so a shard folder is complete or absent.
   A rerun replays the completed shards' hashes and counts and continues with the first missing one: the same result
   as an uninterrupted run. medpt.data.assemble then builds the final splits from the shards.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medpt.args import DataArguments
from medpt.atomic import atomic_write_text, replace
from medpt.data.parallel import Workers
from medpt.data.reading import ReadResult, ReadTask, peek_format, read_source
from medpt.data.records import FileSource, HubSource, HubStream
from medpt.data.screening import scan
from medpt.data.shard_meta import SPLITS, InputSlice, Records, ShardMeta, SplitTally
from medpt.data.skips import CONTAMINATED, DUPLICATE, IN_VALIDATION_SET
from medpt.data.sources import SourceFile
from medpt.data.templates import RenderedBatch
from medpt.data.tokenize import CHUNK, ROLE_SAMPLE_EVERY, TokenizerInfo, encode_task
from medpt.errors import MedptError
from medpt.strictjson import dumps

TRAIN, HELD_OUT, VALIDATION_FILE = 0, 1, 2  # a kept document's origin: train file, hash-split from one, validation file
SHARD_PREFIX = "shard-"
SHARD_META, SHARD_TOKENS, SHARD_PLAN = "meta.json", "tokens.bin", "plan.json"  # a shard's files; the store's plan
# Role counts need token offsets (~60% dearer to encode); for a (source, split) with more input than this, every 8th
# document is encoded with offsets and the per-role split scaled from them (totals stay exact). ~20k documents.
EXACT_ROLES_BYTES = 10 << 20
_AHEAD = 3  # jobs read ahead per worker: keeps both stages busy, bounds what waits in memory


@dataclass
class Job:
    index: int  # position in processing order (the shard's number)
    task: ReadTask
    nbytes: int  # input bytes (for progress and the ETA; 0 for streamed rows)
    every: int  # role counting: every document (1) or every 8th
    where: tuple[int, int]  # (input, batch within it): where a resumed run continues


class JobPlan:
    """The jobs of a preparation, in processing order: validation inputs first, then training inputs, each in the
    order given; files cut into slices, hub datasets into row ranges, streamed datasets into batches of rows as they
    arrive (so their jobs are made while the stream is read)."""

    def __init__(self, files: list[SourceFile], prints: list[str], args: DataArguments, shard_bytes: int):
        """`prints`: each file's content fingerprint, as computed once for the cache key (hashing a corpus twice
        doubles the time a cache miss spends before its first shard)."""
        self.args, self.shard_bytes = args, shard_bytes
        order = sorted(range(len(files)), key=lambda i: files[i].split != "validation")
        self.inputs, self.prints = [files[i] for i in order], [prints[i] for i in order]
        self.stream_rows = max(1, shard_bytes // 1024)  # a streamed row is taken as ~1 KB: a fixed, resumable cut
        sizes = {id(f): _size(f) for f in files}
        self.every = {}
        for f in files:
            total = sum(sizes[id(g)] for g in files if g.name == f.name and g.split == f.split)
            streamed = isinstance(f.source, HubStream)
            self.every[(f.name, f.split)] = ROLE_SAMPLE_EVERY if streamed or total > EXACT_ROLES_BYTES else 1
        self.pieces = [self._pieces(f) for f in self.inputs]
        self.total_bytes = sum(_size(p) for pieces in self.pieces if pieces is not None for p in pieces)

    def _pieces(self, f: SourceFile) -> list | None:
        if isinstance(f.source, FileSource):
            return f.source.chunks(self.shard_bytes)
        if isinstance(f.source, HubSource):
            return f.source.batches(self.shard_bytes)
        return None  # a stream: batches are made while it is read

    def _fmt(self, f: SourceFile, pieces: list | None) -> str | None:
        if self.args.data_format != "auto":
            return self.args.data_format
        if pieces and len(pieces) > 1 and isinstance(f.source, FileSource):
            return peek_format(pieces[0], "auto")  # every slice of a file reads it the same way
        return None

    def fingerprint(self, extra: dict) -> str:
        """What the shards were made from: a resume with another plan starts over."""
        items = []
        for f, fingerprint, pieces in zip(self.inputs, self.prints, self.pieces):
            cut = [getattr(p, "byte_range", None) or getattr(p, "rows", None) for p in pieces or []]
            items.append((f.name, f.split, f.source.name, fingerprint, cut, self.stream_rows))
        return hashlib.sha256(dumps([items, extra], default=str).encode()).hexdigest()[:16]

    def jobs(self, after: tuple[int, int] | None = None, start: int = 0) -> Iterator[Job]:
        """Jobs in order, from the one after `after` (the last completed job's `where`); `start` numbers the first."""
        index = start
        for i, (f, pieces) in enumerate(zip(self.inputs, self.pieces)):
            if after is not None and i < after[0]:
                continue  # finished before the resume
            skip = after[1] + 1 if after is not None and i == after[0] else 0
            fmt, every = self._fmt(f, pieces), self.every[(f.name, f.split)]
            batches = pieces[skip:] if pieces is not None else f.source.batches(self.stream_rows, skip)
            for b, piece in enumerate(batches, start=skip):
                yield Job(index, ReadTask(piece, f.split, fmt, f.name), _size(piece), every, (i, b))
                index += 1


def _size(item: Any) -> int:
    source = item.source if isinstance(item, SourceFile) else item
    if isinstance(source, FileSource):
        if source.byte_range is not None:
            return source.byte_range[1] - source.byte_range[0]
        return source.path.stat().st_size
    return getattr(source, "nbytes", 0)


# --- dedup and split, in job order --------------------------------------------------------------------------------
@dataclass
class Kept:
    """The documents of one job that are kept, grouped by split (train first), and what the job added to dedup."""

    train: RenderedBatch
    validation: RenderedBatch
    validation_origin: list[int]  # HELD_OUT or VALIDATION_FILE per validation document
    seen: np.ndarray  # 64-bit hashes this job added to its source's dedup set (for a resumed run to replay)
    records: Records
    input: InputSlice
    lines: dict[str, list[int]] = field(default_factory=dict)  # split -> the record of each kept document
    contamination: list[dict[str, Any]] = field(default_factory=list)  # benchmark items found (screening.scan)
    contaminated: int = 0  # training documents sharing an n-gram with a benchmark item


class HashSet:
    """A set of 64-bit document hashes as one sorted numpy array: 8 bytes a document (a Python set of the 16-byte
    digests costs ~100), merged once per job. Two different documents share the first 64 bits of their blake2b
    digest with probability ~n²/2⁶⁵: 2×10⁻⁷ for 2.7M documents."""

    def __init__(self) -> None:
        self.keys = np.zeros(0, np.uint64)

    def contains(self, keys: np.ndarray) -> np.ndarray:
        if not len(self.keys):
            return np.zeros(len(keys), bool)
        at = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return self.keys[at] == keys

    def add_first(self, keys: np.ndarray) -> np.ndarray:
        """Add the keys; True for each one seen for the first time (earlier in `keys` or before)."""
        unique, first = np.unique(keys, return_index=True)
        fresh = ~self.contains(unique)
        mask = np.zeros(len(keys), bool)
        mask[first[fresh]] = True
        self.add(unique[fresh])
        return mask

    def add(self, keys: np.ndarray) -> None:
        keys = np.unique(keys)
        self.keys = np.insert(self.keys, np.searchsorted(self.keys, keys), keys) if len(self.keys) else keys


def hash64(digests: list[bytes]) -> np.ndarray:
    """The first 8 bytes of each 16-byte content digest, as integers."""
    if not digests:
        return np.zeros(0, np.uint64)
    return np.frombuffer(b"".join(digests), np.uint64).reshape(-1, 2)[:, 0].copy()


class Selector:
    """Per source: exact dedup (training files and validation files separately), the split,
    the removal of training documents identical to one of the source's validation files, and the contamination
    check of the training documents (dropped with `decontaminate`)."""

    def __init__(self, dedup: bool, contamination: Any = None, decontaminate: bool = False):
        self.dedup = dedup
        self.contamination = contamination  # a medpt.data.contamination.ContaminationIndex, or None
        self.decontaminate = decontaminate
        self.seen: dict[tuple[str, str], HashSet] = {}  # (source, which files: "train"|"validation") -> hashes

    def _seen(self, name: str, kind: str) -> HashSet:
        return self.seen.setdefault((name, kind), HashSet())

    def take(self, result: ReadResult) -> Kept:
        kind = result.split  # which files the documents came from
        has_validation_files = (result.name, "validation") in self.seen or kind == "validation"
        keys = hash64(result.hashes)
        kept = self._seen(result.name, kind).add_first(keys) if self.dedup else np.ones(len(keys), bool)
        if kind == "validation":
            to_val, to_train, dropped = kept, np.zeros(len(keys), bool), np.zeros(len(keys), bool)
        else:
            held = np.asarray(result.held_out, bool) & (not has_validation_files)
            in_val = self.seen[(result.name, "validation")].contains(keys) if has_validation_files else held & False
            to_val = kept & held
            dropped = kept & ~held & in_val
            to_train = kept & ~held & ~in_val
        hits: list[dict[str, Any]] = []
        flagged = np.zeros(0, np.int64)
        if self.contamination is not None and to_train.any():
            train = np.flatnonzero(to_train)
            mask, hits = scan(self.contamination, [result.docs.texts[i] for i in train],
                              [f"{result.source}:{result.lines[i]}" for i in train])  # fmt: skip
            flagged = train[mask]
            if self.decontaminate:
                to_train[flagged] = False
        origin = VALIDATION_FILE if kind == "validation" else HELD_OUT
        records = _records(result, int(len(keys) - kept.sum()), int(dropped.sum()))
        if self.decontaminate:
            records.skipped[CONTAMINATED] = len(flagged)
        train_idx, val_idx = np.flatnonzero(to_train).tolist(), np.flatnonzero(to_val).tolist()
        return Kept(
            result.docs.take(train_idx),
            result.docs.take(val_idx),
            [origin] * len(val_idx),
            keys[kept] if self.dedup else np.zeros(0, np.uint64),
            records,
            InputSlice(result.source, result.split, result.fmt, result.read),
            {"train": [result.lines[i] for i in train_idx], "validation": [result.lines[i] for i in val_idx]},
            hits,
            len(flagged),
        )

    def replay(self, name: str, kind: str, seen: np.ndarray) -> None:
        """Rebuild the state a completed shard left, for a resumed run."""
        self._seen(name, kind).add(seen)


def _records(result: ReadResult, duplicates: int, in_validation: int) -> Records:
    skipped = Counter(result.skipped)
    skipped[DUPLICATE] += duplicates
    skipped[IN_VALIDATION_SET] += in_validation
    return Records(result.read, skipped, Counter(result.ignored))


# --- the shards on disk ---------------------------------------------------------------------------------------------
class ShardStore:
    """`.KEY.partial/`: one folder per completed job, `shard-000123/`, plus the plan it belongs to."""

    def __init__(self, directory: Path, plan: str):
        self.directory = directory
        marker = directory / SHARD_PLAN
        if directory.is_dir() and (not marker.is_file() or json.loads(marker.read_text())["plan"] != plan):
            shutil.rmtree(directory)  # another plan (inputs or settings changed): nothing to resume
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_text(marker, dumps({"plan": plan}))

    def path(self, index: int) -> Path:
        return self.directory / f"{SHARD_PREFIX}{index:06d}"

    def completed(self) -> int:
        """How many shards, from the first, are complete (a resume continues after them)."""
        n = 0
        while (self.path(n) / SHARD_META).is_file():
            n += 1
        return n

    def write(self, index: int, shard: ShardMeta, arrays: dict[str, np.ndarray], tokens: list[np.ndarray]) -> None:
        final = self.path(index)
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        with open(tmp / SHARD_TOKENS, "wb") as f:
            for part in tokens:
                part.astype(np.int32, copy=False).tofile(f)
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", array)
        (tmp / SHARD_META).write_text(dumps(shard.to_json(), ensure_ascii=False), encoding="utf-8")
        replace(tmp, final)

    def meta(self, index: int) -> ShardMeta:
        return ShardMeta.from_json(json.loads((self.path(index) / SHARD_META).read_text(encoding="utf-8")))

    def metas(self, n_shards: int) -> Iterator[ShardMeta]:
        return (self.meta(i) for i in range(n_shards))

    def array(self, index: int, name: str) -> np.ndarray:
        return np.load(self.path(index) / f"{name}.npy")


# --- the loop ---------------------------------------------------------------------------------------------------------
@dataclass
class Progress:
    total_bytes: int
    log: Callable[[str], None]
    every_s: float = 10.0
    done_bytes: int = 0
    records: int = 0
    start: float = field(default_factory=time.perf_counter)
    last: float = field(default_factory=time.perf_counter)

    def update(self, nbytes: int, records: int) -> None:
        self.done_bytes += nbytes
        self.records += records
        now = time.perf_counter()
        if now - self.last >= self.every_s and self.total_bytes:
            self.last = now
            rate = self.records / max(now - self.start, 1e-9)
            share = self.done_bytes / self.total_bytes
            eta = (now - self.start) * (1 - share) / share if share else 0.0
            self.log(f"prepare: {share:.0%} of the input, {self.records:,} records ({rate:,.0f}/s), "
                     f"ETA {int(eta // 60)}:{int(eta % 60):02d}")  # fmt: skip


def run_jobs(
    plan: JobPlan,
    store: ShardStore,
    selector: Selector,
    workers: Workers,
    info: Callable[[], TokenizerInfo],
    json_path: str,
    render: Any,
    log: Callable[[str], None],
    dump: bool,
) -> None:
    """Read, select and tokenize every job not yet in `store`, writing each as a shard. `dump`: keep each shard's
    texts (and their records' lines) in its meta, for --dump_text and --dedup near."""
    done = store.completed()
    after = store.meta(done - 1).where if done else None
    jobs = plan.jobs(after, start=done)
    progress = Progress(plan.total_bytes, log)
    in_process = render is not None or workers.pool is None or any(isinstance(f.source, HubSource) for f in plan.inputs)
    read = functools.partial(read_source, args=plan.args, render=render)
    reading: deque = deque()
    tokenizing: deque = deque()
    limit = _AHEAD * max(workers.n, 1)
    light: TokenizerInfo | None = None
    job = next(jobs, None)
    while job is not None or reading or tokenizing:
        while job is not None and len(reading) + len(tokenizing) < limit:
            reading.append((job, read(job.task) if in_process else workers.submit(read, job.task)))
            job = next(jobs, None)
        if tokenizing and (all(p.ready() for p in tokenizing[0][2]) or not reading):
            _finish(store, *tokenizing.popleft(), dump, progress)
            continue
        current, pending = reading.popleft()
        result = pending if in_process else pending.get()
        kept = selector.take(result)
        if light is None:
            light = _worker_info(info(), workers, json_path)
        encode = functools.partial(encode_task, info=light, json_path=json_path, every=current.every)
        chunks = [c for docs in (kept.train, kept.validation) for c in docs.chunks(CHUNK)]
        parts = [workers.submit(encode, chunk) for chunk in chunks]
        splits = [len(kept.train.chunks(CHUNK)), len(kept.validation.chunks(CHUNK))]
        tokenizing.append((current, kept, parts, splits, result))


def _worker_info(full: TokenizerInfo, workers: Workers, json_path: str) -> TokenizerInfo:
    """Workers read the tokenizer's JSON from a file once each, instead of receiving it with every task."""
    if workers.pool is None:
        return full
    if full.backend_json is None:
        raise MedptError("this tokenizer has no fast (tokenizers) version; medpt needs one for batched encoding")
    Path(json_path).write_text(full.backend_json, encoding="utf-8")
    return TokenizerInfo(None, full.prefix, full.suffix, full.eos_id, full.pad_id, full.vocab_size)


def _finish(store: ShardStore, job: Job, kept: Kept, parts: list, splits: list[int], result: ReadResult, dump: bool,
            progress: Progress) -> None:  # fmt: skip
    encoded = [p.get() for p in parts]
    by_split = dict(zip(SPLITS, (encoded[: splits[0]], encoded[splits[0] :])))
    tallies = {}
    for split, pieces in by_split.items():
        roles: Counter = Counter()
        for p in pieces:
            roles.update(p.sampled_roles)
        tallies[split] = SplitTally(int(sum(len(p.lengths) for p in pieces)), roles,
                                    int(sum(p.text_tokens for p in pieces)), int(sum(p.n_special for p in pieces)),
                                    job.every)  # fmt: skip
    lengths = [p.lengths for p in encoded]
    arrays = {
        "lengths": np.concatenate(lengths) if lengths else np.zeros(0, np.int64),
        "seen": kept.seen,
        "validation_origin": np.asarray(kept.validation_origin, np.uint8),
    }
    meta = ShardMeta(job.task.name, job.task.split, job.index, job.where, kept.records, kept.input, result.rejected,
                     tallies, kept.contamination, kept.contaminated)  # fmt: skip
    if dump:
        meta.texts, meta.lines = {"train": kept.train.texts, "validation": kept.validation.texts}, kept.lines
    store.write(job.index, meta, arrays, [p.tokens for p in encoded])
    progress.update(job.nbytes, result.read)
