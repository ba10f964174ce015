"""The OpenAI-compatible wire format: every request and response shape `medpt serve` speaks, as pydantic models.

Every field of OpenAI's two text endpoints is accepted. The ones medpt implements are fields of the models below; the
others are in `UNIMPLEMENTED` with the values that ask for nothing medpt would do differently (`presence_penalty: 0`,
`response_format: {"type": "text"}`, `user`, ...): clients and frameworks send those on every request, so they are
accepted and ignored, and any other value is refused with 400 naming the field, rather than answered as if it had
been honoured. A field OpenAI does not have (a typo) is refused too. Errors have OpenAI's shape,
`{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, ClassVar, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from medpt.strictjson import dumps

MAX_LOGPROBS = 20  # OpenAI's and vLLM's largest top_logprobs


class APIError(Exception):
    """A request the server refuses; rendered in OpenAI's error shape by the app's one exception handler."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


# --- the fields medpt does not implement ----------------------------------------------------------------------------
def _one_of(*values: Any) -> Callable[[Any], bool]:
    return lambda value: any(value == v and type(value) is type(v) for v in values)  # 0 is not False, [] not None


def _anything(value: Any) -> bool:
    return True


_OFF = _one_of(None)
_NO_PENALTY = _one_of(None, 0, 0.0)
_ONE = _one_of(None, 1)
# Fields that label, route, cache or bill a request, or shape tool calls when there are no tools: no value changes
# the answer, so any value is accepted.
_LABELS = {name: _anything for name in ("user", "metadata", "safety_identifier", "prompt_cache_key",
                                        "prompt_cache_retention", "prompt_cache_options", "service_tier",
                                        "parallel_tool_calls")}  # fmt: skip
_SHARED = {"frequency_penalty": _NO_PENALTY, "presence_penalty": _NO_PENALTY, "n": _ONE, **_LABELS}
UNIMPLEMENTED: dict[str, dict[str, Callable[[Any], bool]]] = {
    "completions": {**_SHARED, "best_of": _ONE, "suffix": _one_of(None, "")},
    "chat": {
        **_SHARED,
        "tools": _one_of(None, []),
        "functions": _one_of(None, []),
        "tool_choice": _one_of(None, "none", "auto"),  # with no tools, "auto" calls none
        "function_call": _one_of(None, "none", "auto"),
        "response_format": _one_of(None, {"type": "text"}),
        "modalities": _one_of(None, ["text"]),
        "audio": _OFF,
        "prediction": _OFF,
        "reasoning_effort": _one_of(None, "none"),
        "verbosity": _OFF,
        "web_search_options": _OFF,
        "moderation": _OFF,
        "store": _one_of(None, False),  # medpt keeps no completions to fetch later
    },
    "message": {  # fields of one chat message
        "name": _anything,  # a participant's name: the training template has no names
        "refusal": _OFF,
        "tool_calls": _one_of(None, []),
        "tool_call_id": _OFF,
        "function_call": _OFF,
        "audio": _OFF,
    },
}


def _drop_neutral(data: dict, table: dict[str, Callable[[Any], bool]], where: str = "",
                  param: str | None = None) -> None:  # fmt: skip
    """Removes the fields of `table` that hold a neutral value; a 400 naming the first that does not."""
    for name in [n for n in data if n in table]:
        value = data.pop(name)
        if not table[name](value):
            raise APIError(400, f"{where}{name}: medpt serve does not implement {name} (got {dumps(value)}); "
                                "leave it out, or send its default", param or name, "unsupported_value")  # fmt: skip


# --- requests -----------------------------------------------------------------------------------------------------
class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool | None = False
    include_obfuscation: bool | None = None  # padding against side channels: ignored, medpt pads nothing


class _Sampling(BaseModel):
    """Fields both endpoints take. Omitted ones take `medpt serve`'s defaults (--max_new_tokens, --do_sample,
    --temperature, --top_p)."""

    model_config = ConfigDict(extra="forbid")
    kind: ClassVar[str] = ""  # the UNIMPLEMENTED table of this endpoint

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)  # 0: greedy
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = Field(None, validate_default=True)  # up to 4; the answer ends before the first
    seed: int | None = Field(None, ge=0, lt=2**63)
    logit_bias: dict[str, float] | None = None  # token id -> bias added to its logit, -100 to 100 (-100: never)
    stream: bool | None = False
    stream_options: StreamOptions | None = None

    @field_validator("logit_bias")
    @classmethod
    def _biases(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for token, bias in (value or {}).items():
            if not token.isdigit() or not -100 <= bias <= 100:
                raise ValueError('logit_bias maps token ids ("123") to biases from -100 to 100')
        return value

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes up to 4 non-empty strings")
        return stops

    def check(self) -> None:
        """What no single field says: a 400 naming the field."""
        if self.stream_options is not None and not self.stream:
            raise APIError(400, "stream_options is only for streamed answers: send stream: true, or leave it out",
                           "stream_options")  # fmt: skip

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


Prompt = str | list[int]  # text, or token ids


class CompletionRequest(_Sampling):
    kind: ClassVar[str] = "completions"

    prompt: str | list[str] | list[int] | list[list[int]]  # several prompts: one choice each, in order
    max_tokens: int | None = Field(None, ge=0)  # 0: with echo, the prompt's log-probabilities only
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)  # per token: its log-probability and the top N
    echo: bool | None = False  # the prompt, then the answer (and their log-probabilities)

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("no prompt: give a string, a list of strings, token ids, or lists of token ids")
        if isinstance(value, list) and isinstance(value[0], list) and not all(value):
            raise ValueError("a list of token ids is empty")
        return value

    @property
    def prompts(self) -> list[Prompt]:
        if isinstance(self.prompt, str) or isinstance(self.prompt[0], int):
            return [self.prompt]
        return list(self.prompt)

    def check(self) -> None:
        super().check()
        if self.max_tokens == 0 and not self.echo:
            raise APIError(400, "max_tokens 0 generates nothing: send echo: true (and logprobs) to score the prompt, "
                                "or at least 1", "max_tokens")  # fmt: skip


Role = Literal["system", "developer", "user", "assistant"]  # developer: OpenAI's newer name for system
ROLES = get_args(Role)


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role
    content: str | list[TextPart]

    @field_validator("content", mode="before")
    @classmethod
    def _text_only(cls, value: Any) -> Any:
        for part in value if isinstance(value, list) else []:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text":
                raise ValueError(f"a content part of type {kind!r}: medpt serves text models, so only "
                                 '{"type": "text", "text": ...} parts')  # fmt: skip
        return value

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)

    @property
    def is_system(self) -> bool:
        return self.role in ("system", "developer")


class ChatCompletionRequest(_Sampling):
    kind: ClassVar[str] = "chat"

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer name of max_tokens
    logprobs: bool | None = False  # each answer token's log-probability
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)  # and the N likeliest tokens at its place

    def check(self) -> None:
        super().check()
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise APIError(400, "give max_tokens or max_completion_tokens, not both", "max_completion_tokens")
        if self.top_logprobs and not self.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", "top_logprobs")


def parse_request(model: type[_Sampling], raw: bytes) -> Any:
    """The request body as `model`, or the APIError that says what is wrong with it (400, naming the field)."""
    try:
        data = json.loads(raw, parse_constant=_not_json)
    except ValueError as e:  # also a body that is not UTF-8
        raise APIError(400, f"the request body is not valid JSON ({e})", code="json_invalid") from None
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object", code="json_invalid")
    _drop_neutral(data, UNIMPLEMENTED[model.kind])
    messages = data.get("messages") if model.kind == "chat" else None
    for i, message in enumerate(messages if isinstance(messages, list) else []):
        if isinstance(message, dict) and message.get("role") in ROLES:  # a tool message is refused for its role
            _drop_neutral(message, UNIMPLEMENTED["message"], f"messages.{i}.", "messages")
    try:
        request = model.model_validate(data)
    except ValidationError as e:
        raise invalid(e.errors()) from None
    request.check()
    return request


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not a JSON number")


def invalid(errors: Any) -> APIError:
    """The first problem pydantic found, named by its field: `max_tokens: Input should be greater than or equal to
    1`, `messages: Field required`."""
    first = errors[0]
    path = [str(p) for p in first["loc"] if p != "body"]
    param = path[0] if path else None  # the request field; the message has the full path (messages.0.role)
    message = f"{'.'.join(path)}: {first['msg']}" if path else f"request body: {first['msg']}"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return APIError(400, message + more, param, first["type"])


# --- responses ----------------------------------------------------------------------------------------------------
FinishReason = Literal["stop", "length"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(BaseModel):
    """OpenAI's legacy shape, as vLLM fills it: per token its text, log-probability (None for the first prompt
    token, which nothing predicts), the top N and the token itself, and where its text starts."""

    text_offset: list[int]
    token_logprobs: list[float | None]
    tokens: list[str]
    top_logprobs: list[dict[str, float] | None]


class _Choice(BaseModel):
    """What every choice of every response shape has."""

    index: int = 0
    finish_reason: FinishReason | None = None


class _Response(BaseModel):
    """What every response and streamed chunk has (each adds its `object` and `choices`)."""

    id: str
    created: int
    model: str


class CompletionChoice(_Choice):
    text: str
    logprobs: CompletionLogprobs | None = None


class CompletionResponse(_Response):
    """Also each streamed chunk of a completion (with `usage` None, or only in the last one)."""

    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ChatTopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None  # the token's text as UTF-8


class ChatTokenLogprob(ChatTopLogprob):
    top_logprobs: list[ChatTopLogprob]


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None = None
    refusal: None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(_Choice):
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None


class ChatCompletionResponse(_Response):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: Usage


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(_Choice):
    delta: DeltaMessage
    logprobs: ChatLogprobs | None = None


class ChatCompletionChunk(_Response):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "medpt"
    root: str  # where the weights come from: the base model, or the adapter run
    parent: str | None = None  # an adapter's base model id
    max_model_len: int | None = None  # positions the model takes (prompt + answer), as vLLM reports it


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    running: int  # answers being decoded now
