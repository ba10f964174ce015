"""The HTTP app: routes, bearer authentication, and the one exception handler that gives every error OpenAI's shape.

Handlers are thin: they hand the validated request to `Serving` and send back what it returns (a pydantic response,
or a stream of server-sent events).
"""

from __future__ import annotations

import logging
import secrets
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from medpt import __version__
from medpt.serve.protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    ErrorDetail,
    ErrorResponse,
    Health,
    ModelList,
)
from medpt.serve.serving import Serving

log = logging.getLogger("medpt.serve")
PAGE = files("medpt.serve").joinpath("page.html")


def build_app(serving: Serving, api_key: str | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        serving.engine.start()
        try:
            yield
        finally:
            serving.engine.stop()

    # No /docs or /redoc: their pages load scripts from a CDN, and this server must work offline.
    app = FastAPI(title="medpt serve", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    for error in (APIError, RequestValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(error, openai_error)
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(bearer_auth(api_key))])
    page = PAGE.read_text(encoding="utf-8")

    @v1.get("/models")
    async def models() -> ModelList:
        return serving.model_list()

    @v1.post("/completions")
    async def completions(body: CompletionRequest) -> Any:
        return send(await serving.completion(body))

    @v1.post("/chat/completions")
    async def chat(body: ChatCompletionRequest) -> Any:
        return send(await serving.chat(body))

    @app.get("/health")
    async def health() -> Health:
        return serving.health()

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return page

    app.include_router(v1)
    return app


def send(result: Any) -> Any:
    if isinstance(result, BaseModel):
        return JSONResponse(result.model_dump())
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


async def openai_error(request: Request, exc: Exception) -> JSONResponse:
    """The one place an error becomes a response: OpenAI's `{"error": {...}}`, never a traceback."""
    status, detail = describe(exc)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(ErrorResponse(error=detail).model_dump(), status_code=status, headers=headers)


def describe(exc: Exception) -> tuple[int, ErrorDetail]:
    if isinstance(exc, APIError):
        return exc.status, ErrorDetail(message=exc.message, type=exc.type, param=exc.param, code=exc.code)
    if isinstance(exc, RequestValidationError):
        return 422, _validation_detail(exc.errors())
    if isinstance(exc, StarletteHTTPException):  # no such route (404), wrong method (405), ...
        return exc.status_code, ErrorDetail(message=str(exc.detail), type="invalid_request_error")
    log.error("internal error", exc_info=exc)  # a bug: the traceback goes to the server log, not to the client
    return 500, ErrorDetail(message="internal server error (the traceback is in the server log)", type="server_error")


def _validation_detail(errors: Any) -> ErrorDetail:
    """The first problem pydantic found, named by its field: `max_tokens: Input should be greater than or equal to
    1`, `messages: Field required`, or a body that is not JSON at all."""
    first = errors[0]
    if first["type"] == "json_invalid":
        reason = first.get("ctx", {}).get("error", "")
        return ErrorDetail(message=f"the request body is not valid JSON ({reason})", type="invalid_request_error",
                           code="json_invalid")  # fmt: skip
    path = [str(p) for p in first["loc"] if p != "body"]
    param = path[0] if path else None  # the request field; the message has the full path (messages.0.role)
    message = f"{'.'.join(path)}: {first['msg']}" if path else f"request body: {first['msg']}"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return ErrorDetail(message=message + more, type="invalid_request_error", param=param, code=first["type"])
