"""The multiple-choice suite of `medpt eval`: every benchmark, base vs adapted, in one table, with how sure each
difference is and how much of it could be position bias.

1. Benchmarks: `--mcq NAME=FILE ...`, `--mcq_file` (one benchmark, named after the file) and `--mcq_dir DIR` (every
   DIR/medical_mcq_*/ and DIR/general_mcq_*/ holding a test.jsonl; medpt.eval.mcq.find_benchmarks). Few-shot examples
   come from --fewshot_file, else from the benchmark's own dev.jsonl. All questions are read and checked before the
   model is loaded.
2. Scoring: medpt.eval.mcq, unchanged (its predictions equal lm-evaluation-harness's on the same prompts). With
   `--circular` every question is asked once per rotation of its options (ABCD, BCDA, CDAB, DABC: the texts move,
   the letters stay; k rotations for k options, and k may differ from question to question) and is right only if
   every rotation is (OpenCompass's CircularEval), so a model that always answers one letter scores 0 instead of
   that letter's share of the answers.
3. Per benchmark and scoring mode: accuracy of each model with its 95% interval (Wilson; per subject too), Δ, the
   95% CI of Δ (paired bootstrap over questions, medpt.eval.stats), McNemar's exact p, the distribution of predicted
   letters (a warning when one letter takes more than half, BIAS_SHARE and BIAS_FACTOR), and per-subject accuracies
   (JSON). Overall: micro (every question counts once) and macro (every benchmark counts once), with the bootstrap
   stratified by benchmark and the macro accuracy's interval from Wilson with the benchmarks' effective sample size
   (medpt.eval.stats.macro_accuracy_ci).
4. RUN/eval/mcq/NAME.predictions.jsonl: every option's log-likelihood for each model and question (and rotation), one
   file per benchmark, so evaluating another benchmark later never overwrites it.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medpt.args.commands import COMMANDS
from medpt.errors import MedptError
from medpt.eval.mcq import Benchmark, Question, benchmark_folder, benchmark_name, find_benchmarks, read_questions
from medpt.strictjson import dumps

# A letter predicted for more than BIAS_SHARE of the questions, and more than BIAS_FACTOR times as often as uniform
# guessing would pick it, is flagged: with 3 or more options the first rule decides; with two, uniform guessing
# answers A half of the time, so the flag waits for 75%.
BIAS_SHARE = 0.5
BIAS_FACTOR = 1.5


@dataclass
class LoadedBenchmark:
    name: str
    questions: list[Question]
    shots: list[list[Question]]
    num_fewshot: int
    fewshot_from: str | None


# --- 1. which benchmarks -------------------------------------------------------------------------------------------
def resolve_benchmarks(e: Any) -> list[Benchmark]:
    """--mcq NAME=FILE, --mcq_file and --mcq_dir as named benchmarks (names unique)."""
    found: list[Benchmark] = []
    for item in e.mcq or []:
        name, _, path = item.partition("=")
        folder = benchmark_folder(Path(path)) if Path(path).is_dir() else None
        dev = Path(path).parent / "dev.jsonl"
        fewshot = str(dev) if Path(path).is_file() and dev.is_file() and dev.name != Path(path).name else None
        found.append(Benchmark(name, folder.files, folder.fewshot) if folder else Benchmark(name, (path,), fewshot))
    if e.mcq_file:
        found.append(Benchmark(benchmark_name(e.mcq_file[0]), tuple(e.mcq_file)))
    if e.mcq_dir:
        found += find_benchmarks(e.mcq_dir)
    names = Counter(b.name for b in found)
    twice = [n for n, k in names.items() if k > 1]
    if twice:
        raise MedptError(f"two benchmarks are named {twice[0]!r}; name them with --mcq NAME=FILE")
    return found


def load_benchmarks(config: Any, log: Any = print) -> list[LoadedBenchmark]:
    """Every benchmark's questions (a seeded sample of --max_mcq_questions) and few-shot examples, checked."""
    from medpt.data.hygiene import sample_indices
    from medpt.eval.mcq import pick_shots

    e = config.eval
    common_pool = read_questions([e.fewshot_file], "fewshot_file") if e.fewshot_file else None
    loaded = []
    for b in resolve_benchmarks(e):
        questions = read_questions(list(b.files), "mcq")
        questions = [questions[i] for i in sample_indices(len(questions), e.max_mcq_questions, config.run.seed)]
        source = e.fewshot_file or b.fewshot
        pool = common_pool if common_pool is not None else (read_questions([b.fewshot], "mcq") if b.fewshot else [])
        k = e.num_fewshot if pool else 0
        if e.num_fewshot and not pool:
            log(f"  note: {b.name} has no dev.jsonl beside its questions: scored 0-shot")
        shots = [pick_shots(q, pool, k) for q in questions]
        loaded.append(LoadedBenchmark(b.name, questions, shots, k, source if k else None))
    return loaded


# --- 2. scoring -------------------------------------------------------------------------------------------------
def rotations(q: Question) -> list[Question]:
    """The question once per cyclic shift of its option texts; the letters stay in place, the answer follows."""
    letters, texts = list(q.choices), list(q.choices.values())
    k, answer = len(letters), letters.index(q.answer)
    return [
        Question(
            q.question,
            {letters[i]: texts[(i + r) % k] for i in range(k)},
            letters[(answer - r) % k],
            q.subject,
            q.where,
        )
        for r in range(k)
    ]


@dataclass
class Asked:
    """The prompts of one benchmark: each question once, or once per rotation of its options (as many as it has:
    questions of 2 to 26 options mix in one file), with the index of the question each one asks."""

    questions: list[Question]
    shots: list[list[Question]]
    owner: np.ndarray

    @classmethod
    def of(cls, b: LoadedBenchmark, circular: bool) -> Asked:
        asked, shots, owner = [], [], []
        for i, (q, s) in enumerate(zip(b.questions, b.shots)):
            for rotated in rotations(q) if circular else [q]:
                asked.append(rotated)
                shots.append(s)
                owner.append(i)
        return cls(asked, shots, np.array(owner, dtype=np.int64))


def score_benchmark(b: LoadedBenchmark, variants: Any, modes: list[str], circular: bool, batch_size: int,
                    log: Any = print) -> tuple[Asked, dict[str, Any], dict[str, float]]:  # fmt: skip
    """Every asked question (each rotation when circular), and per model: option log-likelihoods and predictions."""
    from medpt.eval.mcq import option_logprobs, predict

    a = Asked.of(b, circular)
    asked, shots = a.questions, a.shots
    scored: dict[str, Any] = {}
    seconds = {}
    for which in variants.names:
        t = time.perf_counter()
        with variants.use(which) as model:
            logprobs = option_logprobs(model, variants.tokenizer, asked, shots, modes, batch_size, log=log)
        predicted = {m: [predict(q, lp, m) for q, lp in zip(asked, logprobs[m])] for m in modes}
        scored[which] = {"logprobs": logprobs, "predicted": predicted}
        seconds[which] = round(time.perf_counter() - t, 2)
        log(f"  {b.name} / {which}: {len(asked)} prompts in {seconds[which]:.1f} s")
    return a, scored, seconds


def write_predictions(path: Path, name: str, asked: list[Question], scored: dict[str, Any], circular: bool) -> None:
    """One line per asked question: where it is, its answer, and for each model and mode every option's
    log-likelihood (text scoring predicts by log-likelihood per character) and the prediction."""
    from medpt.atomic import atomic_writer

    with atomic_writer(path) as f:
        for i, q in enumerate(asked):
            row: dict[str, Any] = {"benchmark": name, "where": q.where, "subject": q.subject, "answer": q.answer}
            if circular:
                row["choices"] = q.choices
            for which, s in scored.items():
                row[which] = {m: {"predicted": s["predicted"][m][i], "logprob": s["logprobs"][m][i]}
                              for m in s["predicted"]}  # fmt: skip
            f.write(dumps(row, ensure_ascii=False) + "\n")


# --- 3. statistics ------------------------------------------------------------------------------------------------
def correctness(asked: Asked, predicted: list[str], questions: int) -> np.ndarray:
    """Right or wrong per original question: with rotations, right only if every rotation is (each question has as
    many rotations as options, so they are counted per question, never reshaped into equal rows)."""
    wrong = np.array([p != q.answer for q, p in zip(asked.questions, predicted)], dtype=np.float64)
    return np.bincount(asked.owner, weights=wrong, minlength=questions) == 0


def summarize_mode(b: LoadedBenchmark, asked: list[Question], right: dict[str, np.ndarray], scored: dict[str, Any],
                   mode: str, resamples: int, seed: int) -> dict[str, Any]:  # fmt: skip
    """One benchmark, one scoring mode: accuracies with their intervals, Δ with its CI and p, letters, bias,
    subjects."""
    from medpt.eval.stats import accuracy_ci, mcnemar_exact, mean_difference_ci

    out: dict[str, Any] = {
        "accuracy": {w: float(r.mean()) for w, r in right.items()},
        "accuracy_ci": {w: accuracy_ci(r).to_list() for w, r in right.items()},
        "letters": {w: _shares(s["predicted"][mode]) for w, s in scored.items()},
        "answers": _shares([q.answer for q in asked]),
        "by_subject": _by_subject(b.questions, right),
    }
    biased = {w: _biased(v, asked) for w, v in out["letters"].items()}
    out["bias"] = {w: v for w, v in biased.items() if v}
    if "adapted" in right:
        diff = right["adapted"].astype(float) - right["base"]
        out["delta"] = float(diff.mean())
        out["ci"] = mean_difference_ci([diff], resamples, seed).to_list()
        out["mcnemar_p"] = mcnemar_exact(right["base"], right["adapted"])
    return out


def _biased(shares: dict[str, float], asked: list[Question]) -> str | None:
    """The flag ("D 62%") when the most predicted letter is flagged (BIAS_SHARE, BIAS_FACTOR), else None. Uniform
    guessing picks a letter with probability 1/k in a question of k options that has it, 0 in one that has not."""
    letter = max(shares, key=shares.get)
    uniform = sum(1 / len(q.choices) for q in asked if letter in q.choices) / len(asked)
    share = shares[letter]
    return f"{letter} {share:.0%}" if share > max(BIAS_SHARE, BIAS_FACTOR * uniform) else None


def _shares(letters: list[str]) -> dict[str, float]:
    counts = Counter(letters)
    return {letter: counts[letter] / len(letters) for letter in sorted(counts)}


def _by_subject(questions: list[Question], right: dict[str, np.ndarray]) -> dict[str, Any]:
    from medpt.eval.stats import accuracy_ci

    rows: dict[str, list[int]] = defaultdict(list)
    for i, q in enumerate(questions):
        rows[q.subject].append(i)
    return {
        s: {"n": len(ix), **{w: float(r[ix].mean()) for w, r in right.items()},
            "accuracy_ci": {w: accuracy_ci(r[ix]).to_list() for w, r in right.items()}}
        for s, ix in sorted(rows.items())
    }  # fmt: skip


def overall(rights: list[dict[str, np.ndarray]], resamples: int, seed: int) -> dict[str, Any]:
    """Micro (pooled questions) and macro (mean of benchmark accuracies) of one scoring mode, from each benchmark's
    right/wrong per question and model; the bootstrap stratified by benchmark."""
    from medpt.eval.stats import accuracy_ci, macro_accuracy_ci, mcnemar_exact, mean_difference_ci

    variants = list(rights[0])
    pooled = {w: np.concatenate([r[w] for r in rights]) for w in variants}
    micro = {w: float(pooled[w].mean()) for w in variants}
    macro = {w: float(np.mean([r[w].mean() for r in rights])) for w in variants}
    micro_ci = {w: accuracy_ci(pooled[w]).to_list() for w in variants}
    macro_ci = {w: macro_accuracy_ci([r[w] for r in rights]).to_list() for w in variants}
    out = {"questions": sum(len(r[variants[0]]) for r in rights), "micro": {"accuracy": micro, "accuracy_ci": micro_ci},
           "macro": {"accuracy": macro, "accuracy_ci": macro_ci}}  # fmt: skip
    if "adapted" in variants:
        diffs = [r["adapted"].astype(float) - r["base"] for r in rights]
        for kind, acc in (("micro", micro), ("macro", macro)):
            out[kind]["delta"] = acc["adapted"] - acc["base"]
            out[kind]["ci"] = mean_difference_ci(diffs, resamples, seed, macro=kind == "macro").to_list()
        out["micro"]["mcnemar_p"] = mcnemar_exact(pooled["base"], pooled["adapted"])
    return out


def run_suite(config: Any, loaded: list[LoadedBenchmark], variants: Any, out: Path, log: Any = print) -> dict:
    """Score every benchmark with every model; write the predictions; return results["mcq"]."""
    from medpt.eval.stats import CONFIDENCE
    from medpt.rundir import MCQ_DIR, claim_dir

    e = config.eval
    modes = ["letter", "text"] if e.mcq_scoring == "both" else [e.mcq_scoring]
    claim_dir(out / MCQ_DIR, COMMANDS["eval"], writes=[f"{b.name}.predictions.jsonl" for b in loaded])
    benchmarks: dict[str, Any] = {}
    rights: dict[str, list[dict[str, np.ndarray]]] = {m: [] for m in modes}  # per mode, per benchmark, per model
    for b in loaded:
        benchmarks[b.name], right = _benchmark(config, b, variants, modes, out / MCQ_DIR, log)
        for m in modes:
            rights[m].append(right[m])
    return {
        "scoring": modes,
        "circular": e.circular,
        "dtype": str(next(variants.base.parameters()).dtype).replace("torch.", ""),
        "bootstrap": {"resamples": e.bootstrap_resamples, "seed": config.run.seed, "confidence": CONFIDENCE},
        "interval": "wilson",  # of each accuracy (accuracy_ci); the bootstrap is Δ's (ci)
        "benchmarks": benchmarks,
        "overall": {m: overall(rights[m], e.bootstrap_resamples, config.run.seed) for m in modes},
    }


def _benchmark(config: Any, b: LoadedBenchmark, variants: Any, modes: list[str], folder: Path,
               log: Any) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:  # fmt: skip
    """One benchmark: scored, its predictions written, summarised; and right/wrong per mode, model and question."""
    e = config.eval
    batch_size = config.eval_batch_size
    asked, scored, seconds = score_benchmark(b, variants, modes, e.circular, batch_size, log)
    predictions = folder / f"{b.name}.predictions.jsonl"
    write_predictions(predictions, b.name, asked.questions, scored, e.circular)
    n = len(b.questions)
    right = {m: {w: correctness(asked, s["predicted"][m], n) for w, s in scored.items()} for m in modes}
    summary = {
        "questions": len(b.questions),
        "num_fewshot": b.num_fewshot,
        "fewshot_from": b.fewshot_from,
        "chance": chance(b.questions, e.circular),
        "seconds": seconds,
        "predictions": str(predictions),
        "modes": {
            m: summarize_mode(b, asked.questions, right[m], scored, m, e.bootstrap_resamples, config.run.seed)
            for m in modes
        },  # fmt: skip
    }
    return summary, right


def chance(questions: list[Question], circular: bool) -> float:
    """Expected accuracy of uniform guessing: 1/k per question, (1/k)^k when all k rotations must be right."""
    return float(np.mean([(1 / len(q.choices)) ** (len(q.choices) if circular else 1) for q in questions]))


# --- the table ------------------------------------------------------------------------------------------------------
def format_suite(results: dict[str, Any]) -> str:
    """One Markdown table per scoring mode: each benchmark, then micro and macro; warnings below."""
    parts = []
    for mode in results["scoring"]:
        parts.append(_mode_table(results, mode))
    parts.append("\n".join(_warnings(results)))
    return "\n\n".join(p for p in parts if p)


def _mode_table(results: dict[str, Any], mode: str) -> str:
    boot = results["bootstrap"]
    adapted = "adapted" in results["overall"][mode]["micro"]["accuracy"]
    head = ["benchmark", "n", "shots", "chance", "base"] + (["adapted", "Δ (points)", "95% CI", "McNemar p"] if adapted
                                                            else []) + ["predicted letters (%)", "notes"]  # fmt: skip
    lines = [
        f"Multiple choice, {mode} scoring · weights {results['dtype']} · circular: "
        f"{'yes (right only if every rotation of the options is)' if results['circular'] else 'no'}"
        + (" · accuracy (95% Wilson interval)" if results.get("interval") else "")
        + (
            f" · 95% CI of the paired difference: bootstrap over questions, {boot['resamples']:,} resamples, "
            f"seed {boot['seed']} · p: McNemar's exact test"
            if adapted
            else ""
        ),  # fmt: skip
        "",
        "| " + " | ".join(head) + " |",
        "| --- |" + " ---: |" * (len(head) - 3) + " --- | --- |",
    ]
    for name, b in results["benchmarks"].items():
        m = b["modes"][mode]
        cells = [name, f"{b['questions']:,}", str(b["num_fewshot"]), f"{b['chance']:.1%}"]
        cells += _comparison(m, adapted)
        letters = " / ".join(_letters(v) for v in m["letters"].values())
        notes = [f"⚠ {w} answers {v}" for w, v in m["bias"].items()]
        if b.get("contaminated"):
            notes.append(f"⚠ {b['contaminated']} in training data")
        lines.append("| " + " | ".join([*cells, letters, "; ".join(notes)]) + " |")
    o = results["overall"][mode]
    for kind, label in (("micro", f"{o['questions']:,} questions"), ("macro", f"{len(results['benchmarks'])} set(s)")):
        row = [f"**{kind}**", label, "", ""] + [f"**{c}**" if c else "" for c in _comparison(o[kind], adapted)]
        lines.append("| " + " | ".join([*row, "", ""]) + " |")
    return "\n".join(lines)


def _comparison(m: dict[str, Any], adapted: bool) -> list[str]:
    acc, within = m["accuracy"], m.get("accuracy_ci") or {}  # results of an older medpt have no accuracy_ci
    cells = [_accuracy(acc["base"], within.get("base"))]
    if adapted:
        ci = m.get("ci") or [None, None]
        interval = f"[{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if None not in ci else "n/a"
        p = m.get("mcnemar_p")
        cells += [
            _accuracy(acc["adapted"], within.get("adapted")),
            f"{100 * m['delta']:+.1f}",
            interval,
            "" if p is None else f"{p:.3g}",
        ]
    return cells


def _accuracy(value: float, ci: list[float | None] | None) -> str:
    """27.5% (21.8–34.0): the accuracy and its 95% interval, in percent."""
    if not ci or None in ci:
        return f"{value:.1%}"
    return f"{value:.1%} ({100 * ci[0]:.1f}–{100 * ci[1]:.1f})"


def _letters(shares: dict[str, float]) -> str:
    return " ".join(f"{letter}{100 * share:.0f}" for letter, share in shares.items())


def _warnings(results: dict[str, Any]) -> list[str]:
    lines = []
    for name, b in results["benchmarks"].items():
        for mode, m in b["modes"].items():
            for which, what in m["bias"].items():
                letter = what.split()[0]
                lines.append(
                    f"⚠ position bias: {which} answers {letter} to {what.split()[1]} of {name} ({mode} scoring); "
                    f"{letter} is the right answer to {m['answers'].get(letter, 0):.0%}. An accuracy near that share "
                    "reflects the letter, not knowledge: --circular removes it."
                )
        if b.get("contaminated"):
            lines.append(
                f"⚠ contamination: {b['contaminated']} of {name}'s {b['questions']:,} questions share a "
                f"{results.get('contamination_ngram', 13)}-gram with the run's training documents (listed in "
                "contamination.jsonl): their scores may be memorised."
            )
    return lines


# --- contamination of the benchmarks by the run's training documents ----------------------------------------------
def check_contamination(loaded: list[LoadedBenchmark], packed: Any, tokenizer: Any, n: int) -> Any:
    """Which questions share an n-gram with the documents the run trained on: its prepared training split, decoded
    (so documents removed by dedup, decontamination, the validation split or sampling are not counted)."""
    from medpt.data.contamination import ContaminationIndex, items_from_questions

    items = [item for b in loaded for item in items_from_questions(b.name, b.questions)]
    starts, doc_ids = _documents(packed)
    texts = (
        text
        for k in range(0, len(doc_ids), 2048)  # decoded a slice at a time: memory stays bounded
        for text in tokenizer.batch_decode(
            [packed.tokens[starts[i] : starts[i + 1]] for i in range(k, min(k + 2048, len(doc_ids)))],
            skip_special_tokens=True,
        )
    )
    result = ContaminationIndex(items, n).scan(texts)
    for hit in result.hits:
        hit.document = int(doc_ids[hit.document])
    return result


def _documents(packed: Any) -> tuple[np.ndarray, np.ndarray]:
    """Token offsets of the training documents and their indices. With concat packing the pieces a block boundary
    cut are joined back; otherwise each piece is read alone (an n-gram across a piece boundary is missed)."""
    offsets, docs = np.asarray(packed.segment_offsets), np.asarray(packed.segment_doc)
    if packed.mode != "concat" or not len(docs):
        return offsets, docs
    first = np.flatnonzero(np.concatenate([[True], docs[1:] != docs[:-1]]))
    return np.append(offsets[first], offsets[-1]), docs[first]


def write_contamination(path: Path, result: Any) -> None:
    from medpt.atomic import atomic_writer

    with atomic_writer(path) as f:
        for hit in result.hits:
            row = {"benchmark": hit.item.benchmark, "item": hit.item.where, "question": hit.item.text,
                   "training_document": hit.document, "documents": hit.documents, "ngram": hit.ngram}  # fmt: skip
            f.write(dumps(row, ensure_ascii=False) + "\n")
