"""The forgetting experiment: a tiny base that knows general Chinese, continued on medical QA with and without replay.

    python bench/forgetting.py [--size 5m] [--pretrain_steps 1500] [--steps 400] [--out bench/results/forgetting]

1. Base: `medpt init-tiny` (tokenizer trained on the general and medical training text), then `medpt train
   --use_peft false` on the general Chinese training splits in ../shared/data/general_zh_* until its held-out general
   perplexity is far below the random-init value. Cached under OUT/base (reused while the settings are the same).
2. Arms: continued pretraining on ../shared/data/medical_qa_zh_mix with LoRA and with full fine-tuning, at 0%, 5% and
   25% replay of the general training text (`--mix medical=0.95,general=0.05`, ...), the same steps and learning rate
   per method; and two schedule arms (full fine-tuning, 5% replay): re-warmed (warmup to the peak learning rate, then
   cosine decay, as every other arm) against constant at the base's final learning rate, without re-warming.
   Then the arms that fight forgetting harder: 50% replay (`lora-50`), 25% replay plus `--replay_kl W` on the
   replayed tokens (`lora-25-kl<W>` for each --kl_weights W, `full-25-kl<W>` for --full_kl_weights).
3. Evaluation (`medpt eval`): base and every arm on the medical held-out split, the general held-out splits (the
   valid/test files, never seen in pretraining), and CMMLU multiple choice, general and medical. The adapters of
   --frontier_arms are evaluated again at each --scales (`medpt eval --adapter_scale ...`, perplexities only).

Writes OUT/results.json, OUT/forgetting.md (the README table) and OUT/frontier.png (medical Δ perplexity against
general Δ perplexity, one point per arm and per scale; --chart copies it, e.g. to docs/). Every step is cached: a
rerun redoes only what changed. The goal line: a model whose general Δ perplexity is at most +5% (upper end of its
95% CI) while it keeps ≥ 90% of the 0%-replay LoRA arm's medical gain.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# MEDPT_SHARED_DATA: the shared data folder when the checkout is not beside it (a git worktree elsewhere)
DATA = Path(os.environ.get("MEDPT_SHARED_DATA") or ROOT.parent / "shared" / "data")
GENERAL = ["general_zh_cmrc2018_wiki", "general_zh_cmrc2019_stories", "general_zh_csl_abstracts"]
MEDICAL = DATA / "medical_qa_zh_mix"


def general_train() -> list[str]:
    return [str(DATA / g / "train.jsonl") for g in GENERAL]


def general_heldout() -> str:
    return str(DATA / "general_zh_*" / "*[dt].jsonl")  # valid.jsonl and test.jsonl, never train.jsonl


def medpt(*argv: str) -> None:
    from medpt.cli import main

    code = main([str(a) for a in argv])
    if code != 0:
        sys.exit(f"medpt {argv[0]} failed with status {code}")


def cached(folder: Path, settings: dict, work) -> float:
    """Run `work()` unless `folder` holds a finished result of the same settings; returns the wall time (or the
    one recorded when it was first made)."""
    stamp = folder / "bench_settings.json"
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    if stamp.is_file() and json.loads(stamp.read_text())["key"] == key:
        return json.loads(stamp.read_text())["seconds"]
    t = time.perf_counter()
    work()
    seconds = round(time.perf_counter() - t, 1)
    folder.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps({"key": key, "settings": settings, "seconds": seconds}, indent=2))
    return seconds


def common_train_flags(args: argparse.Namespace) -> list[str]:
    return ["--block_size", args.block_size, "--per_device_train_batch_size", args.batch, "--logging_steps", "20",
            "--eval_strategy", "steps", "--do_eval", "--save_strategy", "no", "--report_to", "none",
            "--disable_tqdm", "true", "--weight_decay", "0.01", "--data_cache_dir", args.out / "cache",
            "--overwrite_output_dir"]  # fmt: skip


def build_base(args: argparse.Namespace) -> dict:
    out = args.out
    settings = {k: str(v) for k, v in vars(args).items() if k in ("size", "pretrain_steps", "pretrain_lr", "block_size",
                                                                   "batch", "seed")}  # fmt: skip

    def work() -> None:
        corpus = [*general_train(), str(MEDICAL / "train-*.jsonl")]
        medpt("init-tiny", "--output_dir", out / "tiny", "--size", args.size, "--corpus", *corpus, "--overwrite")
        medpt("train", "--model_name_or_path", out / "tiny", "--use_peft", "false",
              "--train_file_dir", *general_train(), "--validation_file_dir", general_heldout(),
              "--max_eval_samples", "300", "--max_steps", args.pretrain_steps, "--learning_rate", args.pretrain_lr,
              "--warmup_ratio", "0.02", "--lr_scheduler_type", "cosine", "--eval_steps", args.pretrain_steps // 5,
              "--output_dir", out / "base", *common_train_flags(args))  # fmt: skip

    seconds = cached(out / "base", settings, work)
    return {"seconds": seconds, "settings": settings}


ARMS = [
    # name, method, replay %, schedule (the --replay_kl arms are added from --kl_weights / --full_kl_weights)
    ("lora-0", "lora", 0, "rewarm"),
    ("lora-5", "lora", 5, "rewarm"),
    ("lora-25", "lora", 25, "rewarm"),
    ("full-0", "full", 0, "rewarm"),
    ("full-5", "full", 5, "rewarm"),
    ("full-25", "full", 25, "rewarm"),
    ("full-5-constant", "full", 5, "constant"),
    ("lora-50", "lora", 50, "rewarm"),
]


def kl_arms(args: argparse.Namespace) -> list[tuple[str, str, int, str, float]]:
    return [*((f"lora-25-kl{w:g}", "lora", 25, "rewarm", w) for w in args.kl_weights),
            *((f"full-25-kl{w:g}", "full", 25, "rewarm", w) for w in args.full_kl_weights)]  # fmt: skip


def train_arm(args: argparse.Namespace, name: str, method: str, replay: int, schedule: str, kl: float = 0.0) -> float:
    out = args.out / "arms" / name
    lr = args.lora_lr if method == "lora" else args.full_lr
    flags = ["--model_name_or_path", args.out / "base", "--max_steps", args.steps, "--eval_steps", args.steps // 4,
             "--max_eval_samples", "300", "--output_dir", out, *common_train_flags(args)]  # fmt: skip
    if replay:
        sources = [f"medical={MEDICAL / 'train-*.jsonl'}", *(f"general={p}" for p in general_train())]
        held_out = [f"medical={MEDICAL / 'valid.jsonl'}", f"general={general_heldout()}"]
        flags += ["--train_file_dir", *sources, "--mix", f"medical={1 - replay / 100:g},general={replay / 100:g}",
                  "--validation_file_dir", *held_out]  # fmt: skip
    else:
        flags += ["--train_file_dir", f"medical={MEDICAL / 'train-*.jsonl'}",
                  "--validation_file_dir", f"medical={MEDICAL / 'valid.jsonl'}",
                  "--eval_sets", f"general={general_heldout()}"]  # fmt: skip
    if kl:  # W × KL(base ‖ adapted) on the general (replayed) tokens
        flags += ["--replay_kl", kl]
    if method == "lora":
        flags += ["--lora_rank", "16", "--lora_alpha", "32", "--lora_dropout", "0.05", "--target_modules", "all"]
    else:
        flags += ["--use_peft", "false"]
    if schedule == "rewarm":  # re-warm to the peak learning rate, then decay (Ibrahim et al. 2024)
        flags += ["--learning_rate", lr, "--warmup_ratio", "0.05", "--lr_scheduler_type", "cosine"]
    else:  # no re-warming: continue at the base's final learning rate (its cosine ended at ~0; use 10% of the peak)
        flags += ["--learning_rate", lr * 0.1, "--lr_scheduler_type", "constant"]
    settings = {"flags": [str(f) for f in flags]}
    return cached(out, settings, lambda: medpt("train", *flags))


def evaluate(
    args: argparse.Namespace, name: str, target: Path, adapter: bool, scales: list[float] | None = None
) -> dict:
    """Held-out perplexities and multiple choice of one model (the base, or an arm: its own sources' held-out
    documents, all of them); with `scales`, the perplexities only, at each adapter scale (the frontier)."""
    out = args.out / "eval" / (f"{name}-scales" if scales else name)
    model = ["--adapter", target] if adapter else ["--model_name_or_path", target]
    sets = [] if adapter else ["--eval_sets", f"medical={MEDICAL / 'valid.jsonl'}", f"general={general_heldout()}"]
    benchmarks = [f"{name}_cmmlu={DATA / f'{name}_mcq_cmmlu' / 'test.jsonl'}" for name in ("general", "medical")]
    mcq = ["--mcq", *benchmarks, "--max_mcq_questions", args.mcq_questions]
    mcq = mcq if args.mcq_questions and not scales else []
    scale = ["--adapter_scale", ",".join(f"{s:g}" for s in scales)] if scales else []
    flags = [*model, *sets, "--max_eval_samples", "none", *mcq, *scale, "--output_dir", out, "--overwrite_output_dir"]
    seconds = cached(out, {"flags": [str(f) for f in flags], "target": str(target)}, lambda: medpt("eval", *flags))
    return {**json.loads((out / "eval_results.json").read_text()), "eval_seconds": seconds}


def lm(results: dict, which: str) -> dict[str, float]:
    """{set: perplexity} for the base or adapted side (an arm evaluated with --adapter reports both)."""
    return {s: r[which]["perplexity"] for s, r in results["sets"].items()}


def change(results: dict, s: str) -> tuple[float, float, float]:
    """(Δ perplexity, CI low, CI high) of set `s`: an arm's eval row, or a frontier row (relative changes)."""
    r = results["sets"][s]
    if "perplexity_change" in r:
        return (r["perplexity_change"], *r["perplexity_change_ci"])
    return (r["adapted"]["perplexity"] / r["base"]["perplexity"] - 1, *r.get("perplexity_change_ci", (math.nan,) * 2))


def scale_rows(name: str, results: dict) -> dict[str, dict]:
    """An adapter's frontier as table rows, `lora-0 ×0.5`, ... (scale 1 is the arm's own row)."""
    return {f"{name} ×{row['scale']:g}": row for row in results.get("frontier", []) if row["scale"] != 1}


def reaches_goal(row: dict, reference: dict) -> bool:
    """General Δ ≤ +5% at the upper end of its CI, and ≥ 90% of `reference`'s (lora-0's) medical gain."""
    return change(row, "general")[2] <= 0.05 and change(row, "medical")[0] <= 0.9 * change(reference, "medical")[0]


def table(base: dict, arms: dict[str, dict], walls: dict[str, float]) -> str:
    """One row per model. An arm's Δ and its 95% CI come from its own eval, which scores the base and the arm on the
    same blocks (paired bootstrap over blocks); the base row is the base's own eval."""
    b = lm(base, "base")
    head = ("| model | medical ppl | Δ medical (95% CI) | general ppl | Δ general (95% CI) | general MCQ | medical MCQ "
            "| wall |")  # fmt: skip
    lines = [head, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    mcq = f"{mcq_cell(base, 'base')} | {mcq_cell(base, 'base', 'medical_cmmlu')}"
    lines.append(f"| base (pretrained on general text) | {b['medical']:,.0f} | | {b['general']:,.0f} | | {mcq} "
                 f"| {walls['base']:.0f} s |")  # fmt: skip
    for name, results in arms.items():
        cells = []
        for s in ("medical", "general"):
            r = results["sets"][s]
            ppl = r["perplexity"] if "perplexity" in r else r["adapted"]["perplexity"]
            delta, low, high = change(results, s)
            cells.append(f"{ppl:,.0f} | {delta:+.1%} ({low:+.1%}…{high:+.1%})")
        mark = " ✓" if "lora-0" in arms and reaches_goal(results, arms["lora-0"]) else ""
        lines.append(f"| {name}{mark} | {cells[0]} | {cells[1]} | {mcq_cell(results, 'adapted')} "
                     f"| {mcq_cell(results, 'adapted', 'medical_cmmlu')} | {walls[name]:.0f} s |")  # fmt: skip
    return "\n".join(lines)


def chart(arms: dict[str, dict], path: Path) -> Path | None:
    """Medical Δ against general Δ perplexity: a point per arm, a line per adapter's scales (medpt.report.curves)."""
    from medpt.report.curves import plot_frontier

    points = []
    for name, results in arms.items():
        if " ×" in name:  # a scale's row: drawn on its adapter's line
            continue
        for row in results.get("frontier", []):
            points.append({"label": f"×{row['scale']:g}", "group": f"{name} scaled",
                           **{s: change(row, s) for s in ("medical", "general")}})  # fmt: skip
        points.append({"label": name, **{s: change(results, s) for s in ("medical", "general")}})  # a point alone
    return plot_frontier(points, path, title="forgetting frontier: 5m base, 150 steps per arm")


def mcq_cell(results: dict, which: str, bench: str = "general_cmmlu", scoring: str = "text") -> str:
    """Accuracy from the eval suite's JSON (text scoring: a tiny model's letter scoring is mostly position bias,
    which moves with every change of the weights): for an arm, with Δ against the base and the 95% CI of that paired
    difference (bootstrap over questions); for the base, with the 95% Wilson interval of the accuracy."""
    suite = results.get("mcq", {}).get("benchmarks", {}).get(bench)
    if not suite:
        return "n/a"
    mode = suite["modes"][scoring]
    acc = mode["accuracy"][which]
    if which == "adapted" and mode.get("ci"):
        low, high = mode["ci"]
        return f"{acc:.1%} (Δ {100 * mode['delta']:+.1f}, CI {100 * low:+.1f}…{100 * high:+.1f})"
    n, z = suite["questions"], 1.96
    centre = (acc + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(acc * (1 - acc) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return f"{acc:.1%} ({centre - half:.1%}–{centre + half:.1%})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="5m", choices=["5m", "25m"])
    parser.add_argument("--pretrain_steps", type=int, default=1500)
    parser.add_argument("--pretrain_lr", type=float, default=3e-3)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lora_lr", type=float, default=2e-3)
    parser.add_argument("--full_lr", type=float, default=1e-3)
    parser.add_argument("--block_size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--mcq_questions", type=int, default=600, help="per benchmark; 0 skips multiple choice")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "forgetting")
    parser.add_argument("--arms", nargs="*", default=None, help="default: every arm")
    parser.add_argument(
        "--kl_weights", type=float, nargs="*", default=[1.0, 4.0, 8.0, 16.0], help="--replay_kl of lora-25-kl*"
    )
    parser.add_argument("--full_kl_weights", type=float, nargs="*", default=[1.0, 4.0, 8.0], help="... of full-25-kl*")
    parser.add_argument(
        "--frontier_arms", nargs="*", default=["lora-0", "lora-25", "lora-50", "lora-25-kl4", "lora-25-kl8"]
    )
    parser.add_argument("--scales", type=float, nargs="*", default=[0.25, 0.5, 0.75, 0.9, 1.0])
    parser.add_argument("--chart", type=Path, default=None, help="also copy the frontier chart here")
    args = parser.parse_args()
    if not (MEDICAL.is_dir() and all((DATA / g).is_dir() for g in GENERAL)):
        print(f"skipped: {DATA} lacks medical_qa_zh_mix or general_zh_*")
        return
    t0 = time.perf_counter()
    walls: dict[str, float] = {}
    walls["base"] = build_base(args)["seconds"]
    base = evaluate(args, "base", args.out / "base", adapter=False)
    arms: dict[str, dict] = {}
    for name, method, replay, schedule, *kl in [*ARMS, *kl_arms(args)]:
        if args.arms is not None and name not in args.arms:
            continue
        walls[name] = train_arm(args, name, method, replay, schedule, *kl)
        arms[name] = evaluate(args, name, args.out / "arms" / name, adapter=True)
        print(f"{name}: trained in {walls[name]:.0f} s", flush=True)
        if name in args.frontier_arms and method == "lora":
            scaled = evaluate(args, name, args.out / "arms" / name, adapter=True, scales=args.scales)
            arms[name]["frontier"] = scaled["frontier"]
            for row_name, row in scale_rows(name, scaled).items():
                arms[row_name], walls[row_name] = row, row["seconds"]
    text = table(base, arms, walls)
    drawn = chart(arms, args.out / "frontier.png")
    if drawn and args.chart:
        args.chart.write_bytes(drawn.read_bytes())
    total = time.perf_counter() - t0
    (args.out / "results.json").write_text(json.dumps({"base": base, "arms": arms, "walls": walls}, indent=2))
    (args.out / "forgetting.md").write_text(text + f"\n\nwhole script: {total / 60:.1f} min\n")
    print(text)
    print(f"\nwhole script: {total / 60:.1f} min (cached steps count their first wall time in the table)")


if __name__ == "__main__":
    main()
