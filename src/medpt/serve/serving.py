"""From OpenAI requests to engine jobs: which model a request names, the prompts it becomes (a chat is rendered in
the run's training template and stops where the model starts the next turn; a completion takes text or token ids,
one or several), the limits they must fit (the model's positions), and the reply that shapes the answers
(medpt.serve.replies).

Everything that can take long for a large request (parsing, validation, rendering, tokenizing) runs in a worker
thread, so the event loop keeps answering /health and streaming other answers meanwhile.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from medpt.generate.prompting import build_prompt, stop_strings
from medpt.serve.engine import SHUTTING_DOWN, Engine, Job
from medpt.serve.protocol import (
    APIError,
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    Health,
    ModelCard,
    ModelList,
    Prompt,
    parse_request,
)
from medpt.serve.replies import ChatReply, CompletionReply, Reply, TokenTexts, gather, sse_events

NOUNS = {"prompt": "prompt", "messages": "conversation (in the run's template)"}  # what the param's tokens are


@dataclass(frozen=True)
class ServedModel:
    id: str  # what clients pass as `model`
    variant: str  # "base" or "adapted"
    root: str  # the base model's name or path, or the adapter run's path
    parent: str | None = None  # for the adapter: the base's id


@dataclass
class Prepared:
    """A request parsed, checked and tokenized: its engine jobs (one per prompt) and the reply that shapes them."""

    body: Any
    jobs: list[Job]
    reply: Reply


class Serving:
    """The OpenAI endpoints' logic, between the thin HTTP handlers (medpt.serve.app) and the engine."""

    def __init__(self, engine: Engine, models: list[ServedModel], data: Any, gen: Any, positions: int | None):
        self.engine, self.tokenizer = engine, engine.tokenizer
        self.models = {m.id: m for m in models}
        self.data, self.gen, self.positions = data, gen, positions  # template settings, generation defaults
        self.created = int(time.time())
        self.texts = TokenTexts(self.tokenizer)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.draining = False  # stopping: new requests are refused, answers in flight finish or are ended
        self._end: asyncio.TimerHandle | None = None  # when the answers in flight will be ended

    # --- lifecycle ------------------------------------------------------------------------------------------------
    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.engine.start()

    def drain(self, grace_s: float) -> None:
        """Ctrl-C or SIGTERM (called from the signal handler): refuse new requests, let the answers in flight run
        for `grace_s` seconds, then end them (a stream with an error event and [DONE], a whole answer with 503).
        Called again, it brings the end forward."""
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._drain, grace_s)

    def _drain(self, grace_s: float) -> None:
        self.draining = True
        if self._end is not None:
            self._end.cancel()
        self._end = self.loop.call_later(grace_s, self.engine.end_all)

    def refuse_if_draining(self) -> None:
        if self.draining:
            raise APIError(503, SHUTTING_DOWN, code="shutting_down", type="server_error")

    # --- the endpoints --------------------------------------------------------------------------------------------
    def model_list(self) -> ModelList:
        return ModelList(data=[self.card(m) for m in self.models.values()])

    def card(self, model: ServedModel) -> ModelCard:
        return ModelCard(id=model.id, created=self.created, root=model.root, parent=model.parent,
                         max_model_len=self.positions)  # fmt: skip

    def health(self) -> Health:
        return Health(running=self.engine.active)

    async def completion(self, raw: bytes) -> BaseModel | AsyncIterator[str]:
        return await self._respond(await asyncio.to_thread(self.prepare_completion, raw))

    async def chat(self, raw: bytes) -> BaseModel | AsyncIterator[str]:
        return await self._respond(await asyncio.to_thread(self.prepare_chat, raw))

    async def _respond(self, prepared: Prepared) -> BaseModel | AsyncIterator[str]:
        self.refuse_if_draining()
        stream = self.engine.submit(prepared.jobs)
        if prepared.body.stream:
            return sse_events(stream, prepared.reply, prepared.body.include_usage)
        answers = await gather(stream, len(prepared.jobs))
        return await asyncio.to_thread(prepared.reply.whole, answers)  # names every scored token: can be long

    # --- requests to jobs (in a worker thread) --------------------------------------------------------------------
    def prepare_completion(self, raw: bytes) -> Prepared:
        body = parse_request(CompletionRequest, raw)
        model = self.model(body.model)
        jobs, echoes = [], []
        for prompt in body.prompts:
            ids = self.encode(prompt)
            scoring = body.logprobs if body.echo else None  # echo with logprobs: the prompt's too, as vLLM does
            jobs.append(self.job(body, ids, body.stop, body.max_tokens, "prompt", model, body.logprobs, scoring))
            echoes.append(prompt if isinstance(prompt, str) else self.tokenizer.decode(ids, skip_special_tokens=True))
        reply = CompletionReply(f"cmpl-{uuid.uuid4().hex}", model.id, jobs, self.texts, echoes if body.echo else None)
        return Prepared(body, jobs, reply)

    def prepare_chat(self, raw: bytes) -> Prepared:
        body = parse_request(ChatCompletionRequest, raw)
        model = self.model(body.model)
        ids = self.encode(self.render(body.messages))
        stops = [*stop_strings(self.data), *body.stop]
        top = (body.top_logprobs or 0) if body.logprobs else None
        job = self.job(body, ids, stops, body.max_completion_tokens or body.max_tokens, "messages", model, top)
        return Prepared(body, [job], ChatReply(f"chatcmpl-{uuid.uuid4().hex}", model.id, [job], self.texts))

    def model(self, name: str) -> ServedModel:
        if name not in self.models:
            raise APIError(404, f"the model {name!r} does not exist; this server has {', '.join(self.models)} "
                                "(GET /v1/models)", "model", "model_not_found")  # fmt: skip
        return self.models[name]

    def render(self, messages: list[ChatMessage]) -> str:
        """The conversation in the training template: an optional system (or developer) turn, then user/assistant
        pairs, ending with the user's question."""
        system = messages[0].text() if messages[0].is_system else None
        turns = messages[1:] if system is not None else messages
        roles = [m.role for m in turns]
        if not roles or roles[-1] != "user" or any(r != ("user", "assistant")[i % 2] for i, r in enumerate(roles)):
            raise APIError(400, "messages must be an optional system (or developer) message, then user and "
                                "assistant messages in turn, ending with a user message; got "
                                f"{', '.join(m.role for m in messages)}", "messages")  # fmt: skip
        history = [(turns[i].text(), turns[i + 1].text()) for i in range(0, len(turns) - 1, 2)]
        return build_prompt(turns[-1].text(), history, self.data, self.tokenizer, system=system)

    def encode(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            # verbose=False: no "sequence length is longer than the maximum" warning in the log; answer_room
            # refuses such a prompt with the numbers
            return list(self.tokenizer(prompt, verbose=False, return_attention_mask=False)["input_ids"])
        vocabulary = len(self.tokenizer)
        outside = [t for t in prompt if not 0 <= t < vocabulary]
        if outside:
            raise APIError(400, f"prompt: token id {outside[0]} is not in the vocabulary ({vocabulary:,} tokens)",
                           "prompt")  # fmt: skip
        return list(prompt)

    def job(self, body: Any, ids: list[int], stops: list[str], max_tokens: int | None, param: str,
            model: ServedModel, logprobs: int | None = None, prompt_logprobs: int | None = None) -> Job:  # fmt: skip
        if not ids:  # a tokenizer that adds no BOS turns "" into no tokens: nothing to continue from
            raise APIError(400, f"the {NOUNS[param]} is empty", param)
        return Job(
            prompt_ids=ids,
            variant=model.variant,
            max_tokens=self.answer_room(len(ids), max_tokens, param),
            temperature=body.temperature if body.temperature is not None else self._default_temperature(),
            top_p=body.top_p if body.top_p is not None else self.gen.top_p,
            repetition_penalty=self.gen.repetition_penalty,
            seed=body.seed,
            stops=stops,
            logit_bias=self.biases(body.logit_bias),
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
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
        """max_tokens as asked (or the server's default), refused when prompt + answer exceed the model's positions.
        max_tokens 0 (echo: score the prompt) needs no room."""
        if self.positions is None:
            return self.gen.max_new_tokens if asked is None else asked
        room = self.positions - prompt_tokens
        if room < (0 if asked == 0 else 1):
            raise APIError(400, f"the {NOUNS[param]} is {prompt_tokens:,} tokens; the model takes "
                                f"{self.positions:,} positions in all (prompt and answer): shorten it", param,
                           "context_length_exceeded")  # fmt: skip
        if asked is not None and asked > room:
            raise APIError(400, f"max_tokens {asked:,} is more than the {room:,} positions left after the "
                                f"{prompt_tokens:,}-token {NOUNS[param]} (the model takes {self.positions:,})",
                           "max_tokens", "context_length_exceeded")  # fmt: skip
        return min(self.gen.max_new_tokens, room) if asked is None else asked
