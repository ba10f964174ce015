"""Where records come from: local files (found by path, folder or glob) and hub datasets.

Every record keeps its location (file and line, or dataset and row) so that any later error can name it.
Each source also has a content fingerprint, used as part of the cache key: the same bytes give the same key
whatever the file is called or when it was touched.
"""

from __future__ import annotations

import csv
import glob
import gzip
import hashlib
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medpt.errors import BadRecordError, MedptError

SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".txt")
_SPLIT_PREFIXES = ("train", "valid", "validation", "dev", "test", "eval")
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


def data_suffix(path: Path) -> str:
    """The data extension of a file, looking through a trailing .gz (`a.jsonl.gz` -> `.jsonl`)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def resolve_files(patterns: list[str], flag: str) -> list[Path]:
    """Expand files, folders (recursively) and globs into a sorted, de-duplicated list of data files."""
    found: list[Path] = []
    for pattern in patterns:
        if any(ch in pattern for ch in "*?["):
            matches = [Path(p) for p in sorted(glob.glob(pattern, recursive=True)) if Path(p).is_file()]
            matches = [p for p in matches if data_suffix(p) in SUFFIXES]
            if not matches:
                raise MedptError(f"--{flag} {pattern}: the pattern matches no {'/'.join(SUFFIXES)} file")
        elif os.path.isdir(pattern):
            matches = sorted(
                p
                for p in Path(pattern).rglob("*")
                if p.is_file() and data_suffix(p) in SUFFIXES and not any(part.startswith(".") for part in p.parts)
            )
            if not matches:
                raise MedptError(f"--{flag} {pattern}: the folder holds no {'/'.join(SUFFIXES)} file")
            _warn_mixed_splits(pattern, matches, flag)
        elif os.path.isfile(pattern):
            if data_suffix(Path(pattern)) not in SUFFIXES:
                raise MedptError(
                    f"--{flag} {pattern}: unsupported file type; use {', '.join(SUFFIXES)} (optionally .gz)"
                )
            matches = [Path(pattern)]
        else:
            raise MedptError(f"--{flag} {pattern}: no such file or folder")
        found.extend(m for m in matches if m not in found)
    return found


def _warn_mixed_splits(folder: str, files: list[Path], flag: str) -> None:
    """A folder laid out as train/valid/test files is read whole; say so, since test data in training is a leak."""
    kinds = {p.name.lower().split("-")[0].split(".")[0] for p in files} & set(_SPLIT_PREFIXES)
    if len(kinds) > 1:
        print(
            f"medpt: warning: --{flag} {folder} holds files of several splits ({', '.join(sorted(kinds))}); all of "
            f"them are read. To read one split, pass a glob such as '{folder}/train*.jsonl'."
        )


class FileSource:
    """One local file. Records are produced lazily; the fingerprint hashes the raw bytes."""

    def __init__(self, path: Path, encoding: str = "utf-8", txt_split: str = "paragraph"):
        self.path, self.encoding, self.txt_split = path, encoding, txt_split
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
        with open(self.path, "rb") as f:
            data = f.read()
        pieces, start, line = [], 0, 1
        while start < size:
            end = data.find(b"\n", min(start + target_bytes, size - 1))
            end = size if end < 0 else end + 1
            piece = FileSource(self.path, self.encoding, self.txt_split)
            piece.byte_range, piece.first_line = (start, end), line
            pieces.append(piece)
            line += data.count(b"\n", start, end)
            start = end
        return pieces

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
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                # Yielded, not raised: one bad line must not end the file for --on_bad_record skip.
                yield BadRecordError(self.name, number, None, f"invalid JSON: {e.msg} (column {e.colno})", raw=line)
                continue
            yield Record(self.name, number, value)

    def _json(self, text: str) -> Iterator[Record]:
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

    def _csv(self, text: str) -> Iterator[Record]:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        start = 2  # line 1 is the header
        for row in reader:
            if any(v not in (None, "") for v in row.values()):
                yield Record(self.name, start, dict(row))
            start = reader.line_num + 1

    def _txt(self, text: str) -> Iterator[Record]:
        text = text.replace("\r\n", "\n")
        if self.txt_split == "file":
            if text.strip():
                yield Record(self.name, 1, {"text": text.strip("\n")})
            return
        lines = text.split("\n")
        if self.txt_split == "line":
            for number, line in enumerate(lines, start=1):
                if line.strip():
                    yield Record(self.name, number, {"text": line})
            return
        paragraph: list[str] = []
        first = 0
        for number, line in enumerate(lines + [""], start=1):
            if line.strip():
                if not paragraph:
                    first = number
                paragraph.append(line)
            elif paragraph:
                yield Record(self.name, first, {"text": "\n".join(paragraph)})
                paragraph = []

    def _parquet(self) -> Iterator[Record]:
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(self.path)
        except Exception as e:  # pyarrow raises several types for a corrupt or non-parquet file
            raise MedptError(f"{self.path}: not a readable parquet file: {e}") from None
        row = 0
        for batch in parquet.iter_batches(batch_size=8192):
            for value in batch.to_pylist():
                row += 1
                yield Record(self.name, row, value, unit="row")


class HubSource:
    """One split of a dataset loaded with `datasets.load_dataset` (a hub id or a local dataset folder).

    The hub is reached through huggingface_hub, which honours HF_ENDPOINT (mirrors), HF_HOME and HF_HUB_OFFLINE.
    """

    def __init__(self, dataset: Any, dataset_name: str, split: str):
        self.dataset, self.split = dataset, split
        self.name = f"{dataset_name}[{split}]"
        self.suffix = ".hub"

    def fingerprint(self) -> str:
        # datasets derives _fingerprint from the downloaded files' hashes; it is the stable identity it uses itself.
        return f"{self.name}:{self.dataset._fingerprint}"

    def records(self) -> Iterator[Record]:
        for row, value in enumerate(self.dataset, start=1):
            yield Record(self.name, row, value, unit="row")


_VALIDATION_SPLITS = ("validation", "valid", "dev", "eval")


def load_hub_splits(name: str, config: str | None, cache_dir: str | None) -> tuple[HubSource, HubSource | None]:
    """The train split and, when the dataset has one, its validation split."""
    import datasets

    try:
        dsd = datasets.load_dataset(name, config, cache_dir=cache_dir)
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
    validation = next((HubSource(dsd[s], name, s) for s in _VALIDATION_SPLITS if s in dsd), None)
    return HubSource(dsd["train"], name, "train"), validation
