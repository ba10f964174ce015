"""What one shard of a preparation says about itself (its `meta.json`), as types: written by medpt.data.shards when
the shard is complete, read back by a resumed run, by the assembly of the splits (medpt.data.assemble) and by the
screening passes (medpt.data.screening).

The JSON keeps the field names and order it always had, so a preparation killed by an older medpt resumes from its
shards; `from_json` is the only place that reads a key.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

SPLITS = ("train", "validation")


@dataclass
class Records:
    """Records read and where the ones not kept went, of a shard or (summed) of a source."""

    read: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason (medpt.data.skips) -> records
    ignored: Counter = field(default_factory=Counter)  # record keys not used -> records holding them

    def add(self, other: Records) -> None:
        self.read += other.read
        self.skipped.update(other.skipped)
        self.ignored.update(other.ignored)


@dataclass
class InputSlice:
    """The input file (or hub dataset) a shard was read from, as the data report lists it."""

    source: str
    split: str
    format: str | None
    records: int

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "split": self.split, "format": self.format, "records": self.records}


@dataclass
class SplitTally:
    """A shard's kept documents of one split: how many, and their tokens by role."""

    documents: int = 0
    roles: Counter = field(default_factory=Counter)  # text tokens by role (of every `every`-th document)
    text_tokens: int = 0
    special_tokens: int = 0
    every: int = 1  # roles counted on every document (1) or every 8th (scaled to text_tokens in the report)

    def add(self, other: SplitTally) -> None:
        self.documents += other.documents
        self.roles.update(other.roles)
        self.text_tokens += other.text_tokens
        self.special_tokens += other.special_tokens
        self.every = max(self.every, other.every)

    def to_json(self) -> dict[str, Any]:
        return {"documents": self.documents, "roles": dict(self.roles), "text_tokens": self.text_tokens,
                "special_tokens": self.special_tokens, "every": self.every}  # fmt: skip


@dataclass
class ShardMeta:
    name: str  # the source's name ("" when the sources are not named)
    kind: str  # which files it was read from: "train" or "validation"
    job: int  # its number in processing order
    where: tuple[int, int]  # (input, piece within it): where a resumed run continues
    records: Records
    input: InputSlice
    rejected: list[dict[str, Any]]  # the lines of rejected.jsonl (medpt.errors.BadRecordError.to_json)
    splits: dict[str, SplitTally]  # "train", "validation" -> what it kept of each
    contamination: list[dict[str, Any]] = field(default_factory=list)  # benchmark items found (screening.scan)
    contaminated: int = 0  # training documents sharing an n-gram with a benchmark item
    texts: dict[str, list[str]] | None = None  # split -> kept documents' texts (--dump_text, --dedup near)
    lines: dict[str, list[int]] | None = None  # split -> the record (line or row) of each kept document

    def to_json(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": self.name, "kind": self.kind, "job": self.job, "where": list(self.where),
                                "read": self.records.read, "skipped": dict(self.records.skipped),
                                "ignored": dict(self.records.ignored), "input": self.input.to_json(),
                                "rejected": self.rejected}  # fmt: skip
        meta.update({split: self.splits[split].to_json() for split in SPLITS})
        if self.contamination or self.contaminated:
            meta["contamination"], meta["contaminated"] = self.contamination, self.contaminated
        if self.texts is not None:
            meta["texts"], meta["lines"] = self.texts, self.lines
        return meta

    @classmethod
    def from_json(cls, meta: dict[str, Any]) -> ShardMeta:
        return cls(
            meta["name"],
            meta["kind"],
            meta["job"],
            (meta["where"][0], meta["where"][1]),
            Records(meta["read"], Counter(meta["skipped"]), Counter(meta["ignored"])),
            InputSlice(**meta["input"]),
            meta["rejected"],
            {split: SplitTally(**{**meta[split], "roles": Counter(meta[split]["roles"])}) for split in SPLITS},
            meta.get("contamination", []),
            meta.get("contaminated", 0),
            meta.get("texts"),
            meta.get("lines"),
        )
