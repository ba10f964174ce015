"""lm-evaluation-harness through `medpt serve` against `medpt eval`: the same multiple-choice questions, scored by
letter, base and adapted; how often the two pick the same letter, and how far apart their log-likelihoods are.

    python bench/serve_lm_eval.py [--adapter RUN] [--questions N] [--mcq_file FILE]

lm-eval's `local-completions` model asks /v1/completions for echo + logprobs of token ids (eight prompts a request,
the run's tokenizer, BOS added as medpt eval adds it); the task is medpt eval's zero-shot prompt written as an
lm-eval YAML (the option letters as continuations, right after the cue). Offline: the questions are a local jsonl.
Without --adapter it builds the tiny 25m model and a short LoRA run (bench/serve.py). Needs `pip install
'lm-eval[api]'`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from measure import machine  # noqa: E402
from serve import server, tiny_run  # noqa: E402

CMMLU = "/work/shared/data/medical_mcq_cmmlu/test.jsonl"
DOC_TO_TEXT = ("以下是医学考试的单项选择题，请选出正确答案。\n\n{{question}}\n"
               "{% for letter, text in choices.items() %}{{letter}}. {{text}}\n{% endfor %}答案：")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", help="a medpt LoRA run; default: build the tiny 25m model and a short run")
    parser.add_argument("--mcq_file", default=CMMLU)
    parser.add_argument("--questions", type=int, default=200, help="a seeded sample of this many")
    parser.add_argument("--work_dir", default="bench/results/serve_lm_eval")
    args = parser.parse_args()
    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    run = Path(args.adapter) if args.adapter else tiny_run(Path("bench/results/serve"))
    data = sample(Path(args.mcq_file), args.questions, work / "questions.jsonl")
    medpt = medpt_eval(run, data, work / "eval")
    command = [sys.executable, "-m", "medpt", "serve", "--adapter", str(run), "--port", "0"]
    rows = []
    with server(command, "Uvicorn running on ") as url:
        with urllib.request.urlopen(url + "/v1/models", timeout=60) as response:
            cards = json.loads(response.read())["data"]
        models = {"base" if card["parent"] is None else "adapted": card["id"] for card in cards}
        for which, model in models.items():
            picks, scores = lm_eval_scores(url, model, run, data, work)
            rows.append(compare(which, picks, scores, medpt))
    report = {"machine": machine(), "run": str(run), "questions": args.questions, "file": args.mcq_file, "rows": rows}
    (work / "agreement.json").write_text(json.dumps(report, indent=1))
    print(f"\n{machine()}; {args.questions} questions of {args.mcq_file}\n")
    for row in rows:
        print(f"{row['model']}: same letter {row['same']}/{row['questions']} ({100 * row['agreement']:.1f}%), "
              f"largest |Δ log-likelihood| {row['max_abs_diff']:.2e}")  # fmt: skip


def sample(source: Path, n: int, target: Path) -> Path:
    lines = [line for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    chosen = sorted(random.Random(0).sample(range(len(lines)), min(n, len(lines))))
    target.write_text("".join(lines[i] + "\n" for i in chosen), encoding="utf-8")
    return target


def medpt_eval(run: Path, data: Path, out: Path) -> list[dict]:
    from medpt.cli import main as medpt

    argv = ["eval", "--adapter", str(run), "--mcq_file", str(data), "--mcq_scoring", "letter", "--output_dir",
            str(out), "--overwrite_output_dir"]  # fmt: skip
    assert medpt(argv) == 0
    lines = (out / "mcq" / f"{data.stem}.predictions.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def lm_eval_scores(url: str, model: str, run: Path, data: Path, work: Path) -> tuple[list[str], list[dict]]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    (work / "medpt_mcq.yaml").write_text("\n".join([
        "task: medpt_mcq", "dataset_path: json", "dataset_kwargs:", "  data_files:", f"    test: {data.resolve()}",
        "test_split: test", "output_type: multiple_choice",
        f"doc_to_text: {json.dumps(DOC_TO_TEXT, ensure_ascii=False)}",
        'doc_to_choice: "{{choices.keys() | list}}"', 'doc_to_target: "{{(choices.keys() | list).index(answer)}}"',
        'target_delimiter: ""', "metric_list:", "  - metric: acc", "",
    ]), encoding="utf-8")  # fmt: skip
    model_args = (f"base_url={url}/v1/completions,model={model},tokenizer_backend=huggingface,tokenizer={run},"
                  "add_bos_token=True,batch_size=8,max_length=4096")  # fmt: skip
    result = lm_eval.simple_evaluate(model="local-completions", model_args=model_args, tasks=["medpt_mcq"],
                                     task_manager=TaskManager(include_path=str(work)), log_samples=True)  # fmt: skip
    picks, scores = [], []
    for s in sorted(result["samples"]["medpt_mcq"], key=lambda s: s["doc_id"]):
        letters = list(s["doc"]["choices"])
        values = [loglikelihood for loglikelihood, _ in s["filtered_resps"]]
        picks.append(letters[values.index(max(values))])
        scores.append(dict(zip(letters, values)))
    return picks, scores


def compare(which: str, picks: list[str], scores: list[dict], medpt: list[dict]) -> dict:
    same = sum(p == row[which]["letter"]["predicted"] for p, row in zip(picks, medpt))
    diffs = [abs(s[k] - row[which]["letter"]["logprob"][k]) for s, row in zip(scores, medpt) for k in s]
    return {"model": which, "questions": len(picks), "same": same, "agreement": same / len(picks),
            "max_abs_diff": max(diffs)}  # fmt: skip


if __name__ == "__main__":
    main()
