"""The model engine: one background thread decodes every answer in flight, batched, and streams each answer's text
to its request as it grows.

The HTTP side sees one interface: `Engine.submit(jobs)` returns a `Stream` of each job's `Delta`s (text pieces with
the log-probabilities of their tokens when asked, then one with a finish reason and the token counts). Inside, the
loop is

1. admit waiting jobs: `continuous` batching admits them between any two decoding steps (up to --max_batch_size
   rows); `dynamic` batching admits a new batch only when the previous one has finished. An idle engine first waits
   --batch_wait_ms, so requests that arrive together start together;
2. prefill the admitted prompts (with the logits of every position for rows that score their prompt: echo with
   logprobs) and sample each one's first token;
3. one decoding step for every running row, then sample, detokenize, and stream;
4. drop the rows that finished (end of text, a stop string, max_tokens, or a client that went away).

Base and adapted answers share a batch: with a LoRA adapter each row names its adapter in PEFT's mixed-batch
inference (`adapter_names`, "__base__" for the base), so one forward serves both. Where PEFT cannot mix (DoRA) or the
two models are separate (a fully fine-tuned run), each model gets its own batch ("lane") and they step in turn.

Sampling is per row: each answer has its own random generator seeded from its request (`seed`), so a seeded answer
does not depend on what else is in the batch, and its own logits processors (repetition penalty, temperature, top-p:
transformers' own warpers, in the order `generate` applies them). Log-probabilities are those of the model's own
distribution, before those processors (vLLM's default, "raw_logprobs"): a token's score does not depend on how the
request samples.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import (
    RepetitionPenaltyLogitsProcessor,
    SequenceBiasLogitsProcessor,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from medpt.generate import prompting
from medpt.generate.prompting import StopAwareStreamer
from medpt.model.loading import cache_name
from medpt.serve.lane import Lane

log = logging.getLogger("medpt.serve")


SHUTTING_DOWN = "the server is shutting down"


@dataclass
class Job:
    """One answer to produce: what the HTTP side asks of the engine."""

    prompt_ids: list[int]
    variant: str  # "base" or "adapted" (medpt.model.adapter.Variants names)
    max_tokens: int  # 0: score the prompt only
    temperature: float  # 0: greedy
    top_p: float
    repetition_penalty: float
    seed: int | None
    stops: list[str]
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit before sampling
    logprobs: int | None = None  # per answer token: its log-probability and the top N (None: not asked)
    prompt_logprobs: int | None = None  # the same for every prompt token after the first


@dataclass
class TokenLogprob:
    token: int
    logprob: float
    top: list[tuple[int, float]]  # the likeliest tokens at this place, best first: (token id, log-probability)


@dataclass
class Delta:
    """A piece of an answer's text; the last one carries the finish reason and the token counts (or an error)."""

    text: str
    finish_reason: str | None = None  # "stop" (end of text or a stop string) or "length" (max_tokens)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)  # the tokens sampled since the previous delta
    prompt_logprobs: list[TokenLogprob | None] | None = None  # once, before any text: the first token's is None


class Stream:
    """The engine thread's answers to one request, handed to the asyncio side: `async for index, delta in stream`,
    until every job has finished (or one has failed)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, jobs: int = 1):
        self.loop, self.jobs = loop, jobs
        self.queue: asyncio.Queue[tuple[int, Delta]] = asyncio.Queue()
        self.cancelled = False  # set by the HTTP side when the client has gone; the engine drops the rows

    def push(self, index: int, delta: Delta) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (index, delta))
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            self.cancelled = True

    def cancel(self) -> None:
        self.cancelled = True

    async def __aiter__(self):
        running = self.jobs
        while running:
            index, delta = await self.queue.get()
            yield index, delta
            if delta.error is not None:
                return
            if delta.finish_reason is not None:
                running -= 1


@dataclass(eq=False)  # rows are compared by identity
class Row:
    """One answer being decoded: its job, its sampler and its text so far."""

    job: Job
    stream: Stream
    index: int  # the job's place in its request
    adapter: str  # PEFT adapter name for mixed batches ("__base__": no adapter)
    processors: list  # logits processors, in the order transformers' generate applies them
    generator: torch.Generator | None  # None: greedy
    streamer: StopAwareStreamer | None = None  # the answer's text, held back where a stop string may be starting
    tokens: list[int] = field(default_factory=list)
    unsent: list[TokenLogprob] = field(default_factory=list)  # log-probabilities of tokens whose text is held back

    def push(self, delta: Delta) -> None:
        self.stream.push(self.index, delta)

    def emit(self, text: str) -> None:
        """The streamer's output: a piece of text, with the log-probabilities of the tokens that made it."""
        self.push(Delta(text, logprobs=self._take_unsent()))

    def finish(self, reason: str) -> None:
        self.push(Delta("", reason, len(self.job.prompt_ids), len(self.tokens), logprobs=self._take_unsent()))

    def _take_unsent(self) -> list[TokenLogprob]:
        unsent, self.unsent = self.unsent, []
        return unsent

    def choose(self, logits: torch.Tensor) -> int:
        """The next token from this row's logits [vocab]: processors, then greedy or seeded sampling."""
        scores = logits.unsqueeze(0)
        if self.processors:
            ids = torch.tensor([self.job.prompt_ids + self.tokens], dtype=torch.long)
            for processor in self.processors:
                scores = processor(ids, scores)
        if self.generator is None:
            return int(scores.argmax())
        return int(torch.multinomial(torch.softmax(scores[0], -1), 1, generator=self.generator))


class Engine:
    """Batched generation on one copy of the weights (see the module docstring)."""

    def __init__(self, variants: Any, batching: str = "continuous", max_batch_size: int = 16,
                 batch_wait_ms: float = 5.0):  # fmt: skip
        self.variants, self.tokenizer = variants, variants.tokenizer
        self.batching, self.max_batch_size, self.batch_wait = batching, max_batch_size, batch_wait_ms / 1000
        self.lanes = self._lanes(variants)
        # an answer's text is decoded after this token: "a", which every tokenizer decodes as itself
        self.anchor = self.tokenizer("a", add_special_tokens=False)["input_ids"][-1:]
        self._pending: deque[Row] = deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._ending: str | None = None  # end every answer with this error at the next step
        self._thread: threading.Thread | None = None

    def _lanes(self, variants: Any) -> dict[str, Lane]:
        pad, cache = self.tokenizer.pad_token_id, cache_name(variants.base)
        if variants.peft and _can_mix(variants.adapted):
            return {"*": Lane(_mixed_forward(variants), pad, cache)}
        return {name: Lane(_forward_with(variants, name), pad, cache) for name in variants.names}

    # --- the HTTP side -------------------------------------------------------------------------------------------
    def submit(self, jobs: list[Job]) -> Stream:
        stream = Stream(asyncio.get_running_loop(), len(jobs))
        rows = []
        for index, job in enumerate(jobs):
            row = Row(job, stream, index, self._adapter_name(job.variant), *sampler(job))
            row.streamer = StopAwareStreamer(self.tokenizer, job.stops, row.emit, skip_prompt=False, strip=False,
                                             after=self.anchor)  # fmt: skip
            rows.append(row)
        with self._wake:
            self._pending.extend(rows)
            self._wake.notify()
        return stream

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="medpt-engine", daemon=True)
        self._thread.start()

    def end_all(self, reason: str = SHUTTING_DOWN) -> None:
        """End every answer running or waiting, at the next step, with an error delta (the shutdown's grace period
        is over); the engine goes on serving what comes next."""
        with self._wake:
            self._ending = reason
            self._wake.notify()

    def stop(self) -> None:
        """Finish the loop; answers still running end with an error delta."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()
        self._fail_all(SHUTTING_DOWN)

    @property
    def active(self) -> int:
        return sum(len(lane.rows) for lane in self.lanes.values())

    # --- the engine thread ---------------------------------------------------------------------------------------
    def _run(self) -> None:
        with torch.inference_mode():
            while self._admit():
                for lane in self.lanes.values():
                    if lane.rows:
                        self._guarded(lane, lambda lane=lane: lane.step([r.tokens[-1] for r in lane.rows]))

    def _admit(self) -> bool:
        """Step 1 and 2: take waiting rows (as the batching policy allows) and prefill them. False: stop."""
        rows = self._take()
        if rows is None:
            return False
        for (lane, _), group in self._groups(rows).items():
            self._guarded(lane, lambda lane=lane, group=group: self._prefill(lane, group), group)
        return True

    def _take(self) -> list[Row] | None:
        with self._wake:
            if self._ending is not None:
                self._fail_all(self._ending)
                self._ending = None
            if self._stopping:
                return None
            if self.active and self.batching == "dynamic":
                return []
            if not self.active:
                while not self._pending and not self._stopping:
                    self._wake.wait()
                deadline = time.monotonic() + self.batch_wait  # let requests that arrive together start together
                while len(self._pending) < self.max_batch_size and time.monotonic() < deadline:
                    self._wake.wait(deadline - time.monotonic())
                if self._stopping:
                    return None
            room = self.max_batch_size - self.active
            return [self._pending.popleft() for _ in range(min(room, len(self._pending)))]

    def _fail_all(self, reason: str) -> None:
        """Every row running or waiting ends with `reason` as its error, and leaves."""
        for row in [*self._pending, *(r for lane in self.lanes.values() for r in lane.rows)]:
            row.push(Delta("", error=reason))
        self._pending.clear()
        for lane in self.lanes.values():
            lane.keep([False] * len(lane.rows))

    def _groups(self, rows: list[Row]) -> dict[tuple[Lane, bool], list[Row]]:
        """The rows each prefill takes: by lane, and apart when they score their prompt (that prefill keeps the
        logits of every position, [rows, positions, vocab], which the others do not need)."""
        groups: dict[tuple[Lane, bool], list[Row]] = {}
        for row in rows:
            if not row.stream.cancelled:
                lane = self.lanes.get("*") or self.lanes[row.job.variant]
                groups.setdefault((lane, row.job.prompt_logprobs is not None), []).append(row)
        return groups

    def _prefill(self, lane: Lane, rows: list[Row]) -> torch.Tensor:
        """The rows' prompts into the lane; their next-token logits [rows, vocab]. Rows that score their prompt
        get its log-probabilities first."""
        scoring = any(r.job.prompt_logprobs is not None for r in rows)
        logits = lane.admit(rows, [r.job.prompt_ids for r in rows], every_position=scoring)
        if not scoring:
            return logits
        for i, row in enumerate(rows):
            prompt = row.job.prompt_ids
            # left padding: the row's prompt is the last len(prompt) positions; position t predicts token t + 1
            scored = logits[i, logits.shape[1] - len(prompt) : -1]
            row.push(Delta("", prompt_logprobs=[None, *token_logprobs(scored, prompt[1:], row.job.prompt_logprobs)]))
        return logits[:, -1].float()

    def _guarded(self, lane: Lane, forward: Any, new_rows: list[Row] | None = None) -> None:
        """Run a forward (prefill or step), then sample and stream (step 3) and drop finished rows (step 4). A bug
        fails the rows it touched, with the error in their streams, and the engine goes on serving the others."""
        try:
            logits = forward()
            rows = lane.rows[-len(new_rows) :] if new_rows else lane.rows
            alive = [True] * (len(lane.rows) - len(rows)) + [self._advance(r, logits[i]) for i, r in enumerate(rows)]
            lane.keep(alive)
        except Exception as e:  # a bug: keep the traceback in the log, tell the clients, keep serving
            log.exception("generation failed")
            failed = new_rows or lane.rows
            for row in failed:
                row.push(Delta("", error=f"generation failed: {type(e).__name__}"))
            lane.keep([all(r is not f for f in failed) for r in lane.rows])

    def _advance(self, row: Row, logits: torch.Tensor) -> bool:
        """Sample the row's next token and stream its text; False when the row has finished."""
        if row.stream.cancelled:
            return False
        if row.job.max_tokens == 0:  # the prompt scored, nothing to generate
            row.finish("length")
            return False
        raw = logits.clone() if row.job.logprobs is not None else None  # a processor may work in place
        token = row.choose(logits)
        row.tokens.append(token)  # counted in usage, EOS included (as OpenAI and vLLM count)
        if raw is not None:
            row.unsent += token_logprobs(raw[None], [token], row.job.logprobs)
        finish = None
        if token == self.tokenizer.eos_token_id:
            finish = "stop"
        else:
            row.streamer.put(torch.tensor([token]))
            if row.streamer.stopped:
                finish = "stop"
            elif len(row.tokens) >= row.job.max_tokens:
                finish = "length"
        if finish is None:
            return True
        row.streamer.end()
        row.finish(finish)
        return False

    def _adapter_name(self, variant: str) -> str:
        if variant == "base" or not self.variants.peft:
            return "__base__"
        return self.variants.adapted.active_adapter


def token_logprobs(logits: torch.Tensor, tokens: list[int], top: int) -> list[TokenLogprob]:
    """Each token's log-probability under its row of `logits` [tokens, vocab], and the `top` likeliest there."""
    if not tokens:
        return []
    logprobs = logits.float().log_softmax(-1)
    chosen = logprobs.gather(1, torch.tensor(tokens, device=logits.device)[:, None])[:, 0].tolist()
    values, ids = logprobs.topk(top, -1) if top else (logprobs[:, :0], logprobs[:, :0].long())
    return [TokenLogprob(t, c, list(zip(i, v))) for t, c, i, v in zip(tokens, chosen, ids.tolist(), values.tolist())]


def sampler(job: Job) -> tuple[list, torch.Generator | None]:
    """A job's logits processors (test hooks, logit bias, repetition penalty, temperature, top-p) and its random
    generator (seeded by the request, else at random; None when greedy)."""
    processors = list(prompting.extra_logits_processors())
    if job.logit_bias:
        processors.append(SequenceBiasLogitsProcessor({(t,): b for t, b in job.logit_bias.items()}))
    if job.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(job.repetition_penalty))
    if job.temperature == 0:
        return processors, None
    processors += [TemperatureLogitsWarper(job.temperature), TopPLogitsWarper(job.top_p)]
    seed = job.seed if job.seed is not None else secrets.randbits(63)
    return processors, torch.Generator().manual_seed(seed)


def _can_mix(model: Any) -> bool:
    """PEFT's mixed-batch inference covers plain LoRA; it refuses DoRA."""
    return not any(getattr(c, "use_dora", False) for c in model.peft_config.values())


def _mixed_forward(variants: Any) -> Any:
    """Base and adapted rows in one forward: PEFT's `adapter_names` when the batch mixes them. A batch of one kind
    runs without it: PEFT's per-call hooks on every LoRA layer cost ~15-25% of a decoding step of the 25m model."""
    model = variants.adapted

    def forward(rows: list[Row], **inputs: Any) -> Any:
        names = [r.adapter for r in rows]
        if len(set(names)) > 1:
            return model(**inputs, adapter_names=names)
        with variants.use("base" if names[0] == "__base__" else "adapted") as one:
            return one(**inputs)

    return forward


def _forward_with(variants: Any, which: str) -> Any:
    def forward(rows: list[Row], **inputs: Any) -> Any:
        with variants.use(which) as model:
            return model(**inputs)

    return forward
