"""Training throughput of `medpt train` on the CPU: tokens/s, peak RSS and model-FLOPs utilisation (MFU).

    python bench/train_throughput.py [--sizes 5m 25m] [--steps 14] [--quick | --minimal]

Every configuration is a real `medpt train` run (block 512, batch 4, LoRA r16 on all linear layers), timed from
its own per-step log after warm-up. FLOPs per token are counted as

    4·N_matmul + 6·N_lora + 12·layers·hidden·block

(frozen matmul weights: forward 2N + input-gradient 2N; LoRA weights: 6N; attention scores and values:
12·L·H·T), and MFU divides the achieved FLOP/s by the matmul throughput of this machine: square 1024 GEMMs (the
reference of the issue's figures: bf16 404, fp32 180 GFLOP/s), sampled 5 times before and after every run, median
of all samples. On the VM this was written on, bf16 GEMM rates are bimodal (~320 or ~900 GFLOP/s from one call to
the next, fp32 steady at ~180), so a single sample is meaningless; MFU* uses the best sample of the model's own
GEMM shapes instead, the strictest reading.

The baseline is MedicalGPT's default on a CPU: a plain fp32 transformers.Trainer with stock PEFT LoRA (dropout
0.05) on the same blocks (bench/reference_trainer.py); it is compared with medpt's default run of the same config.
The yardstick is a hand-written bf16 LoRA loop (bench/plain_loop.py, eager and compiled, dropout 0): medpt's
tokens/s over the loop's, side by side, says what the Trainer costs without depending on how FLOPs are counted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from measure import machine, run_measured  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "medical_qa_zh_mix"
SAMPLE = Path(__file__).resolve().parents[1] / "src" / "medpt" / "sample_data" / "medical_qa_zh.jsonl"
BATCH, BLOCK, RANK = 4, 512, 16


def gemm_gflops(dtype_name: str, shapes: list[tuple[int, int, int]], repeats: int = 8) -> float:
    """Best GFLOP/s over the given (m, k, n) GEMMs."""
    import torch

    dtype = getattr(torch, dtype_name)
    best = 0.0
    for m, k, n in shapes:
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        for _ in range(2):
            a @ b
        t = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = max(best, 2 * m * k * n * repeats / (time.perf_counter() - t) / 1e9)
    return best


def flops_per_token(cfg: dict) -> tuple[float, int, int]:
    h, i, layers, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    kv = h * cfg.get("num_key_value_heads", cfg["num_attention_heads"]) // cfg["num_attention_heads"]
    n_matmul = layers * (2 * h * h + 2 * h * kv + 3 * h * i) + h * v  # q,o + k,v + mlp, and the output head
    n_lora = layers * RANK * (2 * (h + h) + 2 * (h + kv) + 3 * (h + i))
    return 4 * n_matmul + 6 * n_lora + 12 * layers * h * BLOCK, n_matmul, n_lora


def steady_tokens_per_second(out: Path, warmup: int) -> tuple[float, float]:
    """Median tokens/s after `warmup` steps, and the warm-up overhead in seconds: the wall time of the first
    `warmup` steps (from the trainer's start, as the user waits for it) minus that many steady steps."""
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in rows if "tokens_per_second" in r]
    rates = [r["tokens_per_second"] for r in timed if r["step"] > warmup]
    seen = [0] + [r["num_input_tokens_seen"] for r in timed]
    seconds = [(seen[i + 1] - seen[i]) / r["tokens_per_second"] for i, r in enumerate(timed)]
    steady = statistics.median(seconds[warmup:])
    return statistics.median(rates), sum(seconds[:warmup]) - warmup * steady


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["5m", "25m"])
    parser.add_argument("--steps", type=int, default=14)
    parser.add_argument("--quick", action="store_true", help="skip the torch.compile runs (35-55 s compile each)")
    parser.add_argument("--minimal", action="store_true", help="--precision without checkpoints only, + yardsticks")
    parser.add_argument("--work_dir", default="bench/results/train_throughput")
    parser.add_argument("--precision", choices=["auto", "bfloat16", "float32"], default="auto",
                        help="of --minimal and the plain loop; auto: medpt's default on this CPU (bf16 only where it "
                        "is native: AVX512-BF16/AMX; elsewhere a bf16 GEMM runs ~100x slower than fp32)")  # fmt: skip
    args = parser.parse_args()
    if args.precision == "auto":
        from medpt.model.loading import resolve_precision

        args.precision = "bfloat16" if resolve_precision(None, None)[0] else "float32"
    prec = args.precision
    work = Path(args.work_dir)
    medpt = [sys.executable, "-m", "medpt"]
    corpus = str(SHARED / "train-00000-of-00004.jsonl") if SHARED.is_dir() else str(SAMPLE)
    rows = []
    samples: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    best: dict[str, float] = {}
    for size in args.sizes:
        model = work / f"tiny-{size}"
        if not (model / "medpt_tiny.json").is_file():
            init = [*medpt, "init-tiny", "--output_dir", str(model), "--size", size, "--corpus", corpus]
            assert run_measured(init)["returncode"] == 0
        cfg = json.loads((model / "config.json").read_text())
        fpt, n_matmul, n_lora = flops_per_token(cfg)
        shapes = [(BATCH * BLOCK, cfg["hidden_size"], n) for n in (cfg["hidden_size"], cfg["intermediate_size"])]
        grid = [(dt, ckpt, comp, drop) for dt in ("float32", "bfloat16") for ckpt in (False, True)
                for comp in ((False,) if args.quick else (False, True)) for drop in (0.0, 0.05)]  # fmt: skip
        if args.minimal:
            grid = [g for g in grid if g[0] == prec and not g[1]]
        for dtype, ckpt, compiled, dropout in grid:
            out = work / "runs" / f"{size}-{dtype}-ckpt{int(ckpt)}-compile{int(compiled)}-drop{dropout}"
            cmd = [*medpt, "train", "--model_name_or_path", str(model), "--train_file_dir", corpus,
                   "--validation_split_percentage", "0", "--block_size", str(BLOCK),
                   "--per_device_train_batch_size", str(BATCH), "--max_steps", str(args.steps), "--logging_steps", "1",
                   "--lora_rank", str(RANK), "--lora_alpha", "32", "--lora_dropout", str(dropout),
                   "--target_modules", "all", "--bf16", str(dtype == "bfloat16"),
                   "--gradient_checkpointing", str(ckpt), "--torch_compile", str(compiled),
                   "--output_dir", str(out), "--overwrite_output_dir",
                   "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true",
                   "--plot", "false"]  # fmt: skip
            samples[dtype] += [gemm_gflops(dtype, [(1024, 1024, 1024)]) for _ in range(5)]
            run = run_measured(cmd)
            assert run["returncode"] == 0, run["output"][-3000:]
            samples[dtype] += [gemm_gflops(dtype, [(1024, 1024, 1024)]) for _ in range(5)]
            best[dtype] = max(best.get(dtype, 0.0), gemm_gflops(dtype, shapes))
            tps, overhead = steady_tokens_per_second(out, warmup=4 if compiled else 3)
            rows.append((size, dtype, ckpt, compiled, dropout, tps, run["peak_rss"], fpt * tps / 1e9))
            print(f"  {out.name}: {tps:,.0f} tok/s; first steps {overhead:+.1f} s over steady ones", flush=True)
        baseline = work / "runs" / f"{size}-reference-trainer-fp32"
        ref_cmd = [sys.executable, str(Path(__file__).parent / "reference_trainer.py"), str(model), corpus,
                   str(baseline), "--steps", str(args.steps)]  # fmt: skip
        base_run = run_measured(ref_cmd)
        assert base_run["returncode"] == 0, base_run["output"][-3000:]
        base_tps = float(base_run["output"].strip().splitlines()[-1].split("=")[1])
        rows.append((size, "reference fp32 Trainer", False, False, 0.05, base_tps, base_run["peak_rss"], None))
        for compiled in (False,) if args.quick else (False, True):
            loop_cmd = [sys.executable, str(Path(__file__).parent / "plain_loop.py"), str(model), corpus,
                        "--steps", str(args.steps), "--dtype", prec, *(["--compile"] if compiled else [])]  # fmt: skip
            loop_run = run_measured(loop_cmd)
            assert loop_run["returncode"] == 0, loop_run["output"][-3000:]
            tps = float(loop_run["output"].strip().splitlines()[-1].split("=")[1])
            rows.append((size, f"{prec} plain loop", False, compiled, 0.0, tps, loop_run["peak_rss"], fpt * tps / 1e9))
            print(f"  {size} plain loop{' compiled' if compiled else ''}: {tps:,.0f} tok/s", flush=True)
        params = f"{n_matmul / 1e6:.1f}M matmul params, {n_lora / 1e6:.2f}M LoRA params"
        print(f"\n{size}: {params}, {fpt / 1e6:.1f} MFLOP/token")
    ref = {dt: statistics.median(v) for dt, v in samples.items() if v}
    print(f"\nblock {BLOCK}, batch {BATCH}, LoRA r{RANK} all-linear; {machine()}")
    for dt, v in samples.items():
        if v:
            print(f"{dt} square-1024 GEMM: median {ref[dt]:.0f} GFLOP/s of {len(v)} samples "
                  f"(range {min(v):.0f}-{max(v):.0f}); best model-shaped GEMM {best[dt]:.0f}")  # fmt: skip
    print(f"{'model':<6}{'precision':<24}{'ckpt':>5}{'compile':>8}{'dropout':>8}{'tok/s':>8}{'peak RSS':>10}"
          f"{'MFU':>7}{'MFU*':>7}")  # fmt: skip
    for size, dtype, ckpt, comp, drop, tps, rss, gflops in rows:
        dt = dtype.split()[0]
        mfu_s = f"{gflops / ref[dt]:.0%}" if gflops is not None else "-"
        strict_s = f"{gflops / best[dt]:.0%}" if gflops is not None else "-"
        print(f"{size:<6}{dtype:<24}{'yes' if ckpt else 'no':>5}{'yes' if comp else 'no':>8}{drop:>8}{tps:>8,.0f}"
              f"{rss / 2**30:>8.2f}GB{mfu_s:>7}{strict_s:>7}")  # fmt: skip
    print("MFU: against the median square-1024 GEMM rate; MFU*: against the best GEMM rate of the model's shapes.")
    for size in args.sizes:
        default = next(r for r in rows if r[0] == size and r[1] == prec and not r[2] and not r[3] and r[4] == 0.05)
        base = next(r for r in rows if r[0] == size and r[1].startswith("reference"))
        ratio = default[5] / base[5]
        print(f"{size}: medpt default ({prec}, dropout 0.05) vs the fp32 reference Trainer: {ratio:.2f}x")
        tps_of = {(r[3], r[4]): r[5] for r in rows if r[0] == size and r[1] == prec and not r[2]}
        for compiled in (False, True):
            if (compiled, 0.0) in tps_of and (compiled, 0.05) in tps_of:
                ratio = tps_of[(compiled, 0.05)] / tps_of[(compiled, 0.0)]
                print(f"{size}: {prec} {'compiled' if compiled else 'eager'}, dropout 0.05 vs 0: {ratio:.3f}x")
        for drop in (0.0, 0.05):
            if (True, drop) in tps_of:
                speedup = tps_of[(True, drop)] / tps_of[(False, drop)]
                print(f"{size}: {prec} dropout {drop}, compiled vs eager: {speedup:.2f}x")
        for compiled in (False,) if args.quick else (False, True):
            ours = next(r for r in rows if r[0] == size and r[1] == prec and not r[2] and r[3] == compiled
                        and r[4] == 0.0)  # fmt: skip
            loop = next(r for r in rows if r[0] == size and r[1] == f"{prec} plain loop" and r[3] == compiled)
            what = "compiled" if compiled else "eager"
            print(f"{size}: medpt {prec} dropout 0 vs the plain loop, {what}: {ours[5] / loop[5]:.2f}x")


if __name__ == "__main__":
    main()
