"""Multiple-choice benchmarks scored by log-likelihood: suited to base models (no chat template, no generation, no
answer parsing), and to unmerged adapters.

The prompt (questions in Chinese; questions without any CJK character get the same in English):

    以下是医学考试的单项选择题，请选出正确答案。

    [k solved examples, each: question, options, 答案：X, blank line]
    {question}
    A. {option A}
    B. {option B}
    答案：

Scoring:
  letter  log P(letter | prompt) for each option letter, all from one forward pass of the prompt; the highest is the
          prediction.
  text    log P(option text | prompt) (one pass per option) / its length in characters, so a long option is not
          penalised for its length (the character, not the token, keeps the normalisation independent of the tokenizer).

Where benchmarks are found (`--mcq_dir DIR`): every folder DIR/medical_mcq_*/ and DIR/general_mcq_*/ holding a
test.jsonl is a benchmark named after its folder; its dev.jsonl, when present, supplies the few-shot examples.
Running the benchmarks (rotations, statistics, tables) is medpt.eval.mcq_suite.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medpt.errors import BadRecordError, MedptError

_CJK = re.compile(r"[\u4e00-\u9fff]")
HEADERS = {
    "zh": ("以下是医学考试的单项选择题，请选出正确答案。\n\n", "答案："),
    "en": ("The following are multiple choice questions about medicine. Choose the correct answer.\n\n", "Answer:"),
}


@dataclass
class Question:
    question: str
    choices: dict[str, str]
    answer: str
    subject: str
    where: str

    @property
    def language(self) -> str:
        return "zh" if _CJK.search(self.question + "".join(self.choices.values())) else "en"


def read_questions(patterns: list[str], flag: str = "mcq_file") -> list[Question]:
    """Questions from jsonl/json files; every problem names file, line and field."""
    from medpt.data.paths import resolve_files
    from medpt.data.records import FileSource

    questions = []
    for path in resolve_files(patterns, flag):
        for record in FileSource(path).records():
            if isinstance(record, BadRecordError):
                raise MedptError(str(record))
            questions.append(_question(record))
    if not questions:
        raise MedptError(f"--{flag} {' '.join(patterns)}: no questions")
    return questions


def _kind(value: Any) -> str:
    """A value's type in the words of JSON, the format the user wrote."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    return {str: "a string", list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


_CHOICES = 'expected an object of options {"A": "...", "B": "...", ...}'
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"  # the option letters, in order: 2 to 26 options


def _question(record: Any) -> Question:
    """Every problem is a BadRecordError naming the field, checked before any use: a list where a string belongs
    would otherwise fail later as an unhashable-type TypeError with no location."""
    v = record.value
    if not isinstance(v, dict):
        raise record.bad(None, f"expected an object with question, choices, answer, got {_kind(v)}")
    for key in ("question", "choices", "answer"):
        if key not in v:
            raise record.bad(key, "missing")
    question, choices, answer = v["question"], v["choices"], v["answer"]
    if not isinstance(question, str):
        raise record.bad("question", f"expected a string, got {_kind(question)}")
    if not isinstance(choices, dict):
        raise record.bad("choices", f"{_CHOICES}, got {_kind(choices)}")
    if not 2 <= len(choices) <= len(LETTERS):
        raise record.bad("choices", f"{_CHOICES} with 2 to {len(LETTERS)} options (A to Z), got {len(choices)}")
    expected = list(LETTERS[: len(choices)])
    if list(choices) != expected:
        # The letters are printed before their options and scored as the answer; --circular moves the texts over
        # them and chance is 1/k: a gap (A, B, D) or another order would mean a different question for each.
        given = ", ".join(repr(letter) for letter in choices)
        raise record.bad("choices", f"the option letters must be {', '.join(expected)} in that order, got {given}")
    for letter, text in choices.items():
        if not isinstance(text, str):
            raise record.bad("choices", f"option {letter!r}: expected a string, got {_kind(text)}")
        if not text.strip():
            # Text scoring divides by the length: an empty option would score 0, the best possible log-probability.
            raise record.bad("choices", f"option {letter!r} is empty; remove it or give its text")
    if not isinstance(answer, str):
        raise record.bad("answer", f"expected a string (one of the letters {sorted(choices)}), got {_kind(answer)}")
    if answer not in choices:
        raise record.bad("answer", f"{answer!r} is not one of the choices {sorted(choices)}")
    subject = v.get("subject")
    if subject is None:
        subject = "all"  # absent or null: one group
    elif isinstance(subject, bool) or not isinstance(subject, (str, int, float)):
        raise record.bad("subject", f"expected a string or a number, got {_kind(subject)}")
    return Question(question, dict(choices), answer, str(subject), f"{record.source}:{record.line}")


def format_question(q: Question, answer: str | None = None) -> str:
    _, cue = HEADERS[q.language]
    options = "".join(f"{letter}. {text}\n" for letter, text in q.choices.items())
    return f"{q.question}\n{options}{cue}" + (f"{answer}\n\n" if answer is not None else "")


def build_prompt(q: Question, shots: list[Question]) -> str:
    header, _ = HEADERS[q.language]
    return header + "".join(format_question(s, s.answer) for s in shots) + format_question(q)


def pick_shots(q: Question, pool: list[Question], k: int) -> list[Question]:
    """k solved questions, the same subject first, in file order (deterministic); never the question itself."""
    if not k:
        return []
    others = [s for s in pool if s.question != q.question]
    return ([s for s in others if s.subject == q.subject] + [s for s in others if s.subject != q.subject])[:k]


def split_ids(
    tokenizer: Any, context: str, continuation: str, ctx: list[int] | None = None
) -> tuple[list[int], list[int]]:
    """Token ids of context and continuation as the model would read them together: the whole string is encoded
    once and cut where the context ends, so a token that spans the boundary is not encoded twice. `ctx`: the
    context's own ids, when the caller has them (one prompt, k options: encoded once, not k times)."""
    whole = list(tokenizer(context + continuation)["input_ids"])
    ctx = list(tokenizer(context)["input_ids"]) if ctx is None else ctx
    cut = 0
    while cut < min(len(ctx), len(whole)) and ctx[cut] == whole[cut]:
        cut += 1
    if cut == len(whole):  # the continuation merged into the context's last token: score it on its own
        return ctx, list(tokenizer(continuation, add_special_tokens=False)["input_ids"])
    return whole[:cut], whole[cut:]


def continuation_logprobs(
    model: Any, pairs: list[tuple[list[int], list[int]]], pad_id: int, batch_size: int, prefix_cache: bool = True
) -> list[float]:
    """Σ log P(continuation tokens | context) for each pair, batched (longest first), O(batch) memory.

    Pairs with the same context and a one-token continuation (the option letters) share one forward pass of the
    context: the logits at its last position score every such continuation, 4x fewer passes for A-D letters.
    Longer continuations of one context (the option texts) share its KV cache: the context runs once, then all its
    continuations run as one batch on top of the cache (medpt.eval.mcq._with_prefix_cache)."""
    import torch  # here, not at the top: reading questions (contamination checks, `prepare`) needs no torch

    device = next(model.parameters()).device
    # a job is one sequence to run, with the (pair, first logit row) it scores
    jobs: dict[tuple[int, ...], list[tuple[int, int]]] = defaultdict(list)
    longer: dict[tuple[int, ...], list[int]] = defaultdict(list)  # context -> pairs with a longer continuation
    for i, (ctx, cont) in enumerate(pairs):
        if len(cont) == 1:
            jobs[tuple(ctx)].append((i, len(ctx) - 1))
        else:
            longer[tuple(ctx)].append(i)
    prefixed: dict[tuple[int, ...], list[int]] = {}  # the contexts whose continuations share a KV cache
    for ctx, members in longer.items():
        if prefix_cache and len(members) > 1:
            prefixed[ctx] = members
            continue
        for i in members:  # a plain sequence each (negative tail: never merged with another key)
            jobs[ctx + tuple(pairs[i][1]) + (-1 - i,)].append((i, len(ctx) - 1))
    order = sorted(jobs, key=len, reverse=True)
    scores = [0.0] * len(pairs)
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            seqs = [[t for t in key if t >= 0] for key in chunk]
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for row, seq in enumerate(seqs):
                ids[row, : len(seq)] = torch.tensor(seq)
                mask[row, : len(seq)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
            for row, key in enumerate(chunk):
                for i, first in jobs[key]:
                    cont = pairs[i][1]
                    # logits at position t predict token t+1: the continuation is predicted from len(ctx)-1 on
                    rows = logits[row, first : first + len(cont)].float().log_softmax(-1)
                    scores[i] = rows.gather(1, torch.tensor(cont, device=device)[:, None]).sum().item()
        uncached: list[int] = []  # a model that returns no KV cache: its pairs get full passes, batched
        for ctx, members in prefixed.items():
            cached = None if uncached else _with_prefix_cache(model, list(ctx), [pairs[i][1] for i in members],
                                                              pad_id, device)  # fmt: skip
            if cached is None:
                uncached += members
                continue
            for i, score in zip(members, cached):
                scores[i] = score
        if uncached:
            full = continuation_logprobs(model, [pairs[i] for i in uncached], pad_id, batch_size, prefix_cache=False)
            for i, score in zip(uncached, full):
                scores[i] = score
    return scores


def _with_prefix_cache(
    model: Any, ctx: list[int], conts: list[list[int]], pad_id: int, device: Any
) -> list[float] | None:
    """Σ log P(cont | ctx) for several continuations of one context: the context runs once (batch 1, use_cache),
    its KV cache is repeated for the continuations, which run as one right-padded batch on top of it. A k-shot
    prompt of ~500 tokens with four ~10-token options costs ~540 token positions instead of ~2,040. The scores equal
    the full passes' up to float rounding (tested: the predictions are identical). None when the model returns
    no cache."""
    import torch

    from medpt.model.loading import cache_name

    ones = torch.ones((1, len(ctx)), dtype=torch.long, device=device)
    out = model(input_ids=torch.tensor([ctx], device=device), attention_mask=ones, use_cache=True)
    name = cache_name(model)
    cache = getattr(out, name, None)
    if cache is None or not hasattr(cache, "batch_repeat_interleave"):
        return None
    first = out.logits[0, -1].float().log_softmax(-1)  # predicts every continuation's first token
    cache.batch_repeat_interleave(len(conts))
    width = max(len(c) for c in conts) - 1
    ids = torch.full((len(conts), width), pad_id, dtype=torch.long)
    for row, cont in enumerate(conts):
        ids[row, : len(cont) - 1] = torch.tensor(cont[:-1])
    # Right padding needs no mask: a real token never attends to the padding after it (causal attention).
    mask = torch.ones((len(conts), len(ctx) + width), dtype=torch.long)
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=True,
                   **{name: cache}).logits.float().log_softmax(-1)  # fmt: skip
    scores = []
    for row, cont in enumerate(conts):
        rest = logits[row, : len(cont) - 1].gather(1, torch.tensor(cont[1:], device=device)[:, None]).sum()
        scores.append(float(first[cont[0]] + rest))
    return scores


def option_logprobs(model: Any, tokenizer: Any, questions: list[Question], shots: list[list[Question]],
                    modes: list[str], batch_size: int,
                    prefix_cache: bool = True, log: Any = None) -> dict[str, list[dict[str, float]]]:  # fmt: skip
    """log P(continuation | prompt) of every option of each question, per scoring mode: the letter (letter) or the
    option's text (text). A prompt longer than the model's positions is cut from the left, as lm-evaluation-harness
    does (its first few-shot example loses its beginning; the question stays whole), and counted in a log line."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    pairs, owners = [], []
    cut = 0
    for qi, (q, qs) in enumerate(zip(questions, shots)):
        prompt = build_prompt(q, qs)
        prompt_ids = list(tokenizer(prompt)["input_ids"])
        for mode in modes:
            for letter, text in q.choices.items():
                ctx, cont = split_ids(tokenizer, prompt, letter if mode == "letter" else text, prompt_ids)
                if isinstance(limit, int) and len(ctx) + len(cont) > limit:
                    ctx, cut = ctx[len(ctx) + len(cont) - limit :], cut + 1
                pairs.append((ctx, cont))
                owners.append((qi, mode, letter))
    if cut and log is not None:
        log(f"  {cut} of {len(pairs)} prompt/option pairs are longer than the model's {limit} positions: their "
            "prompts were cut from the left (fewer few-shot tokens)")  # fmt: skip
    scores = continuation_logprobs(model, pairs, tokenizer.pad_token_id, batch_size, prefix_cache)
    out: dict[str, list[dict[str, float]]] = {mode: [{} for _ in questions] for mode in modes}
    for (qi, mode, letter), s in zip(owners, scores):
        out[mode][qi][letter] = s
    return out


def predict(q: Question, logprobs: dict[str, float], mode: str) -> str:
    """The predicted letter: the highest log-likelihood (text: per character of the option); ties go to the first
    option."""
    norm = (lambda letter: 1) if mode == "letter" else (lambda letter: max(len(q.choices[letter]), 1))
    return max(logprobs, key=lambda letter: logprobs[letter] / norm(letter))


def score_questions(model: Any, tokenizer: Any, questions: list[Question], shots: list[list[Question]],
                    modes: list[str], batch_size: int, prefix_cache: bool = True) -> dict[str, list[str]]:  # fmt: skip
    """The predicted letter of each question, per scoring mode."""
    logprobs = option_logprobs(model, tokenizer, questions, shots, modes, batch_size, prefix_cache)
    return {mode: [predict(q, lp, mode) for q, lp in zip(questions, logprobs[mode])] for mode in modes}


# --- where benchmarks are found ---------------------------------------------------------------------------------
BENCHMARK_PREFIXES = ("medical_mcq_", "general_mcq_")
_SPLIT_STEMS = {"test", "dev", "valid", "validation", "val", "train"}


@dataclass(frozen=True)
class Benchmark:
    """A named set of questions, and the solved questions its few-shot examples come from (if any)."""

    name: str
    files: tuple[str, ...]
    fewshot: str | None = None


def benchmark_name(path: str | Path) -> str:
    """A file's benchmark name: its stem, or its folder's name when the stem is a split (test.jsonl, dev.jsonl)."""
    p = Path(path)
    stem = p.name.split(".")[0]
    return p.resolve().parent.name if stem.lower() in _SPLIT_STEMS else stem


def benchmark_folder(folder: Path) -> Benchmark | None:
    """A benchmark folder: its test.jsonl, with few-shot examples from its dev.jsonl when there is one."""
    test, dev = folder / "test.jsonl", folder / "dev.jsonl"
    if not test.is_file():
        return None
    return Benchmark(folder.name, (str(test),), str(dev) if dev.is_file() else None)


def find_benchmarks(folder: str, flag: str = "mcq_dir") -> list[Benchmark]:
    """Every medical_mcq_*/ and general_mcq_*/ folder inside `folder` that holds a test.jsonl, by name."""
    root = Path(folder)
    if not root.is_dir():
        raise MedptError(f"--{flag} {folder}: no such folder")
    found = [
        benchmark_folder(d) for d in sorted(root.iterdir()) if d.is_dir() and d.name.startswith(BENCHMARK_PREFIXES)
    ]
    benchmarks = [b for b in found if b is not None]
    if not benchmarks:
        raise MedptError(
            f"--{flag} {folder}: no {'*/ or '.join(BENCHMARK_PREFIXES)}*/ folder holding a test.jsonl (see "
            "`medpt eval --help`)"
        )
    return benchmarks
