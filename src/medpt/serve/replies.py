"""From the engine's deltas to OpenAI's responses: a whole answer (gathered), or a stream of server-sent events; the
text exactly as generated, and the log-probabilities in OpenAI's shapes (chat: `logprobs.content`; completions: the
legacy `tokens` / `token_logprobs` / `top_logprobs` / `text_offset`, as vLLM fills them, echo included).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

from pydantic import BaseModel

from medpt.serve.engine import SHUTTING_DOWN, Delta, Stream, TokenLogprob
from medpt.serve.protocol import (
    APIError,
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionResponse,
    ChatLogprobs,
    ChatTokenLogprob,
    ChatTopLogprob,
    CompletionChoice,
    CompletionLogprobs,
    CompletionResponse,
    DeltaMessage,
    ErrorDetail,
    ErrorResponse,
    Usage,
)

LOWEST_LOGPROB = -9999.0  # JSON has no -inf: OpenAI and vLLM report an impossible token at -9999


@dataclass
class Answer:
    """One job's answer as the engine produced it, gathered."""

    pieces: list[str] = field(default_factory=list)
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob | None] | None = None

    def add(self, delta: Delta) -> None:
        self.pieces.append(delta.text)
        self.logprobs += delta.logprobs
        if delta.prompt_logprobs is not None:
            self.prompt_logprobs = delta.prompt_logprobs
        if delta.finish_reason is not None:
            self.finish_reason, self.prompt_tokens = delta.finish_reason, delta.prompt_tokens
            self.completion_tokens = delta.completion_tokens

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def failure(error: str) -> APIError:
    """An answer the engine could not finish: the server stopping (503, try again), or a bug (500)."""
    if error == SHUTTING_DOWN:
        return APIError(503, error, code="shutting_down", type="server_error")
    return APIError(500, error, type="server_error")


async def gather(stream: Stream, jobs: int) -> list[Answer]:
    answers = [Answer() for _ in range(jobs)]
    try:
        async for index, delta in stream:
            if delta.error:
                raise failure(delta.error)
            answers[index].add(delta)
    finally:
        stream.cancel()  # a no-op once finished; frees the rows when the client went away mid-answer
    return answers


async def sse_events(stream: Stream, reply: Reply, include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events: `data: {chunk}` per piece of text, each answer's finish reason, optionally the usage,
    `[DONE]`. An error after the stream has started can no longer change the HTTP status: it is sent as an error
    event, then `[DONE]`."""
    answers = [Answer() for _ in reply.jobs]
    try:
        for chunk in reply.opening():
            yield _event(chunk)
        async for index, delta in stream:
            if delta.error:
                error = failure(delta.error)
                yield _event(ErrorResponse(error=ErrorDetail(message=error.message, type=error.type, code=error.code)))
                break
            answers[index].add(delta)
            for chunk in reply.pieces(index, delta):
                yield _event(chunk)
        else:
            if include_usage:
                yield _event(reply.usage(total_usage(answers)))
        yield "data: [DONE]\n\n"
    finally:
        stream.cancel()  # the client went away (or the answer is done): the engine drops the rows


def _event(chunk: BaseModel) -> str:
    return f"data: {chunk.model_dump_json()}\n\n"


def total_usage(answers: list[Answer]) -> Usage:
    prompt, completion = sum(a.prompt_tokens for a in answers), sum(a.completion_tokens for a in answers)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


class TokenTexts:
    """Each token id's text as the tokenizer decodes it alone (special tokens shown), cached: log-probabilities name
    their tokens by text, as OpenAI and vLLM do."""

    def __init__(self, tokenizer: Any):
        self.tokenizer, self.cache = tokenizer, {}

    def __call__(self, token: int) -> str:
        if token not in self.cache:
            self.cache[token] = self.tokenizer.decode([token])
        return self.cache[token]


def _clamp(logprob: float) -> float:
    return max(logprob, LOWEST_LOGPROB)


class Reply:
    """How one endpoint shapes the answers to a request: whole, or as stream chunks. A subclass names its response
    and chunk types and how one choice and one chunk's choice look."""

    whole_type: type[BaseModel]
    chunk_type: type[BaseModel]

    def __init__(self, id: str, model: str, jobs: list[Any], texts: TokenTexts, echoes: list[str] | None = None):
        self.id, self.model, self.created = id, model, int(time.time())
        self.jobs, self.texts = jobs, texts
        self.echoes = echoes  # completions with echo: each prompt's text, which its answer starts with

    def opening(self) -> list[BaseModel]:
        return []

    def pieces(self, index: int, delta: Delta) -> list[BaseModel]:
        out = [self.chunk(index, delta, None)] if delta.text or delta.logprobs else []
        return out + ([self.chunk(index, Delta(""), delta.finish_reason)] if delta.finish_reason else [])

    def usage(self, usage: Usage) -> BaseModel:
        """The extra last chunk of a stream with stream_options.include_usage: no choices, the token counts."""
        return self._make(self.chunk_type, [], usage)

    def whole(self, answers: list[Answer]) -> BaseModel:
        return self._make(self.whole_type, [self.choice(i, a) for i, a in enumerate(answers)], total_usage(answers))

    def _make(self, cls: type[BaseModel], choices: list, usage: Usage | None = None) -> BaseModel:
        return cls(id=self.id, created=self.created, model=self.model, choices=choices, usage=usage)

    def chunk(self, index: int, delta: Delta, finish: str | None) -> BaseModel:
        raise NotImplementedError

    def choice(self, index: int, answer: Answer) -> BaseModel:
        raise NotImplementedError


class CompletionReply(Reply):
    whole_type = chunk_type = CompletionResponse

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.offsets = [0] * len(self.jobs)  # per choice: where the next token's text_offset starts
        self.echoed = [self.echoes is None] * len(self.jobs)

    def pieces(self, index: int, delta: Delta) -> list[BaseModel]:
        """With echo, a choice's stream starts with its prompt (and the prompt's log-probabilities, which come
        first, in a delta of their own)."""
        if self.echoed[index]:
            return super().pieces(index, delta)
        self.echoed[index] = True
        job, text = self.jobs[index], self.echoes[index]
        scored = delta.prompt_logprobs
        logprobs = self.logprobs(job.prompt_ids, scored, 0) if scored is not None else None
        self.offsets[index] = sum(len(t) for t in logprobs.tokens) if logprobs is not None else 0
        echo = self._make(self.chunk_type, [CompletionChoice(index=index, text=text, logprobs=logprobs)])
        return [echo, *super().pieces(index, delta)]

    def chunk(self, index: int, delta: Delta, finish: str | None) -> BaseModel:
        logprobs = None
        if self.jobs[index].logprobs is not None and not finish:
            logprobs = self.logprobs([e.token for e in delta.logprobs], delta.logprobs, self.offsets[index])
            self.offsets[index] += sum(len(t) for t in logprobs.tokens)
        choice = CompletionChoice(index=index, text=delta.text, finish_reason=finish, logprobs=logprobs)
        return self._make(self.chunk_type, [choice])

    def choice(self, index: int, answer: Answer) -> BaseModel:
        job, echo = self.jobs[index], self.echoes[index] if self.echoes is not None else ""
        logprobs = None
        if job.logprobs is not None:
            ids, entries = [e.token for e in answer.logprobs], list(answer.logprobs)
            if answer.prompt_logprobs is not None:  # echo: the prompt's tokens first
                ids, entries = job.prompt_ids + ids, answer.prompt_logprobs + entries
            logprobs = self.logprobs(ids, entries, 0)
        return CompletionChoice(index=index, text=echo + answer.text, finish_reason=answer.finish_reason,
                                logprobs=logprobs)  # fmt: skip

    def logprobs(self, ids: list[int], entries: list[TokenLogprob | None], offset: int) -> CompletionLogprobs:
        """vLLM's shape: each token's text and log-probability, a map of the token itself and the top N (by text:
        of two tokens with the same text, the likelier counts), and text_offset, the characters of the tokens before
        it in this choice (special tokens, which the text leaves out, included, as vLLM counts)."""
        tokens = [self.texts(t) for t in ids]
        top: list[dict[str, float] | None] = []
        for entry in entries:
            if entry is None:
                top.append(None)
                continue
            best: dict[str, float] = {}
            for token, logprob in [(entry.token, entry.logprob), *entry.top]:
                text = self.texts(token)
                best[text] = max(best.get(text, LOWEST_LOGPROB), _clamp(logprob))
            top.append(best)
        return CompletionLogprobs(
            text_offset=list(accumulate((len(t) for t in tokens[:-1]), initial=offset)),
            token_logprobs=[None if e is None else _clamp(e.logprob) for e in entries],
            tokens=tokens,
            top_logprobs=top,
        )


class ChatReply(Reply):
    whole_type, chunk_type = ChatCompletionResponse, ChatCompletionChunk

    def opening(self) -> list[BaseModel]:
        """OpenAI's first chunk names the speaker."""
        choice = ChatChunkChoice(delta=DeltaMessage(role="assistant", content=""))
        return [self._make(self.chunk_type, [choice])]

    def chunk(self, index: int, delta: Delta, finish: str | None) -> BaseModel:
        message = DeltaMessage(content=delta.text) if delta.text or not finish else DeltaMessage()
        logprobs = self.logprobs(delta.logprobs) if self.jobs[index].logprobs is not None and not finish else None
        choice = ChatChunkChoice(index=index, delta=message, finish_reason=finish, logprobs=logprobs)
        return self._make(self.chunk_type, [choice])

    def choice(self, index: int, answer: Answer) -> BaseModel:
        logprobs = self.logprobs(answer.logprobs) if self.jobs[index].logprobs is not None else None
        return ChatChoice(index=index, message=AssistantMessage(content=answer.text),
                          finish_reason=answer.finish_reason, logprobs=logprobs)  # fmt: skip

    def logprobs(self, entries: list[TokenLogprob]) -> ChatLogprobs:
        def top(token: int, logprob: float) -> ChatTopLogprob:
            text = self.texts(token)
            return ChatTopLogprob(token=text, logprob=_clamp(logprob), bytes=list(text.encode()))

        content = [ChatTokenLogprob(**top(e.token, e.logprob).model_dump(), top_logprobs=[top(*t) for t in e.top])
                   for e in entries]  # fmt: skip
        return ChatLogprobs(content=content)
