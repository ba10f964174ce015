"""From input files (or a hub dataset) to packed, cached training blocks, with a report of where everything went.

    sources → shards (medpt.data.shards: records → documents → rendered text → dedup → split → tokens, one slice of
    the input at a time, each shard on disk; resumable) → per source: sample, mix (medpt.data.assemble) → pack,
    streamed from the shards → cache (atomic) → data_report.json

Model-agnostic: it takes a `TokenizerSource` (a fingerprint and a way to load the tokenizer), never a model.
The tokenizer is loaded only when tokenization is needed, so a cached rerun never imports transformers.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from medpt import __version__
from medpt.args import DataArguments
from medpt.atomic import atomic_dir, atomic_writer, make_dir, remove_stale_leftovers, writing_into
from medpt.data import cache, screening
from medpt.data.assemble import (
    DocTable,
    Gathered,
    Plan,
    dump_texts,
    gather_shards,
    plan_splits,
    records_block,
    roles_of,
    split_report,
    write_split,
)
from medpt.data.contamination import ContaminationIndex
from medpt.data.mixing import rescaled_note
from medpt.data.packing import Packed
from medpt.data.parallel import Future, Workers
from medpt.data.paths import resolve_files
from medpt.data.reading import ReadTask, read_source
from medpt.data.records import FileSource
from medpt.data.report import check_record_accounting, check_sources, format_table
from medpt.data.shards import JobPlan, Selector, ShardStore, run_jobs
from medpt.data.skips import REJECTED_REASONS
from medpt.data.sources import SourceFile, check_distinct, data_sources, file_bytes
from medpt.data.templates import make_renderer
from medpt.data.tokenize import load_tokenizer_info, tokenizer_info
from medpt.errors import MedptError
from medpt.rundir import CONTAMINATION as CONTAMINATION_FILE
from medpt.rundir import DATA_REPORT as REPORT_FILE  # the run directory's file names live in one place
from medpt.rundir import NEAR_DUPLICATES as NEAR_FILE
from medpt.rundir import REJECTED as REJECTED_FILE
from medpt.rundir import RunDir
from medpt.strictjson import dumps

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
    "shard_mb",  # how the work is cut, not what it produces
}


class TokenizerSource(Protocol):
    name: str

    def fingerprint(self) -> str: ...

    def load(self) -> Any: ...


@dataclass
class PreparedData:
    train: Packed | None
    validation: Packed | None  # every source's held-out documents together
    report: dict[str, Any]
    cache_dir: Path
    validation_sets: dict[str, Packed] = field(default_factory=dict)  # per named source: NAME → its held-out blocks

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
    prep = Preparation.start(args, tokenizer, seed, log, hub_cache_dir)
    _claim_cache(prep.root)
    remove_stale_leftovers(prep.root, untagged=True)  # the cache is medpt's alone (see _claim_cache)
    # One process prepares a key at a time (DDP ranks, parallel `medpt tune`); a full disk names the cache.
    with cache.lock(prep.root, prep.key, log), writing_into(prep.root):
        hit = (prep.entry / REPORT_FILE).is_file() and not args.overwrite_cache
        if hit and not args.dump_text:
            return prep.reuse(output_dir, t0)
        store, n_shards = prep.shards()
        g, lists = prep.screen(store, n_shards)
        plan = plan_splits(g, args, seed)
        if not len(plan.train):
            raise MedptError(f"no training documents left after reading: {dict(g.records)}")
        if args.dump_text:
            with atomic_writer(args.dump_text) as f:
                log(f"wrote {dump_texts(f, store, n_shards, plan, g):,} rendered documents to {args.dump_text}")
        if hit:  # the blocks are cached; only the dump was asked for
            return prep.reuse(output_dir, t0)
        report = prep.assemble(store, g, plan, lists)
        shutil.rmtree(store.directory, ignore_errors=True)
    return _finish(prep.entry, report, output_dir, log, t0)


@dataclass
class Preparation:
    """One preparation of a training corpus: its inputs, each hashed once, the cache entry they key, and the steps
    from the inputs to that entry (shards → screening → assembly)."""

    args: DataArguments
    tokenizer: TokenizerSource
    seed: int
    log: Callable[[str], None]
    files: list[SourceFile]
    prints: list[str]  # each file's content fingerprint: for the cache key and the shard plan alike
    index: ContaminationIndex | None  # the checked benchmark items (--check_contamination, --eval_sets), or None
    settings: dict[str, Any]  # the data flags that shape the blocks (the report shows them)
    key: str
    root: Path

    @classmethod
    def start(cls, args: DataArguments, tokenizer: TokenizerSource, seed: int, log: Callable[[str], None],
              hub_cache_dir: str | None) -> Preparation:  # fmt: skip
        files = data_sources(args, hub_cache_dir)
        prints = [f.source.fingerprint() for f in files]
        check_distinct(files, prints)  # the same file (or bytes) twice would be trained on twice
        if args.mix and (note := rescaled_note(args.mix)):
            log(note)
        index = screening.contamination_index(args)  # every benchmark file is read and checked before the corpus
        settings = {k: v for k, v in asdict(args).items() if k not in _NOT_IN_KEY}
        settings["benchmark_items"] = screening.items_fingerprint(index)
        key = cache.cache_key(
            {
                "inputs": [(f.name, f.split, f.source.suffix, fp) for f, fp in zip(files, prints)],
                "tokenizer": tokenizer.fingerprint(),
                "settings": settings,
                "seed": seed,
            }
        )
        root = cache.cache_root(args.data_cache_dir)
        return cls(args, tokenizer, seed, log, files, prints, index, settings, key, root)

    @property
    def entry(self) -> Path:
        return self.root / self.key

    @property
    def names(self) -> list[str]:
        """The training sources, in the order given ("" alone when they are not named)."""
        return list(dict.fromkeys(f.name for f in self.files if f.split == "train"))

    def reuse(self, output_dir: str | Path | None, t0: float) -> PreparedData:
        self.log(f"reusing prepared data from {self.entry} (same inputs, tokenizer and settings)")
        report = json.loads((self.entry / REPORT_FILE).read_text(encoding="utf-8"))
        report["cache"]["reused"] = True
        return _finish(self.entry, report, output_dir, self.log, t0)

    def shards(self) -> tuple[ShardStore, int]:
        """Read, render, dedup, split and tokenize every input into shards under `.KEY.partial` (resuming the
        completed ones)."""
        args, partial = self.args, self.root / f".{self.key}.partial"
        plan = JobPlan(self.files, self.prints, args, max(int(args.shard_mb * 2**20), 1))
        keep_texts = bool(args.dump_text) or args.dedup == "near"  # the shards keep their texts for these
        store = ShardStore(partial, plan.fingerprint({"dump": keep_texts}))
        selector = Selector(args.dedup in ("exact", "near"), self.index, args.decontaminate)
        done = store.completed()
        for i, meta in enumerate(store.metas(done)):
            selector.replay(meta.name, meta.kind, store.array(i, "seen"))
        if done:
            self.log(f"resuming: {done} shard(s) were already prepared in {partial}")
        n_workers = args.preprocessing_num_workers or min(8, os.cpu_count() or 1)
        # Spawning workers costs about a second; below a few MB of input one process is faster (streams: always).
        streamed = any(f.source.suffix == ".hub-stream" for f in self.files)
        small = file_bytes(self.files) < _PARALLEL_MIN_BYTES and not streamed
        with Workers(1 if small else n_workers) as workers:
            # The tokenizer loads (importing transformers takes seconds) in a worker while the first jobs are read;
            # the chat template needs it here, to render.
            here = self.tokenizer.load() if args.template == "chat_template" else None
            info = workers.submit(load_tokenizer_info, self.tokenizer) if here is None else Future(tokenizer_info(here))
            render = make_renderer(args.template, args.template_format, here) if here is not None else None
            run_jobs(plan, store, selector, workers, info, str(partial / "tokenizer.json"), render, self.log,
                     dump=keep_texts)  # fmt: skip
        return store, store.completed()

    def screen(self, store: ShardStore, n_shards: int) -> tuple[Gathered, dict[str, list]]:
        """The shards' documents and counts per source, after near dedup; the listings beside the report."""
        g = gather_shards(store, n_shards, self.names)
        lists = {}
        if self.args.dedup == "near":
            lists[NEAR_FILE] = screening.near_dedup(store, g, self.args, self.log)
        if self.index is not None:
            block, lists[CONTAMINATION_FILE] = screening.contamination_report(
                self.index, g.hits, g.contaminated, self.args.decontaminate
            )
            g.screening["contamination"] = block
        return g, lists

    def assemble(self, store: ShardStore, g: Gathered, plan: Plan, lists: dict[str, list]) -> dict[str, Any]:
        """Write the final splits from the shards into the cache entry (visible only once complete); return the
        report it holds."""
        args, names = self.args, g.names
        records = {
            n: records_block(
                g.records[n],
                len(plan.sampled[(n, "train")]),
                len(plan.sampled[(n, "validation")]),
                _not_sampled(g, plan, n),
            )  # fmt: skip
            for n in names
        }
        total = _total(records)
        for block in (*records.values(), total):
            check_record_accounting(block)
        report: dict[str, Any] = {
            "medpt_version": __version__,
            "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "tokenizer": self.tokenizer.name,
            "settings": self.settings,
            "inputs": g.inputs,
            "records": total,
            **g.screening,
        }
        with atomic_dir(self.entry) as tmp:

            def write(folder: str, docs: DocTable, split: str, of: list[str]) -> dict[str, Any]:
                return _write(tmp / folder, docs, store, args, *roles_of(g, plan, split, of), self.log, g)

            report["train"] = write("train", plan.train, "train", names)
            held = plan.validation
            report["validation"] = write("validation", held, "validation", names) if len(held) else None
            if names != [""]:
                report["sources"] = {n: self._source(n, records[n], plan, write) for n in names}
                check_sources(report)
            for name, rows in ((REJECTED_FILE, g.rejected), *lists.items()):
                with open(tmp / name, "w", encoding="utf-8") as f:
                    for item in rows:
                        f.write(dumps(item, ensure_ascii=False) + "\n")
            report["cache"] = {"key": self.key, "path": str(self.entry), "reused": False}
            text = dumps(report, ensure_ascii=False, indent=2)
            (tmp / REPORT_FILE).write_text(text, encoding="utf-8")
        return json.loads(text)  # exactly what a reuse reads back (JSON types, not tuples or numpy numbers)

    @staticmethod
    def _source(name: str, records: dict[str, Any], plan: Plan, write: Callable) -> dict[str, Any]:
        """A named source's report block; its held-out documents are written as `validation.NAME`."""
        held = plan.validation_by_source[name]
        stats = write(f"validation.{name}", held, "validation", [name]) if len(held) else None
        mix = plan.mix[name] if plan.mix else None
        train = plan.sampled[(name, "train")]
        return {
            "records": records,
            "train": {"documents": len(train), "tokens": int(train.length.sum())},
            **({"mix": mix} if mix else {}),
            "validation": {"documents": len(held), "tokens": stats["tokens"], "blocks": stats["blocks"]}
            if stats else None,
        }  # fmt: skip


def _write(directory: Path, docs: Any, store: ShardStore, args: DataArguments, by_role: dict, basis: str,
           log: Callable, g: Gathered) -> dict[str, Any]:  # fmt: skip
    t = time.perf_counter()
    lay = write_split(directory, docs, store, args, g.names, g.shard_names)
    stats = split_report(lay, docs, by_role, basis)
    log(
        f"{directory.name}: {stats['documents']:,} documents → {stats['tokens']:,} tokens → {stats['blocks']:,} "
        f"blocks of {args.block_size} ({args.packing}) in {time.perf_counter() - t:.1f} s"
    )
    return stats


def _not_sampled(g: Any, plan: Any, name: str) -> dict[str, int]:
    return {
        split: len(g.tables.get((name, split), ())) - len(plan.sampled[(name, split)])
        for split in ("train", "validation")
    }


def _total(records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The records block summed over sources (the whole report's, as with one source)."""
    blocks = list(records.values())
    ignored: Counter = Counter()
    for b in blocks:
        ignored.update(b["ignored_fields"])
    return {
        "read": sum(b["read"] for b in blocks),
        "skipped": {r: sum(b["skipped"][r] for b in blocks) for r in blocks[0]["skipped"]},
        "empty_files": sum(b["empty_files"] for b in blocks),
        "not_sampled": {s: sum(b["not_sampled"][s] for b in blocks) for s in ("train", "validation")},
        "documents": {s: sum(b["documents"][s] for b in blocks) for s in ("train", "validation")},
        "ignored_fields": dict(ignored.most_common()),
    }


_CACHE_ENTRY = re.compile(r"\.?[0-9a-f]{24}(\..*)?")  # a key, or the temporary of one (.KEY.xxx.tmp, .KEY.old-PID)


def _claim_cache(root: Path) -> None:
    """The cache folder is medpt's alone: a folder holding anything else is refused, because the cache removes its
    stale temporaries itself (see atomic.remove_stale_leftovers) and must never mistake a user's file for one."""
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


def _finish(
    entry: Path, report: dict[str, Any], output_dir: str | Path | None, log: Callable[[str], None], t0: float
) -> PreparedData:
    splits = {s: cache.load_split(entry / s) if (entry / s).is_dir() else None for s in ("train", "validation")}
    per_source = {
        name: cache.load_split(entry / f"validation.{name}")
        for name in report.get("sources", {})
        if (entry / f"validation.{name}").is_dir()
    }
    if output_dir is not None:
        out = make_dir(output_dir)
        with atomic_writer(out / REPORT_FILE) as f:
            f.write(dumps(report, ensure_ascii=False, indent=2))
        for name in (REJECTED_FILE, NEAR_FILE, CONTAMINATION_FILE):
            listed = entry / name
            if listed.is_file() and listed.stat().st_size:
                with atomic_writer(out / name, "wb") as f, open(listed, "rb") as src:
                    shutil.copyfileobj(src, f)
        rejected = sum(report["records"]["skipped"].get(r, 0) for r in REJECTED_REASONS)
        if (out / REJECTED_FILE).is_file() and rejected:
            log(f"{rejected:,} rejected record(s) with reasons: {out / REJECTED_FILE}")
        found = report.get("contamination")
        if found and found["contaminated_items"]:
            what = "dropped" if found["decontaminated"] else "kept (--decontaminate drops them)"
            log(f"contamination: {found['contaminated_items']:,} benchmark item(s) share a {found['ngram']}-gram "
                f"with {found['contaminated_documents']:,} training document(s), {what}: "
                f"{out / CONTAMINATION_FILE}")  # fmt: skip
    log(format_table(report))
    log(f"prepared in {time.perf_counter() - t0:.1f} s")
    return PreparedData(splits["train"], splits["validation"], report, entry, per_source)


def read_texts(patterns: list[str], template: str = "qa_separator") -> list[str]:
    """Rendered documents of some files, untokenized (e.g. a corpus to train a tokenizer on)."""
    args = DataArguments(template=template, validation_split_percentage=0.0)
    sources = [FileSource(p, args.encoding, args.txt_split) for p in resolve_files(patterns, "corpus")]
    return [t for s in sources for t in read_source(ReadTask(s, "train", None), args).docs.texts]


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
            mix=None,
            mix_tokens=None,
            validation_split_percentage=0.0,
            max_train_samples=args.max_eval_samples,
            eval_sets=None,
            dump_text=None,
        )
        sets[name] = prepare_data(one, tokenizer, seed, Path(output_dir) / name if output_dir else None, log=log).train
    return sets
