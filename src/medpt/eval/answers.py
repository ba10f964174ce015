"""`medpt eval --generate_eval N`: answers to held-out questions, base vs adapted, scored against the reference
answers.

1. Questions: N (a seeded sample) conversation records from --generate_file, else from the run's validation files,
   else the held-out side of the run's stable hash split of its training files (the documents `prepare` kept for
   validation); each gives its first question and the answer to it (the reference).
2. Answers: greedy, asked in the training template, stopped where the model starts the next turn
   (medpt.generate.prompting, as `medpt compare`), in batches of --per_device_eval_batch_size (prompts of similar
   length together).
3. Scores, per answer, 0-100 (medpt.eval.textmetrics: chrF, BLEU with the Chinese tokenizer, ROUGE-L on characters); per
   metric the mean of each model, Δ and the 95% CI of Δ by paired bootstrap over answers (medpt.eval.stats).
4. RUN/eval/generated_answers.jsonl and .md: every question, reference, both answers and their scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medpt.errors import BadRecordError, MedptError
from medpt.eval.textmetrics import METRICS, score_answer
from medpt.generate.prompting import blockquote
from medpt.strictjson import dumps


@dataclass(frozen=True)
class HeldOut:
    question: str
    reference: str
    where: str


def held_out_questions(config: Any) -> list[HeldOut]:
    """The questions of step 1, checked before any model is loaded."""
    from medpt.data.hygiene import sample_indices
    from medpt.eval.textmetrics import sacrebleu_metrics

    sacrebleu_metrics()
    e, data = config.eval, config.data
    if e.generate_file or data.validation_file_dir:
        flag = "generate_file" if e.generate_file else "validation_file_dir"
        pairs = read_pairs(e.generate_file or data.validation_file_dir, flag, data, held_out_only=False)
    elif data.train_file_dir:
        pairs = read_pairs(data.train_file_dir, "train_file_dir", data, held_out_only=True)
    else:
        raise MedptError("--generate_eval needs questions with reference answers: pass --generate_file FILE")
    if not pairs:
        raise MedptError("--generate_eval: no conversation with a question and an answer among the held-out records")
    return [pairs[i] for i in sample_indices(len(pairs), e.generate_eval, config.run.seed)]


def read_pairs(patterns: list[str], flag: str, data: Any, held_out_only: bool) -> list[HeldOut]:
    """(first question, its answer) of every conversation record; with `held_out_only`, only records the stable
    split holds out (medpt.data.hygiene.in_validation, as `prepare` decides it)."""
    from medpt.data.formats import detect_format, to_document
    from medpt.data.hygiene import in_validation
    from medpt.data.paths import resolve_files
    from medpt.data.records import FileSource

    pairs = []
    for path in resolve_files(patterns, flag):
        for record in FileSource(path, data.encoding, data.txt_split).records():
            if isinstance(record, BadRecordError):
                raise MedptError(str(record))
            doc = to_document(record, data.data_format if data.data_format != "auto" else detect_format(record))
            if held_out_only and not in_validation(doc.split_key, data.validation_split_percentage):
                continue
            pair = _first_exchange(doc.turns or [])
            if pair is not None:
                pairs.append(HeldOut(*pair, f"{record.source}:{record.line}"))
    return pairs


def _first_exchange(turns: list[tuple[str, str]]) -> tuple[str, str] | None:
    for i, (role, text) in enumerate(turns[:-1]):
        if role == "human" and turns[i + 1][0] == "gpt" and text.strip() and turns[i + 1][1].strip():
            return text, turns[i + 1][1]
    return None


def greedy_answers(config: Any, model: Any, tokenizer: Any, questions: list[str]) -> list[str]:
    """Greedy answers in the training template, in batches of prompts of similar length (less padding)."""
    from medpt.generate.prompting import answer, build_prompt, stop_strings

    prompts = [build_prompt(q, [], config.data, tokenizer) for q in questions]
    batch = config.eval_batch_size
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers = [""] * len(prompts)
    stops = stop_strings(config.data)
    for start in range(0, len(order), batch):
        chunk = order[start : start + batch]
        texts = answer(model, tokenizer, [prompts[i] for i in chunk], config.generate, stops, config.run.seed)
        for i, text in zip(chunk, texts):
            answers[i] = text
    return answers


def evaluate_answers(config: Any, variants: Any, qas: list[HeldOut], out: Path, log: Any = print) -> dict[str, Any]:
    """Steps 2-4: answers of each model, their scores and the summary."""
    from medpt.eval.stats import mean_difference_ci

    answers, scores = {}, {}
    for which in variants.names:
        with variants.use(which) as model:
            answers[which] = greedy_answers(config, model, variants.tokenizer, [q.question for q in qas])
        scores[which] = [score_answer(a, q.reference) for a, q in zip(answers[which], qas)]
        log(f"  generated / {which}: {len(qas)} answers")
    summary: dict[str, Any] = {"answers": len(qas), "max_new_tokens": config.generate.max_new_tokens, "metrics": {}}
    for metric in METRICS:
        values = {w: np.array([s[metric] for s in scores[w]]) for w in variants.names}
        row: dict[str, Any] = {w: float(v.mean()) for w, v in values.items()}
        if "adapted" in values:
            diff = values["adapted"] - values["base"]
            row["delta"] = float(diff.mean())
            row["ci"] = mean_difference_ci([diff], config.eval.bootstrap_resamples, config.run.seed).to_list()
        summary["metrics"][metric] = row
    summary["mean_chars"] = {w: float(np.mean([len(a) for a in answers[w]])) for w in variants.names}
    summary["empty"] = {w: sum(not a for a in answers[w]) for w in variants.names}
    write_answers(out, qas, answers, scores)
    return summary


def write_answers(out: Path, qas: list[HeldOut], answers: dict[str, list[str]], scores: dict[str, list]) -> None:
    from medpt.atomic import atomic_write_text
    from medpt.rundir import GENERATED

    rows = [
        {
            "where": q.where,
            "question": q.question,
            "reference": q.reference,
            **{w: {"answer": answers[w][i], **scores[w][i]} for w in answers},
        }  # fmt: skip
        for i, q in enumerate(qas)
    ]
    atomic_write_text(out / f"{GENERATED}.jsonl", "".join(dumps(r, ensure_ascii=False) + "\n" for r in rows))
    parts = ["# Generated answers vs reference answers\n"]
    for i, r in enumerate(rows, start=1):
        parts.append(f"## {i}. {r['question']}\n\n({r['where']})\n\n**reference**\n\n> {blockquote(r['reference'])}\n")
        for w in answers:
            score = ", ".join(f"{m} {r[w][m]:.1f}" for m in METRICS)
            parts.append(f"**{w}** ({score})\n\n> {blockquote(r[w]['answer'])}\n")
    atomic_write_text(out / f"{GENERATED}.md", "\n".join(parts))


def format_answers(summary: dict[str, Any]) -> str:
    variants = list(summary["mean_chars"])
    adapted = "adapted" in variants
    head = "| metric | base |" + (" adapted | Δ | 95% CI |" if adapted else "")
    lines = [
        f"Generated answers: {summary['answers']} held-out questions, greedy, at most {summary['max_new_tokens']} "
        "new tokens, scored 0-100 against the reference answers (per answer, then averaged)"
        + ("; 95% CI of the paired difference: bootstrap over answers" if adapted else ""),
        "",
        head,
        "| --- | ---: |" + (" ---: | ---: | --- |" if adapted else ""),
    ]
    for metric, row in summary["metrics"].items():
        cells = [metric, f"{row['base']:.1f}"]
        if adapted:
            ci = row["ci"]
            cells += [f"{row['adapted']:.1f}", f"{row['delta']:+.1f}",
                      f"[{ci[0]:+.1f}, {ci[1]:+.1f}]" if None not in ci else "n/a"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    chars = " · ".join(f"{w} {summary['mean_chars'][w]:.0f} characters ({summary['empty'][w]} empty)"
                       for w in variants)  # fmt: skip
    lines += ["", f"Mean answer length: {chars}. The answers beside the references: generated_answers.md (and .jsonl)."]
    return "\n".join(lines)
