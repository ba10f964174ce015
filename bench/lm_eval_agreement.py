"""`medpt eval` against lm-evaluation-harness's `hf` model with the task YAMLs of docs/lm_eval: the same
multiple-choice questions, few-shot prompts from dev.jsonl, letter and text scoring; per question, whether the two
tools build the same prompt and pick the same letter, how far apart their log-likelihoods are, and both accuracies.

    python bench/lm_eval_agreement.py [--adapter RUN] [--questions 200] [--num_fewshot 5]

Three lm-eval models: the base (`pretrained=BASE`), the adapter through lm-eval's `peft=` (which resizes the
embedding matrix to the tokenizer's length when the model's vocabulary is padded) and the model `medpt merge` wrote
(`pretrained=MERGED`, nothing resized). medpt picks few-shot examples of the question's subject first, lm-eval's
`first_n` the first k of its dev split: the questions are split by subject, one task per subject and scoring mode
(including the shipped YAMLs), so the prompts are the same. Without --adapter: the tiny 25m model and a short LoRA
run (bench/serve.py; --tiny 5m for the test fixtures' size). Offline: the questions are local jsonl files.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from measure import machine  # noqa: E402
from serve import tiny_run  # noqa: E402
from serve_lm_eval import sample  # noqa: E402

CMMLU = Path("/work/shared/data/medical_mcq_cmmlu")
TEMPLATES = Path(__file__).resolve().parent.parent / "docs" / "lm_eval"
MODES = {"letter": "acc", "text": "acc_norm"}  # medpt's scoring mode -> lm-eval's metric of the same prediction


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", help="a medpt LoRA run; default: build the tiny 25m model and a short run")
    parser.add_argument("--mcq_dir", default=str(CMMLU), help="a benchmark folder: test.jsonl and dev.jsonl")
    parser.add_argument("--tiny", default="25m", help="without --adapter: the tiny model's size (5m, 25m)")
    parser.add_argument("--questions", type=int, default=200, help="a seeded sample of this many")
    parser.add_argument("--num_fewshot", type=int, default=5)
    parser.add_argument("--prompts_only", action="store_true", help="compare the prompts only (no model is run)")
    parser.add_argument("--work_dir", default="bench/results/lm_eval_agreement")
    args = parser.parse_args()
    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")

    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    data = sample(Path(args.mcq_dir) / "test.jsonl", args.questions, work / "questions.jsonl")
    dev = Path(args.mcq_dir) / "dev.jsonl"
    tasks = write_tasks(data, dev, work / "tasks")
    same, total = same_prompts(data, dev, tasks, work / "tasks", args.num_fewshot)
    print(f"{args.num_fewshot}-shot prompts of the lm-eval tasks equal to medpt eval's: {same}/{total}")
    if args.prompts_only:
        return
    run = Path(args.adapter).resolve() if args.adapter else tiny_run(work / f"tiny-{args.tiny}", args.tiny).resolve()
    base = json.loads((run / "base_model.json").read_text())["name"]
    medpt = medpt_eval(run, data, dev, args.num_fewshot, work / f"eval-{args.num_fewshot}shot")
    merged = medpt_merge(run, work / "merged")
    models = {"base": ("base", f"pretrained={base}"), "adapted, peft=": ("adapted", f"pretrained={base},peft={run}"),
              "adapted, merged": ("adapted", f"pretrained={merged}")}  # fmt: skip
    rows = []
    for label, (which, model_args) in models.items():
        samples = lm_eval_samples(model_args, tasks, work / "tasks", args.num_fewshot)
        rows += [compare(label, which, mode, samples[mode], medpt) for mode in MODES]
    report = {"machine": machine(), "run": str(run), "file": str(data), "questions": len(medpt),
              "num_fewshot": args.num_fewshot, "rows": rows}  # fmt: skip
    (work / "agreement.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    print(f"\n{machine()}; {len(medpt)} questions of {args.mcq_dir}, {args.num_fewshot}-shot\n")
    print("| lm-eval model | scoring | same prompt | same letter | accuracy medpt | accuracy lm-eval | max abs Δ ll |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['model']} | {r['mode']} | {r['same_prompt']}/{r['questions']} | {r['same']}/{r['questions']} | "
              f"{r['medpt_accuracy']:.1%} | {r['lm_eval_accuracy']:.1%} | {r['max_abs_diff']:.1e} |")  # fmt: skip


def key(doc: dict) -> str:
    """A question and its options (CMMLU repeats a question text with other options)."""
    return json.dumps([doc["question"], doc["choices"]], ensure_ascii=False)


def medpt_eval(run: Path, data: Path, dev: Path, k: int, out: Path) -> dict[str, dict]:
    """medpt eval's rows (RUN/eval/mcq/*.predictions.jsonl), by question, each with the prompt medpt built; an
    earlier eval of the same questions in `out` is reused (remove --work_dir to redo it)."""
    from medpt.cli import main as medpt
    from medpt.eval.mcq import build_prompt, pick_shots, read_questions

    argv = ["eval", "--adapter", str(run), "--mcq_file", str(data), "--fewshot_file", str(dev), "--num_fewshot",
            str(k), "--mcq_scoring", "both", "--torch_dtype", "float32", "--output_dir", str(out),
            "--overwrite_output_dir"]  # fmt: skip
    predictions = out / "mcq" / f"{data.stem}.predictions.jsonl"
    assert predictions.is_file() or medpt(argv) == 0
    lines = predictions.read_text(encoding="utf-8").splitlines()
    pool = read_questions([str(dev)])
    rows = {}
    for q, line in zip(read_questions([str(data)]), lines):
        rows[key(vars(q))] = {**json.loads(line), "prompt": build_prompt(q, pick_shots(q, pool, k))}
    assert len(rows) == len(lines), "questions repeat: they cannot key the comparison"
    return rows


def medpt_merge(run: Path, out: Path) -> Path:
    from medpt.cli import main as medpt

    if not (out / "config.json").is_file():
        argv = ["merge", "--adapter", str(run), "--output_dir", str(out), "--torch_dtype", "float32"]
        assert medpt(argv) == 0
    return out


def write_tasks(data: Path, dev: Path, folder: Path) -> list[str]:
    """One task per subject and scoring mode, each including the shipped template with that subject's test and dev
    questions, so lm-eval's first_n few-shot examples are medpt's (same subject first, in file order)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for template in TEMPLATES.glob("*.yaml"):
        shutil.copy(template, folder / template.name)
    by_subject: dict[str, dict[str, list[str]]] = defaultdict(lambda: {"test": [], "dev": []})
    for split, path in (("test", data), ("dev", dev)):
        for line in path.read_text(encoding="utf-8").splitlines():
            by_subject[json.loads(line)["subject"]][split].append(line)
    tasks = []
    for subject, splits in sorted(by_subject.items()):
        if not splits["test"]:
            continue
        for split, lines in splits.items():
            (folder / subject).mkdir(exist_ok=True)
            (folder / subject / f"{split}.jsonl").write_text("".join(x + "\n" for x in lines), encoding="utf-8")
        for mode in MODES:
            name = f"medpt_mcq_{mode}_{subject}"
            (folder / f"{name}.yaml").write_text(
                f"include: medpt_mcq_{mode}.yaml\ntask: {name}\ndataset_kwargs:\n  data_files:\n"
                f"    test: {folder / subject / 'test.jsonl'}\n    dev: {folder / subject / 'dev.jsonl'}\n",
                encoding="utf-8",
            )
            tasks.append(name)
    return tasks


def same_prompts(data: Path, dev: Path, tasks: list[str], folder: Path, k: int) -> tuple[int, int]:
    """How many of lm-eval's prompts (its tasks' k-shot contexts, built without a model) equal medpt eval's."""
    from lm_eval.tasks import TaskManager, get_task_dict

    from medpt.eval.mcq import build_prompt, pick_shots, read_questions

    pool = read_questions([str(dev)])
    ours = {key(vars(q)): build_prompt(q, pick_shots(q, pool, k)) for q in read_questions([str(data)])}
    same = total = 0
    for task in get_task_dict(tasks, TaskManager(include_path=str(folder))).values():
        task.set_config(key="num_fewshot", value=k)
        for doc in task.test_docs():
            same, total = same + (task.fewshot_context(doc, k) == ours[key(doc)]), total + 1
    return same, total


def lm_eval_samples(model_args: str, tasks: list[str], folder: Path, k: int) -> dict[str, list[dict]]:
    """lm-eval's logged samples of every task, per scoring mode: the document, the (context, continuation) pairs,
    every option's log-likelihood, and lm-eval's own right/wrong."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    result = lm_eval.simple_evaluate(
        model="hf", model_args=f"{model_args},dtype=float32,add_bos_token=True,device=cpu", tasks=tasks,
        num_fewshot=k, batch_size=8, task_manager=TaskManager(include_path=str(folder)), log_samples=True,
    )  # fmt: skip
    out: dict[str, list[dict]] = {mode: [] for mode in MODES}
    for task, samples in result["samples"].items():
        out[task.split("_")[2]] += samples
    return out


def compare(label: str, which: str, mode: str, samples: list[dict], medpt: dict[str, dict]) -> dict:
    same = same_prompt = right_medpt = right_lm_eval = 0
    diffs = []
    for s in samples:
        row = medpt[key(s["doc"])]
        letters = list(s["doc"]["choices"])
        lls = [ll for ll, _ in s["filtered_resps"]]
        ours = row[which][mode]
        same_prompt += all(arg[0] == row["prompt"] for arg in s["arguments"])
        norm = [1] * len(letters) if mode == "letter" else [len(s["doc"]["choices"][x]) for x in letters]
        scores = [ll / n for ll, n in zip(lls, norm)]
        same += letters[scores.index(max(scores))] == ours["predicted"]
        right_medpt += ours["predicted"] == row["answer"]
        right_lm_eval += s[MODES[mode]]
        diffs += [abs(ll - ours["logprob"][x]) for x, ll in zip(letters, lls)]
    n = len(samples)
    return {"model": label, "mode": mode, "questions": n, "same_prompt": same_prompt, "same": same,
            "medpt_accuracy": right_medpt / n, "lm_eval_accuracy": right_lm_eval / n,
            "max_abs_diff": max(diffs)}  # fmt: skip


if __name__ == "__main__":
    main()
