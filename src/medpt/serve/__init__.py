"""`medpt serve`: an OpenAI-compatible HTTP API (and a before/after web page) for a run, on one machine.

protocol (the wire shapes) → app (routes, auth, errors) → serving (requests to jobs and back) → engine (batched
generation in a background thread) → lane (one batch's KV cache). fastapi and uvicorn are an optional extra, imported
only inside this package: `pip install 'medpt[serve]'`.
"""

from __future__ import annotations

from typing import Any

from medpt.errors import MedptError


def run_serve(config: Any) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise MedptError(
            f"medpt serve needs fastapi and uvicorn ({e.name} is missing): pip install 'medpt[serve]'"
        ) from None
    from medpt.serve.server import serve

    return serve(config)
