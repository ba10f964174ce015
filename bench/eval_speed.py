"""Evaluation speed: multiple-choice questions/s and language-model eval tokens/s on the tiny models (CPU).

    python bench/eval_speed.py [--sizes 5m 25m] [--questions 200] [--num_fewshot 0 3]

MCQ: questions from ../shared/data/medical_mcq_cmmlu/test.jsonl (else the bundled sample, repeated), k-shot (solved
examples from its dev.jsonl), letter scoring (one forward pass of the prompt per question) and text scoring (one pass
per option), batch 16. LM eval: the valid split of
../shared/data/medical_qa_zh_mix (else the bundled sample) in blocks of 512, batch 8. Weights in bf16 where the
CPU has native bf16 (medpt's default for scoring), and fp32.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(Path(__file__).parent))
from blocks import prepared_blocks  # noqa: E402
from measure import machine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["5m", "25m"])
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--num_fewshot", type=int, nargs="+", default=[0, 3])
    parser.add_argument("--work_dir", default="bench/results/train_throughput")  # reuses its tiny models
    parser.add_argument("--dtypes", nargs="+", default=None, help="default: bfloat16 (where native) and float32")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from medpt.data.pipeline import read_texts
    from medpt.eval.mcq import pick_shots, read_questions, score_questions
    from medpt.eval.metrics import lm_stats
    from medpt.model.init_tiny import init_tiny
    from medpt.model.loading import load_tokenizer
    from medpt.samples import SAMPLE_MCQ, SAMPLE_QA

    mcq_file = SHARED / "medical_mcq_cmmlu" / "test.jsonl"
    questions = read_questions([str(mcq_file if mcq_file.is_file() else SAMPLE_MCQ)])
    questions = (questions * (args.questions // len(questions) + 1))[: args.questions]
    dev = mcq_file.with_name("dev.jsonl")
    pool = read_questions([str(dev)]) if dev.is_file() else questions
    eval_file = SHARED / "medical_qa_zh_mix" / "valid.jsonl"
    eval_file = eval_file if eval_file.is_file() else SAMPLE_QA
    corpus = str(SHARED / "medical_qa_zh_mix" / "train-00000-of-00004.jsonl") if SHARED.is_dir() else str(SAMPLE_QA)
    rows = []
    for size in args.sizes:
        model_dir = Path(args.work_dir) / f"tiny-{size}"
        if not (model_dir / "medpt_tiny.json").is_file():
            init_tiny(model_dir, size, read_texts([corpus]))
        tokenizer = load_tokenizer(str(model_dir))
        packed = prepared_blocks(model_dir, eval_file, seed=0)
        from medpt.model.loading import resolve_precision

        names = args.dtypes or (["bfloat16", "float32"] if resolve_precision(None, None)[0] else ["float32"])
        for dtype in (getattr(torch, n) for n in names):
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
            t = time.perf_counter()
            stats = lm_stats(model, packed, "concat", 8, tokenizer.pad_token_id)
            lm_tps = stats.tokens / (time.perf_counter() - t)
            for k in args.num_fewshot:
                shots = [pick_shots(q, pool, k) for q in questions]
                predicted = {}
                for mode, cache in (("letter", True), ("text", True), ("text", False)):
                    t = time.perf_counter()
                    predicted[(mode, cache)] = score_questions(model, tokenizer, questions, shots, [mode], 16, cache)
                    qps = len(questions) / (time.perf_counter() - t)
                    label = f"{mode} {k}-shot" + ("" if cache or mode == "letter" else ", no KV reuse")
                    rows.append((size, str(dtype).replace("torch.", ""), label, qps, lm_tps))
                same = predicted[("text", True)] == predicted[("text", False)]
                print(f"  {size} {dtype} {k}-shot: text predictions with and without KV reuse identical: {same}")
            print(f"  {size} {dtype}: done", flush=True)
    print(f"\nMCQ: {len(questions)} questions from {mcq_file.name if mcq_file.is_file() else SAMPLE_MCQ.name}, "
          f"batch 16; LM eval: {eval_file.name}, blocks of 512, batch 8; {machine()}\n")  # fmt: skip
    print(f"{'model':<7}{'weights':<10}{'MCQ scoring':<30}{'questions/s':>12}{'eval tokens/s':>15}")
    for size, dtype, mode, qps, tps in rows:
        print(f"{size:<7}{dtype:<10}{mode:<30}{qps:>12.1f}{tps:>15,.0f}")


if __name__ == "__main__":
    main()
