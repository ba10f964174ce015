"""Answers from the base and the adapted model: `medpt compare`, `medpt generate` and `medpt chat`.

A continued-pretraining run produces a *base* model, which has no chat template: questions are asked in the
template it was trained on (问:{question}\\n答:), earlier turns included, and generation stops at EOS or where the
model starts the next turn (问:) or the separator line, instead of running on into a question it invented.
"""

from __future__ import annotations

import html
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from medpt.data.templates import BUILTIN, custom_format
from medpt.errors import BadRecordError, MedptError
from medpt.strictjson import dumps


def role_format(template: str, template_format: dict | None) -> Any:
    if template == "custom":
        return custom_format(template_format or {})
    return BUILTIN.get(template, BUILTIN["qa"])  # chat_template runs go through the tokenizer instead


def build_prompt(
    question: str, history: list[tuple[str, str]], data: Any, tokenizer: Any, system: str | None = None
) -> str:
    """The conversation so far (after an optional system turn), rendered as in training, ending where the answer
    starts."""
    if data.template == "chat_template":
        messages = [{"role": "system", "content": system}] if system is not None else []
        messages += [
            m for q, a in history for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})
        ]
        messages.append({"role": "user", "content": question})
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    fmt = role_format(data.template, data.template_format)
    (h0, h1), (g0, g1) = fmt.wrap["human"], fmt.wrap["gpt"]
    s0, s1 = fmt.wrap["system"]
    head = f"{s0}{system}{s1}" if system is not None else ""
    return head + "".join(f"{h0}{q}{h1}{g0}{a}{g1}" for q, a in history) + f"{h0}{question}{h1}{g0}"


def stop_strings(data: Any) -> list[str]:
    """Where an answer ends: where the model starts a new turn of the template (its question or answer prefix at
    the start of a line: it has begun inventing the next exchange), and the template's closing separator."""
    if data.template == "chat_template":
        return []
    fmt = role_format(data.template, data.template_format)
    prefixes = [fmt.wrap[role][0].strip() for role in ("human", "gpt")]
    stops = ["\n" + p for p in prefixes if p] + [fmt.end.strip()[:10]]
    return list(dict.fromkeys(s for s in stops if s.strip()))


def before_stop(text: str, stops: list[str]) -> str:
    """`text` up to the first stop string in it (all of it if none)."""
    return text[: min([text.find(s) for s in stops if s in text], default=len(text))]


def cut_at_stop(text: str, stops: list[str]) -> str:
    return before_stop(text, stops).strip()


def generation_kwargs(gen: Any, tokenizer: Any, stops: list[str]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "max_new_tokens": gen.max_new_tokens,
        "do_sample": gen.do_sample,
        "repetition_penalty": gen.repetition_penalty,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    if gen.do_sample:
        kwargs.update(temperature=gen.temperature, top_p=gen.top_p)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)  # greedy: no sampling knobs (and no warnings)
    if stops:
        kwargs.update(stop_strings=stops, tokenizer=tokenizer)
    return kwargs


def extra_logits_processors() -> list:
    """Hook for tests that script a model's output; empty in normal use."""
    return []


def fit_prompts(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int, log: Callable = print) -> list:
    """Token ids of each prompt. The model attends to at most its positions (max_position_embeddings), prompt and
    answer together; a prompt that leaves less than --max_new_tokens of them is cut from the left (the oldest
    turns of a chat, the start of a long question go), with a one-line note, the rule chat, compare and generate
    share (`medpt serve` refuses such a request instead: an API client must hear it)."""
    from medpt.modelfiles import positions_of

    ids = tokenizer(prompts)["input_ids"]
    positions = positions_of(model.config.to_dict())
    room = positions - max_new_tokens if positions is not None else None
    long = [len(row) for row in ids if room is not None and len(row) > room]
    if not long:
        return ids
    log(f"note: {len(long)} prompt(s) of up to {max(long):,} tokens cut from the left to {room:,}: the model takes "
        f"{positions:,} positions, and --max_new_tokens {max_new_tokens} are kept for the answer")  # fmt: skip
    return [row[-room:] for row in ids]


def answer(model: Any, tokenizer: Any, prompts: list[str], gen: Any, stops: list[str], seed: int,
           log: Callable = print) -> list[str]:  # fmt: skip
    """Batched generation (left padding), the same seed for every call so base and adapted are comparable."""
    import torch
    from transformers import set_seed

    set_seed(seed)
    tokenizer.padding_side = "left"
    ids = fit_prompts(model, tokenizer, prompts, gen.max_new_tokens, log)
    enc = tokenizer.pad({"input_ids": ids}, return_tensors="pt")
    device = next(model.parameters()).device
    with torch.no_grad():
        out = model.generate(
            **{k: v.to(device) for k, v in enc.items()},
            logits_processor=extra_logits_processors() or None,
            **generation_kwargs(gen, tokenizer, stops),
        )
    new = out[:, enc["input_ids"].shape[1] :]
    return [cut_at_stop(tokenizer.decode(row, skip_special_tokens=True), stops) for row in new]


def read_question_list(gen: Any) -> list[str]:
    questions = list(gen.question or [])
    if gen.questions:
        path = Path(gen.questions)
        if not path.is_file():
            raise MedptError(f"--questions {path}: no such file")
        questions += questions_in(path)
    if not questions:
        raise MedptError("no questions: pass --question '...' (repeatable) or --questions FILE")
    return questions


def questions_in(path: Path) -> list[str]:
    """The questions of a .jsonl file ({"question": ...} per line) or of any other file (one per line), read by the
    data reader (medpt.data.records): the encoding, the line of a bad record and the record size limit are checked
    as for training data, and a problem is one line naming the file and line."""
    from medpt.data.records import FileSource

    source = FileSource(path, txt_split="line")
    source.suffix = ".jsonl" if source.suffix == ".jsonl" else ".txt"  # any other name: one question per line
    questions = []
    for record in source.records():
        if isinstance(record, BadRecordError):
            raise MedptError(str(record))
        if source.suffix == ".txt":
            questions.append(record.value["text"].strip())
        elif isinstance(record.value, dict) and isinstance(record.value.get("question"), str):
            questions.append(record.value["question"])
        else:
            raise record.bad("question", "expected a string")
    return questions


def run_compare(config: Any, log: Callable[[str], None] = print) -> int:
    """`medpt compare`: base and adapted answers side by side (in RUN/compare unless --output_dir)."""
    from medpt.adapter import check_variants, load_variants
    from medpt.rundir import claim_dir, holding, inputs_of

    if not config.eval.adapter:
        raise MedptError("compare needs --adapter (a medpt run or a PEFT adapter folder)")
    questions = read_question_list(config.generate)
    checked = check_variants(config, log)
    out = config.beside_adapter("compare")
    with holding(out, "compare", inputs=inputs_of(config)):
        claim_dir(out, "compare", inputs=inputs_of(config), overwrite=config.run.overwrite_output_dir)
        compare_answers(config, load_variants(config, log, checked), questions, out, log)
    return 0


def compare_answers(config: Any, variants: Any, questions: list[str], out: Path, log: Callable = print) -> list[dict]:
    """Base and adapted answers to the same questions, same decoding, written as JSONL, Markdown and HTML."""
    from medpt.atomic import atomic_write_text

    prompts = [build_prompt(q, [], config.data, variants.tokenizer) for q in questions]
    stops = stop_strings(config.data)
    answers = {}
    for which in variants.names:
        with variants.use(which) as model:
            answers[which] = answer(model, variants.tokenizer, prompts, config.generate, stops, config.run.seed, log)
        log(f"  {which}: {len(questions)} answers")
    rows = [{"question": q, "base": b, "adapted": a} for q, b, a in zip(questions, answers["base"], answers["adapted"])]
    settings = decoding_note(config.generate, config.run.seed)
    atomic_write_text(out / "compare.jsonl", "".join(dumps(r, ensure_ascii=False) + "\n" for r in rows))
    atomic_write_text(out / "compare.md", compare_markdown(rows, settings))
    atomic_write_text(out / "compare.html", compare_html(rows, settings))
    log(f"comparison: {out / 'compare.md'} (also .html, .jsonl)")
    return rows


def decoding_note(gen: Any, seed: int) -> str:
    how = f"sampling, temperature {gen.temperature}, top_p {gen.top_p}" if gen.do_sample else "greedy"
    return f"{how}, max {gen.max_new_tokens} new tokens, repetition penalty {gen.repetition_penalty}, seed {seed}"


def compare_markdown(rows: list[dict], settings: str) -> str:
    parts = [f"# Base vs adapted answers\n\nDecoding: {settings}.\n"]
    for i, r in enumerate(rows, start=1):
        parts.append(
            f"## {i}. {r['question']}\n\n**base**\n\n> {_quote(r['base'])}\n\n**adapted**\n\n> {_quote(r['adapted'])}\n"
        )
    return "\n".join(parts)


def _quote(text: str) -> str:
    return (text or "(empty)").replace("\n", "\n> ")


def compare_html(rows: list[dict], settings: str) -> str:
    cells = "".join(
        f"<tr><td>{i}</td><td>{html.escape(r['question'])}</td><td>{html.escape(r['base'])}</td>"
        f"<td>{html.escape(r['adapted'])}</td></tr>"
        for i, r in enumerate(rows, start=1)
    )
    return (
        "<!doctype html><meta charset='utf-8'><title>medpt compare</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{border:1px solid #ccc;padding:6px;vertical-align:top;"
        "white-space:pre-wrap}table{border-collapse:collapse}</style>"
        f"<h1>Base vs adapted answers</h1><p>Decoding: {html.escape(settings)}.</p>"
        f"<table><tr><th>#</th><th>question</th><th>base</th><th>adapted</th></tr>{cells}</table>\n"
    )


def run_generate(config: Any, log: Callable[[str], None] = print) -> int:
    """`medpt generate`: answers to a file of questions, jsonl out (RUN/answers.jsonl unless --answers_file)."""
    from medpt.adapter import check_variants, load_variants
    from medpt.atomic import atomic_writer
    from medpt.rundir import ANSWERS, claim_file, inputs_of

    questions = read_question_list(config.generate)
    checked = check_variants(config, log)
    target = config.generate.answers_file or config.beside_adapter(ANSWERS)
    out_file = claim_file(target, "generate", flag="answers_file", inputs=inputs_of(config))
    variants = load_variants(config, log, checked)
    which = "adapted" if variants.adapted is not None else "base"
    prompts = [build_prompt(q, [], config.data, variants.tokenizer) for q in questions]
    with variants.use(which) as model:
        answers = answer(
            model, variants.tokenizer, prompts, config.generate, stop_strings(config.data), config.run.seed, log
        )
    with atomic_writer(out_file) as f:
        for q, a in zip(questions, answers):
            f.write(dumps({"question": q, "answer": a, "model": which}, ensure_ascii=False) + "\n")
    log(f"{len(questions)} answers ({which} model): {out_file}")
    return 0


class StopAwareStreamer:
    """Prints generated text as it arrives, holding back any tail that could be the start of a stop string, so
    `问:` is never shown even when it arrives one token at a time. `strip`: show the answer without its leading and
    trailing whitespace (the terminal chat); a server sends the text exactly as generated. `after`: tokens the answer
    is decoded after (and their text cut off again), because a tokenizer may decode the first token of a sequence
    differently: sentencepiece's Metaspace decoder drops the space of a leading `▁Hello`."""

    def __init__(self, tokenizer: Any, stops: list[str], write: Callable[[str], None], skip_prompt: bool = True,
                 strip: bool = True, after: list[int] | None = None):  # fmt: skip
        self.tokenizer, self.stops, self.write, self.strip = tokenizer, stops, write, strip
        self.ids: list[int] = []
        self.after = list(after or [])
        self.cut = len(tokenizer.decode(self.after, skip_special_tokens=True)) if self.after else 0
        self.shown = 0
        self.prompt_seen = not skip_prompt  # generate() first passes the prompt; a server passes new tokens only
        self.stopped = False  # a stop string has appeared: the answer is complete

    def put(self, value: Any) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.ids.extend(value.reshape(-1).tolist())
        text = self.text()
        self.stopped = any(s in text for s in self.stops)
        self._show(self._safe(text))

    def end(self) -> None:
        self._show(before_stop(self.text(), self.stops))

    def final(self) -> str:
        return cut_at_stop(self.text(), self.stops)

    def text(self) -> str:
        return self.tokenizer.decode(self.after + self.ids, skip_special_tokens=True)[self.cut :]

    def _safe(self, text: str) -> str:
        text = before_stop(text, self.stops)
        hold = max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        text = text[: len(text) - hold]
        return text.rstrip("\ufffd")  # a character whose bytes have not all arrived yet

    def _show(self, text: str) -> None:
        if self.strip:
            text = text.strip()  # as in final(): what is streamed is exactly the answer that is kept
        if len(text) > self.shown:
            self.write(text[self.shown :])
            self.shown = len(text)


HELP = "commands: /reset (new conversation), /adapter on|off, /quit"


def run_chat(config: Any, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """`medpt chat`: multi-turn chat on stdin/stdout with streamed answers."""
    from medpt.adapter import load_variants

    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    if stdin is None or stdin.closed:
        raise MedptError("chat reads questions from standard input, which is closed; use `medpt generate "
                         "--questions FILE` to answer a file of questions")  # fmt: skip
    return chat(config, load_variants(config), stdin, stdout)


def chat(config: Any, variants: Any, stdin: TextIO, stdout: TextIO) -> int:
    import torch
    from transformers import set_seed

    def write(text: str) -> None:
        stdout.write(text)
        stdout.flush()

    use = "adapted" if variants.adapted is not None else "base"
    history: list[tuple[str, str]] = []
    stops = stop_strings(config.data)
    write(f"medpt chat ({variants.base_name}, {use} model). {HELP}\n")
    while True:
        write("\n问: ")
        line = stdin.readline()
        if not line:
            break
        question = line.strip()
        if not question:
            continue
        if question.startswith("/"):
            command = question.split()
            if command[0] in ("/quit", "/exit"):
                break
            if command[0] == "/reset":
                history = []
                write("(new conversation)\n")
            elif command[0] == "/adapter" and len(command) == 2 and command[1] in ("on", "off"):
                if command[1] == "on" and variants.adapted is None:
                    write("(no adapter loaded)\n")
                else:
                    use = "adapted" if command[1] == "on" else "base"
                    write(f"(adapter {command[1]})\n")
            else:
                write(f"({HELP})\n")
            continue
        prompt = build_prompt(question, history, config.data, variants.tokenizer)
        streamer = StopAwareStreamer(variants.tokenizer, stops, write)
        set_seed(config.run.seed)
        with variants.use(use) as model, torch.no_grad():
            ids = fit_prompts(model, variants.tokenizer, [prompt], config.generate.max_new_tokens,
                              lambda note: write(f"({note})\n"))  # fmt: skip
            write("答: ")
            device = next(model.parameters()).device
            input_ids = torch.tensor(ids, device=device)
            model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                streamer=streamer,
                logits_processor=extra_logits_processors() or None,
                **generation_kwargs(config.generate, variants.tokenizer, stops),
            )
        history.append((question, streamer.final()))
        write("\n")
    write("\n")
    return 0
