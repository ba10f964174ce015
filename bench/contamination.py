"""Contamination of the real benchmarks by the real training corpus: how many questions of every multiple-choice set
in ../shared/data share an n-gram with a training document of ../shared/data/medical_qa_zh_mix (train-*.jsonl).

    python bench/contamination.py [--ngram 13] [--sensitivity 8 20 30] [--corpus_270k]

Prints, per benchmark, the items checked, those too short to check (no part of n units) and those contaminated, at
the default n and at the other lengths; lists every contaminated item (benchmark, file:line, question, the training
document's file:line and the shared n-gram), also written to bench/results/contamination/contamination.jsonl.
`--corpus_270k` also times the scan of the 270k-record corpus of bench/data_pipeline.py against the same items.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from measure import machine  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def training_documents() -> tuple[list[str], list[str]]:
    """The rendered training documents (as `medpt prepare` renders them) and each one's file:line."""
    from medpt.data.pipeline import read_texts

    texts, where = [], []
    for path in sorted((SHARED / "medical_qa_zh_mix").glob("train-*.jsonl")):
        docs = read_texts([str(path)])
        lines = sum(1 for _ in open(path, encoding="utf-8"))
        assert len(docs) == lines, f"{path}: {len(docs)} documents for {lines} lines"  # one document per line
        texts += docs
        where += [f"{path.name}:{i}" for i in range(1, lines + 1)]
    return texts, where


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ngram", type=int, default=13)
    parser.add_argument("--sensitivity", type=int, nargs="*", default=[8, 20, 30])
    parser.add_argument("--corpus_270k", action="store_true")
    parser.add_argument("--work_dir", default="bench/results/contamination")
    args = parser.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"skipped: {SHARED} is not available")
    from medpt.data.contamination import ContaminationIndex, read_benchmark_items

    t = time.perf_counter()
    items = read_benchmark_items([str(SHARED)])
    texts, where = training_documents()
    read_s = time.perf_counter() - t
    results, seconds = {}, {}
    for n in [args.ngram, *args.sensitivity]:
        t = time.perf_counter()
        index = ContaminationIndex(items, n)
        built = time.perf_counter()
        results[n] = index.scan(texts)
        seconds[n] = (built - t, time.perf_counter() - built)
    main_result = results[args.ngram]
    print(f"\n{len(items):,} benchmark items vs {len(texts):,} training documents of medical_qa_zh_mix "
          f"({sum(map(len, texts)):,} characters); read in {read_s:.1f} s; {machine()}\n")  # fmt: skip
    head = " | ".join(f"n={n}" for n in args.sensitivity)
    print(f"| benchmark | items | too short (n={args.ngram}) | contaminated (n={args.ngram}) | {head} |")
    print("| --- | ---: | ---: | ---: |" + " ---: |" * len(args.sensitivity))
    for name, row in main_result.summary().items():
        others = " | ".join(str(results[n].summary()[name]["contaminated"]) for n in args.sensitivity)
        print(f"| {name} | {row['items']:,} | {row['too_short']:,} | {row['contaminated']:,} | {others} |")
    print("\nseconds (index, scan): " + ", ".join(f"n={n}: {a:.2f}, {b:.2f}" for n, (a, b) in seconds.items()))
    out = Path(args.work_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "contamination.jsonl", "w", encoding="utf-8") as f:
        for hit in main_result.hits:
            row = {"benchmark": hit.item.benchmark, "item": hit.item.where.replace(str(SHARED) + "/", ""),
                   "question": hit.item.text, "document": where[hit.document], "documents": hit.documents,
                   "ngram": hit.ngram}  # fmt: skip
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            print(f"  {row['item']}  {row['question'][:40]}  ← {row['document']} ({hit.documents} doc.)  «{hit.ngram}»")
    print(f"\n{len(main_result.documents)} training documents share a {args.ngram}-gram with some item "
          f"(what --decontaminate would drop); list: {out / 'contamination.jsonl'}")  # fmt: skip
    if args.corpus_270k:
        time_270k(items, args.ngram)


def time_270k(items: list, n: int) -> None:
    from data_pipeline import bench_corpus

    from medpt.data.contamination import ContaminationIndex
    from medpt.data.pipeline import read_texts

    corpus = bench_corpus(Path("bench/results/data_pipeline"), 270_000)
    texts = read_texts([str(corpus)])
    t = time.perf_counter()
    index = ContaminationIndex(items, n)
    built = time.perf_counter()
    result = index.scan(texts)
    done = time.perf_counter()
    print(
        f"\n270k corpus ({len(texts):,} documents, {sum(map(len, texts)):,} characters) × {len(items):,} items, "
        f"n={n}: index {built - t:.1f} s, scan {done - built:.1f} s, {len(result.documents):,} documents flagged"
    )


if __name__ == "__main__":
    main()
