"""The HTTP app: routes, bearer authentication, the request body's size limit, and the one exception handler that
gives every error OpenAI's shape.

Handlers are thin: they check the key (before reading any body), read the body (up to --max_request_mb), hand it to
`Serving` (which parses and tokenizes it in a worker thread) and send back what it returns: a pydantic response, or a
stream of server-sent events. A client that disconnects before its whole answer is ready cancels it, which frees its
rows in the engine at the next decoding step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable
from importlib.resources import files
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from medpt import __version__
from medpt.serve.engine import SHUTTING_DOWN
from medpt.serve.protocol import APIError, ErrorDetail, ErrorResponse, Health, ModelCard, ModelList, invalid
from medpt.serve.serving import Serving

log = logging.getLogger("medpt.serve")
PAGE = files("medpt.serve").joinpath("page.html")
# The page's icon: a white cross on teal, as SVG (every current browser takes an SVG icon at /favicon.ico).
FAVICON = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" height="16" rx="3" '
           'fill="#0f766e"/><path d="M6.5 3h3v3.5H13v3H9.5V13h-3V9.5H3v-3h3.5z" fill="#fff"/></svg>')  # fmt: skip
GET = ["GET", "HEAD"]  # HEAD wherever GET is allowed (uvicorn sends the headers only)
CLIENT_GONE = 499  # nginx's "client closed request": nobody reads it, the access log shows why
BODY_READ = "medpt.body_read"  # set in the ASGI scope once a request's body has been read whole


def build_app(serving: Serving, api_key: str | None = None, max_request_mb: float = 4.0) -> Lifecycle:
    # No /docs or /redoc: their pages load scripts from a CDN, and this server must work offline.
    app = FastAPI(title="medpt serve", version=__version__, docs_url=None, redoc_url=None)
    for error in (APIError, RequestValidationError, StarletteHTTPException, ClientDisconnect, Exception):
        app.add_exception_handler(error, openai_error)
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(bearer_auth(api_key))])
    page = PAGE.read_text(encoding="utf-8")
    limit = int(max_request_mb * 2**20)

    @v1.api_route("/models", methods=GET)
    async def models() -> ModelList:
        return serving.model_list()

    @v1.api_route("/models/{model:path}", methods=GET)  # path: a hub id has a slash (org/name)
    async def model_card(model: str) -> ModelCard:
        return serving.card(serving.model(model))

    @v1.post("/completions")
    async def completions(request: Request) -> Any:
        serving.refuse_if_draining()
        return await unless_disconnected(request, serving.completion(await read_body(request, limit)))

    @v1.post("/chat/completions")
    async def chat(request: Request) -> Any:
        serving.refuse_if_draining()
        return await unless_disconnected(request, serving.chat(await read_body(request, limit)))

    @app.api_route("/health", methods=GET)
    async def health() -> Health:
        return serving.health()

    @app.api_route("/", methods=GET, response_class=HTMLResponse)
    async def index() -> str:
        return page

    @app.api_route("/favicon.ico", methods=GET)
    async def favicon() -> Response:
        return Response(FAVICON, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})

    app.include_router(v1)
    app.state.max_request_bytes = limit
    return Lifecycle(app, serving)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 beyond `limit` bytes: by its Content-Length before reading any of it, or
    as soon as a body sent in chunks passes the limit."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(int(declared), limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(size, limit, "more than ")
        chunks.append(chunk)
    request.scope[BODY_READ] = True
    return b"".join(chunks)


async def drain(request: Request, cap: int) -> None:
    """Reads what is left of a refused request's body (up to `cap` bytes) and drops it. Answering before the body
    has arrived makes uvicorn close the connection with the body unread, and the client's TCP stack then reports a
    reset instead of the answer (a 401 or 413 read as "connection reset by peer")."""
    if request.scope.get(BODY_READ):
        return
    request.scope[BODY_READ] = True
    seen = 0
    while seen <= cap:
        message = await request.receive()
        seen += len(message.get("body", b""))
        if message["type"] != "http.request" or not message.get("more_body"):
            return


def too_large(size: int, limit: int, more: str = "") -> APIError:
    return APIError(413, f"the request body is {more}{size / 2**20:.1f} MB; this server takes up to "
                         f"{limit / 2**20:g} MB (--max_request_mb)", code="request_too_large")  # fmt: skip


async def unless_disconnected(request: Request, work: Awaitable[Any]) -> Any:
    """`work`'s response, or, when the client disconnects first, `work` cancelled (a whole answer is not waited
    for: its rows leave the engine at the next step). A stream is returned at once; Starlette's StreamingResponse
    then watches for the disconnect itself."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
    if not task.done() or task.cancelled():
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        return Response(status_code=CLIENT_GONE)
    return send(task.result())


async def _disconnected(request: Request) -> None:
    # The body has been read: the next ASGI message is the disconnect (uvicorn sends nothing else).
    while (await request.receive())["type"] != "http.disconnect":
        pass


def send(result: Any) -> Any:
    if isinstance(result, BaseModel):
        return Response(result.model_dump_json(), media_type="application/json")
    # no-cache and no proxy buffering: each event must reach the client as soon as it is written
    return StreamingResponse(result, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # fmt: skip


def bearer_auth(api_key: str | None) -> Any:
    async def check(authorization: str | None = Header(None)) -> None:
        if api_key is None:
            return
        scheme, _, token = (authorization or "").partition(" ")
        # compare_digest: the time taken does not tell how much of a guessed key was right
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(401, "missing or wrong API key: send the header `Authorization: Bearer KEY`",
                           code="invalid_api_key")  # fmt: skip

    return check


async def openai_error(request: Request, exc: Exception) -> Response:
    """The one place an error becomes a response: OpenAI's `{"error": {...}}`, never a traceback."""
    if isinstance(exc, ClientDisconnect):  # gone while sending its body: nobody to answer
        return Response(status_code=CLIENT_GONE)
    await drain(request, 4 * request.app.state.max_request_bytes)
    status, detail = describe(exc)
    headers = dict(getattr(exc, "headers", None) or {})  # 405's Allow
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(ErrorResponse(error=detail).model_dump(), status_code=status, headers=headers or None)


def describe(exc: Exception) -> tuple[int, ErrorDetail]:
    if isinstance(exc, RequestValidationError):
        exc = invalid(exc.errors())
    if isinstance(exc, APIError):
        return exc.status, ErrorDetail(message=exc.message, type=exc.type, param=exc.param, code=exc.code)
    if isinstance(exc, StarletteHTTPException):  # no such route (404), wrong method (405), ...
        return exc.status_code, ErrorDetail(message=str(exc.detail), type="invalid_request_error")
    log.error("internal error", exc_info=exc)  # a bug: the traceback goes to the server log, not to the client
    return 500, ErrorDetail(message="internal server error (the traceback is in the server log)", type="server_error")


class Lifecycle:
    """The ASGI app uvicorn runs: FastAPI's, plus what a server that must stop cleanly needs and FastAPI does badly.

    1. The lifespan (start and stop the engine) is handled here: FastAPI's logs a traceback when uvicorn cancels it,
       which it does when a third Ctrl-C exits without the orderly shutdown.
    2. A request uvicorn cancels (after its own shutdown timeout, or at that third Ctrl-C) would be logged as
       "Exception in ASGI application" with a traceback; it gets a 503 instead (or, mid-stream, an error event and
       [DONE]). Answers in flight are normally ended well before, by medpt (medpt.serve.serving.Serving.drain).
    """

    def __init__(self, app: FastAPI, serving: Serving):
        self.app, self.serving = app, serving

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await self._lifespan(receive, send)
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        sent = {"start": False, "end": False, "stream": False}

        async def tracked(message: dict) -> None:
            if message["type"] == "http.response.start":
                sent["start"] = True
                types = [value for name, value in message["headers"] if name.lower() == b"content-type"]
                sent["stream"] = any(t.startswith(b"text/event-stream") for t in types)
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                sent["end"] = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except asyncio.CancelledError:
            if not sent["end"]:
                with contextlib.suppress(Exception):
                    await _end_cut(send, sent)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        try:
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.serving.start()
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    self.serving.engine.stop()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        except asyncio.CancelledError:  # a forced exit: nothing waits for the shutdown any more
            return


async def _end_cut(send: Any, sent: dict) -> None:
    error = ErrorResponse(error=ErrorDetail(message=SHUTTING_DOWN, type="server_error", code="shutting_down"))
    if not sent["start"]:
        body = error.model_dump_json().encode()
        await send({"type": "http.response.start", "status": 503, "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})
        return
    tail = f"data: {error.model_dump_json()}\n\ndata: [DONE]\n\n" if sent["stream"] else ""
    await send({"type": "http.response.body", "body": tail.encode()})
