"""`medpt serve`: a real server on 127.0.0.1 driven by the official openai client; answers equal `generate`'s, text
exactly as generated. (Fields: test_serve_fields; log-probabilities and lm-evaluation-harness: test_serve_logprobs;
HTTP, limits and disconnects: test_serve_http; stopping: test_serve_shutdown.)"""

from __future__ import annotations

import concurrent.futures
import json
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

from medpt.cli import main  # noqa: E402
from medpt.generate import prompting  # noqa: E402
from medpt.generate.prompting import build_prompt, stop_strings  # noqa: E402
from tests.servers import generated, post, running_server, saying  # noqa: E402
from tests.test_generate import Script  # noqa: E402

QUESTION = "头痛怎么办"


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="not-checked", max_retries=0)


def model_ids(trained_run: Path, tiny_model_dir: Path) -> dict[str, str]:
    return {"base": tiny_model_dir.name, "adapted": trained_run.name}


def expected(reference, which: str, prompt: str, max_tokens: int, stops: list[str]) -> str:
    """What transformers' generate answers (greedy), the text exactly as generated."""
    config, variants = reference
    gen = replace(config.generate, max_new_tokens=max_tokens, do_sample=False)
    with variants.use(which) as model:
        return generated(model, variants.tokenizer, prompt, gen, stops)


def test_models_lists_the_base_and_the_adapter(client, trained_run, tiny_model_dir):
    cards = {m.id: m for m in client.models.list().data}
    assert list(cards) == [tiny_model_dir.name, trained_run.name]
    assert cards[trained_run.name].model_extra["parent"] == tiny_model_dir.name
    assert cards[trained_run.name].model_extra["root"] == str(trained_run.resolve())
    assert cards[tiny_model_dir.name].model_extra["max_model_len"] == 4096  # the tiny model's positions


@pytest.mark.parametrize("which", ["base", "adapted"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_chat_answers_as_generate_does(client, reference, no_eos, trained_run, tiny_model_dir, which, stream):
    config, variants = reference
    model = model_ids(trained_run, tiny_model_dir)[which]
    prompt = build_prompt(QUESTION, [], config.data, variants.tokenizer)
    want = expected(reference, which, prompt, 12, stop_strings(config.data))
    messages = [{"role": "user", "content": QUESTION}]
    if stream:
        chunks = list(client.chat.completions.create(model=model, messages=messages, max_tokens=12, stream=True,
                                                     stream_options={"include_usage": True}))  # fmt: skip
        assert chunks[0].choices[0].delta.role == "assistant"
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        usage = chunks[-1].usage
        assert chunks[-1].choices == [] and finish == ["length"]
    else:
        reply = client.chat.completions.create(model=model, messages=messages, max_tokens=12)
        text, usage = reply.choices[0].message.content, reply.usage
        assert reply.choices[0].finish_reason == "length" and reply.model == model
    assert text == want and text
    assert usage.prompt_tokens == len(variants.tokenizer(prompt)["input_ids"])
    assert (usage.completion_tokens, usage.total_tokens) == (12, usage.prompt_tokens + 12)


@pytest.mark.parametrize("which", ["base", "adapted"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_completion_continues_the_raw_prompt(client, reference, no_eos, trained_run, tiny_model_dir, which, stream):
    model = model_ids(trained_run, tiny_model_dir)[which]
    prompt = "问:发烧三天了\n答:"
    want = expected(reference, which, prompt, 10, [])  # no template stops: a completion is the raw continuation
    if stream:
        chunks = list(client.completions.create(model=model, prompt=prompt, max_tokens=10, stream=True))
        text = "".join(c.choices[0].text for c in chunks)
        assert chunks[-1].choices[0].finish_reason == "length"
    else:
        reply = client.completions.create(model=model, prompt=prompt, max_tokens=10)
        text = reply.choices[0].text
        assert reply.usage.completion_tokens == 10 and reply.choices[0].finish_reason == "length"
    assert text == want and text


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_chat_stops_where_the_model_starts_the_next_turn(client, reference, monkeypatch, trained_run, stream):
    tokenizer = reference[1].tokenizer
    said = saying(tokenizer, "多喝水，注意休息。\n问:我还想问")
    monkeypatch.setattr(prompting, "extra_logits_processors", lambda: [Script(said, tokenizer.eos_token_id)])
    messages = [{"role": "user", "content": "感冒了怎么办"}]
    if stream:
        chunks = list(client.chat.completions.create(model=trained_run.name, messages=messages, max_tokens=40,
                                                     stream=True))  # fmt: skip
        pieces = [c.choices[0].delta.content or "" for c in chunks]
        text, finish = "".join(pieces), chunks[-1].choices[0].finish_reason
        assert not any("问" in p for p in pieces)  # the next turn is never sent, not even its first character
    else:
        reply = client.chat.completions.create(model=trained_run.name, messages=messages, max_tokens=40)
        text, finish = reply.choices[0].message.content, reply.choices[0].finish_reason
    assert (text, finish) == ("多喝水，注意休息。", "stop")


def test_stop_strings_of_the_request_and_the_conversation_history(client, reference, monkeypatch, trained_run):
    tokenizer = reference[1].tokenizer
    said = saying(tokenizer, "多喝水，注意休息。")
    prompts = []
    real_build = prompting.build_prompt
    monkeypatch.setattr(prompting, "extra_logits_processors", lambda: [Script(said, tokenizer.eos_token_id)])
    monkeypatch.setattr("medpt.serve.serving.build_prompt", lambda *a, **k: prompts.append(real_build(*a, **k))
                        or prompts[-1])  # fmt: skip
    messages = [{"role": "system", "content": "你是医生"}, {"role": "user", "content": "发烧"},
                {"role": "assistant", "content": "多喝水"}, {"role": "user", "content": "还有呢"}]  # fmt: skip
    reply = client.chat.completions.create(model=trained_run.name, messages=messages, stop=["休息"])
    assert (reply.choices[0].message.content, reply.choices[0].finish_reason) == ("多喝水，注意", "stop")
    assert prompts == ["系统:你是医生\n问:发烧\n答:多喝水\n问:还有呢\n答:"]  # the training template, system turn first
    eos_only = client.completions.create(model=trained_run.name, prompt="问:x\n答:", max_tokens=30)
    assert (eos_only.choices[0].text, eos_only.choices[0].finish_reason) == ("多喝水，注意休息。", "stop")
    assert eos_only.usage.completion_tokens == len(said) + 1  # the scripted tokens and the end-of-text token


def test_logit_bias_bans_a_token(client, reference, trained_run):
    eos = reference[1].tokenizer.eos_token_id
    ask = {"model": trained_run.name, "prompt": "问:头痛\n答:", "max_tokens": 9}
    ends = client.completions.create(**ask)  # the tiny adapted model ends its answers at once
    assert (ends.choices[0].finish_reason, ends.usage.completion_tokens) == ("stop", 1)
    banned = client.completions.create(**ask, logit_bias={str(eos): -100})
    assert (banned.choices[0].finish_reason, banned.usage.completion_tokens) == ("length", 9)


def test_a_seed_makes_sampling_reproducible(client, trained_run):
    def sample(seed: int) -> str:
        reply = client.completions.create(model=trained_run.name, prompt="问:咳嗽\n答:", max_tokens=24,
                                          temperature=1.0, top_p=1.0, seed=seed)  # fmt: skip
        return reply.choices[0].text

    assert sample(7) == sample(7)
    assert len({sample(7), sample(8), sample(9)}) == 3  # 24 tokens drawn from a broad distribution


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_text_is_sent_exactly_as_generated_whitespace_included(client, reference, monkeypatch, trained_run, endpoint,
                                                                 stream):  # fmt: skip
    """Leading and trailing newlines and spaces are part of the answer (a server must not strip them), and a chat
    still stops before the next turn."""
    tokenizer = reference[1].tokenizer
    said = saying(tokenizer, "\n 多喝水 \n\n")
    monkeypatch.setattr(prompting, "extra_logits_processors", lambda: [Script(said, tokenizer.eos_token_id)])
    ask = {"model": trained_run.name, "max_tokens": len(said), "stream": stream}
    if endpoint == "completions":
        reply = client.completions.create(prompt="问:头痛\n答:", **ask)
        texts = [c.choices[0].text for c in reply] if stream else [reply.choices[0].text]
    else:
        reply = client.chat.completions.create(messages=[{"role": "user", "content": "头痛"}], **ask)
        texts = [c.choices[0].delta.content or "" for c in reply] if stream else [reply.choices[0].message.content]
    assert "".join(texts) == "\n 多喝水 \n\n"


def test_newlines_from_logit_bias_are_kept(client, reference, trained_run):
    """The issue's case: a bias that makes every token a newline gives newlines, not an empty text."""
    newline = reference[1].tokenizer.convert_tokens_to_ids("\n")
    reply = client.completions.create(model=trained_run.name, prompt="问:头痛\n答:", max_tokens=3,
                                      logit_bias={str(newline): 100})  # fmt: skip
    assert (reply.choices[0].text, reply.usage.completion_tokens) == ("\n\n\n", 3)


def test_a_developer_message_is_the_system_turn(client, reference, monkeypatch, trained_run):
    tokenizer = reference[1].tokenizer
    prompts = []
    real_build = prompting.build_prompt
    monkeypatch.setattr("medpt.serve.serving.build_prompt", lambda *a, **k: prompts.append(real_build(*a, **k))
                        or prompts[-1])  # fmt: skip
    monkeypatch.setattr(prompting, "extra_logits_processors", lambda: [Script([], tokenizer.eos_token_id)])
    for role in ("developer", "system"):
        messages = [{"role": role, "content": "你是医生"}, {"role": "user", "content": "发烧"}]
        client.chat.completions.create(model=trained_run.name, messages=messages, max_tokens=2)
    assert prompts == ["系统:你是医生\n问:发烧\n答:"] * 2


def test_one_model_by_its_id(client, server, trained_run, tiny_model_dir):
    card = client.models.retrieve(trained_run.name)
    assert (card.id, card.model_extra["parent"]) == (trained_run.name, tiny_model_dir.name)
    assert client.models.retrieve(tiny_model_dir.name).model_extra["root"] == str(tiny_model_dir)
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("gpt-4")
    assert e.value.body["code"] == "model_not_found"


# --- bad requests: OpenAI-shaped JSON errors, never a 500 -----------------------------------------------------------
@dataclass
class Bad:
    name: str
    path: str
    body: bytes | dict
    status: int
    param: str | None
    needle: str


LONG = "头痛发热咳嗽腹泻" * 1500  # 12,000 characters: far more tokens than the tiny model's 4,096 positions
BAD = [
    Bad("unknown model", "/v1/chat/completions", {"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]},
        404, "model", "the model 'gpt-4' does not exist"),
    Bad("malformed JSON", "/v1/chat/completions", b'{"model": "RUN", "messages": [', 400, None, "not valid JSON"),
    Bad("not an object", "/v1/completions", b'["RUN"]', 400, None, "must be a JSON object"),
    Bad("NaN", "/v1/completions", b'{"model": "RUN", "prompt": "x", "temperature": NaN}', 400, None,
        "NaN is not a JSON number"),
    Bad("missing field", "/v1/chat/completions", {"model": "RUN"}, 400, "messages", "messages: Field required"),
    Bad("missing prompt", "/v1/completions", {"model": "RUN"}, 400, "prompt", "prompt: Field required"),
    Bad("a field OpenAI does not have", "/v1/completions", {"model": "RUN", "prompt": "x", "max_token": 2}, 400,
        "max_token", "Extra inputs are not permitted"),
    Bad("chat max_tokens below 1", "/v1/chat/completions",
        {"model": "RUN", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, 400, "max_tokens",
        "greater than or equal to 1"),
    Bad("max_tokens 0 without echo", "/v1/completions", {"model": "RUN", "prompt": "x", "max_tokens": 0}, 400,
        "max_tokens", "max_tokens 0 generates nothing"),
    Bad("n above 1", "/v1/completions", {"model": "RUN", "prompt": "x", "n": 2}, 400, "n", "does not implement n"),
    Bad("max_tokens too large", "/v1/completions", {"model": "RUN", "prompt": "问", "max_tokens": 5000}, 400,
        "max_tokens", "max_tokens 5,000 is more than the"),
    Bad("prompt too long", "/v1/completions", {"model": "RUN", "prompt": LONG}, 400, "prompt",
        "the prompt is 6,002 tokens; the model takes 4,096 positions in all"),
    Bad("conversation too long", "/v1/chat/completions",
        {"model": "RUN", "messages": [{"role": "user", "content": LONG}]}, 400, "messages",
        "the conversation (in the run's template) is 6,0"),
    Bad("assistant last", "/v1/chat/completions", {"model": "RUN", "messages": [{"role": "assistant", "content": "x"}]},
        400, "messages", "ending with a user message"),
    Bad("a tool message", "/v1/chat/completions",
        {"model": "RUN", "messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]}, 400, "messages",
        "messages.0.role: Input should be"),
    Bad("an image", "/v1/chat/completions", {"model": "RUN", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:,"}}]}]}, 400, "messages", "of type 'image_url'"),
    Bad("logit_bias beyond the vocabulary", "/v1/completions",
        {"model": "RUN", "prompt": "x", "logit_bias": {"99999": -100}}, 400, "logit_bias", "not in the vocabulary"),
    Bad("logit_bias above 100", "/v1/completions", {"model": "RUN", "prompt": "x", "logit_bias": {"5": 200}}, 400,
        "logit_bias", "biases from -100 to 100"),
    Bad("a token id beyond the vocabulary", "/v1/completions", {"model": "RUN", "prompt": [5, 99999]}, 400, "prompt",
        "token id 99999 is not in the vocabulary"),
    Bad("an empty list of prompts", "/v1/completions", {"model": "RUN", "prompt": []}, 400, "prompt", "no prompt"),
    Bad("no such route", "/v1/embeddings", {"model": "RUN", "input": "x"}, 404, None, "Not Found"),
]  # fmt: skip


@pytest.mark.parametrize("case", BAD, ids=[c.name for c in BAD])
def test_bad_requests_get_openai_shaped_errors(server, trained_run, case):
    body = case.body.replace(b"RUN", trained_run.name.encode()) if isinstance(case.body, bytes) else {
        k: (trained_run.name if v == "RUN" else v) for k, v in case.body.items()}  # fmt: skip
    status, reply = post(server.url + case.path, body)
    assert status == case.status, reply
    assert set(reply) == {"error"} and set(reply["error"]) == {"message", "type", "param", "code"}
    assert reply["error"]["type"] == "invalid_request_error" and reply["error"]["param"] == case.param
    assert case.needle in reply["error"]["message"], reply["error"]["message"]


def test_a_refused_long_prompt_logs_no_tokenizer_warning(server, trained_run, capfd):
    """transformers warns once per tokenizer that a long sequence "will result in indexing errors": the server
    refuses such a prompt itself, with the numbers, and must not leave that warning in its log."""
    server.app.serving.tokenizer.deprecation_warnings.clear()  # "once": forget any earlier warning
    assert post(server.url + "/v1/completions", {"model": trained_run.name, "prompt": LONG})[0] == 400
    assert "Token indices sequence length" not in capfd.readouterr().err


def test_auth_off_by_default_and_health(server):
    status, models = post(server.url + "/v1/models", b"", method="GET")  # no Authorization header at all
    assert status == 200 and len(models["data"]) == 2
    assert post(server.url + "/health", b"", method="GET") == (200, {"status": "ok", "running": 0})


def test_api_key_is_required_when_set(trained_run):
    with running_server(trained_run, "--api_key", "s3cret") as running:
        for key in (None, "wrong", "s3cre", "s3cret2"):
            status, reply = post(running.url + "/v1/models", b"", key=key, method="GET")
            assert status == 401 and reply["error"]["code"] == "invalid_api_key", key
        bad = openai.OpenAI(base_url=running.url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.chat.completions.create(model=trained_run.name, messages=[{"role": "user", "content": "x"}])
        good = openai.OpenAI(base_url=running.url + "/v1", api_key="s3cret", max_retries=0)
        assert [m.id for m in good.models.list().data][1] == trained_run.name
        reply = good.chat.completions.create(model=trained_run.name, messages=[{"role": "user", "content": "x"}],
                                             max_tokens=3)  # fmt: skip
        assert reply.usage.completion_tokens <= 3
        assert post(running.url + "/health", b"", method="GET")[0] == 200  # health checks need no key
        # the key is checked before the body is read: a bad or huge body without the key is a 401, not a 400 or 413
        for body in (b'{"model": "x", "prompt": [', b"x" * (5 * 2**20)):
            status, reply = post(running.url + "/v1/completions", body)
            assert status == 401 and reply["error"]["code"] == "invalid_api_key"


def test_a_model_without_an_adapter_is_served_alone(tiny_model_dir):
    with running_server(None, "--model_name_or_path", str(tiny_model_dir)) as running:
        client = openai.OpenAI(base_url=running.url + "/v1", api_key="x", max_retries=0)
        assert [m.id for m in client.models.list().data] == [tiny_model_dir.name]
        reply = client.chat.completions.create(model=tiny_model_dir.name, messages=[{"role": "user", "content": "x"}],
                                               max_tokens=4)  # fmt: skip
        assert reply.usage.completion_tokens <= 4 and reply.choices[0].finish_reason in ("stop", "length")


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the resident set size from /proc")
def test_sixteen_concurrent_streams_all_finish_and_memory_returns(server, client, no_eos, trained_run, tiny_model_dir):
    models = list(model_ids(trained_run, tiny_model_dir).values())

    def one(i: int) -> tuple[str, int, str | None]:
        # completions: no template stop strings, so every answer runs to exactly max_tokens
        chunks = list(client.completions.create(
            model=models[i % 2], prompt=f"问:第{i}个问题：头痛{'怎么办' * (i % 4)}\n答:", max_tokens=32, stream=True,
            stream_options={"include_usage": True}))  # fmt: skip
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        return text, chunks[-1].usage.completion_tokens, finish[0]

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(16)))  # warm-up: allocator pools, tokenizer caches, thread stacks
        before = rss_bytes()
        results = list(pool.map(one, range(16)))
    after = rss_bytes()
    assert [(n, f) for _, n, f in results] == [(32, "length")] * 16 and all(t for t, _, _ in results)
    # Generous: the 16 KV caches of this model are ~2 MB; glibc keeps some freed memory; 64 MiB means a leak.
    assert after - before < 64 * 2**20, (before, after)
    assert post(server.url + "/health", b"", method="GET")[1]["running"] == 0


def test_a_client_that_goes_away_frees_its_row(server, no_eos, trained_run):
    import http.client
    import time
    import urllib.parse

    host = urllib.parse.urlsplit(server.url)
    connection = http.client.HTTPConnection(host.hostname, host.port, timeout=60)
    body = {"model": trained_run.name, "prompt": "问:头痛\n答:", "max_tokens": 4000, "stream": True}
    connection.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.readline().startswith(b"data: ")  # the answer is being written ...
    assert post(server.url + "/health", b"", method="GET")[1]["running"] == 1
    connection.close()  # ... and the client leaves: 4,000 tokens would take the tiny model half a minute or more
    for _ in range(100):
        if post(server.url + "/health", b"", method="GET")[1]["running"] == 0:
            break
        time.sleep(0.1)
    assert post(server.url + "/health", b"", method="GET")[1]["running"] == 0


# --- the command line -------------------------------------------------------------------------------------------
def test_serve_without_the_extra_is_a_one_line_error(trained_run, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if fastapi were not installed
    assert main(["serve", "--adapter", str(trained_run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "medpt: error: medpt serve needs fastapi and uvicorn (fastapi is missing): pip install 'medpt[serve]'"


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--port", "70000"], "--port must be at most 65,535, got 70,000"),
        (["--api_key", " "], "--api_key is empty"),
        (["--batching", "static"], "--batching"),
        (["--max_batch_size", "0"], "--max_batch_size must be at least 1"),
        (["--mcq_file", "x.jsonl"], "--mcq_file is an eval flag, not a serve flag"),
    ],
)
def test_bad_flags_are_one_line_errors(trained_run, capsys, flags, needle):
    assert main(["serve", "--adapter", str(trained_run), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err, err


def test_dry_run_never_prints_the_api_key(trained_run, capsys):
    assert main(["serve", "--adapter", str(trained_run), "--api_key", "s3cret", "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert "s3cret" not in out and "api_key: '(set, not shown)'  # set" in out


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("localhost", True), ("0.0.0.0", False),
     ("::", False), ("192.168.1.5", False), ("example.org", False)],
)  # fmt: skip
def test_only_loopback_hosts_are_private(host, loopback):
    from medpt.serve.server import is_loopback

    assert is_loopback(host) is loopback


def test_a_network_host_prints_a_warning(trained_run, monkeypatch, capsys):
    import uvicorn

    monkeypatch.setattr("medpt.serve.server.build", lambda config, log=print: object())
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: None)
    assert main(["serve", "--adapter", str(trained_run), "--host", "0.0.0.0"]) == 0
    err = capsys.readouterr().err
    assert "warning: --host 0.0.0.0 is not a loopback address: the API is reachable from the network" in err
    assert main(["serve", "--adapter", str(trained_run)]) == 0
    assert "warning" not in capsys.readouterr().err


def test_the_page_is_served_self_contained(server):
    with urllib.request.urlopen(server.url + "/", timeout=30) as response:
        page = response.read().decode()
    assert response.headers["content-type"].startswith("text/html")
    assert "/v1/chat/completions" in page and "getReader" in page
    assert "http://" not in page and "https://" not in page  # nothing loaded from elsewhere: works offline
