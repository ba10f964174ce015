"""A real `medpt serve` on 127.0.0.1 (a free port the OS picks), in a thread of the test process, so tests can script
the model through medpt.generate.extra_logits_processors; and logits processors that script it."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import LogitsProcessor

from medpt.config import load_config


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
