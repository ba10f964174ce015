"""`medpt serve`: an OpenAI-compatible HTTP API (and a before/after web page) for a run, on one machine.

command (the entry, the port check) → server → protocol (the wire shapes) → app (routes, auth, errors) → serving
(requests to jobs and back) → engine (batched generation in a background thread) → lane (one batch's KV cache).
fastapi and uvicorn are an optional extra, imported only inside this package: `pip install 'medpt[serve]'`.
"""
