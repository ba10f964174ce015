"""From read results to the documents of each split, per data source, counting every record that is not used.

Per source, in input order: exact dedup, then the split (the source's validation files win, else the stable hash
split), then seeded sampling (--max_train_samples / --max_eval_samples, per source). Training documents identical to
a validation document of their source are removed and counted, so the eval loss never scores text the model
trained on. For each source and in total: records read = documents kept + every skip, by reason.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from medpt.args import DataArguments
from medpt.data.hygiene import sample_indices
from medpt.data.reading import ReadResult
from medpt.data.templates import RenderedBatch

SKIP_REASONS = ("bad_record", "empty", "duplicate", "in_validation_set")


class _Accounting:
    """One source's read results, merged in input order."""

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
            last = self.inputs[-1] if self.inputs else None
            if last and last["source"] == r.source and last["split"] == r.split:
                last["records"] += r.read  # slices of one file
            else:
                entry = {"source": r.source, "split": r.split, "format": r.fmt, "records": r.read}
                self.inputs.append({**entry, "name": r.name} if r.name else entry)

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
        train_batch, train_hashes, held, train = self._docs("train", bool(args.dedup))
        if any(r.split == "validation" for r in self.results):
            val_batch, val_hashes, _, val = self._docs("validation", bool(args.dedup))
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
        return {
            "read": self.read,
            "skipped": {r: self.skipped[r] for r in SKIP_REASONS},
            "empty_files": self.skipped["empty_file"],
            "not_sampled": dict(self.not_sampled),
            "documents": {"train": n_train, "validation": n_val},
            "ignored_fields": dict(self.ignored.most_common()),
        }


@dataclass
class Selection:
    """The documents of each source and split, and the record accounting per source and in total."""

    train: dict[str, RenderedBatch] = field(default_factory=dict)
    validation: dict[str, RenderedBatch] = field(default_factory=dict)
    records: dict[str, dict[str, Any]] = field(default_factory=dict)  # per source: the "records" block
    inputs: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return list(self.train)

    @property
    def named(self) -> bool:
        return self.names != [""]

    def all_train(self) -> RenderedBatch:
        return RenderedBatch.concat([self.train[n] for n in self.names])

    def all_validation(self) -> RenderedBatch:
        return RenderedBatch.concat([self.validation[n] for n in self.names])

    def total(self) -> dict[str, Any]:
        """The records block summed over sources (the whole report's, as with one source)."""
        blocks = list(self.records.values())
        ignored: Counter = Counter()
        for b in blocks:
            ignored.update(b["ignored_fields"])
        return {
            "read": sum(b["read"] for b in blocks),
            "skipped": {r: sum(b["skipped"][r] for b in blocks) for r in SKIP_REASONS},
            "empty_files": sum(b["empty_files"] for b in blocks),
            "not_sampled": {s: sum(b["not_sampled"].get(s, 0) for b in blocks) for s in ("train", "validation")},
            "documents": {s: sum(b["documents"][s] for b in blocks) for s in ("train", "validation")},
            "ignored_fields": dict(ignored.most_common()),
        }


def select_documents(results: list[ReadResult], names: list[str], args: DataArguments, seed: int) -> Selection:
    selection = Selection()
    for name in names:
        acct = _Accounting([r for r in results if r.name == name])
        train, val = acct.select(args, seed)
        selection.train[name], selection.validation[name] = train, val
        selection.records[name] = acct.summary(len(train), len(val))
        selection.inputs += acct.inputs
        selection.rejected += acct.rejected
    return selection
