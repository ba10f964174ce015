"""Screening the training documents beyond exact dedup, inside the sharded pipeline (medpt.data.shards):

- benchmark contamination (--check_contamination, --decontaminate): each job's training documents are scanned as the
  job is selected, in this process, against the n-gram index of every checked benchmark item (medpt.data.contamination);
  the hits travel in the shard's meta, so a resumed run loses none, and are merged when the splits are assembled;
- near-duplicate removal (--dedup near): once every shard exists, per source, over its documents in input order with
  the source's validation documents first (medpt.data.neardup), so a training document that is a near copy of a
  held-out one is dropped too (an exact split by content hash lets near copies leak across it). Validation documents
  are never dropped. This pass holds the texts of one source in memory (about 3 bytes per character of Chinese), so
  unlike the default exact dedup its memory grows with the corpus; it reads them back from the shards.

Both are counted in the report's skipped reasons (`near_duplicate`, `contaminated`) and listed beside it
(near_duplicates.jsonl, contamination.jsonl), so no document disappears without a line saying why.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from medpt.args import DataArguments
from medpt.data.contamination import ContaminationIndex, file_items, read_benchmark_items
from medpt.data.neardup import near_duplicates
from medpt.data.skips import NEAR_DUPLICATE
from medpt.strictjson import dumps

_QUESTION_CHARS = 200  # of a contaminated item's question in contamination.jsonl


def contamination_index(args: DataArguments) -> ContaminationIndex | None:
    """The index of the checked benchmark items (--check_contamination, and the --eval_sets), or None when no check
    was asked for. Every benchmark file is read and checked here, before any training data is."""
    if not (args.check_contamination or args.decontaminate):
        return None
    items = read_benchmark_items(args.check_contamination or [])
    for entry in args.eval_sets or []:
        name, _, path = entry.partition("=")
        items += file_items(name, [path], "eval_sets")
    return ContaminationIndex(items, args.contamination_ngram)


def items_fingerprint(index: ContaminationIndex | None) -> str | None:
    """For the cache key: the checked items' content (a benchmark file edited in place changes what is dropped)."""
    if index is None:
        return None
    digest = hashlib.sha256()
    for item in index.items:
        digest.update(dumps([item.benchmark, item.parts], ensure_ascii=False).encode())
    return digest.hexdigest()[:24]


def scan(index: ContaminationIndex, texts: list[str], where: list[str]) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Which of these documents share an n-gram with a benchmark item, and one line per item found (its first
    document here, the shared n-gram, how many of these documents share one)."""
    found = index.scan(texts)
    flagged = np.zeros(len(texts), bool)
    flagged[found.documents] = True
    hits = [
        {
            "benchmark": hit.item.benchmark,
            "item": hit.item.where,
            "question": hit.item.text[:_QUESTION_CHARS],
            "document": where[hit.document],
            "ngram": hit.ngram,
            "documents": hit.documents,
        }
        for hit in found.hits
    ]
    return flagged, hits


def contamination_report(
    index: ContaminationIndex, hits: Iterable[dict[str, Any]], documents: int, dropped: bool
) -> tuple[dict, list]:
    """The report block and the listing, from every shard's hits (in input order) and the contaminated training
    documents they count: an item found in several shards is listed once, with its first document and the
    documents of all shards counted."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for hit in hits:
        key = (hit["benchmark"], hit["item"])
        if key in merged:
            merged[key]["documents"] += hit["documents"]
        else:
            merged[key] = dict(hit)
    summary = index.scan([]).summary()  # items and too-short items per benchmark
    for benchmark, _ in merged:
        summary[benchmark]["contaminated"] += 1
    block = {
        "ngram": index.n,
        "benchmarks": summary,
        "contaminated_items": len(merged),
        "contaminated_documents": documents,
        "decontaminated": dropped,
    }
    return block, list(merged.values())


def near_dedup(store: Any, g: Any, args: DataArguments, log: Callable[[str], None]) -> list[dict]:
    """Drop the near-duplicate training documents of each source from `g` (a medpt.data.assemble.Gathered: its
    document tables and record counts); return the listing: each dropped document with the one it resembles."""
    listing: list[dict[str, Any]] = []
    for name in g.names:
        # a meta holds its shard's texts, so reading it is the cost: each source reads its own shards only
        texts: dict[str, list[str]] = {"validation": [], "train": []}
        where: dict[str, list[str]] = {"validation": [], "train": []}
        for i in (i for i, source in enumerate(g.shard_names) if source == name):
            meta = store.meta(i)
            for split in texts:
                texts[split] += meta.texts[split]
                where[split] += [f"{meta.input.source}:{line}" for line in meta.lines[split]]
        n_validation = len(texts["validation"])
        if not texts["train"]:
            continue
        everything = texts["validation"] + texts["train"]
        places = where["validation"] + where["train"]
        found = near_duplicates(everything, threshold=args.near_dup_threshold, seed=0)
        dropped = [(i, k) for i, k in found.dropped if i >= n_validation]  # validation documents are never dropped
        drop = [i - n_validation for i, _ in dropped]
        listing += [
            {"source": name, "dropped": places[i], "kept": places[k],
             "kept_split": "validation" if k < n_validation else "train"}
            for i, k in dropped
        ]  # fmt: skip
        before = len(g.tables[(name, "train")])
        g.drop_train(name, drop, NEAR_DUPLICATE)
        log(f"near dedup{f' ({name})' if name else ''}: {len(drop):,} of {before:,} training documents dropped "
            f"(Jaccard ≥ {args.near_dup_threshold}; {found.candidates:,} candidate pairs)")  # fmt: skip
    return listing
