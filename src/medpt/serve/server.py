"""Load a run, build the engine and the app, and run uvicorn until Ctrl-C or SIGTERM.

Model ids are what a user recognises: the base model's folder name (or its hub id) and the run's folder name, e.g.
`tiny-model` and `run`. Ctrl-C or SIGTERM (while the model loads, or while serving) is a normal stop: the server
stops accepting connections, lets answers in flight finish for up to --shutdown_grace_s seconds, ends the rest (a
stream with an error event and `data: [DONE]`, a whole answer with 503), stops the engine, prints `medpt serve:
stopped` and exits 0; a second Ctrl-C exits at once.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import sys
from pathlib import Path
from typing import Any

from medpt.serve.serving import ServedModel

UVICORN_MARGIN_S = 5  # uvicorn's own shutdown timeout comes this long after medpt's grace period, as a backstop


def serve(config: Any, log: Any = print) -> int:
    s = config.serve
    try:
        with _sigterm_interrupts():
            log(f"medpt serve: loading {config.eval.adapter or config.model.model_name_or_path}")
            torch_threads(s.num_threads)
            server = _server(build(config, log), s)
            if not is_loopback(s.host):
                print(f"medpt: warning: --host {s.host} is not a loopback address: the API is reachable from the "
                      "network (use --api_key, and TLS in front of it)", file=sys.stderr)  # fmt: skip
            server.run()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM before uvicorn took over the signals (the model was loading)
        pass
    log("medpt serve: stopped")
    return 0


def _server(app: Any, s: Any) -> Any:
    """uvicorn, stopped the medpt way (see the module docstring)."""
    import uvicorn

    class Server(uvicorn.Server):
        signals = 0

        def handle_exit(self, sig: int, frame: Any) -> None:
            # uvicorn's own handler also records the signal and raises it again once it has shut down: SIGTERM
            # would then kill the process (exit 143) after a clean stop.
            self.signals += 1
            self.should_exit = True
            self.force_exit = self.signals >= 3  # a third: exit without waiting for anything
            app.serving.drain(s.shutdown_grace_s if self.signals == 1 else 0)  # a second: end the answers now

    timeout = s.shutdown_grace_s + UVICORN_MARGIN_S
    return Server(uvicorn.Config(app, host=s.host, port=s.port, timeout_graceful_shutdown=timeout))


@contextlib.contextmanager
def _sigterm_interrupts():
    """SIGTERM as Ctrl-C until uvicorn installs its handlers (and after it restores them): loading a model is
    interrupted, and the stop is as clean as Ctrl-C's."""

    def interrupt(sig: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread (tests): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def build(config: Any, log: Any = print) -> Any:
    """The app for a configuration: the run loaded, its engine, its model ids and limits."""
    from medpt.model.adapter import load_variants
    from medpt.model.adapter_scale import single_scale
    from medpt.serve.app import build_app
    from medpt.serve.engine import Engine
    from medpt.serve.serving import Serving

    s = config.serve
    single_scale(config, "serve")  # one --adapter_scale: load_variants applies it to the served adapter
    variants = load_variants(config, log)
    engine = Engine(variants, s.batching, s.max_batch_size, s.batch_wait_ms)
    models = served_models(variants.base_name, config.eval.adapter if variants.adapted is not None else None)
    serving = Serving(engine, models, config.data, config.generate, variants.positions)
    api_key = s.api_key if s.api_key is not None else os.environ.get("MEDPT_API_KEY") or None
    log(f"models: {', '.join(m.id for m in models)}; {s.batching} batching, up to {s.max_batch_size} answers at a "
        f"time; authentication {'on' if api_key else 'off'}; the web page is at /")  # fmt: skip
    return build_app(serving, api_key, s.max_request_mb)


def served_models(base_name: str, adapter: str | None) -> list[ServedModel]:
    base_id = Path(base_name).resolve().name if Path(base_name).expanduser().exists() else base_name
    models = [ServedModel(base_id, "base", base_name)]
    if adapter is not None:
        run = Path(adapter).resolve()
        run_id = run.name if run.name != base_id else f"{run.name}-adapted"
        models.append(ServedModel(run_id, "adapted", str(run), parent=base_id))
    return models


def torch_threads(asked: int | None) -> int:
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2
    threads = asked or max(1, cores - 1)
    torch.set_num_threads(threads)
    return threads


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False
