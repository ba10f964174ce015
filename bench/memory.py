"""The memory plan against measurement, on the CPU.

    PYTHONPATH=src python bench/memory.py                 # plan vs peak RSS of `medpt train`: the docs/memory.md table
    PYTHONPATH=src python bench/memory.py --saved         # per-layer activations vs torch's saved-tensor hooks
    PYTHONPATH=src python bench/memory.py --plan_time     # how long a plan of the 7B config.json takes
    PYTHONPATH=src python bench/memory.py --seven_b       # the 7B table of docs/memory.md, and published figures

1. Peak RSS: each configuration (tiny model size, block, micro-batch, checkpointing, precision) runs `medpt train`
   for 4 steps in its own process, reading the data from a cache prepared beforehand, and reports its VmHWM (peak
   resident memory) and its resident memory when the model starts loading (the runtime's fixed overhead: Python,
   torch, transformers, peft, datasets and the data). `medpt plan --json` with the same flags, in the same
   environment, gives the planned peak. Two allocator settings: medpt's default (glibc keeps freed blocks in its
   heap; the plan adds its reserve) and MALLOC_MMAP_THRESHOLD_=131072 (glibc returns every large block at once:
   RSS then follows the tensors alive, what torch.cuda.max_memory_allocated reports on a GPU; no reserve).
2. Saved activations: random small LLaMA models, forward only, every tensor autograd saves counted once (by
   storage) with torch.autograd.graph.saved_tensors_hooks; one layer's bytes per token = the difference between 3
   and 2 layers. Compared with medpt.plan.memory.layer_activations for LoRA (fp32, bf16, dropout 0, per-module
   dropout, q/v only, grouped-query attention, eager attention, isolated packing) and full fine-tuning.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "src" / "medpt" / "sample_data" / "medical_qa_zh.jsonl"
SEVEN_B = ROOT / "tests" / "fixtures" / "deepseek-coder-7b-base-v1.5"
# (tiny model, block, micro-batch, gradient checkpointing, precision)
CONFIGS = [
    ("5m", 64, 1, False, "fp32"),
    ("5m", 256, 8, False, "fp32"),
    ("5m", 256, 8, True, "fp32"),
    ("5m", 256, 4, False, "bf16"),
    ("25m", 256, 4, False, "fp32"),
    ("25m", 512, 4, True, "fp32"),
    ("25m", 512, 8, False, "fp32"),
    ("25m", 256, 4, False, "bf16"),
    ("100m", 256, 4, False, "fp32"),
    ("100m", 512, 4, True, "fp32"),
    ("100m", 512, 4, False, "fp32"),
]
RETURN_BLOCKS = {"MALLOC_MMAP_THRESHOLD_": "131072"}
# Runs medpt.cli.main in this process and prints the resident memory when the model starts loading and at the end.
_WRAPPER = """
import json, sys
import medpt.train.recipe
def status():
    return {l.split(":")[0]: int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("Vm")}
seen = {}
load = medpt.train.recipe.load_model
def measured_load(*a, **k):
    seen["at_load"] = status()["VmRSS"]
    return load(*a, **k)
medpt.train.recipe.load_model = measured_load
from medpt.cli import main
rc = main(sys.argv[1:])
print("MEMORY " + json.dumps({**seen, "peak": status()["VmHWM"], "rc": rc}))
"""


def flags(model: Path, block: int, batch: int, ckpt: bool, precision: str) -> list[str]:
    return ["--model_name_or_path", str(model), "--block_size", str(block), "--per_device_train_batch_size",
            str(batch), "--gradient_checkpointing", str(ckpt).lower(), "--bf16", str(precision == "bf16").lower(),
            "--lora_rank", "8"]  # fmt: skip


def python(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "2", **env}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, check=False)


def measure(workdir: Path, config: tuple, env: dict[str, str]) -> dict:
    size, block, batch, ckpt, precision = config
    model = workdir / size
    common = flags(model, block, batch, ckpt, precision)
    plan = python(["-m", "medpt", "plan", *common, "--json"], env)
    if plan.returncode:
        raise SystemExit(plan.stderr)
    planned = json.loads(plan.stdout)
    out = workdir / "run"
    train = ["train", *common, "--train_file_dir", str(SAMPLE), "--output_dir", str(out), "--overwrite_output_dir",
             "--max_steps", "4", "--data_cache_dir", str(workdir / "cache"), "--report_to", "none", "--disable_tqdm",
             "true", "--plot", "false", "--save_strategy", "no", "--logging_steps", "1"]  # fmt: skip
    t = time.perf_counter()
    run = python(["-c", _WRAPPER, *train], env)
    line = next((x for x in run.stdout.splitlines() if x.startswith("MEMORY ")), None)
    if run.returncode or line is None:
        raise SystemExit(run.stderr[-3000:])
    measured = json.loads(line[len("MEMORY ") :])
    return {"size": size, "block": block, "batch": batch, "checkpointing": ckpt, "precision": precision,
            "allocator": "returns blocks" if env else "default", "planned": planned["peak_bytes"],
            "measured": measured["peak"], "at_load": measured["at_load"], "parts": planned["parts"],
            "seconds": round(time.perf_counter() - t, 1)}  # fmt: skip


def rss_table(workdir: Path, configs: list[tuple], out: str | None) -> None:
    for size in sorted({c[0] for c in configs}):
        if not (workdir / size).is_dir():
            python(["-m", "medpt", "init-tiny", "--size", size, "--output_dir", str(workdir / size)], {})
    for size, block in sorted({(c[0], c[1]) for c in configs}):  # the data cache, so no run tokenizes
        python(["-m", "medpt", "prepare", "--model_name_or_path", str(workdir / size), "--train_file_dir", str(SAMPLE),
                "--block_size", str(block), "--data_cache_dir", str(workdir / "cache"), "--output_dir",
                str(workdir / "prepared"), "--overwrite_output_dir"], {})  # fmt: skip
    rows = []
    for config in configs:
        for env in ({}, RETURN_BLOCKS):
            row = measure(workdir, config, env)
            row["error"] = row["planned"] / row["measured"] - 1
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "parts"}), flush=True)
    print_rows(rows)
    if out:
        Path(out).write_text(json.dumps(rows, indent=2))


def replan(workdir: Path, path: str) -> None:
    """The table again from measured rows (--out of an earlier run), each planned anew by this version's plan."""
    rows = json.loads(Path(path).read_text())
    for r in rows:
        common = flags(workdir / r["size"], r["block"], r["batch"], r["checkpointing"], r["precision"])
        env = RETURN_BLOCKS if r["allocator"] != "default" else {}
        planned = json.loads(python(["-m", "medpt", "plan", *common, "--json"], env).stdout)
        r["planned"], r["parts"] = planned["peak_bytes"], planned["parts"]
        r["error"] = r["planned"] / r["measured"] - 1
    print_rows(rows)


def print_rows(rows: list[dict]) -> None:
    print("\n| model | block | micro-batch | checkpointing | precision | allocator | planned | measured | error |")
    print("|---|---:|---:|---|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['size']} | {r['block']} | {r['batch']} | {'on' if r['checkpointing'] else 'off'} | "
              f"{r['precision']} | {r['allocator']} | {r['planned'] / 2**20:,.0f} MiB | "
              f"{r['measured'] / 2**20:,.0f} MiB | {r['error']:+.1%} |")  # fmt: skip
    print(f"\nresident at model load (median): {statistics.median(r['at_load'] for r in rows) / 2**20:,.0f} MiB")
    # The CPU's fixed overhead (medpt.plan.devices.CPU_RUNTIME_BYTES): the smallest run, less its planned tensors.
    smallest = min((r for r in rows if r["allocator"] != "default"), key=lambda r: r["measured"])
    tensors = smallest["planned"] - smallest["parts"]["fixed overhead"]
    print(f"fixed overhead from the smallest run: {(smallest['measured'] - tensors) / 2**20:,.0f} MiB")


def saved_table() -> None:
    import torch

    from medpt.plan.memory import Setup, layer_activations
    from medpt.plan.shape import ModelShape

    cases = [  # (name, model keywords, Setup keywords)
        ("LoRA fp32", {}, {}),
        ("LoRA bf16 autocast", {"dtype": torch.bfloat16, "autocast": True}, {"weight_bytes": 2, "autocast": True}),
        ("LoRA dropout 0", {"dropout": 0.0}, {"dropout": 0.0}),
        ("LoRA per-module dropout", {"mode": "per_module"}, {"dropout_mode": "per_module"}),
        ("LoRA q_proj,v_proj", {"targets": ["q_proj", "v_proj"]}, {"targets": ("q_proj", "v_proj")}),
        ("LoRA grouped-query (2 kv heads)", {"kv": 2}, {}),
        ("LoRA eager attention", {"attn": "eager"}, {"attention": "eager"}),
        ("LoRA isolated packing", {"packed": True}, {"packing": "isolated"}),
        ("QLoRA (NF4, bf16 autocast)", {"qlora": True, "dtype": torch.bfloat16, "autocast": True},
         {"method": "qlora", "weight_bytes": 2, "autocast": True}),
        ("full fp32", {"lora": False}, {"method": "full"}),
        ("full bf16", {"lora": False, "dtype": torch.bfloat16, "autocast": True},
         {"method": "full", "weight_bytes": 2, "autocast": True}),
    ]  # fmt: skip
    base = {"h": 96, "i": 320, "heads": 4, "kv": 4, "b": 2, "s": 48}
    print("| case | measured bytes/token/layer | planned | error |\n|---|---:|---:|---:|")
    for name, model_kw, setup_kw in cases:
        kw = {**base, **model_kw}
        per_layer = (_saved(layers=3, **kw) - _saved(layers=2, **kw)) / (kw["b"] * kw["s"])
        shape = ModelShape(kw["h"], 2, kw["heads"], kw["kv"], kw["h"] // kw["heads"], kw["i"], 1000)
        setup = Setup(**{"device": "cpu", "method": "lora", "weight_bytes": 4, "autocast": False,
                         "micro_batch": kw["b"], "block": kw["s"], **setup_kw})  # fmt: skip
        planned = sum(layer_activations(shape, setup).values())
        # Under autocast the 16-bit copies of trained fp32 weights show up per layer here; the plan counts them
        # once, as a static part ("autocast weight copies").
        if setup.autocast and setup.method != "full":
            planned += 2 * shape.lora_params(setup.targets, setup.rank) / shape.layers / (kw["b"] * kw["s"])
        print(f"| {name} | {per_layer:,.0f} | {planned:,.0f} | {planned / per_layer - 1:+.1%} |")


def _saved(layers: int, h: int, i: int, heads: int, kv: int, b: int, s: int, dtype=None, autocast=False,
           lora=True, dropout=0.05, mode="shared", targets=("all",), attn="sdpa", packed=False,
           qlora=False) -> int:  # fmt: skip
    """Bytes of the distinct storages autograd saves in one forward of a random LLaMA (+ LoRA as medpt sets it up)."""
    import contextlib

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from medpt.args import LoraArguments
    from medpt.train.lora import add_lora, speed_up

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=h, intermediate_size=i, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv, vocab_size=1000, tie_word_embeddings=False,
                         use_cache=False)  # fmt: skip
    model = LlamaForCausalLM._from_config(config, dtype=dtype or torch.float32, attn_implementation=attn)
    if qlora:  # quantised as medpt loads it: saved, then read back through bitsandbytes (NF4, double quant)
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                     bnb_4bit_compute_dtype=torch.bfloat16)  # fmt: skip
            model = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.bfloat16, quantization_config=nf4,
                                                         device_map={"": "cpu"})  # fmt: skip
    if lora:
        args = LoraArguments(lora_rank=8, lora_alpha=16, lora_dropout=dropout, target_modules=list(targets),
                             lora_dropout_mode=mode)  # fmt: skip
        model = add_lora(model, args)
        speed_up(model, autocast=autocast, compiled=False, dropout_mode=mode)
    model.train()
    ids = torch.randint(3, 1000, (b, s))
    extra = {"position_ids": torch.arange(s).remainder(s // 3).expand(b, s)} if packed else {}
    sizes: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        sizes[storage.data_ptr()] = max(sizes.get(storage.data_ptr(), 0), storage.nbytes())
        return t

    cast = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), cast:
        model(input_ids=ids, labels=ids, **extra)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(n for ptr, n in sizes.items() if ptr not in params)


def plan_time() -> None:
    from medpt.args.resolve import load_config
    from medpt.plan.planner import make_plan

    config = load_config(["--model_name_or_path", str(SEVEN_B), "--device_memory", "24GB", "32GB", "48GB", "80GB"],
                         "plan")  # fmt: skip
    times = []
    for _ in range(5):
        t = time.perf_counter()
        make_plan(config)
        times.append(time.perf_counter() - t)
    print(f"make_plan, 7B config.json, 4 memory sizes: median {statistics.median(times) * 1000:.1f} ms")
    t = time.perf_counter()
    cli = python(["-m", "medpt", "plan", "--model_name_or_path", str(SEVEN_B), "--device_memory", "24GB"], {})
    print(f"`medpt plan` process (imports included): {time.perf_counter() - t:.2f} s, exit {cli.returncode}")


# The 7B table: (label, flags) for LoRA bf16, QLoRA NF4 and full fine-tuning, as `medpt plan` takes them.
METHODS = [
    ("LoRA r16, bf16", ["--lora_rank", "16", "--bf16", "true"]),
    ("QLoRA r16, NF4 + bf16", ["--lora_rank", "16", "--bf16", "true", "--qlora"]),
    ("full, bf16 weights and AdamW states", ["--use_peft", "false", "--bf16", "true", "--torch_dtype", "bfloat16"]),
    ("full, fp32 weights + bf16 autocast", ["--use_peft", "false", "--bf16", "true"]),
]
CARDS = ["24GB", "32GB", "48GB", "80GB"]
# Llama 3.1 8B (unsloth's context-length benchmark) and LLaMA 65B (the QLoRA paper): shapes written by hand.
LLAMA31_8B = {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
              "intermediate_size": 14336, "vocab_size": 128256, "max_position_embeddings": 131072}  # fmt: skip
LLAMA_65B = {"hidden_size": 8192, "num_hidden_layers": 80, "num_attention_heads": 64, "intermediate_size": 22016,
             "vocab_size": 32000, "max_position_embeddings": 2048}  # fmt: skip


def _plan(model: Path, flags: list[str]) -> Any:
    from medpt.args.resolve import load_config
    from medpt.plan.planner import make_plan

    return make_plan(load_config(["--model_name_or_path", str(model), *flags], "plan"))


def seven_b_table() -> None:
    """The 7B shape: largest micro-batch per card (keeping nothing: powers of two up to 64), and the peak at 1."""
    print("| method | block | checkpointing | peak at micro-batch 1 | " + " | ".join(CARDS) + " |")
    print("|---|---:|---|---:|" + "---:|" * len(CARDS))
    for label, method in METHODS:
        for block in (512, 2048):
            for ckpt in ("false", "true"):
                flags = [*method, "--block_size", str(block), "--gradient_checkpointing", ckpt,
                         "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "64",
                         "--device_memory", *CARDS]  # fmt: skip
                plan = _plan(SEVEN_B, flags)
                key = "on" if ckpt == "true" else "off"
                cells = [str(f[key].largest_micro_batch or "—") for f in plan.fits]
                print(f"| {label} | {block} | {key} | {plan.estimate.peak / 2**30:.1f} GiB | {' | '.join(cells)} |")


def published() -> None:
    """The plan beside published figures (see docs/memory.md for what each source measured)."""
    import shutil

    with tempfile.TemporaryDirectory() as tmp:
        for name, shape in (("llama31-8b", LLAMA31_8B), ("llama-65b", LLAMA_65B)):
            (Path(tmp) / name).mkdir()
            (Path(tmp) / name / "config.json").write_text(json.dumps({"model_type": "llama", **shape}))
        one = ["--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "1", "--device_memory", "80GB"]
        print("7B, micro-batch 1, block 512, checkpointing on (LLaMA-Factory / Unsloth requirement tables):")
        for label, method in METHODS:
            plan = _plan(SEVEN_B, [*method, *one, "--block_size", "512", "--gradient_checkpointing", "true"])
            print(f"  {label}: {plan.estimate.peak / 2**30:.1f} GiB")
        print(
            "Llama 3.1 8B, QLoRA r32 on all linear layers, micro-batch 1: longest block that fits (unsloth's HF+FA2):"
        )
        for ckpt in ("true", "false"):
            cells = []
            for card in ("12GB", "16GB", "24GB", "40GB", "48GB", "80GB"):
                cells.append(f"{card} {_longest_block(Path(tmp) / 'llama31-8b', card, ckpt):,}")
            print(f"  checkpointing {ckpt}: " + ", ".join(cells))
        flags = ["--qlora", "--lora_rank", "64", "--bf16", "true", *one, "--block_size", "512",
                 "--gradient_checkpointing", "true", "--optim", "paged_adamw_32bit"]  # fmt: skip
        plan = _plan(Path(tmp) / "llama-65b", flags)
        print(f"LLaMA 65B, QLoRA r64, block 512, micro-batch 1, checkpointing: {plan.estimate.peak / 2**30:.1f} GiB")
        shutil.rmtree(tmp, ignore_errors=True)


def _longest_block(model: Path, card: str, ckpt: str) -> int:
    """Binary search, to 64 tokens, for the longest block whose plan at micro-batch 1 fits the card."""
    from medpt.args import parse_size

    memory = parse_size(card, "card")
    low, high = 0, 131072
    while high - low > 64:
        mid = (low + high) // 2 // 64 * 64
        flags = ["--qlora", "--lora_rank", "32", "--lora_dropout", "0", "--bf16", "true", "--block_size", str(mid),
                 "--per_device_train_batch_size", "1", "--gradient_checkpointing", ckpt,
                 "--device_memory", card]  # fmt: skip
        low, high = (mid, high) if _plan(model, flags).estimate.peak <= memory else (low, mid)
    return low


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saved", action="store_true", help="per-layer activations vs saved-tensor hooks")
    parser.add_argument("--plan_time", action="store_true", help="time a plan of the 7B config.json")
    parser.add_argument("--seven_b", action="store_true", help="the 7B table and the published comparisons")
    parser.add_argument("--quick", action="store_true", help="only the 5m configurations")
    parser.add_argument("--workdir", default=None, help="where tiny models, the data cache and runs go")
    parser.add_argument("--out", default=None, help="also write the RSS rows as JSON here")
    parser.add_argument("--replan", default=None, help="rows written by --out: plan them again, measure nothing")
    args = parser.parse_args()
    if args.saved:
        return saved_table()
    if args.plan_time:
        return plan_time()
    if args.seven_b:
        seven_b_table()
        return published()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="medpt-memory-"))
    if args.replan:
        return replan(workdir, args.replan)
    configs = [c for c in CONFIGS if not args.quick or c[0] == "5m"]
    rss_table(workdir, configs, args.out)


if __name__ == "__main__":
    sys.exit(main())
