"""Every request field of OpenAI's /v1/chat/completions and /v1/completions, as the installed `openai` package
defines them: at its neutral value a field is accepted and changes nothing; at another value a field medpt does not
implement is refused with 400 naming it (never silently ignored), and one that cannot change an answer (`user`,
`metadata`, ...) is accepted. A field a new `openai` release adds fails the first test until it is classified here.
"""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

from openai.types import completion_create_params  # noqa: E402
from openai.types.chat import completion_create_params as chat_create_params  # noqa: E402

from tests.servers import post  # noqa: E402

TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
ANY = "any value"  # the field cannot change the answer: every value is accepted
DONE = "implemented"  # other values are tested where the feature is (test_serve, test_serve_logprobs)

# field: (its neutral value, a value that asks for something medpt does not do, or ANY / DONE)
SHARED = {
    "model": ("MODEL", DONE),
    "max_tokens": (4, DONE),  # as every request here asks
    "temperature": (0, DONE),  # the server's default here: greedy
    "top_p": (1, DONE),
    "stop": (None, DONE),
    "seed": (None, DONE),
    "logit_bias": ({}, DONE),
    "stream": (False, DONE),
    "stream_options": (None, DONE),
    "n": (1, 2),
    "frequency_penalty": (0, 0.5),
    "presence_penalty": (0.0, -1.0),
    "user": ("u-1", ANY),
}
CHAT = {
    **SHARED,
    "messages": ("MESSAGES", DONE),
    "max_completion_tokens": (None, DONE),
    "logprobs": (False, DONE),
    "top_logprobs": (None, DONE),
    "audio": (None, {"voice": "alloy", "format": "wav"}),
    "function_call": ("none", {"name": "f"}),
    "functions": ([], [TOOL["function"]]),
    "tools": ([], [TOOL]),
    "tool_choice": ("auto", "required"),
    "parallel_tool_calls": (True, ANY),
    "metadata": ({"team": "a"}, ANY),
    "modalities": (["text"], ["text", "audio"]),
    "moderation": (None, {"model": "omni-moderation-latest"}),
    "prediction": (None, {"type": "content", "content": "x"}),
    "prompt_cache_key": ("k", ANY),
    "prompt_cache_options": ({"mode": "implicit"}, ANY),
    "prompt_cache_retention": ("24h", ANY),
    "reasoning_effort": (None, "high"),
    "response_format": ({"type": "text"}, {"type": "json_object"}),
    "safety_identifier": ("s", ANY),
    "service_tier": ("auto", ANY),
    "store": (False, True),
    "verbosity": (None, "low"),
    "web_search_options": (None, {}),
}
COMPLETIONS = {
    **SHARED,
    "prompt": ("PROMPT", DONE),
    "logprobs": (None, DONE),
    "echo": (False, DONE),
    "best_of": (1, 3),
    "suffix": (None, " end"),
}
# fields of one chat message (besides role and content), on the assistant turn of the conversation
MESSAGE = {
    "name": ("Dr. Li", ANY),
    "refusal": (None, "I cannot help with that."),
    "tool_calls": ([], [CALL]),
    "function_call": (None, {"name": "f", "arguments": "{}"}),
    "audio": (None, {"id": "audio-1"}),
    "tool_call_id": (None, "c1"),
}
ENDPOINTS = {"chat": ("/v1/chat/completions", CHAT), "completions": ("/v1/completions", COMPLETIONS)}


def openai_fields(params) -> set[str]:
    typed = params.CompletionCreateParamsNonStreaming
    return set(typed.__required_keys__ | typed.__optional_keys__)


def message_fields() -> set[str]:
    from typing import get_args

    from openai.types.chat import ChatCompletionMessageParam

    keys = set()
    for typed in get_args(ChatCompletionMessageParam):
        keys |= typed.__required_keys__ | typed.__optional_keys__
    return keys - {"role", "content"}


def test_every_openai_field_is_classified():
    assert set(CHAT) == openai_fields(chat_create_params)
    assert set(COMPLETIONS) == openai_fields(completion_create_params)
    assert set(MESSAGE) == message_fields()


def request(endpoint: str, model: str, **fields) -> dict:
    base = {"model": model, "max_tokens": 4}
    if endpoint == "chat":
        return {**base, "messages": [{"role": "user", "content": "头痛"}], **fields}
    return {**base, "prompt": "问:头痛\n答:", **fields}


def answer(server, endpoint: str, body: dict) -> tuple[int, dict]:
    return post(server.url + ENDPOINTS[endpoint][0], body)


def text(endpoint: str, reply: dict) -> str:
    choice = reply["choices"][0]
    return choice["message"]["content"] if endpoint == "chat" else choice["text"]


@pytest.fixture(scope="module")
def plain(server, tiny_model_dir):
    """Each endpoint's answer with no optional field (the base model: random weights, a non-empty answer)."""
    return {e: text(e, answer(server, e, request(e, tiny_model_dir.name))[1]) for e in ENDPOINTS}


CASES = [(e, f) for e, (_, table) in ENDPOINTS.items() for f in table if f not in ("model", "messages", "prompt")]


@pytest.mark.parametrize(("endpoint", "field"), CASES, ids=[f"{e}-{f}" for e, f in CASES])
def test_a_field_at_its_neutral_value_changes_nothing(server, tiny_model_dir, plain, endpoint, field):
    neutral, _ = ENDPOINTS[endpoint][1][field]
    status, reply = answer(server, endpoint, request(endpoint, tiny_model_dir.name, **{field: neutral}))
    assert status == 200, reply
    assert text(endpoint, reply) == plain[endpoint] and plain[endpoint]
    assert reply["choices"][0]["logprobs"] is None


REFUSED = [(e, f) for e, f in CASES if ENDPOINTS[e][1][f][1] not in (ANY, DONE)]
IGNORED = [(e, f) for e, f in CASES if ENDPOINTS[e][1][f][1] == ANY]


@pytest.mark.parametrize(("endpoint", "field"), REFUSED, ids=[f"{e}-{f}" for e, f in REFUSED])
def test_a_field_medpt_does_not_implement_is_refused_by_name(server, tiny_model_dir, endpoint, field):
    asked = ENDPOINTS[endpoint][1][field][1]
    status, reply = answer(server, endpoint, request(endpoint, tiny_model_dir.name, **{field: asked}))
    assert status == 400, reply
    assert (reply["error"]["param"], reply["error"]["code"]) == (field, "unsupported_value")
    assert reply["error"]["message"].startswith(f"{field}: medpt serve does not implement {field}")


@pytest.mark.parametrize(("endpoint", "field"), IGNORED, ids=[f"{e}-{f}" for e, f in IGNORED])
def test_a_field_that_cannot_change_the_answer_takes_any_value(server, tiny_model_dir, plain, endpoint, field):
    others = {"user": "someone-else", "parallel_tool_calls": False, "metadata": {"x": "y"}, "service_tier": "flex",
              "prompt_cache_retention": "in_memory", "prompt_cache_options": {"mode": "explicit"}}  # fmt: skip
    other = others.get(field, "other")
    status, reply = answer(server, endpoint, request(endpoint, tiny_model_dir.name, **{field: other}))
    assert status == 200, reply
    assert text(endpoint, reply) == plain[endpoint]


def conversation(**fields) -> list[dict]:
    return [{"role": "user", "content": "发烧", **({"name": "patient"} if "name" in fields else {})},
            {"role": "assistant", "content": "多喝水", **fields}, {"role": "user", "content": "还有呢"}]  # fmt: skip


@pytest.mark.parametrize("field", list(MESSAGE))
def test_message_fields_neutral_accepted_others_refused_by_name(server, tiny_model_dir, field):
    neutral, other = MESSAGE[field]
    ask = {"model": tiny_model_dir.name, "max_tokens": 3}
    plain_status, plain_reply = post(server.url + "/v1/chat/completions", {**ask, "messages": conversation()})
    status, reply = post(server.url + "/v1/chat/completions", {**ask, "messages": conversation(**{field: neutral})})
    assert (plain_status, status) == (200, 200), reply
    assert reply["choices"][0]["message"] == plain_reply["choices"][0]["message"]
    status, reply = post(server.url + "/v1/chat/completions", {**ask, "messages": conversation(**{field: other})})
    if other == ANY:
        assert status == 200
    else:
        assert status == 400 and reply["error"]["param"] == "messages", reply
        assert reply["error"]["message"].startswith(f"messages.1.{field}: medpt serve does not implement {field}")


def test_what_clients_send_on_every_request(server, tiny_model_dir, plain):
    """The defaults a framework sends with the official client, all at once."""
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    reply = client.chat.completions.create(
        model=tiny_model_dir.name, messages=[{"role": "developer", "content": "你是医生"},
                                             {"role": "user", "content": "头痛", "name": "patient"}],
        max_tokens=4, presence_penalty=0, frequency_penalty=0, user="u-1", logprobs=False, n=1, temperature=0,
        top_p=1, response_format={"type": "text"}, stream=False, store=False, metadata={"app": "x"},
        parallel_tool_calls=True, tool_choice="none", tools=[], service_tier="auto", safety_identifier="s",
    )  # fmt: skip
    assert reply.choices[0].finish_reason in ("stop", "length") and reply.choices[0].logprobs is None


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_stream_options_need_stream_true(server, tiny_model_dir, endpoint):
    for stream in (False, None):
        body = request(endpoint, tiny_model_dir.name, stream_options={"include_usage": True}, stream=stream)
        status, reply = answer(server, endpoint, body)
        assert status == 400 and reply["error"]["param"] == "stream_options", reply


def test_top_logprobs_need_logprobs(server, tiny_model_dir):
    status, reply = answer(server, "chat", request("chat", tiny_model_dir.name, top_logprobs=2))
    assert status == 400 and reply["error"]["param"] == "top_logprobs", reply
    assert answer(server, "chat", request("chat", tiny_model_dir.name, top_logprobs=0))[0] == 200
