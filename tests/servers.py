"""A real `medpt serve` on 127.0.0.1 (a free port the OS picks), in a thread of the test process, so tests can script
the model through medpt.generate.prompting.extra_logits_processors; logits processors that script it; and what
transformers' generate answers, to compare the server's answers with."""

from __future__ import annotations

import contextlib
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import LogitsProcessor

from medpt.args.resolve import load_config
from medpt.generate import prompting


@dataclass
class Running:
    url: str  # http://127.0.0.1:PORT
    app: object


@contextlib.contextmanager
def running_server(run: Path | None, *flags: str) -> Iterator[Running]:
    """`medpt serve --adapter RUN FLAGS` (without RUN: FLAGS name the model)."""
    import uvicorn

    from medpt.serve.server import build

    adapter = ["--adapter", str(run)] if run is not None else []
    config = load_config([*adapter, "--port", "0", *flags], command="serve")
    app = build(config, log=lambda *_: None)
    server = uvicorn.Server(uvicorn.Config(app, host=config.serve.host, port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(600):  # up to 60 s: the model loads in the lifespan startup
            if server.started or not thread.is_alive():
                break
            threading.Event().wait(0.1)
        assert server.started, "the server did not start"
        port = server.servers[0].sockets[0].getsockname()[1]
        yield Running(f"http://127.0.0.1:{port}", app)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        assert not thread.is_alive(), "the server did not stop"


class NoEos(LogitsProcessor):
    """Forbids the end-of-text token, so every answer runs to max_tokens (the tiny adapted model stops at once)."""

    def __init__(self, eos: int):
        self.eos = eos

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.clone()
        scores[:, self.eos] = -float("inf")
        return scores


def generated(model, tokenizer, prompt: str, gen, stops: list[str]) -> str:
    """transformers' generate on one prompt, as `medpt generate` runs it, and the answer's text exactly as generated:
    the whole sequence's text after the prompt's (a leading space kept, which decoding the answer alone drops with a
    sentencepiece tokenizer), up to the first stop string."""
    enc = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, logits_processor=prompting.extra_logits_processors() or None,
                             **prompting.generation_kwargs(gen, tokenizer, stops))  # fmt: skip
    before = tokenizer.decode(enc["input_ids"][0], skip_special_tokens=True)
    text = tokenizer.decode(out[0], skip_special_tokens=True)
    assert text.startswith(before)
    return prompting.before_stop(text[len(before) :], stops)


def post(url: str, body: bytes | dict, key: str | None = None, method: str = "POST") -> tuple[int, dict]:
    """Raw HTTP, as curl sends it: (status, the JSON reply)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(url, data=data if method == "POST" else None, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def saying(tokenizer, text: str) -> list[int]:
    """The token ids with which a scripted model says exactly `text`: the text's ids without the word-start marker
    (a lone `▁`) that a sentencepiece-style tokenizer puts before every text it encodes."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if ids and tokenizer.convert_ids_to_tokens(ids[0]) == "▁" and not text.startswith(" "):
        ids = ids[1:]
    return ids
