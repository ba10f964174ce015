"""How a question becomes a prompt and an answer: the 问/答 template, stop strings, batched generation and a
streamer that never shows a stop string. The library of `medpt compare/generate/chat` (generate.command), of
`medpt serve` and of `eval --generate_eval`.

A continued-pretraining run produces a *base* model, which has no chat template: questions are asked in the
template it was trained on (问:{question}\\n答:), earlier turns included, and generation stops at EOS or where the
model starts the next turn (问:) or the separator line, instead of running on into a question it invented.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from medpt.data.templates import BUILTIN, custom_format
from medpt.errors import BadRecordError, MedptError


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
    from medpt.model.files import positions_of

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


def blockquote(text: str) -> str:
    """An answer as the body of a Markdown blockquote (`> ` before each line; an empty answer says so)."""
    return (text or "(empty)").replace("\n", "\n> ")


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
