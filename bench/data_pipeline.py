"""Data pipeline benchmark: a corpus the size of the reference dataset (270k ShareGPT records) through
`medpt prepare` into blocks of 512, then a cached rerun, then the MedicalGPT-style baseline on the same machine.

    python bench/data_pipeline.py [--records 270000] [--workers 2] [--skip_baseline]

The corpus is built by resampling ../shared/data/medical_qa_zh_mix (all splits) with a fixed seed; the k-th copy
of a record gets "（k）" appended to its first question, so copies are distinct and dedup keeps them all. The
tokenizer is the tiny 25m one (`medpt init-tiny --size 25m`), trained on that folder's train split.
Targets (issue 2, 2-core machine): ≤ 33 s from raw ShareGPT, cached rerun ≤ 5 s, peak RSS ≤ 2 GB.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from measure import machine, run_measured  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "medical_qa_zh_mix"


def build_corpus(path: Path, n: int, seed: int = 0) -> None:
    if path.is_file() and sum(1 for _ in open(path, encoding="utf-8")) == n:
        return
    records = [json.loads(line) for f in sorted(SHARED.glob("*.jsonl")) for line in open(f, encoding="utf-8")]
    rng = random.Random(seed)
    copies: dict[int, int] = {}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as out, open(path.with_suffix(".text.jsonl"), "w", encoding="utf-8") as txt:
        for _ in range(n):
            i = rng.randrange(len(records))
            k = copies.get(i, 0)
            copies[i] = k + 1
            conv = [dict(t) for t in records[i]["conversations"]]
            if k:
                conv[0]["value"] += f"（{k}）"
            out.write(json.dumps({"conversations": conv}, ensure_ascii=False) + "\n")
            # The same records pre-rendered to text, as MedicalGPT's users must do (the reference rendering).
            text = "".join(f"{'问' if t['from'] == 'human' else '答'}:{t['value']}\n" for t in conv)
            txt.write(json.dumps({"text": text + "\n" + "=" * 50 + "\n\n"}, ensure_ascii=False) + "\n")


def bench_corpus(work: Path, records: int) -> Path:
    """The benchmark corpus of `records` records under `work` (built once), or exit when the shared data is absent."""
    if not SHARED.is_dir():
        sys.exit(f"skipped: {SHARED} is not available")
    corpus = work / f"sharegpt_{records}.jsonl"
    build_corpus(corpus, records)
    return corpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=270_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work_dir", default="bench/results/data_pipeline")
    parser.add_argument("--skip_baseline", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prepare_args", default="", help='more prepare flags, e.g. "--dedup near"')
    args = parser.parse_args()
    work = Path(args.work_dir)
    corpus = bench_corpus(work, args.records)
    tiny = work / "tiny-25m"
    medpt = [sys.executable, "-m", "medpt"]
    if not (tiny / "medpt_tiny.json").is_file():
        init = [
            *medpt,
            "init-tiny",
            "--output_dir",
            str(tiny),
            "--size",
            "25m",
            "--corpus",
            str(SHARED / "train-*.jsonl"),
        ]
        _ok(run_measured(init))
    prepare = [*medpt, "prepare", "--model_name_or_path", str(tiny), "--train_file_dir", str(corpus)]
    prepare += ["--block_size", "512", "--preprocessing_num_workers", str(args.workers)]
    prepare += ["--output_dir", str(work / "prepared"), "--data_cache_dir", str(work / "cache")]
    prepare += shlex.split(args.prepare_args)
    baseline = [sys.executable, str(Path(__file__).parent / "reference_grouping.py")]
    baseline += [str(corpus.with_suffix(".text.jsonl")), str(tiny), "--block_size", "512"]
    baseline += ["--num_proc", str(args.workers), "--cache_dir", str(work / "hf-cache")]
    # This machine's speed drifts by tens of percent from minute to minute, so the runs alternate and the
    # table reports medians; the ratio compares runs made in the same minutes.
    runs: dict[str, list[dict]] = {"cold": [], "warm": [], "base": []}
    for _ in range(args.repeats):
        runs["cold"].append(_ok(run_measured([*prepare, "--overwrite_cache"])))
        runs["warm"].append(_ok(run_measured(prepare)))
        assert "reusing prepared data" in runs["warm"][-1]["output"]
        if not args.skip_baseline:
            shutil.rmtree(work / "hf-cache", ignore_errors=True)  # a fresh datasets cache, as on a first run
            runs["base"].append(_ok(run_measured(baseline)))
    report = json.loads((work / "prepared" / "data_report.json").read_text(encoding="utf-8"))
    blocks = report["train"]["blocks"] + (report["validation"] or {"blocks": 0})["blocks"]
    tokens = report["train"]["tokens"] + (report["validation"] or {"tokens": 0})["tokens"]
    rows = [("medpt prepare (raw ShareGPT)", runs["cold"], blocks, tokens)]
    rows.append(("medpt prepare, cached rerun", runs["warm"], blocks, tokens))
    if runs["base"]:
        line = next(x for x in runs["base"][0]["output"].splitlines() if x.startswith("blocks="))
        stats = dict(kv.split("=") for kv in line.split())
        name = "MedicalGPT-style baseline (pre-rendered)"
        rows.append((name, runs["base"], int(stats["blocks"]), int(stats["tokens_in"])))
    extra = f", {args.prepare_args}" if args.prepare_args else ""
    print(
        f"\n{args.records:,} ShareGPT records, block 512, {args.workers} workers{extra}, tiny 25m tokenizer, median of "
    )
    print(f"{args.repeats} alternating runs; {machine()}\n")
    print(f"{'run':<42}{'wall s':>8}{'(all runs)':>20}{'records/s':>11}{'tokens/s':>12}{'peak RSS':>10}{'blocks':>9}")
    for name, measured, n_blocks, n_tokens in rows:
        wall = statistics.median(r["wall_s"] for r in measured)
        rss = max(r["peak_rss"] for r in measured)
        every = " ".join(f"{r['wall_s']:.1f}" for r in measured)
        print(
            f"{name:<42}{wall:>8.1f}{every:>20}{args.records / wall:>11,.0f}{n_tokens / wall:>12,.0f}"
            f"{rss / 2**30:>8.2f}GB{n_blocks:>9,}"
        )
    if runs["base"]:
        ratios = [b["wall_s"] / c["wall_s"] for b, c in zip(runs["base"], runs["cold"])]
        listed = ", ".join(f"{r:.2f}x" for r in ratios)
        print(f"\nspeed-up over the baseline, run by run: {listed} (median {statistics.median(ratios):.2f}x)")
    print("\nmedpt's own stage timings (last cold run):")
    print("\n".join("  " + x for x in runs["cold"][-1]["output"].splitlines() if " in " in x and " s" in x))


def _ok(result: dict) -> dict:
    assert result["returncode"] == 0, result["output"][-3000:]
    return result


if __name__ == "__main__":
    main()
