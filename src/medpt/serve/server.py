"""Load a run, build the engine and the app, and run uvicorn until Ctrl-C (or SIGTERM).

Model ids are what a user recognises: the base model's folder name (or its hub id) and the run's folder name, e.g.
`tiny-model` and `run`. Ctrl-C stops accepting connections, lets answers in flight finish (up to
GRACEFUL_SHUTDOWN_S seconds), then stops the engine; a second Ctrl-C exits at once.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from pathlib import Path
from typing import Any

from medpt.serve.serving import ServedModel

GRACEFUL_SHUTDOWN_S = 10


def serve(config: Any, log: Any = print) -> int:
    import uvicorn

    s = config.serve
    torch_threads(s.num_threads)
    server = uvicorn.Server(uvicorn.Config(build(config, log), host=s.host, port=s.port,
                                           timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S))  # fmt: skip
    if not is_loopback(s.host):
        print(f"medpt: warning: --host {s.host} is not a loopback address: the API is reachable from the network "
              "(use --api_key, and TLS in front of it)", file=sys.stderr)  # fmt: skip
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C once it has shut down gracefully: a normal stop
        pass
    log("medpt serve: stopped")
    return 0


def build(config: Any, log: Any = print) -> Any:
    """The app for a configuration: the run loaded, its engine, its model ids and limits."""
    from medpt.adapter import load_variants
    from medpt.serve.app import build_app
    from medpt.serve.engine import Engine
    from medpt.serve.serving import Serving

    s = config.serve
    variants = load_variants(config, log)
    engine = Engine(variants, s.batching, s.max_batch_size, s.batch_wait_ms)
    models = served_models(variants.base_name, config.eval.adapter if variants.adapted is not None else None)
    serving = Serving(engine, models, config.data, config.generate, variants.positions)
    api_key = s.api_key if s.api_key is not None else os.environ.get("MEDPT_API_KEY") or None
    log(f"models: {', '.join(m.id for m in models)}; {s.batching} batching, up to {s.max_batch_size} answers at a "
        f"time; authentication {'on' if api_key else 'off'}; the web page is at /")  # fmt: skip
    return build_app(serving, api_key)


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
