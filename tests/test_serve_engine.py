"""The serving engine: a batch gives each answer the tokens it gets alone (base and adapted rows mixed, rows joining
mid-way, left padding of different prompt lengths), and a seeded sample does not depend on its batch."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
import torch

from medpt.args.resolve import load_config
from medpt.generate import prompting
from medpt.model.adapter import load_variants
from medpt.serve.engine import Engine, Job
from medpt.serve.lane import left_pad, stack_caches
from tests.servers import NoEos, generated

PROMPTS = ["问:头痛怎么办\n答:", "问:孩子发烧三天了，一直不退，需要去医院吗？\n答:", "问:咳嗽\n答:"]


@pytest.fixture(scope="module")
def variants(trained_run):
    config = load_config(["--adapter", str(trained_run)], command="serve")
    return config, load_variants(config, log=lambda *_: None)


@pytest.fixture(autouse=True)
def no_eos(monkeypatch, variants):
    eos = variants[1].tokenizer.eos_token_id
    monkeypatch.setattr(prompting, "extra_logits_processors", lambda: [NoEos(eos)])


def alone(variants, which: str, prompt: str, max_tokens: int) -> str:
    """What `medpt generate` (transformers' generate) answers for this prompt on its own, whitespace kept."""
    config, v = variants
    with v.use(which) as model:
        return generated(model, v.tokenizer, prompt, replace(config.generate, max_new_tokens=max_tokens), [])


def job(v, prompt: str, which: str, max_tokens: int = 10, temperature: float = 0.0, seed: int | None = None) -> Job:
    return Job(v.tokenizer(prompt)["input_ids"], which, max_tokens, temperature, 1.0, 1.0, seed, [])


def record_batches(engine: Engine) -> list[list[Job]]:
    """Every forward's rows (as their jobs), in order."""
    seen: list[list[Job]] = []
    for lane in engine.lanes.values():
        forward = lane.forward

        def recording(rows, forward=forward, **inputs):
            seen.append([r.job for r in rows])
            return forward(rows, **inputs)

        lane.forward = recording
    return seen


async def collect(stream) -> str:
    return "".join([d.text async for _, d in stream])


def run(engine: Engine, coroutine):
    async def main():
        engine.start()
        try:
            return await coroutine()
        finally:
            engine.stop()

    return asyncio.run(main())


def test_a_mixed_batch_gives_each_row_its_tokens_alone(variants):
    _, v = variants
    jobs = [job(v, p, which) for p in PROMPTS for which in ("base", "adapted")]
    engine = Engine(v, max_batch_size=len(jobs), batch_wait_ms=5_000)  # waits until all six are there
    batches = record_batches(engine)
    texts = run(engine, lambda: asyncio.gather(*[collect(engine.submit([j])) for j in jobs]))
    assert texts == [alone(variants, which, p, 10) for p in PROMPTS for which in ("base", "adapted")]
    assert len(engine.lanes) == 1 and batches[0] == jobs  # one prefill of all six: base and adapted rows together
    assert all(b != a for b, a in zip(texts[0::2], texts[1::2]))  # the adapter changes each answer: really mixed


def first_then_late(engine: Engine, first: Job, late: list[Job], after: int) -> list[str]:
    """Submit `first`; once it has streamed `after` pieces, submit `late`. Every answer's text."""

    async def scenario():
        pieces = []
        async for _, delta in engine.submit([first]):
            pieces.append(delta.text)
            if len(pieces) == after:  # the first answer is under way
                others = asyncio.gather(*[collect(engine.submit([j])) for j in late])
        return ["".join(pieces), *(await others)]

    return run(engine, scenario)


def test_rows_joining_a_running_batch_get_their_tokens_alone(variants):
    _, v = variants
    first, late = job(v, PROMPTS[0], "base", 30), [job(v, PROMPTS[1], "adapted", 12), job(v, PROMPTS[2], "base", 12)]
    engine = Engine(v, batching="continuous", batch_wait_ms=0)
    batches = record_batches(engine)
    texts = first_then_late(engine, first, late, after=5)
    assert texts == [alone(variants, "base", PROMPTS[0], 30), alone(variants, "adapted", PROMPTS[1], 12),
                     alone(variants, "base", PROMPTS[2], 12)]  # fmt: skip
    assert [first, *late] in batches  # a decoding step with all three: they did join the running batch
    assert batches[-1] == [first]  # the short ones finished first and left; the cache shrank back to one row


def test_dynamic_batching_starts_a_new_batch_only_when_the_last_is_done(variants):
    _, v = variants
    first, late = job(v, PROMPTS[0], "base", 20), job(v, PROMPTS[1], "adapted", 8)
    engine = Engine(v, batching="dynamic", batch_wait_ms=0)
    batches = record_batches(engine)
    texts = first_then_late(engine, first, [late], after=3)
    assert texts == [alone(variants, "base", PROMPTS[0], 20), alone(variants, "adapted", PROMPTS[1], 8)]
    assert all(b in ([first], [late]) for b in batches) and [late] in batches


def test_a_seeded_sample_does_not_depend_on_its_batch(variants):
    _, v = variants
    sampled = job(v, PROMPTS[0], "adapted", 16, temperature=1.0, seed=123)
    others = [job(v, p, "base", 16, temperature=0.9, seed=i) for i, p in enumerate(PROMPTS)]

    def answers(jobs):
        engine = Engine(v, max_batch_size=len(jobs), batch_wait_ms=5_000)
        return run(engine, lambda: asyncio.gather(*[collect(engine.submit([j])) for j in jobs]))

    alone_text = answers([sampled])[0]
    assert answers([*others, sampled])[-1] == alone_text
    assert answers([replace(sampled, seed=124)])[0] != alone_text


def test_left_padding_and_stacking_keep_rows_aligned_on_the_right():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    from transformers.cache_utils import DynamicCache

    def cache(rows: int, columns: int, fill: float) -> DynamicCache:
        c = DynamicCache()
        c.update(torch.full((rows, 1, columns, 2), fill), torch.full((rows, 1, columns, 2), -fill), 0)
        return c

    stacked, m = stack_caches(cache(1, 4, 1.0), torch.ones(1, 4, dtype=torch.long), cache(2, 2, 2.0),
                              torch.tensor([[0, 1], [1, 1]]))  # fmt: skip
    keys = stacked.layers[0].keys
    assert keys.shape == (3, 1, 4, 2) and m.tolist() == [[1, 1, 1, 1], [0, 0, 0, 1], [0, 0, 1, 1]]
    assert keys[1:, 0, :2].abs().sum() == 0 and (keys[1:, 0, 2:] == 2.0).all()  # zeros on the left, masked
