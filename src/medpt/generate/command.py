"""`medpt compare`, `medpt generate` and `medpt chat`: answers from the base and the adapted model, side by side,
to a file, or in a terminal conversation. The prompting they share (and `medpt serve` uses) is `prompting`."""

from __future__ import annotations

import html
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from medpt.args.commands import COMMANDS
from medpt.errors import MedptError
from medpt.generate import prompting
from medpt.rundir import COMPARE_HTML, COMPARE_JSONL, COMPARE_MD
from medpt.strictjson import dumps


def run_compare(config: Any, log: Callable[[str], None] = print) -> int:
    """`medpt compare`: base and adapted answers side by side (in RUN/compare unless --output_dir)."""
    from medpt.args.resolve import inputs_of
    from medpt.model.adapter import check_variants, load_variants
    from medpt.rundir import claim_dir, holding

    if not config.eval.adapter:
        raise MedptError("compare needs --adapter (a medpt run or a PEFT adapter folder)")
    questions = prompting.read_question_list(config.generate)
    checked = check_variants(config, log)
    out = config.beside_adapter("compare")
    with holding(out, COMMANDS["compare"], inputs=inputs_of(config)):
        claim_dir(out, COMMANDS["compare"], inputs=inputs_of(config), overwrite=config.run.overwrite_output_dir)
        compare_answers(config, load_variants(config, log, checked), questions, out, log)
    return 0


def compare_answers(config: Any, variants: Any, questions: list[str], out: Path, log: Callable = print) -> list[dict]:
    """Base and adapted answers to the same questions, same decoding, written as JSONL, Markdown and HTML."""
    from medpt.atomic import atomic_write_text

    prompts = [prompting.build_prompt(q, [], config.data, variants.tokenizer) for q in questions]
    stops = prompting.stop_strings(config.data)
    answers = {}
    for which in variants.names:
        with variants.use(which) as model:
            answers[which] = prompting.answer(
                model, variants.tokenizer, prompts, config.generate, stops, config.run.seed, log
            )
        log(f"  {which}: {len(questions)} answers")
    rows = [{"question": q, "base": b, "adapted": a} for q, b, a in zip(questions, answers["base"], answers["adapted"])]
    settings = decoding_note(config.generate, config.run.seed)
    atomic_write_text(out / COMPARE_JSONL, "".join(dumps(r, ensure_ascii=False) + "\n" for r in rows))
    atomic_write_text(out / COMPARE_MD, compare_markdown(rows, settings))
    atomic_write_text(out / COMPARE_HTML, compare_html(rows, settings))
    log(f"comparison: {out / COMPARE_MD} (also .html, .jsonl)")
    return rows


def decoding_note(gen: Any, seed: int) -> str:
    how = f"sampling, temperature {gen.temperature}, top_p {gen.top_p}" if gen.do_sample else "greedy"
    return f"{how}, max {gen.max_new_tokens} new tokens, repetition penalty {gen.repetition_penalty}, seed {seed}"


def compare_markdown(rows: list[dict], settings: str) -> str:
    parts = [f"# Base vs adapted answers\n\nDecoding: {settings}.\n"]
    for i, r in enumerate(rows, start=1):
        base, adapted = prompting.blockquote(r["base"]), prompting.blockquote(r["adapted"])
        parts.append(f"## {i}. {r['question']}\n\n**base**\n\n> {base}\n\n**adapted**\n\n> {adapted}\n")
    return "\n".join(parts)


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
    from medpt.args.resolve import inputs_of
    from medpt.atomic import atomic_writer
    from medpt.model.adapter import check_variants, load_variants
    from medpt.rundir import ANSWERS, claim_file

    questions = prompting.read_question_list(config.generate)
    checked = check_variants(config, log)
    target = config.generate.answers_file or config.beside_adapter(ANSWERS)
    out_file = claim_file(target, COMMANDS["generate"], flag="answers_file", inputs=inputs_of(config))
    variants = load_variants(config, log, checked)
    which = "adapted" if variants.adapted is not None else "base"
    prompts = [prompting.build_prompt(q, [], config.data, variants.tokenizer) for q in questions]
    with variants.use(which) as model:
        answers = prompting.answer(
            model,
            variants.tokenizer,
            prompts,
            config.generate,
            prompting.stop_strings(config.data),
            config.run.seed,
            log,
        )
    with atomic_writer(out_file) as f:
        for q, a in zip(questions, answers):
            f.write(dumps({"question": q, "answer": a, "model": which}, ensure_ascii=False) + "\n")
    log(f"{len(questions)} answers ({which} model): {out_file}")
    return 0


HELP = "commands: /reset (new conversation), /adapter on|off, /quit"


def run_chat(config: Any, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """`medpt chat`: multi-turn chat on stdin/stdout with streamed answers."""
    from medpt.model.adapter import load_variants

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
    stops = prompting.stop_strings(config.data)
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
        prompt = prompting.build_prompt(question, history, config.data, variants.tokenizer)
        streamer = prompting.StopAwareStreamer(variants.tokenizer, stops, write)
        set_seed(config.run.seed)
        with variants.use(use) as model, torch.no_grad():
            ids = prompting.fit_prompts(model, variants.tokenizer, [prompt], config.generate.max_new_tokens,
                              lambda note: write(f"({note})\n"))  # fmt: skip
            write("答: ")
            device = next(model.parameters()).device
            input_ids = torch.tensor(ids, device=device)
            model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                streamer=streamer,
                logits_processor=prompting.extra_logits_processors() or None,
                **prompting.generation_kwargs(config.generate, variants.tokenizer, stops),
            )
        history.append((question, streamer.final()))
        write("\n")
    write("\n")
    return 0
