"""From OpenAI requests to engine jobs and back: which model a request names, the prompt it becomes (a chat is
rendered in the run's training template and stops where the model starts the next turn), the limits it must fit
(the model's positions), and the response or stream of chunks it gets.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from medpt.generate import build_prompt, stop_strings
from medpt.serve.engine import Delta, Engine, Job, Stream
from medpt.serve.protocol import (
    APIError,
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessage,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    DeltaMessage,
    ErrorDetail,
    ErrorResponse,
    Health,
    ModelCard,
    ModelList,
    Usage,
)


@dataclass(frozen=True)
class ServedModel:
    id: str  # what clients pass as `model`
    variant: str  # "base" or "adapted"
    root: str  # the base model's name or path, or the adapter run's path
    parent: str | None = None  # for the adapter: the base's id


@dataclass
class Answer:
    """An answer as the engine produced it, gathered (non-streaming requests)."""

    text: str
    finish_reason: str
    usage: Usage


class Serving:
    """The OpenAI endpoints' logic, between the thin HTTP handlers (medpt.serve.app) and the engine."""

    def __init__(self, engine: Engine, models: list[ServedModel], data: Any, gen: Any, positions: int | None):
        self.engine, self.tokenizer = engine, engine.tokenizer
        self.models = {m.id: m for m in models}
        self.data, self.gen, self.positions = data, gen, positions  # template settings, generation defaults
        self.created = int(time.time())

    def model_list(self) -> ModelList:
        cards = [ModelCard(id=m.id, created=self.created, root=m.root, parent=m.parent, max_model_len=self.positions)
                 for m in self.models.values()]  # fmt: skip
        return ModelList(data=cards)

    def health(self) -> Health:
        return Health(running=self.engine.active)

    async def completion(self, body: CompletionRequest) -> BaseModel | AsyncIterator[str]:
        model = self.model(body.model)
        job = self.job(body, body.prompt, body.stop, body.max_tokens, "prompt", model)
        reply = _CompletionReply(f"cmpl-{uuid.uuid4().hex}", model.id)
        return await self._respond(body, self.engine.submit(job), reply)

    async def chat(self, body: ChatCompletionRequest) -> BaseModel | AsyncIterator[str]:
        model = self.model(body.model)
        if body.max_tokens is not None and body.max_completion_tokens is not None:
            raise APIError(400, "give max_tokens or max_completion_tokens, not both", "max_completion_tokens")
        prompt = self.render(body.messages)
        stops = [*stop_strings(self.data), *body.stop]
        job = self.job(body, prompt, stops, body.max_completion_tokens or body.max_tokens, "messages", model)
        reply = _ChatReply(f"chatcmpl-{uuid.uuid4().hex}", model.id)
        return await self._respond(body, self.engine.submit(job), reply)

    def model(self, name: str) -> ServedModel:
        if name not in self.models:
            raise APIError(404, f"the model {name!r} does not exist; this server has {', '.join(self.models)} "
                                "(GET /v1/models)", "model", "model_not_found")  # fmt: skip
        return self.models[name]

    def render(self, messages: list[ChatMessage]) -> str:
        """The conversation in the training template: an optional system turn, then user/assistant pairs, ending with
        the user's question."""
        system = messages[0].text() if messages[0].role == "system" else None
        turns = messages[1:] if system is not None else messages
        roles = [m.role for m in turns]
        if not roles or roles[-1] != "user" or any(r != ("user", "assistant")[i % 2] for i, r in enumerate(roles)):
            raise APIError(400, "messages must be an optional system message, then user and assistant messages in "
                                f"turn, ending with a user message; got {', '.join(m.role for m in messages)}",
                           "messages")  # fmt: skip
        history = [(turns[i].text(), turns[i + 1].text()) for i in range(0, len(turns) - 1, 2)]
        return build_prompt(turns[-1].text(), history, self.data, self.tokenizer, system=system)

    def job(self, body: Any, prompt: str, stops: list[str], max_tokens: int | None, param: str,
            model: ServedModel) -> Job:  # fmt: skip
        ids = self.tokenizer(prompt)["input_ids"]
        if not ids:  # a tokenizer that adds no BOS turns "" into no tokens: nothing to continue from
            raise APIError(400, f"the {param} is empty", param)
        temperature = body.temperature if body.temperature is not None else self._default_temperature()
        return Job(
            prompt_ids=ids,
            variant=model.variant,
            max_tokens=self.answer_room(len(ids), max_tokens, param),
            temperature=temperature,
            top_p=body.top_p if body.top_p is not None else self.gen.top_p,
            repetition_penalty=self.gen.repetition_penalty,
            seed=body.seed,
            stops=stops,
            logit_bias=self.biases(body.logit_bias),
        )

    def biases(self, asked: dict[str, float] | None) -> dict[int, float]:
        biases = {int(token): bias for token, bias in (asked or {}).items()}
        unknown = [t for t in biases if t >= len(self.tokenizer)]
        if unknown:
            raise APIError(400, f"logit_bias: token id {unknown[0]} is not in the vocabulary ({len(self.tokenizer):,} "
                                "tokens)", "logit_bias")  # fmt: skip
        return biases

    def _default_temperature(self) -> float:
        return self.gen.temperature if self.gen.do_sample else 0.0

    def answer_room(self, prompt_tokens: int, asked: int | None, param: str) -> int:
        """max_tokens as asked (or the server's default), refused when prompt + answer exceed the model's positions."""
        if self.positions is None:
            return asked or self.gen.max_new_tokens
        room = self.positions - prompt_tokens
        if room < 1:
            raise APIError(400, f"the {param} is {prompt_tokens:,} tokens; the model takes {self.positions:,} "
                                "positions in all (prompt and answer): shorten it", param,
                           "context_length_exceeded")  # fmt: skip
        if asked is not None and asked > room:
            raise APIError(400, f"max_tokens {asked:,} is more than the {room:,} positions left after the "
                                f"{prompt_tokens:,}-token {param} (the model takes {self.positions:,})",
                           "max_tokens", "context_length_exceeded")  # fmt: skip
        return asked or min(self.gen.max_new_tokens, room)

    async def _respond(self, body: Any, stream: Stream, reply: _Reply) -> BaseModel | AsyncIterator[str]:
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            return sse_events(stream, reply, include_usage)
        answer = await gather(stream)
        return reply.whole(answer)


async def gather(stream: Stream) -> Answer:
    pieces: list[str] = []
    try:
        async for delta in stream:
            if delta.error:
                raise APIError(500, delta.error, type="server_error")
            pieces.append(delta.text)
    finally:
        stream.cancel()  # a no-op once finished; frees the row when the client went away mid-answer
    return Answer("".join(pieces), delta.finish_reason or "stop", _usage(delta))


async def sse_events(stream: Stream, reply: _Reply, include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events: `data: {chunk}` per piece of text, the finish reason, optionally the usage, `[DONE]`.
    An error after the stream has started can no longer change the HTTP status: it is sent as an error event."""
    try:
        for chunk in reply.opening():
            yield _event(chunk)
        async for delta in stream:
            if delta.error:
                yield _event(ErrorResponse(error=ErrorDetail(message=delta.error, type="server_error")))
                return
            for chunk in reply.pieces(delta):
                yield _event(chunk)
            if delta.finish_reason and include_usage:
                yield _event(reply.usage(_usage(delta)))
        yield "data: [DONE]\n\n"
    finally:
        stream.cancel()  # the client went away (or the answer is done): the engine drops the row


def _event(chunk: BaseModel) -> str:
    return f"data: {chunk.model_dump_json()}\n\n"


def _usage(delta: Delta) -> Usage:
    total = delta.prompt_tokens + delta.completion_tokens
    return Usage(prompt_tokens=delta.prompt_tokens, completion_tokens=delta.completion_tokens, total_tokens=total)


class _Reply:
    """How one endpoint shapes an answer: whole, or as stream chunks. A subclass names its response and chunk types
    (`whole_type`, `chunk_type`) and how one choice looks (`choice`, `chunk_choice`)."""

    whole_type: type[BaseModel]
    chunk_type: type[BaseModel]

    def __init__(self, id: str, model: str):
        self.id, self.model, self.created = id, model, int(time.time())

    def opening(self) -> list[BaseModel]:
        return []

    def pieces(self, delta: Delta) -> list[BaseModel]:
        out = [self.chunk(delta.text, None)] if delta.text else []
        return out + ([self.chunk("", delta.finish_reason)] if delta.finish_reason else [])

    def chunk(self, text: str, finish: str | None) -> BaseModel:
        return self._make(self.chunk_type, [self.chunk_choice(text, finish)])

    def usage(self, usage: Usage) -> BaseModel:
        """The extra last chunk of a stream with stream_options.include_usage: no choices, the token counts."""
        return self._make(self.chunk_type, [], usage)

    def whole(self, answer: Answer) -> BaseModel:
        return self._make(self.whole_type, [self.choice(answer)], answer.usage)

    def _make(self, cls: type[BaseModel], choices: list, usage: Usage | None = None) -> BaseModel:
        return cls(id=self.id, created=self.created, model=self.model, choices=choices, usage=usage)

    def choice(self, answer: Answer) -> BaseModel:
        raise NotImplementedError

    def chunk_choice(self, text: str, finish: str | None) -> BaseModel:
        raise NotImplementedError


class _CompletionReply(_Reply):
    whole_type = chunk_type = CompletionResponse

    def choice(self, answer: Answer) -> BaseModel:
        return CompletionChoice(text=answer.text, finish_reason=answer.finish_reason)

    def chunk_choice(self, text: str, finish: str | None) -> BaseModel:
        return CompletionChoice(text=text, finish_reason=finish)


class _ChatReply(_Reply):
    whole_type, chunk_type = ChatCompletionResponse, ChatCompletionChunk

    def opening(self) -> list[BaseModel]:
        """OpenAI's first chunk names the speaker."""
        choice = ChatChunkChoice(delta=DeltaMessage(role="assistant", content=""))
        return [self._make(self.chunk_type, [choice])]

    def choice(self, answer: Answer) -> BaseModel:
        return ChatChoice(message=AssistantMessage(content=answer.text), finish_reason=answer.finish_reason)

    def chunk_choice(self, text: str, finish: str | None) -> BaseModel:
        return ChatChunkChoice(delta=DeltaMessage(content=text) if text else DeltaMessage(), finish_reason=finish)
