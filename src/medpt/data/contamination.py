"""Benchmark contamination: which test questions appear in the training documents.

An item (a benchmark question, with its options) is contaminated when one of its n-grams (13 by default: the length
GPT-3 and lm-evaluation-harness use) occurs in a training document. The unit of the n-gram is a CJK character or a
word (a run of other letters and digits), so 13 units are 13 characters of Chinese and 13 words of English, as in
GPT-3; 13 *characters* of English would be two or three words, and would flag any text that uses the same
phrase ("the patient's condition"). Pure and model-agnostic: it takes texts and returns indices, so `prepare` can
drop the documents (`--decontaminate`) and `eval` can warn beside a benchmark.

Normalisation (the same on both sides): every run of characters that are not letters or digits (`str.isalnum`; CJK
characters are letters) becomes one space, which only separates words; then NFKC (full-width letters and digits
become ASCII; skipped when the text is already NFKC, which after dropping the full-width punctuation most Chinese text
is: 5x faster) and lower case. So `高血压，１４０／９０` and `高血压 140/90` match: a re-punctuated copy is caught, a
reworded one is not. A unit is a character at or above U+2E80 (CJK, kana, Hangul) or a word of the characters below it.

Which n-grams: each part of an item separately (the question, each option), never across the joints, since a
training document that reproduces a question need not lay its options out the same way. An item whose every part is
shorter than n units cannot be checked and is counted as `too_short`.

How (fast enough for 270k documents × 25k items, memory bounded by the chunk of documents read at once), in numpy:
1. the units of a whole chunk of normalised text: a CJK character is its code point; a word is a 64-bit polynomial
   hash of its code points (np.add.reduceat over the words) with the top bit set, so it never equals a character;
2. every window of n units gets a 64-bit polynomial hash (n vector operations, wrapping mod 2^64);
3. windows whose hash is among the items' (a sorted array: `searchsorted`) are candidates, each confirmed by
   comparing its n units with the item's, so a collision of window hashes never reports a false match.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medpt.errors import BadRecordError, MedptError

DEFAULT_NGRAM = 13
_SEPARATORS = re.compile(r"[\W_]+")
_CHARACTER_UNITS = 0x2E80  # code points from here on (CJK radicals, kana, ideographs, Hangul) are units on their own
_BASE = np.uint64(0x100000001B3)  # an odd multiplier (FNV's prime), invertible mod 2^64
_WORD_BIT = np.uint64(1 << 63)
_SIEVE_SHIFT = np.uint64(64 - 24)  # the sieve holds the top 24 bits of the item windows' hashes (16 MB)
_CHUNK_CHARS = 8_000_000  # normalised characters processed at once: a few hundred MB of temporaries


def normalize(text: str) -> str:
    """Runs of non-alphanumerics become one space, then NFKC and lower case (see the module docstring)."""
    text = _SEPARATORS.sub(" ", text)
    if not unicodedata.is_normalized("NFKC", text):
        text = _SEPARATORS.sub(" ", unicodedata.normalize("NFKC", text))  # NFKC may make new separators (½ → 1⁄2)
    return text.lower().strip()


@dataclass(frozen=True)
class Item:
    """One benchmark item: `parts` are checked (question first), `where` is its file:line."""

    benchmark: str
    where: str
    parts: tuple[str, ...]

    @property
    def text(self) -> str:
        return self.parts[0]


@dataclass
class Hit:
    """A contaminated item: the first training document (in input order) sharing an n-gram with it, that n-gram
    (normalised), and how many training documents share one."""

    item: Item
    document: int
    ngram: str
    documents: int = 1


@dataclass
class Contamination:
    hits: list[Hit]
    documents: np.ndarray  # sorted indices of every training document sharing an n-gram with some item
    items: dict[str, int]  # benchmark -> items checked
    too_short: dict[str, int]  # benchmark -> items with no part of n units
    ngram: int = DEFAULT_NGRAM
    by_benchmark: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.by_benchmark = {name: 0 for name in self.items}
        for hit in self.hits:
            self.by_benchmark[hit.item.benchmark] += 1

    def summary(self) -> dict[str, dict[str, int]]:
        return {
            name: {"items": n, "contaminated": self.by_benchmark[name], "too_short": self.too_short[name]}
            for name, n in self.items.items()
        }


@dataclass
class Units:
    """The units of some normalised texts joined by spaces: their ids, where each starts and ends in `joined`, and
    the text each belongs to."""

    joined: str
    ids: np.ndarray  # uint64
    start: np.ndarray
    end: np.ndarray
    owner: np.ndarray

    @classmethod
    def of(cls, texts: list[str]) -> Units:
        joined = " ".join(texts)  # the space keeps the last word of one text from running into the next
        codes = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        if not len(codes):
            empty = np.zeros(0, dtype=np.int64)
            return cls(joined, np.zeros(0, dtype=np.uint64), empty, empty, empty)
        owner = np.repeat(np.arange(len(texts)), [len(t) + 1 for t in texts])[: len(codes)]
        character = codes >= _CHARACTER_UNITS
        wordy = ~character & (codes != 32)
        first = wordy & ~np.concatenate([[False], wordy[:-1]])
        last = wordy & ~np.concatenate([wordy[1:], [False]])
        starts = np.flatnonzero(character | first)
        ends = starts + 1
        ends[first[starts]] = np.flatnonzero(last) + 1
        ids = codes[starts]
        ids[first[starts]] = _word_hashes(codes, wordy, first) | _WORD_BIT
        return cls(joined, ids, starts, ends, owner[starts])

    def windows(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The hash of every window of n units that lies inside one text, and the index of its first unit."""
        hashes = window_hashes(self.ids, n)
        first = np.flatnonzero(self.owner[: len(hashes)] == self.owner[n - 1 :])
        return hashes[first], first

    def text(self, first: int, n: int) -> str:
        return self.joined[self.start[first] : self.end[first + n - 1]]


def _word_hashes(codes: np.ndarray, wordy: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Σ code · B^(offset in the word) over each word, mod 2^64 (non-word positions add 0)."""
    index = np.arange(len(codes))
    offset = np.where(wordy, index - np.maximum.accumulate(np.where(first, index, 0)), 0)
    powers = np.ones(int(offset.max(initial=0)) + 1, dtype=np.uint64)  # B^0, B^1, ... (wrapping)
    powers[1:] = np.cumprod(np.full(len(powers) - 1, _BASE, dtype=np.uint64))
    terms = np.where(wordy, codes * powers[offset], np.uint64(0))
    return np.add.reduceat(terms, np.flatnonzero(first)) if first.any() else np.zeros(0, dtype=np.uint64)


def window_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """The hash of every window of n consecutive ids: h = Σ id[i+k] · B^(n-1-k) mod 2^64."""
    count = len(ids) - n + 1
    if count <= 0:
        return np.zeros(0, dtype=np.uint64)
    h = np.zeros(count, dtype=np.uint64)
    for k in range(n):
        h = h * _BASE + ids[k : k + count]  # uint64 arithmetic wraps: the intended mod 2^64
    return h


class ContaminationIndex:
    """The n-grams of benchmark items, to scan training documents against."""

    def __init__(self, items: list[Item], n: int = DEFAULT_NGRAM):
        self.items, self.n = items, n
        self.part_item = np.array([i for i, item in enumerate(items) for _ in item.parts], dtype=np.int64)
        self.units = Units.of([normalize(p) for item in items for p in item.parts])
        hashes, first = self.units.windows(n)
        order = np.argsort(hashes, kind="stable")
        self.keys, self.first = hashes[order], first[order]  # sorted window hashes, and where each window starts
        self.sieve = np.zeros(1 << 24, dtype=bool)
        self.sieve[self.keys >> _SIEVE_SHIFT] = True
        self.checkable = np.zeros(len(items), dtype=bool)
        self.checkable[self.part_item[self.units.owner[first]]] = True

    def owners(self, h: np.uint64, window: np.ndarray) -> Iterator[int]:
        """The items holding this window of units (confirmed unit by unit)."""
        lo, hi = np.searchsorted(self.keys, h, "left"), np.searchsorted(self.keys, h, "right")
        for w in self.first[lo:hi]:
            if np.array_equal(self.units.ids[w : w + self.n], window):
                yield int(self.part_item[self.units.owner[w]])

    def scan(self, documents: Iterable[str]) -> Contamination:
        """Every item sharing an n-gram with a document; documents are read in chunks (memory bounded)."""
        first: dict[int, Hit] = {}
        doc_count: dict[int, int] = {}
        flagged: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]
        offset = 0
        for chunk in _chunks(documents):
            units = Units.of([normalize(t) for t in chunk])
            hashes, starts = units.windows(self.n)
            pairs: set[tuple[int, int]] = set()
            found = _members(hashes, self.keys, self.sieve)
            for h, w in zip(hashes[found], starts[found]):
                doc = offset + int(units.owner[w])
                for item in self.owners(h, units.ids[w : w + self.n]):
                    first.setdefault(item, Hit(self.items[item], doc, units.text(w, self.n)))
                    pairs.add((item, doc))
            for item, _ in pairs:
                doc_count[item] = doc_count.get(item, 0) + 1
            flagged.append(np.array(sorted({doc for _, doc in pairs}), dtype=np.int64))
            offset += len(chunk)
        for item, hit in first.items():
            hit.documents = doc_count[item]
        return self._result([first[i] for i in sorted(first)], np.unique(np.concatenate(flagged)))

    def _result(self, hits: list[Hit], documents: np.ndarray) -> Contamination:
        items: dict[str, int] = {}
        too_short: dict[str, int] = {}
        for item, ok in zip(self.items, self.checkable):
            items[item.benchmark] = items.get(item.benchmark, 0) + 1
            too_short[item.benchmark] = too_short.get(item.benchmark, 0) + int(not ok)
        return Contamination(hits, documents, items, too_short, self.n)


def _members(values: np.ndarray, sorted_keys: np.ndarray, sieve: np.ndarray) -> np.ndarray:
    """Boolean mask: which values are in sorted_keys. The sieve (a table of the keys' top bits) rules out most
    values with one lookup each, and only the rest are binary-searched: 5x faster than searching every value."""
    mask = sieve[values >> _SIEVE_SHIFT]
    candidates = np.flatnonzero(mask)
    if len(candidates):
        at = np.searchsorted(sorted_keys, values[candidates]).clip(max=len(sorted_keys) - 1)
        mask[candidates] = sorted_keys[at] == values[candidates]
    return mask


def _chunks(documents: Iterable[str]) -> Iterator[list[str]]:
    chunk: list[str] = []
    size = 0
    for text in documents:
        chunk.append(text)
        size += len(text)
        if size >= _CHUNK_CHARS:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


# --- benchmark items from files ---------------------------------------------------------------------------------
def items_from_questions(benchmark: str, questions: list[Any]) -> list[Item]:
    """Items of multiple-choice questions (medpt.eval.mcq.Question): the question, then each option."""
    return [Item(benchmark, q.where, (q.question, *q.choices.values())) for q in questions]


def read_benchmark_items(paths: list[str], flag: str = "check_contamination") -> list[Item]:
    """The items of each FILE or DIR: a file is one benchmark (named as medpt.eval.mcq.benchmark_name says); a folder
    holding test.jsonl is one benchmark (its test.jsonl), and any other folder is searched like `--mcq_dir`.
    Multiple-choice files give question + options; other record shapes (an eval set of ShareGPT, text, ...) give
    each record's first question (or its text), whose answers would match on stock phrases."""
    from medpt.eval.mcq import Benchmark, benchmark_folder, benchmark_name, find_benchmarks

    items: list[Item] = []
    for path in paths:
        folder = Path(path)
        if folder.is_dir():
            one = benchmark_folder(folder)
            benchmarks = [one] if one is not None else find_benchmarks(path, flag)
        else:
            benchmarks = [Benchmark(benchmark_name(path), (path,))]
        for b in benchmarks:
            items += file_items(b.name, list(b.files), flag)
    return items


def file_items(name: str, files: list[str], flag: str) -> list[Item]:
    from medpt.data.formats import detect_format, to_document
    from medpt.data.paths import resolve_files
    from medpt.data.records import FileSource
    from medpt.eval.mcq import read_questions

    items: list[Item] = []
    for path in resolve_files(files, flag):
        records = list(FileSource(path).records())
        bad = next((r for r in records if isinstance(r, BadRecordError)), None)
        if bad is not None:
            raise MedptError(str(bad))
        if records and isinstance(records[0].value, dict) and {"question", "choices"} <= set(records[0].value):
            items += items_from_questions(name, read_questions([str(path)], flag))
            continue
        for record in records:
            doc = to_document(record, detect_format(record))
            items.append(Item(name, f"{record.source}:{record.line}", (doc.split_key,)))
    return items
