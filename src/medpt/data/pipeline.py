"""From input files (or a hub dataset) to packed, cached training blocks, with a report of where everything went.

    sources → records → documents → rendered text → dedup → train/validation split → sample
            → tokenize (workers) → pack → cache (atomic) → data_report.json

Model-agnostic: it takes a `TokenizerSource` (a fingerprint and a way to load the tokenizer), never a model.
The tokenizer is loaded only when tokenization is needed, so a cached rerun never imports transformers.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from medpt import __version__
from medpt.atomic import atomic_dir, atomic_writer
from medpt.config import DataArguments
from medpt.data import cache
from medpt.data.hygiene import sample_indices
from medpt.data.packing import Packed, pack
from medpt.data.parallel import Workers
from medpt.data.reading import ReadResult, ReadTask, peek_format, read_source
from medpt.data.records import FileSource, HubSource, load_hub_splits, resolve_files
from medpt.data.report import check_record_accounting, format_table, split_stats
from medpt.data.templates import RenderedBatch, make_renderer
from medpt.data.tokenize import load_tokenizer_info, tokenize_documents, tokenizer_info
from medpt.errors import MedptError
from medpt.rundir import DATA_REPORT as REPORT_FILE  # the run directory's file names live in one place
from medpt.rundir import REJECTED as REJECTED_FILE
from medpt.rundir import RunDir

# Data flags that cannot change the prepared blocks, so they stay out of the cache key.
_NOT_IN_KEY = {
    "preprocessing_num_workers",
    "dump_text",
    "data_cache_dir",
    "overwrite_cache",
    "train_file_dir",
    "validation_file_dir",
    "dataset_name",
    "dataset_config_name",
    "eval_sets",  # prepared separately (prepare_eval_sets); naming one must not re-tokenize the training corpus
}


class TokenizerSource(Protocol):
    name: str

    def fingerprint(self) -> str: ...

    def load(self) -> Any: ...


@dataclass
class PreparedData:
    train: Packed | None
    validation: Packed | None
    report: dict[str, Any]
    cache_dir: Path

    @property
    def reused(self) -> bool:
        return bool(self.report["cache"]["reused"])


def prepare_data(
    args: DataArguments,
    tokenizer: TokenizerSource,
    seed: int,
    output_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
    hub_cache_dir: str | None = None,
) -> PreparedData:
    """Prepare (or reuse) the training and validation blocks; write data_report.json (+ rejected.jsonl)."""
    t0 = time.perf_counter()
    train_sources, val_sources = _sources(args, hub_cache_dir)
    settings = {k: v for k, v in asdict(args).items() if k not in _NOT_IN_KEY}
    key = cache.cache_key(
        {
            "train": [(s.suffix, s.fingerprint()) for s in train_sources],
            "validation": [(s.suffix, s.fingerprint()) for s in val_sources],
            "tokenizer": tokenizer.fingerprint(),
            "settings": settings,
            "seed": seed,
        }
    )
    root = cache.cache_root(args.data_cache_dir)
    _claim_cache(root)
    cache.remove_stale_temporaries(root)
    entry = root / key
    hit = (entry / REPORT_FILE).is_file() and not args.overwrite_cache
    if hit and not args.dump_text:
        log(f"reusing prepared data from {entry} (same inputs, tokenizer and settings)")
        return _finish(entry, output_dir, reused=True, log=log, t0=t0)

    n_workers = args.preprocessing_num_workers or min(8, os.cpu_count() or 1)
    total_bytes = sum(s.path.stat().st_size for s in (*train_sources, *val_sources) if isinstance(s, FileSource))
    # Spawning workers costs about a second; below a few MB of input one process is faster.
    with Workers(n_workers if total_bytes >= _PARALLEL_MIN_BYTES else 1) as workers:
        # 1. Load the tokenizer (importing transformers takes seconds) in a worker while this process reads.
        needs_tokenizer_here = args.template == "chat_template"
        pending_info = None if (hit or needs_tokenizer_here) else workers.submit(load_tokenizer_info, tokenizer)
        render = make_renderer(args.template, args.template_format, tokenizer.load() if needs_tokenizer_here else None)
        # 2. Read and render, in parallel slices; dedup, split and sampling follow input order in this process.
        results = _read_all(train_sources, val_sources, args, workers, render if needs_tokenizer_here else None)
        acct = _Accounting(results)
        train_docs, val_docs = acct.select(args, seed)
        if not train_docs:
            raise MedptError(f"no training documents left after reading: {acct.summary(0, len(val_docs))}")
        log(
            f"read {acct.read:,} records from {len(train_sources) + len(val_sources)} source(s) "
            f"in {time.perf_counter() - t0:.1f} s"
        )
        if args.dump_text:
            _dump(args.dump_text, train_docs, val_docs)
            log(f"wrote {len(train_docs) + len(val_docs):,} rendered documents to {args.dump_text}")
        if hit:
            log(f"reusing prepared data from {entry} (same inputs, tokenizer and settings)")
            return _finish(entry, output_dir, reused=True, log=log, t0=t0)
        info = pending_info() if pending_info else tokenizer_info(tokenizer.load())
        report: dict[str, Any] = {
            "medpt_version": __version__,
            "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "tokenizer": tokenizer.name,
            "settings": settings,
            "inputs": acct.inputs,
            "records": acct.summary(len(train_docs), len(val_docs)),
        }
        check_record_accounting(report["records"])
        # 3. Tokenize and pack each split; the result appears under its key only once complete.
        with atomic_dir(entry) as tmp:
            json_path = tmp / "tokenizer.json"
            if info.backend_json is not None:
                json_path.write_text(info.backend_json, encoding="utf-8")
            for split, docs in (("train", train_docs), ("validation", val_docs)):
                report[split] = None
                if docs:
                    t = time.perf_counter()
                    tokenized = tokenize_documents(docs, info, workers, str(json_path), None)
                    packed = pack(tokenized.tokens, tokenized.offsets, args.block_size, args.packing)
                    cache.save_split(tmp / split, packed)
                    report[split] = split_stats(packed, tokenized.offsets, tokenized.by_role, tokenized.roles_basis)
                    log(
                        f"{split}: {len(docs):,} documents → {tokenized.offsets[-1]:,} tokens → {len(packed):,} "
                        f"blocks of {args.block_size} ({args.packing}) in {time.perf_counter() - t:.1f} s, "
                        f"{workers.n} worker(s)"
                    )
            json_path.unlink(missing_ok=True)
            with open(tmp / REJECTED_FILE, "w", encoding="utf-8") as f:
                for item in acct.rejected:
                    f.write(json.dumps(item, ensure_ascii=False) + "\n")
            report["cache"] = {"key": key, "path": str(entry), "reused": False}
            (tmp / REPORT_FILE).write_text(json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8")
    return _finish(entry, output_dir, reused=False, log=log, t0=t0)


_CACHE_ENTRY = re.compile(r"\.?[0-9a-f]{24}(\..*)?")  # a key, or the temporary of one (.KEY.xxx.tmp, .KEY.old-PID)


def _claim_cache(root: Path) -> None:
    """The cache folder is medpt's alone: a folder holding anything else is refused, because the cache removes its
    stale temporaries itself (see cache.remove_stale_temporaries) and must never mistake a user's file for one."""
    run = RunDir.open(root)
    if run.kind == "cache":
        return
    strangers = [name for name in run.foreign() if not _CACHE_ENTRY.fullmatch(name)]
    if strangers:
        shown = ", ".join(strangers[:6]) + (", ..." if len(strangers) > 6 else "")
        raise MedptError(
            f"--data_cache_dir {root} holds files medpt did not write ({shown}); point it at an empty folder or "
            "at medpt's own cache"
        )
    try:
        root.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise MedptError(f"--data_cache_dir {root} is a file, not a folder") from None
    run.record([], "cache")


_PARALLEL_MIN_BYTES = 4 << 20
_SLICE_BYTES = 8 << 20  # a .jsonl slice per read task: ~12k records of the reference corpus


def _read_all(train: list, validation: list, args: DataArguments, workers: Workers, render: Any) -> list[ReadResult]:
    tasks = []
    for split, sources in (("train", train), ("validation", validation)):
        for source in sources:
            pieces = source.chunks(_SLICE_BYTES) if isinstance(source, FileSource) and workers.pool else [source]
            fmt = peek_format(pieces[0], args.data_format) if len(pieces) > 1 else _fixed(args)
            tasks += [ReadTask(p, split, fmt) for p in pieces]
    if render is not None or any(isinstance(t.source, HubSource) for t in tasks):
        # The chat template needs the tokenizer, and a hub dataset is already in this process: read here.
        return [read_source(t, args, render) for t in tasks]
    return workers.map(functools.partial(read_source, args=args), tasks)


def _fixed(args: DataArguments) -> str | None:
    return None if args.data_format == "auto" else args.data_format


def _sources(args: DataArguments, hub_cache_dir: str | None) -> tuple[list, list]:
    train: list = []
    validation: list = []
    if args.dataset_name:
        hub_train, hub_val = load_hub_splits(args.dataset_name, args.dataset_config_name, hub_cache_dir)
        train.append(hub_train)
        if hub_val is not None and not args.validation_file_dir:
            validation.append(hub_val)
    if args.train_file_dir:
        train += [
            FileSource(p, args.encoding, args.txt_split) for p in resolve_files(args.train_file_dir, "train_file_dir")
        ]
    if args.validation_file_dir:
        validation += [
            FileSource(p, args.encoding, args.txt_split)
            for p in resolve_files(args.validation_file_dir, "validation_file_dir")
        ]
    if not train:
        raise MedptError("no training data: pass --train_file_dir (files, folders or globs) or --dataset_name")
    return train, validation


class _Accounting:
    """Merges the read results in input order, and counts every record that does not become a document."""

    def __init__(self, results: list[ReadResult]):
        self.results = results
        self.read = sum(r.read for r in results)
        self.skipped: Counter = Counter()
        self.not_sampled: Counter = Counter()
        self.ignored: Counter = Counter()
        self.rejected: list[dict[str, Any]] = []
        self.inputs: list[dict[str, Any]] = []
        for r in results:
            self.skipped.update(r.skipped)
            self.ignored.update(r.ignored)
            self.rejected += r.rejected
            if self.inputs and self.inputs[-1]["source"] == r.source and self.inputs[-1]["split"] == r.split:
                self.inputs[-1]["records"] += r.read  # slices of one file
            else:
                self.inputs.append({"source": r.source, "split": r.split, "format": r.fmt, "records": r.read})

    def _docs(self, split: str, dedup: bool) -> tuple[RenderedBatch, list[bytes], list[bool], list[int]]:
        """All documents of a split in input order, and the indices left after removing exact duplicates."""
        results = [r for r in self.results if r.split == split]
        batch = RenderedBatch.concat([r.docs for r in results])
        hashes = [h for r in results for h in r.hashes]
        held = [h for r in results for h in r.held_out]
        if not dedup:
            return batch, hashes, held, list(range(len(batch)))
        seen: set[bytes] = set()
        kept = []
        for i, digest in enumerate(hashes):
            if digest not in seen:
                seen.add(digest)
                kept.append(i)
        self.skipped["duplicate"] += len(hashes) - len(kept)
        return batch, hashes, held, kept

    def select(self, args: DataArguments, seed: int) -> tuple[RenderedBatch, RenderedBatch]:
        """Dedup, then the split (validation files win, else the stable hash split), then seeded sampling.

        Training documents identical to a validation document are removed and counted, so the eval loss never
        scores text the model trained on."""
        train_batch, train_hashes, held, train = self._docs("train", args.dedup)
        if any(r.split == "validation" for r in self.results):
            val_batch, val_hashes, _, val = self._docs("validation", args.dedup)
            in_val = {val_hashes[i] for i in val}
            kept = [i for i in train if train_hashes[i] not in in_val]
            self.skipped["in_validation_set"] += len(train) - len(kept)
            train = kept
        else:
            val_batch = train_batch
            val = [i for i in train if held[i]]
            train = [i for i in train if not held[i]]
        picked_train = [train[i] for i in sample_indices(len(train), args.max_train_samples, seed)]
        picked_val = [val[i] for i in sample_indices(len(val), args.max_eval_samples, seed + 1)]
        self.not_sampled["train"] = len(train) - len(picked_train)
        self.not_sampled["validation"] = len(val) - len(picked_val)
        return train_batch.take(picked_train), val_batch.take(picked_val)

    def summary(self, n_train: int, n_val: int) -> dict[str, Any]:
        reasons = ("bad_record", "empty", "duplicate", "in_validation_set")
        return {
            "read": self.read,
            "skipped": {r: self.skipped[r] for r in reasons},
            "empty_files": self.skipped["empty_file"],
            "not_sampled": dict(self.not_sampled),
            "documents": {"train": n_train, "validation": n_val},
            "ignored_fields": dict(self.ignored.most_common()),
        }


def _dump(path: str, train: RenderedBatch, val: RenderedBatch) -> None:
    with atomic_writer(path) as f:
        for split, docs in (("train", train), ("validation", val)):
            for text in docs.texts:
                f.write(json.dumps({"text": text, "split": split}, ensure_ascii=False) + "\n")


def _finish(
    entry: Path, output_dir: str | Path | None, reused: bool, log: Callable[[str], None], t0: float
) -> PreparedData:
    report = json.loads((entry / REPORT_FILE).read_text(encoding="utf-8"))
    report["cache"]["reused"] = reused
    splits = {s: cache.load_split(entry / s) if (entry / s).is_dir() else None for s in ("train", "validation")}
    if output_dir is not None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        with atomic_writer(out / REPORT_FILE) as f:
            json.dump(report, f, ensure_ascii=False, indent=2)
        rejected = entry / REJECTED_FILE
        if rejected.stat().st_size:
            with atomic_writer(out / REJECTED_FILE, "wb") as f, open(rejected, "rb") as src:
                shutil.copyfileobj(src, f)
            log(
                f"{report['records']['skipped']['bad_record']:,} rejected record(s) with reasons: {out / REJECTED_FILE}"
            )
    log(format_table(report))
    log(f"prepared in {time.perf_counter() - t0:.1f} s")
    return PreparedData(splits["train"], splits["validation"], report, entry)


def read_texts(patterns: list[str], template: str = "qa_separator") -> list[str]:
    """Rendered documents of some files, untokenized (e.g. a corpus to train a tokenizer on)."""
    args = DataArguments(train_file_dir=patterns, template=template, validation_split_percentage=0.0)
    sources = [FileSource(p, args.encoding, args.txt_split) for p in resolve_files(patterns, "corpus")]
    return [t for s in sources for t in read_source(ReadTask(s, "train", _fixed(args)), args).docs.texts]


def prepare_eval_sets(
    args: DataArguments,
    tokenizer: TokenizerSource,
    seed: int,
    output_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Packed]:
    """The blocks of each --eval_sets NAME=PATH entry: all of PATH (or a sample of --max_eval_samples documents) as
    one split, rendered and packed exactly like the training data; reports under OUTPUT_DIR/NAME when given."""
    sets = {}
    for item in args.eval_sets or []:
        name, _, path = item.partition("=")
        log(f"eval set {name!r}: {path}")
        one = replace(
            args,
            dataset_name=None,
            train_file_dir=[path],
            validation_file_dir=None,
            validation_split_percentage=0.0,
            max_train_samples=args.max_eval_samples,
            eval_sets=None,
            dump_text=None,
        )
        sets[name] = prepare_data(one, tokenizer, seed, Path(output_dir) / name if output_dir else None, log=log).train
    return sets
