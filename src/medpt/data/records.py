"""Where records come from: local files (found by path, folder or glob) and hub datasets.

Every record keeps its location (file and line, or dataset and row) so that any later error can name it.
Each source also has a content fingerprint, used as part of the cache key: the same bytes give the same key
whatever the file is called or when it was touched.

Limits on what a file may contain:

- JSON records may nest at most MAX_JSON_DEPTH (100) arrays/objects deep. Real records nest 2-5 levels (a
  conversation is object > list > object > string). Python's JSON parser, json.dumps, pickle (to and from worker
  processes) and the renderers all recurse, and Python's default recursion limit is 1000 frames shared with the
  caller's own; 100 keeps every later step far from it. A deeper .jsonl line is a bad record (skippable, written to
  rejected.jsonl as its raw text); a deeper record in a .json file is skippable too if the parser could read it,
  and fatal if it could not (the parser then cannot say where the next record starts).
- A CSV cell may hold at most CSV_FIELD_LIMIT (64 MiB) characters, up from the csv module's 128 KiB default, which
  long documents (a whole guideline in one cell) exceed. A bigger cell stops the run with its line.
- A CSV quoted field left unclosed at the end of the file (which the csv module would silently turn into one cell
  holding the rest of the file) stops the run, naming the line where the quote opens.
- A record (a JSON line or value, a CSV row, a .txt document, a parquet or hub row) may hold at most
  --max_record_mb MiB of UTF-8 text (default 16 MiB, about five million Chinese characters: a whole
  textbook). Tokenizing one record takes its time and memory at once, about 60x its size (measured: a 30 MB line
  needed 1.8 GB and 40 s), so a runaway record (files joined, line ends lost) would stall preparation; it is a bad
  record instead (reason too_large, skippable), found before it is rendered or tokenized (a JSON line: before it
  is parsed).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medpt.args.fields import MAX_RECORD_MB
from medpt.data.paths import data_suffix
from medpt.errors import BadRecordError, MedptError
from medpt.strictjson import dumps

MAX_JSON_DEPTH = 100  # see the module docstring
# 64 MiB fits a 32-bit C long (csv.field_size_limit takes one; sys.maxsize, the usual idiom, overflows on Windows).
CSV_FIELD_LIMIT = 64 << 20
_NEWLINE_SAFE = ("utf-8", "utf8", "utf-8-sig", "ascii", "gb18030", "gbk", "gb2312", "latin-1", "iso-8859-1")


def _norm(encoding: str) -> str:
    return encoding.lower().replace("_", "-")


@dataclass
class Record:
    source: str
    line: int  # 1-based line where the record starts (text files) or row number (parquet, hub)
    value: Any  # the parsed JSON value, a CSV/parquet row as a dict, or {"text": ...} for .txt documents
    unit: str = "line"

    def bad(self, field: str | None, reason: str) -> BadRecordError:
        return BadRecordError(self.source, self.line, field, reason, raw=self.value, unit=self.unit)


class RecordTooLarge(BadRecordError):
    """A record over --max_record_mb: counted apart from malformed records in the data report."""


def record_too_large(texts: Iterable[str], limit: int) -> int | None:
    """The UTF-8 size of `texts` when it exceeds `limit` bytes, else None. A character is at most 4 bytes, so the
    many small records are not even encoded."""
    texts = list(texts)
    if sum(map(len, texts)) * 4 <= limit:
        return None
    size = sum(len(t.encode("utf-8", "surrogatepass")) for t in texts)
    return size if size > limit else None


def strings_in(value: Any) -> Iterator[str]:
    """Every string (keys too) of a parsed record, however nested; iterative, like _deeper_than."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)


def _too_large(source: str, line: int, size: int, limit: int, head: str, unit: str = "line") -> RecordTooLarge:
    reason = (f"a record of {size / 2**20:,.1f} MiB, over the {limit / 2**20:g} MiB limit: files joined into one, "
              "or line ends lost? Split it, or raise --max_record_mb")  # fmt: skip
    return RecordTooLarge(source, line, None, reason, raw=head[:200] + "...", unit=unit)


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether a parsed JSON value nests more than `limit` arrays/objects; iterative, so it cannot overflow itself.

    Callers first count the record's '[' and '{' (nesting needs one per level): two fast counts settle nearly every
    record, and only the few with many brackets (in strings, mostly) are walked."""
    if not isinstance(value, (dict, list)):
        return False
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


_TOO_DEEP = (
    f"nested deeper than {MAX_JSON_DEPTH} levels of arrays/objects (the most medpt reads); flatten the record or "
    "remove it"
)


def _line_at(text: str, pos: int) -> int:
    """1-based line of text[pos], counting LF, CRLF and a lone CR as line ends (as the csv module does)."""
    # A CR directly before text[pos] == LF is half of a CRLF, hence pos + 1 for the pairs.
    return text.count("\n", 0, pos) + text.count("\r", 0, pos) - text.count("\r\n", 0, pos + 1) + 1


class FileSource:
    """One local file. Records are produced lazily; the fingerprint hashes the raw bytes."""

    def __init__(self, path: Path, encoding: str = "utf-8", txt_split: str = "paragraph",
                 max_record_mb: float = MAX_RECORD_MB):  # fmt: skip
        self.path, self.encoding, self.txt_split = path, encoding, txt_split
        self.limit = int(max_record_mb * 2**20)  # bytes of UTF-8 text per record
        self.name = str(path)
        self.suffix = data_suffix(path)
        self.byte_range: tuple[int, int] | None = None  # a slice of a .jsonl file, for parallel reading
        self.first_line = 1

    def chunks(self, target_bytes: int) -> list[FileSource]:
        """Split a plain .jsonl file at line ends into slices of about target_bytes, for parallel reading.

        Only for encodings in which byte 0x0A is always a newline (UTF-8, GB18030/GBK, ASCII); other files, and
        compressed ones, are read whole by one worker."""
        size = self.path.stat().st_size
        splittable = self.suffix == ".jsonl" and self.path.suffix.lower() != ".gz"
        if not splittable or size <= target_bytes or _norm(self.encoding) not in _NEWLINE_SAFE:
            return [self]
        # Streamed in 1 MiB blocks (never the whole file in memory): a cut goes after the first newline at or past
        # each target offset; lines are counted on the way so every slice knows its first line number.
        pieces: list[FileSource] = []
        line = 1
        start, cut_from, newlines = 0, target_bytes, 0
        with open(self.path, "rb") as f:
            pos = 0
            while block := f.read(1 << 20):
                at = 0
                while pos + len(block) > cut_from:
                    nl = block.find(b"\n", max(at, cut_from - pos))
                    if nl < 0:
                        break
                    newlines += block.count(b"\n", at, nl + 1)
                    pieces.append(self._slice(start, pos + nl + 1, line))
                    line += newlines
                    newlines, start, at = 0, pos + nl + 1, nl + 1
                    cut_from = start + target_bytes
                newlines += block.count(b"\n", at)
                pos += len(block)
        if start < size:
            pieces.append(self._slice(start, size, line))
        return pieces

    def _slice(self, start: int, end: int, first_line: int) -> FileSource:
        piece = FileSource(self.path, self.encoding, self.txt_split)
        piece.limit = self.limit
        piece.byte_range, piece.first_line = (start, end), first_line
        return piece

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        with open(self.path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        return h.hexdigest()

    def records(self) -> Iterator[Record | BadRecordError]:
        """Records in file order. A bad JSON line is yielded as an error; damage that makes the rest of the file
        unreadable (a broken .json array, a wrong encoding) is raised."""
        if self.suffix == ".parquet":
            yield from self._parquet()
            return
        text = self._decode()
        if self.suffix == ".jsonl":
            yield from self._jsonl(text)
        elif self.suffix == ".json":
            yield from self._json(text)
        elif self.suffix == ".csv":
            yield from self._csv(text)
        else:
            yield from self._txt(text)

    def _read_bytes(self) -> bytes:
        opener = gzip.open if self.path.suffix.lower() == ".gz" else open
        try:
            with opener(self.path, "rb") as f:
                if self.byte_range is None:
                    return f.read()
                f.seek(self.byte_range[0])
                return f.read(self.byte_range[1] - self.byte_range[0])
        except (OSError, EOFError) as e:
            raise MedptError(f"{self.path}: cannot read: {e}") from None

    def _decode(self) -> str:
        data = self._read_bytes()
        # utf-8-sig strips a UTF-8 byte-order mark (common in files saved by Windows editors); it can only be at
        # the very start of the file.
        at_start = self.byte_range is None or self.byte_range[0] == 0
        encoding = "utf-8-sig" if _norm(self.encoding) in ("utf-8", "utf8") and at_start else self.encoding
        try:
            return data.decode(encoding)
        except UnicodeDecodeError as e:
            line = self.first_line + data.count(b"\n", 0, e.start)
            offset = e.start + (self.byte_range[0] if self.byte_range else 0)
            raise MedptError(
                f"{self.path}:{line}: not valid {self.encoding} (byte 0x{data[e.start]:02x} at offset {offset}); "
                "if the file uses another encoding, pass it with --encoding (e.g. --encoding gb18030)"
            ) from None
        except LookupError:
            raise MedptError(f"--encoding {self.encoding}: unknown encoding") from None

    def _jsonl(self, text: str) -> Iterator[Record | BadRecordError]:
        for number, line in enumerate(text.split("\n"), start=self.first_line):
            if not line.strip():
                continue  # blank lines (a trailing newline, CRLF leftovers) are not records
            size = record_too_large([line], self.limit)
            if size is not None:  # before parsing it: the parser would take a few times its size in memory
                yield _too_large(self.name, number, size, self.limit, line)
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                # Yielded, not raised: one bad line must not end the file for --on_bad_record skip.
                yield BadRecordError(self.name, number, None, f"invalid JSON: {e.msg} (column {e.colno})", raw=line)
                continue
            except RecursionError:  # the parser recurses once per level: thousands of levels exhaust Python's stack
                yield BadRecordError(self.name, number, None, _TOO_DEEP, raw=line)
                continue
            if line.count("[") + line.count("{") > MAX_JSON_DEPTH and _deeper_than(value, MAX_JSON_DEPTH):
                # The raw text, not the value, goes to rejected.jsonl: json.dumps of the value could overflow too.
                yield BadRecordError(self.name, number, None, _TOO_DEEP, raw=line)
                continue
            yield Record(self.name, number, value)

    def _json(self, text: str) -> Iterator[Record | BadRecordError]:
        """A JSON array of records, or JSON objects one after another (JSON lines saved as .json)."""
        decoder = json.JSONDecoder()
        pos, line, counted, n = 0, 1, 0, len(text)

        def skip_ws(p: int) -> int:
            while p < n and text[p] in " \t\r\n":
                p += 1
            return p

        def decode_at(p: int) -> tuple[Any, int]:
            try:
                return decoder.raw_decode(text, p)
            except json.JSONDecodeError as e:
                raise BadRecordError(self.name, e.lineno, None, f"invalid JSON: {e.msg} (column {e.colno})") from None
            except RecursionError:
                # Fatal, unlike in .jsonl: the parser gave up inside the record, so where the next one starts is
                # unknown.
                reason = f"{_TOO_DEEP} (in a .json file it cannot be skipped: where the next record starts is unknown)"
                raise BadRecordError(self.name, line, None, reason) from None

        pos = skip_ws(pos)
        in_array = pos < n and text[pos] == "["
        if in_array:
            pos = skip_ws(pos + 1)
            if pos < n and text[pos] == "]":
                return
        while pos < n:
            line += text.count("\n", counted, pos)  # count incrementally: a big array stays linear
            counted = pos
            value, end = decode_at(pos)
            brackets = text.count("[", pos, end) + text.count("{", pos, end)
            size = record_too_large([text[pos:end]], self.limit) if end - pos > self.limit // 4 else None
            if size is not None:
                yield _too_large(self.name, line, size, self.limit, text[pos : pos + 200])
            elif brackets > MAX_JSON_DEPTH and _deeper_than(value, MAX_JSON_DEPTH):
                # Skippable: the parser read it, so the next record's position is known.
                yield BadRecordError(self.name, line, None, _TOO_DEEP, raw=text[pos:end])
            else:
                yield Record(self.name, line, value)
            pos = skip_ws(end)
            if in_array:
                if pos < n and text[pos] == ",":
                    pos = skip_ws(pos + 1)
                elif pos < n and text[pos] == "]":
                    if skip_ws(pos + 1) < n:
                        raise BadRecordError(self.name, text.count("\n", 0, pos) + 1, None, "text after the JSON array")
                    return
                else:
                    bad_line = text.count("\n", 0, pos) + 1
                    raise BadRecordError(self.name, bad_line, None, "invalid JSON: expected ',' or ']' in the array")
        if in_array:
            raise BadRecordError(self.name, line, None, "invalid JSON: the array is not closed with ']'")

    def _csv(self, text: str) -> Iterator[Record | BadRecordError]:
        """Rows as dicts keyed by the header, exactly as csv.DictReader makes them (extra cells under None, missing
        ones None), read with csv.reader so the last row and where it starts are at hand for the quote check."""
        # Process-wide (the csv module has no per-reader limit); no other medpt code reads CSV.
        csv.field_size_limit(CSV_FIELD_LIMIT)
        buffer = io.StringIO(text, newline="")
        reader = csv.reader(buffer)
        header: list[str] | None = None
        start = 1  # line where the next row starts
        last: list[str] = []
        last_offset = 0
        while True:
            offset = buffer.tell()  # the csv reader takes one line at a time, so this is where the next row starts
            try:
                fields = next(reader, None)
            except csv.Error as e:
                raise self._csv_error(e, start) from None
            if fields is None:
                break
            last, last_offset = fields, offset
            if header is None:
                header = fields
            elif fields:  # a blank line is [], skipped as DictReader does
                row: dict[Any, Any] = dict(zip(header, fields))
                if len(header) < len(fields):
                    row[None] = fields[len(header) :]
                else:
                    row.update((key, None) for key in header[len(fields) :])
                size = record_too_large(fields, self.limit)
                if size is not None:
                    yield _too_large(self.name, start, size, self.limit, ",".join(fields)[:200])
                elif any(v not in (None, "") for v in row.values()):
                    yield Record(self.name, start, row)
            start = reader.line_num + 1
        if last:
            self._check_quotes_closed(text, last_offset, last, header if last is not header else None)

    def _csv_error(self, e: csv.Error, start: int) -> BadRecordError:
        if "field larger than field limit" in str(e):
            return BadRecordError(
                self.name,
                start,
                None,
                f"the row starting here has a cell longer than {CSV_FIELD_LIMIT:,} characters (the most medpt reads "
                "from one CSV cell); split the text over several rows or convert the file to .jsonl. "
                "If no cell should be that long, look for an unclosed quote at or after this line",
            )
        return BadRecordError(self.name, start, None, f"not readable as CSV: {e}")

    def _check_quotes_closed(self, text: str, offset: int, last: list[str], header: list[str] | None) -> None:
        """An unclosed quoted field makes the csv module read the rest of the file into one cell, silently.

        Test: read the last row again with a line end and a character appended. Only inside a quoted field is a line
        end part of a cell, so the row comes out different exactly when the file ended inside quotes. Only the last
        row is read again, so a normal file pays nothing noticeable."""
        try:
            closed = next(csv.reader(io.StringIO(text[offset:] + "\nX", newline=""))) == last
        except csv.Error:  # the two extra characters took the cell past the size limit: it did not end
            closed = False
        if closed:
            return
        # The open cell is the row's last, and after its opening quote the file holds exactly the cell with each "
        # written "" (in quotes that is the only escape, and a quote followed by anything else would have closed it).
        tail = len(last[-1]) + last[-1].count('"')
        pos = len(text) - tail - 1
        line = _line_at(text, pos) if pos >= offset and text[pos] == '"' else _line_at(text, offset)
        column = len(last) - 1
        field = header[column] if header is not None and column < len(header) else None
        raise BadRecordError(
            self.name,
            line,
            field,
            f"a quoted CSV field opens here and is never closed, so lines {line}-{_line_at(text, len(text) - 1)} "
            'would be read as one cell; add the closing quote (a quote inside a quoted field is written "")',
        )

    def _txt(self, text: str) -> Iterator[Record | BadRecordError]:
        text = text.replace("\r\n", "\n")
        if self.txt_split == "file":
            if text.strip():
                yield self._document(1, text.strip("\n"))
            return
        lines = text.split("\n")
        if self.txt_split == "line":
            for number, line in enumerate(lines, start=1):
                if line.strip():
                    yield self._document(number, line)
            return
        paragraph: list[str] = []
        first = 0
        for number, line in enumerate(lines + [""], start=1):
            if line.strip():
                if not paragraph:
                    first = number
                paragraph.append(line)
            elif paragraph:
                yield self._document(first, "\n".join(paragraph))
                paragraph = []

    def _document(self, line: int, text: str) -> Record | BadRecordError:
        size = record_too_large([text], self.limit)
        return Record(self.name, line, {"text": text}) if size is None else _too_large(self.name, line, size,
                                                                                      self.limit, text)  # fmt: skip

    def _parquet(self) -> Iterator[Record | BadRecordError]:
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(self.path)
        except Exception as e:  # pyarrow raises several types for a corrupt or non-parquet file
            raise MedptError(f"{self.path}: not a readable parquet file: {e}") from None
        row = 0
        for batch in parquet.iter_batches(batch_size=8192):
            for value in batch.to_pylist():
                row += 1
                yield checked_row(Record(self.name, row, value, unit="row"), self.limit)


def checked_row(record: Record, limit: int) -> Record | BadRecordError:
    """A parquet or hub row, or the error saying it is over the record size limit."""
    size = record_too_large(strings_in(record.value), limit)
    if size is None:
        return record
    head = " ".join(text[:50] for _, text in zip(range(4), strings_in(record.value)))
    return _too_large(record.source, record.line, size, limit, head, unit="row")


class HubSource:
    """One split of a dataset loaded with `datasets.load_dataset` (a hub id or a local dataset folder).

    The hub is reached through huggingface_hub, which honours HF_ENDPOINT (mirrors), HF_HOME and HF_HUB_OFFLINE.
    """

    def __init__(self, dataset: Any, dataset_name: str, split: str, rows: tuple[int, int] | None = None,
                 limit: int = int(MAX_RECORD_MB * 2**20)):  # fmt: skip
        self.dataset, self.split, self.rows, self.limit = dataset, split, rows, limit
        self.name = f"{dataset_name}[{split}]"
        self.suffix = ".hub"
        self.byte_range = None
        self.nbytes = 0

    def fingerprint(self) -> str:
        # datasets derives _fingerprint from the downloaded files' hashes; it is the stable identity it uses itself.
        return f"{self.name}:{self.dataset._fingerprint}"

    def batches(self, target_bytes: int) -> list[HubSource]:
        """Row ranges of about target_bytes each (from the Arrow table's size), for sharded preparation."""
        n = len(self.dataset)
        size = max(int(getattr(self.dataset.data, "nbytes", 0)), 1)
        per = max(1, int(n * target_bytes / size))
        pieces = []
        for start in range(0, max(n, 1), per):
            piece = HubSource(self.dataset, self.name.rsplit("[", 1)[0], self.split, (start, min(n, start + per)),
                              self.limit)  # fmt: skip
            piece.nbytes = int(size * (piece.rows[1] - start) / max(n, 1))
            pieces.append(piece)
        return pieces

    def records(self) -> Iterator[Record]:
        first, last = self.rows or (0, len(self.dataset))
        rows = self.dataset.select(range(first, last)) if self.rows else self.dataset
        for row, value in enumerate(rows, start=first + 1):
            yield checked_row(Record(self.name, row, value, unit="row"), self.limit)


_VALIDATION_SPLITS = ("validation", "valid", "dev", "eval")


class HubStream:
    """One split of a dataset read with `datasets.load_dataset(..., streaming=True)`: rows arrive as they are read,
    so a dataset larger than the disk is prepared batch by batch (--streaming). Its identity for the cache is the
    dataset's name, configuration and, when the hub can say, its commit."""

    def __init__(self, dataset: Any, dataset_name: str, split: str, revision: str,
                 limit: int = int(MAX_RECORD_MB * 2**20)):  # fmt: skip
        self.dataset, self.split, self.revision, self.limit = dataset, split, revision, limit
        self.name = f"{dataset_name}[{split}]"
        self.suffix = ".hub-stream"

    def fingerprint(self) -> str:
        return f"{self.name}:stream:{self.revision}"

    def batches(self, rows: int, skip: int = 0) -> Iterator[StreamBatch]:
        """Consecutive batches of `rows` rows, from batch `skip` on (a resumed run skips what it has)."""
        stream = self.dataset.skip(skip * rows) if skip else self.dataset
        batch: list[Any] = []
        first = skip * rows
        for value in stream:
            batch.append(value)
            if len(batch) == rows:
                yield StreamBatch(self.name, first, batch, self.limit)
                first, batch = first + rows, []
        if batch:
            yield StreamBatch(self.name, first, batch, self.limit)


class StreamBatch:
    """Rows already read from a stream (plain data: it travels to a worker to be rendered)."""

    def __init__(self, name: str, first: int, rows: list[Any], limit: int = int(MAX_RECORD_MB * 2**20)):
        self.name, self.first, self.rows, self.limit = name, first, rows, limit
        self.byte_range = None
        self.nbytes = 0

    def records(self) -> Iterator[Record]:
        for row, value in enumerate(self.rows, start=self.first + 1):
            yield checked_row(Record(self.name, row, value, unit="row"), self.limit)


def load_hub_splits(
    name: str, config: str | None, cache_dir: str | None, streaming: bool = False, max_record_mb: float = MAX_RECORD_MB
) -> tuple[HubSource | HubStream, HubSource | HubStream | None]:
    """The train split and, when the dataset has one, its validation split."""
    limit = int(max_record_mb * 2**20)
    import datasets

    try:
        dsd = datasets.load_dataset(name, config, cache_dir=cache_dir, streaming=streaming)
    except FileNotFoundError as e:
        raise MedptError(
            f"--dataset_name {name}: not found ({e}); check the id, HF_ENDPOINT and HF_HUB_OFFLINE"
        ) from None
    except ConnectionError as e:
        raise MedptError(
            f"--dataset_name {name}: cannot reach the hub ({e}). Behind a filtered network, set HF_ENDPOINT to a "
            "mirror; offline, pass a local folder or files with --train_file_dir"
        ) from None
    if "train" not in dsd:
        raise MedptError(f"--dataset_name {name}: no 'train' split (splits: {', '.join(dsd)})")
    if streaming:
        revision = _stream_revision(name, config)
        validation = next((HubStream(dsd[s], name, s, revision, limit) for s in _VALIDATION_SPLITS if s in dsd), None)
        return HubStream(dsd["train"], name, "train", revision, limit), validation
    validation = next((HubSource(dsd[s], name, s, None, limit) for s in _VALIDATION_SPLITS if s in dsd), None)
    return HubSource(dsd["train"], name, "train", None, limit), validation


def _stream_revision(name: str, config: str | None) -> str:
    """What identifies a streamed dataset's content without reading it: a local folder's files (names, sizes, times),
    else the hub commit (asked once; offline, the name alone)."""
    folder = Path(name)
    if folder.is_dir():
        stats = sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
                       for p in folder.rglob("*") if p.is_file())  # fmt: skip
        return hashlib.sha256(dumps([config, stats]).encode()).hexdigest()[:16]
    try:
        from huggingface_hub import HfApi

        return f"{config}:{HfApi().dataset_info(name).sha}"
    except Exception:  # offline, or a mirror without the API: the name is all there is
        return f"{config}:unknown-revision"
