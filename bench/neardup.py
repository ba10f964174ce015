"""Near-duplicate removal on the 270k-record corpus of bench/data_pipeline.py, timed side by side with the whole
`medpt prepare` (exact dedup) of the same corpus, and against datasketch.

    python bench/neardup.py [--records 270000] [--repeats 3] [--datasketch_docs 270000] [--skip_prepare]

Each measurement is a fresh process (wall time and peak RSS of the process tree, bench/measure.py), alternating:
1. `medpt prepare` of the corpus (exact dedup; read, render, tokenize, pack; 2 workers), as bench/data_pipeline.py;
2. medpt.data.neardup on the rendered documents (numpy one-permutation MinHash, LSH, exact verification), reported
   as its own step: wired into prepare, it runs on the documents prepare has already rendered;
3. datasketch (MinHash with 128 permutations + MinHashLSH, the same threshold and verification) on the first
   --datasketch_docs documents.
Also prints near-duplicate counts on the real ../shared/data/medical_qa_zh_mix (train, valid, test). Recall: of the
planted copies whose exact Jaccard similarity to their record's first copy is at least the threshold, the share that
was dropped (what LSH found; every drop is verified, so there are no false drops). datasketch is not a dependency of
medpt: `pip install datasketch` to run step 3.

The corpus resamples medical_qa_zh_mix: the k-th copy of a record gets "（k）" appended to its first question, so it
passes exact dedup while being a near-duplicate of the first copy; near dedup should keep about one per record.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from data_pipeline import SHARED, bench_corpus  # noqa: E402
from measure import machine, run_measured  # noqa: E402

STEP = """
import json, sys, time
from medpt.data.pipeline import read_texts
t = time.perf_counter()
texts = read_texts(sys.argv[2:])[: int(sys.argv[1])]
read_s = time.perf_counter() - t
t = time.perf_counter()
if {datasketch}:
    sys.path.insert(0, "bench")
    from neardup import with_datasketch
    result = with_datasketch(texts)
else:
    from medpt.data.neardup import near_duplicates
    result = near_duplicates(texts)
dedup_s = time.perf_counter() - t
sys.path.insert(0, "bench")
from neardup import recall
print("RESULT " + json.dumps({{"read_s": read_s, "dedup_s": dedup_s, "documents": len(texts),
      "kept": len(result.kept), "dropped": len(result.dropped), "candidates": result.candidates,
      "verified": result.verified, "bands": result.bands, "example": result.dropped[:3],
      "recall": recall(texts, result.dropped)}}))
"""


def recall(texts: list[str], dropped: list[tuple[int, int]]) -> list[int]:
    """[planted copies within the threshold of their record's first copy, how many of those were dropped]: the
    corpus's k-th copy of a record differs from the first by "（k）" after its first question (see data_pipeline.py)."""
    from medpt.data.neardup import jaccard, ngrams

    gone = {d for d, _ in dropped}
    first: dict[str, int] = {}
    within = found = 0
    for i, text in enumerate(texts):
        key = re.sub(r"（\d+）\n答:", "\n答:", text, count=1)
        if key not in first:
            first[key] = i
        elif jaccard(ngrams(text, 5), ngrams(texts[first[key]], 5)) >= 0.8:
            within += 1
            found += i in gone
    return [within, found]


def with_datasketch(texts: list[str], threshold: float = 0.8, num_perm: int = 128) -> object:
    """The same clusters with datasketch's MinHash (128 permutations, sha1 of each 5-gram) and MinHashLSH."""
    from datasketch import MinHash, MinHashLSH

    from medpt.data import neardup

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    signatures = MinHash.bulk(([s.encode() for s in neardup.ngrams(t, 5)] for t in texts), num_perm=num_perm)
    for i, m in enumerate(signatures):
        lsh.insert(i, m)
    pairs = sorted({(min(i, j), max(i, j)) for i, m in enumerate(signatures) for j in lsh.query(m) if j != i})
    parent, verified = list(range(len(texts))), 0
    for i, j in pairs:
        if neardup._find(parent, i) != neardup._find(parent, j):
            verified += 1
            if neardup.jaccard(neardup.ngrams(texts[i], 5), neardup.ngrams(texts[j], 5)) >= threshold:
                neardup._union(parent, i, j)
    roots = [neardup._find(parent, i) for i in range(len(texts))]
    kept = np.array([i for i, r in enumerate(roots) if r == i])
    dropped = [(i, r) for i, r in enumerate(roots) if r != i]
    return neardup.NearDuplicates(kept, dropped, len(pairs), verified, (lsh.b, lsh.r))


def step(files: list[str], limit: int, datasketch: bool = False) -> dict:
    measured = run_measured([sys.executable, "-c", STEP.format(datasketch=datasketch), str(limit), *files])
    assert measured["returncode"] == 0, measured["output"][-3000:]
    line = next(x for x in measured["output"].splitlines() if x.startswith("RESULT "))
    return {**json.loads(line[7:]), "wall_s": measured["wall_s"], "peak_rss": measured["peak_rss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=270_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--datasketch_docs", type=int, default=270_000)
    parser.add_argument("--skip_prepare", action="store_true")
    parser.add_argument("--work_dir", default="bench/results/data_pipeline")
    args = parser.parse_args()
    work = Path(args.work_dir)
    corpus = bench_corpus(work, args.records)
    real = step([str(p) for p in sorted(SHARED.glob("*.jsonl"))], 10**9)
    print(
        f"medical_qa_zh_mix (all splits, {real['documents']:,} documents): {real['dropped']:,} near-duplicates "
        f"dropped, {real['candidates']:,} candidate pairs, {real['verified']:,} verified, first: {real['example']}"
    )
    tiny = work / "tiny-25m"
    prepare = [sys.executable, "-m", "medpt", "prepare", "--model_name_or_path", str(tiny), "--train_file_dir",
               str(corpus), "--block_size", "512", "--preprocessing_num_workers", "2", "--output_dir",
               str(work / "prepared"), "--data_cache_dir", str(work / "cache"), "--overwrite_cache"]  # fmt: skip
    if not args.skip_prepare and not (tiny / "medpt_tiny.json").is_file():
        sys.exit(f"run bench/data_pipeline.py first (it builds {tiny})")
    runs: dict[str, list[dict]] = {"prepare": [], "near": [], "datasketch": []}
    for _ in range(args.repeats):
        if not args.skip_prepare:
            measured = run_measured(prepare)
            assert measured["returncode"] == 0, measured["output"][-3000:]
            runs["prepare"].append(measured)
        runs["near"].append(step([str(corpus)], args.records))
    if args.datasketch_docs:
        runs["datasketch"].append(step([str(corpus)], args.datasketch_docs, datasketch=True))
    report(args, runs)


def report(args: argparse.Namespace, runs: dict[str, list[dict]]) -> None:
    print(f"\n{args.records:,} records (bench/data_pipeline.py corpus); {machine()}; fresh process per run\n")
    print("| run | documents | wall s (each run) | dedup step s | kept | dropped | candidates | verified | recall | "
          "peak RSS |")  # fmt: skip
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, label in (("prepare", "`medpt prepare` (exact dedup), whole"), ("near", "medpt near dedup (numpy)"),
                        ("datasketch", "datasketch MinHash + MinHashLSH")):  # fmt: skip
        rows = runs[name]
        if not rows:
            continue
        walls = " · ".join(f"{r['wall_s']:.1f}" for r in rows)
        rss = max(r["peak_rss"] for r in rows) / 2**30
        if name == "prepare":
            print(f"| {label} | {args.records:,} | {walls} | | | | | | | {rss:.2f} GB |")
            continue
        dedup = statistics.median(r["dedup_s"] for r in rows)
        r = rows[-1]
        within, found = r["recall"]
        print(f"| {label} | {r['documents']:,} | {walls} | {dedup:.1f} | {r['kept']:,} | {r['dropped']:,} | "
              f"{r['candidates']:,} | {r['verified']:,} | {found / max(within, 1):.1%} | {rss:.2f} GB |")  # fmt: skip
    if runs["prepare"]:
        ratios = [(p["wall_s"] + n["dedup_s"]) / p["wall_s"] for p, n in zip(runs["prepare"], runs["near"])]
        print(f"\nprepare + near-dedup step / prepare, run by run: {', '.join(f'{x:.2f}x' for x in ratios)} "
              f"(median {statistics.median(ratios):.2f}x; the target is ≤ 2x)")  # fmt: skip
    if runs["datasketch"]:
        d, n = runs["datasketch"][-1], runs["near"][-1]
        per_doc = (d["dedup_s"] / d["documents"]) / (n["dedup_s"] / n["documents"])
        print(f"datasketch / medpt numpy, seconds per document: {per_doc:.1f}x")


if __name__ == "__main__":
    main()
