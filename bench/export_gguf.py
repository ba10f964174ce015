"""GGUF export of a tiny model: file size, logits vs transformers, held-out perplexity, generation speed (CPU).

    python bench/export_gguf.py [--size 25m] [--quants f16 q8_0 q4_k_m] [--docs 300] [--steps 20]

Builds the tiny model (`medpt init-tiny`), trains a short LoRA run on the bundled sample, then runs
`medpt export --target gguf --quant Q` for each type and measures, on the same CPU and thread count:
- max |Δlogit| of llama.cpp (llama-cpp-python) vs the merged model in transformers (fp32) on the export probe;
- perplexity on the first --docs documents of ../shared/data/medical_qa_zh_mix/valid.jsonl (rendered with medpt's
  qa_separator template, each cut to 512 tokens; else the bundled sample), the same token ids in both engines;
- greedy generation tokens/s (64 new tokens after a question prompt, one token per step, no early stop).
The tiny model starts from random weights: its perplexities are large, and only their change between types means
something. Needs llama-cpp-python (pip install 'medpt[llamacpp]').
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(Path(__file__).parent))
from measure import machine  # noqa: E402

PROMPT = "问:高血压患者平时饮食需要注意什么？\n答:"
NEW_TOKENS = 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="25m")
    parser.add_argument("--quants", nargs="+", default=["f16", "q8_0", "q4_k_m"])
    parser.add_argument("--docs", type=int, default=300)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--work_dir", default="bench/results/export_gguf")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    work = Path(args.work_dir)
    run = train_run(work, args.size, args.steps)
    exports = {q: export(run, work / f"gguf-{q}", q) for q in args.quants}
    merged_dir = export(run, work / "merged", None)
    model = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    docs = held_out(tokenizer, args.docs)
    rows = [{"engine": "transformers fp32", "file_mb": size_mb(merged_dir / "model.safetensors"),
             "max_abs_logit_diff": 0.0, "perplexity": perplexity(lambda ids: hf_logits(model, ids), docs),
             "tokens_per_s": tokens_per_s(lambda ids: greedy_hf(model, ids), tokenizer)}]  # fmt: skip
    print(f"transformers fp32: {rows[0]}", flush=True)
    for quant, out in exports.items():
        rows.append(llama_row(quant, out, model, tokenizer, docs, args.threads))
        print(f"llama.cpp {quant}: {rows[-1]}", flush=True)
    report = {"machine": machine(), "size": args.size, "threads": args.threads, "docs": len(docs), "rows": rows}
    (work / "results.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    print(table(report))


def train_run(work: Path, size: str, steps: int) -> Path:
    from medpt.cli import main as medpt
    from medpt.samples import SAMPLE_QA

    model, run = work / f"tiny-{size}", work / f"run-{size}"
    if not model.exists():
        assert medpt(["init-tiny", "--output_dir", str(model), "--size", size]) == 0
    if not (run / "adapter_model.safetensors").exists():
        argv = ["train", "--model_name_or_path", str(model), "--train_file_dir", str(SAMPLE_QA), "--block_size", "256",
                "--per_device_train_batch_size", "4", "--max_steps", str(steps), "--learning_rate", "3e-3",
                "--output_dir", str(run), "--overwrite_output_dir", "--report_to", "none", "--save_strategy", "no",
                "--eval_strategy", "no", "--plot", "false", "--disable_tqdm", "true"]  # fmt: skip
        assert medpt(argv) == 0
    return run


def export(run: Path, out: Path, quant: str | None) -> Path:
    from medpt.cli import main as medpt

    target = ["--target", "gguf", "--quant", quant] if quant else ["--target", "merged"]
    argv = ["export", "--adapter", str(run), "--output_dir", str(out), "--overwrite_output_dir", *target]
    assert medpt(argv) in (0, 1)
    return out


def held_out(tokenizer, n: int) -> list[list[int]]:
    from medpt.data.pipeline import read_texts
    from medpt.samples import SAMPLE_QA

    valid = SHARED / "medical_qa_zh_mix" / "valid.jsonl"
    texts = read_texts([str(valid if valid.is_file() else SAMPLE_QA)])[:n]
    return [tokenizer(t)["input_ids"][:512] for t in texts]


def hf_logits(model, ids: list[int]):
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def perplexity(logits_of, docs: list[list[int]]) -> float:
    """exp of the mean next-token NLL over all documents (each token predicted from its document's prefix)."""
    import numpy as np

    nll, count = 0.0, 0
    for ids in docs:
        logits = logits_of(ids)[:-1].astype(np.float64)
        top = logits.max(axis=1, keepdims=True)
        log_z = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
        nll += float((log_z - logits[np.arange(len(ids) - 1), ids[1:]]).sum())
        count += len(ids) - 1
    return math.exp(nll / count)


def greedy_hf(model, ids: list[int]) -> int:
    import torch

    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                             do_sample=False)  # fmt: skip
    return out.shape[1] - len(ids)


def greedy_llama(llm, ids: list[int]) -> int:
    from medpt.export.probe import greedy_llama as greedy

    return len(greedy(llm, ids, NEW_TOKENS))


def tokens_per_s(generate, tokenizer) -> float:
    ids = tokenizer(PROMPT)["input_ids"]
    generate(ids)  # warm-up
    start = time.perf_counter()
    n = generate(ids)
    return n / (time.perf_counter() - start)


def llama_row(quant: str, out: Path, model, tokenizer, docs, threads: int) -> dict:
    from llama_cpp import Llama

    from medpt.export.gguf_writer import gguf_name
    from medpt.export.probe import llama_logits

    path = out / gguf_name(quant)
    check = json.loads((out / "export.json").read_text())["llama_cpp_check"]
    llm = Llama(model_path=str(path), logits_all=True, n_ctx=512, n_threads=threads, verbose=False)
    try:
        row = {"engine": f"llama.cpp {quant}", "file_mb": size_mb(path),
               "max_abs_logit_diff": check["max_abs_logit_diff"],
               "perplexity": perplexity(lambda ids: llama_logits(llm, ids), docs),
               "tokens_per_s": tokens_per_s(lambda ids: greedy_llama(llm, ids), tokenizer)}  # fmt: skip
    finally:
        llm.close()
    return row


def size_mb(path: Path) -> float:
    return path.stat().st_size / 1e6


def table(report: dict) -> str:
    base = report["rows"][0]
    lines = [
        f"{report['machine']}; tiny {report['size']}, {report['threads']} threads, {report['docs']} held-out documents",
        "| engine | file MB | max abs Δlogit | perplexity | Δ perplexity | generate tokens/s | speed vs transformers |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report["rows"]:
        change = (r["perplexity"] / base["perplexity"] - 1) * 100
        speed = r["tokens_per_s"] / base["tokens_per_s"]
        lines.append(f"| {r['engine']} | {r['file_mb']:.1f} | {r['max_abs_logit_diff']:.2e} | {r['perplexity']:,.1f} | "
                     f"{change:+.2f}% | {r['tokens_per_s']:.0f} | {speed:.2f}x |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
