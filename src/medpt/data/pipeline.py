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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from medpt import __version__
from medpt.args import DataArguments
from medpt.atomic import atomic_dir, atomic_writer
from medpt.data import cache
from medpt.data.accounting import Selection, select_documents
from medpt.data.mixing import gather, interleave, plan_mix
from medpt.data.packing import Packed, pack
from medpt.data.parallel import Workers
from medpt.data.reading import ReadResult, ReadTask, peek_format, read_source
from medpt.data.records import FileSource, HubSource, resolve_files
from medpt.data.report import check_record_accounting, check_sources, format_table, split_stats
from medpt.data.sources import SourceFile, data_sources, file_bytes
from medpt.data.templates import RenderedBatch, make_renderer
from medpt.data.tokenize import load_tokenizer_info, scale_roles, tokenize_documents, tokenizer_info
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
    files = data_sources(args, hub_cache_dir)
    settings = {k: v for k, v in asdict(args).items() if k not in _NOT_IN_KEY}
    key = cache.cache_key(
        {
            "inputs": [(f.name, f.split, f.source.suffix, f.source.fingerprint()) for f in files],
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
    # Spawning workers costs about a second; below a few MB of input one process is faster.
    with Workers(n_workers if file_bytes(files) >= _PARALLEL_MIN_BYTES else 1) as workers:
        # 1. Load the tokenizer (importing transformers takes seconds) in a worker while this process reads.
        needs_tokenizer_here = args.template == "chat_template"
        pending_info = None if (hit or needs_tokenizer_here) else workers.submit(load_tokenizer_info, tokenizer)
        render = make_renderer(args.template, args.template_format, tokenizer.load() if needs_tokenizer_here else None)
        # 2. Read and render, in parallel slices; dedup, split and sampling follow input order in this process.
        results = _read_all(files, args, workers, render if needs_tokenizer_here else None)
        names = list(dict.fromkeys(f.name for f in files if f.split == "train"))
        selection = select_documents(results, names, args, seed)
        total = selection.total()
        if not total["documents"]["train"]:
            raise MedptError(f"no training documents left after reading: {total}")
        log(f"read {total['read']:,} records from {len(files)} input(s) in {time.perf_counter() - t0:.1f} s")
        if args.dump_text:
            _dump(args.dump_text, selection)
            log(f"wrote {sum(total['documents'].values()):,} rendered documents to {args.dump_text}")
        if hit:
            log(f"reusing prepared data from {entry} (same inputs, tokenizer and settings)")
            return _finish(entry, output_dir, reused=True, log=log, t0=t0)
        info = pending_info() if pending_info else tokenizer_info(tokenizer.load())
        report: dict[str, Any] = {
            "medpt_version": __version__,
            "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "tokenizer": tokenizer.name,
            "settings": settings,
            "inputs": selection.inputs,
            "records": total,
        }
        for name in names:
            check_record_accounting(selection.records[name])
        check_record_accounting(total)
        # 3. Tokenize, mix and pack each split; the result appears under its key only once complete.
        with atomic_dir(entry) as tmp:
            json_path = tmp / "tokenizer.json"
            if info.backend_json is not None:
                json_path.write_text(info.backend_json, encoding="utf-8")
            tokenizing = _Tokenizing(args, seed, info, workers, str(json_path), tmp, log)
            report["train"], sources = tokenizing.train(selection)
            report["validation"], held_out = tokenizing.validation(selection)
            if selection.named:
                report["sources"] = {
                    n: {"records": selection.records[n], **sources[n], "validation": held_out.get(n)} for n in names
                }
                check_sources(report)
            json_path.unlink(missing_ok=True)
            with open(tmp / REJECTED_FILE, "w", encoding="utf-8") as f:
                for item in selection.rejected:
                    f.write(json.dumps(item, ensure_ascii=False) + "\n")
            report["cache"] = {"key": key, "path": str(entry), "reused": False}
            (tmp / REPORT_FILE).write_text(json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8")
    return _finish(entry, output_dir, reused=False, log=log, t0=t0)


@dataclass
class _Tokenizing:
    """Tokenize each source's documents, mix the training sources (--mix), pack, and save each split."""

    args: DataArguments
    seed: int
    info: Any
    workers: Workers
    json_path: str
    tmp: Path
    log: Callable[[str], None]

    def _tokenize(self, docs: RenderedBatch) -> Any:
        return tokenize_documents(docs, self.info, self.workers, self.json_path, None)

    def _save(self, split: str, tokens: np.ndarray, offsets: np.ndarray, by_role: dict, basis: str) -> dict:
        t = time.perf_counter()
        packed = pack(tokens, offsets, self.args.block_size, self.args.packing)
        cache.save_split(self.tmp / split, packed)
        self.log(
            f"{split}: {len(offsets) - 1:,} documents → {offsets[-1]:,} tokens → {len(packed):,} blocks of "
            f"{self.args.block_size} ({self.args.packing}) in {time.perf_counter() - t:.1f} s, {self.workers.n} "
            "worker(s)"
        )
        return split_stats(packed, offsets, by_role, basis)

    def train(self, selection: Selection) -> tuple[dict, dict[str, dict]]:
        """The training split (mixed when --mix is given) and, per source, what it contributed."""
        parts = {n: self._tokenize(selection.train[n]) for n in selection.names}
        shares = self.args.shares()
        per_source = {n: {"train": {"documents": len(p.offsets) - 1, "tokens": int(p.offsets[-1])}} for n, p in
                      parts.items()}  # fmt: skip
        if shares is None:
            runs = [(n, np.arange(len(parts[n].offsets) - 1)) for n in selection.names]
            selected = {n: int(parts[n].offsets[-1]) for n in selection.names}
            basis = _basis(parts.values())
        else:
            lengths = {n: np.diff(parts[n].offsets) for n in selection.names}
            picks, plans = plan_mix(lengths, shares, self.seed, self.args.mix_tokens)
            runs = interleave(picks, self.seed)
            selected = {n: plans[n].selected_tokens for n in selection.names}
            for n in selection.names:
                per_source[n]["mix"] = plans[n].to_dict()
            basis = "estimated: each source's role counts scaled to the tokens it contributes to the mix"
        tokens, offsets = join_documents([gather(parts[n].tokens, parts[n].offsets, idx) for n, idx in runs])
        by_role = _roles({n: (parts[n].by_role, selected[n]) for n in selection.names})
        return self._save("train", tokens, offsets, by_role, basis), per_source

    def validation(self, selection: Selection) -> tuple[dict | None, dict[str, dict]]:
        """Every source's held-out documents together ("validation"), and each named source's on its own."""
        docs = selection.all_validation()
        if not len(docs):
            return None, {}
        tok = self._tokenize(docs)
        stats = self._save("validation", tok.tokens, tok.offsets, tok.by_role, tok.roles_basis)
        per_source: dict[str, dict] = {}
        if selection.named:
            first = 0
            for name in selection.names:
                n = len(selection.validation[name])
                if n:
                    offsets = tok.offsets[first : first + n + 1]
                    tokens = tok.tokens[offsets[0] : offsets[-1]]
                    roles = {"mixed": int(offsets[-1] - offsets[0])}  # per-role counts are in the union's stats
                    stats_n = self._save(f"validation.{name}", tokens, offsets - offsets[0], roles, "not counted")
                    per_source[name] = {"documents": n, "tokens": stats_n["tokens"], "blocks": stats_n["blocks"]}
                first += n
        return stats, per_source


def join_documents(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, offsets) pieces laid end to end."""
    if not parts:
        return np.zeros(0, np.int32), np.zeros(1, np.int64)
    tokens = np.concatenate([t for t, _ in parts])
    lengths = np.concatenate([np.diff(o) for _, o in parts])
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return tokens, offsets


def _basis(parts: Any) -> str:
    bases = {p.roles_basis for p in parts}
    return bases.pop() if len(bases) == 1 else "estimated on the larger sources (totals exact)"


def _roles(by_source: dict[str, tuple[dict[str, int], int]]) -> dict[str, int]:
    """Per-role token counts of the training split: each source's, scaled to the tokens it contributes (exact when
    nothing is repeated or sampled), summed; they always add up to the split's token count."""
    total: Counter = Counter()
    for roles, selected in by_source.values():
        total.update(roles if sum(roles.values()) == selected else scale_roles(Counter(roles), selected))
    return dict(sorted((k, v) for k, v in total.items() if v))


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


def _read_all(files: list[SourceFile], args: DataArguments, workers: Workers, render: Any) -> list[ReadResult]:
    tasks = []
    for f in files:
        source = f.source
        pieces = source.chunks(_SLICE_BYTES) if isinstance(source, FileSource) and workers.pool else [source]
        fmt = peek_format(pieces[0], args.data_format) if len(pieces) > 1 else _fixed(args)
        tasks += [ReadTask(p, f.split, fmt, f.name) for p in pieces]
    if render is not None or any(isinstance(t.source, HubSource) for t in tasks):
        # The chat template needs the tokenizer, and a hub dataset is already in this process: read here.
        return [read_source(t, args, render) for t in tasks]
    return workers.map(functools.partial(read_source, args=args), tasks)


def _fixed(args: DataArguments) -> str | None:
    return None if args.data_format == "auto" else args.data_format


def _dump(path: str, selection: Selection) -> None:
    with atomic_writer(path) as f:
        for split, batches in (("train", selection.train), ("validation", selection.validation)):
            for name, docs in batches.items():
                extra = {"source": name} if name else {}
                for text in docs.texts:
                    f.write(json.dumps({"text": text, "split": split, **extra}, ensure_ascii=False) + "\n")


def _finish(
    entry: Path, output_dir: str | Path | None, reused: bool, log: Callable[[str], None], t0: float
) -> PreparedData:
    report = json.loads((entry / REPORT_FILE).read_text(encoding="utf-8"))
    report["cache"]["reused"] = reused
    splits = {s: cache.load_split(entry / s) if (entry / s).is_dir() else None for s in ("train", "validation")}
    per_source = {
        name: cache.load_split(entry / f"validation.{name}")
        for name in report.get("sources", {})
        if (entry / f"validation.{name}").is_dir()
    }
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
    return PreparedData(splits["train"], splits["validation"], report, entry, per_source)


def read_texts(patterns: list[str], template: str = "qa_separator") -> list[str]:
    """Rendered documents of some files, untokenized (e.g. a corpus to train a tokenizer on)."""
    args = DataArguments(template=template, validation_split_percentage=0.0)
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
            mix=None,
            mix_tokens=None,
            validation_split_percentage=0.0,
            max_train_samples=args.max_eval_samples,
            eval_sets=None,
            dump_text=None,
        )
        sets[name] = prepare_data(one, tokenizer, seed, Path(output_dir) / name if output_dir else None, log=log).train
    return sets
