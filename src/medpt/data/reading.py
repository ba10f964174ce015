"""Records → rendered documents, one source (or one slice of a large .jsonl file) at a time.

This runs in worker processes, so everything it returns is plain data: the rendered documents, their content
hashes and split buckets (dedup and the split itself are decided in the parent, in input order), and counts of
every record that did not become a document, with the reason.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from medpt.args.resolve import DataArguments
from medpt.data.formats import Document, detect_format, to_document
from medpt.data.hygiene import content_hash, in_validation, normalize_text
from medpt.data.records import FileSource, HubSource, RecordTooLarge
from medpt.data.skips import BAD_RECORD, EMPTY, EMPTY_FILE, TOO_LARGE
from medpt.data.templates import Rendered, RenderedBatch, make_renderer
from medpt.errors import BadRecordError, MedptError
from medpt.strictjson import dumps


@dataclass
class ReadTask:
    source: FileSource | HubSource
    split: str
    fmt: str | None  # decided per file before it is sliced, so every slice reads it the same way
    name: str = ""  # the data source (--train_file_dir NAME=PATH) this file belongs to; "" when unnamed


@dataclass
class ReadResult:
    source: str
    split: str
    fmt: str | None = None
    name: str = ""  # the data source, as in ReadTask
    docs: RenderedBatch = field(default_factory=RenderedBatch)
    hashes: list[bytes] = field(default_factory=list)  # of the rendered text, for exact dedup
    held_out: list[bool] = field(default_factory=list)  # stable-split bucket of each document
    lines: list[int] = field(default_factory=list)  # the record (line, row) each document came from
    read: int = 0
    skipped: Counter = field(default_factory=Counter)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    ignored: Counter = field(default_factory=Counter)


_renderers: dict[str, Callable[[Document], Rendered]] = {}  # per process, by template settings


def _renderer(args: DataArguments) -> Callable[[Document], Rendered]:
    key = dumps([args.template, args.template_format], sort_keys=True)
    if key not in _renderers:
        _renderers[key] = make_renderer(args.template, args.template_format)
    return _renderers[key]


def read_source(
    task: ReadTask, args: DataArguments, render: Callable[[Document], Rendered] | None = None
) -> ReadResult:
    """Read one source (or slice). `render` is passed only in-process (the chat template needs the tokenizer)."""
    render = render or _renderer(args)
    result = ReadResult(task.source.name, task.split, task.fmt, task.name)
    pct = args.validation_split_percentage
    for record in task.source.records():
        result.read += 1
        if isinstance(record, BadRecordError):
            _bad(result, record, args, TOO_LARGE if isinstance(record, RecordTooLarge) else BAD_RECORD)
            continue
        try:
            result.fmt = result.fmt or detect_format(record)
            doc = to_document(record, result.fmt)
        except BadRecordError as e:
            _bad(result, e, args)
            continue
        if doc.ignored:
            result.ignored.update(doc.ignored)
        if args.normalize != "none":
            doc = _normalize(doc, args.normalize)
        if doc.is_empty():
            result.skipped[EMPTY] += 1
            continue
        rendered = render(doc)
        result.docs.append(rendered)
        result.hashes.append(content_hash(rendered.text))
        result.held_out.append(in_validation(doc.split_key, pct))
        result.lines.append(record.line or 0)
    if result.read == 0 and getattr(task.source, "byte_range", None) is None:
        _bad(result, BadRecordError(task.source.name, None, None, "empty file: no records"), args, EMPTY_FILE)
    return result


def peek_format(source: FileSource, data_format: str) -> str | None:
    """The record shape of a file, from its first readable record (None: let each slice detect it)."""
    if data_format != "auto":
        return data_format
    for record in source.records():
        if isinstance(record, BadRecordError):
            continue
        try:
            return detect_format(record)
        except BadRecordError:
            return None
    return None


def _normalize(doc: Document, mode: str) -> Document:
    if doc.turns is None:
        return Document(text=normalize_text(doc.text or "", mode))
    return Document(turns=[(r, normalize_text(t, mode)) for r, t in doc.turns])


def _bad(result: ReadResult, error: BadRecordError, args: DataArguments, reason: str = BAD_RECORD) -> None:
    if args.on_bad_record == "error":
        raise MedptError(f"{error} (to skip and log such records instead, pass --on_bad_record skip)")
    result.skipped[reason] += 1
    result.rejected.append(error.to_json())
