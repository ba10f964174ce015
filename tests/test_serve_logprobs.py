"""Log-probabilities through `medpt serve`, checked against the model's own logits: chat `logprobs` +
`top_logprobs`, completions `logprobs` N and `echo` (max_tokens 0 or more; the prompt as text, texts, token ids or
lists of them; streamed or not), in OpenAI's and vLLM's shapes; and lm-evaluation-harness's `local-completions`
model scoring a multiple-choice task through the server with the predictions `medpt eval` makes."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

from medpt.cli import main  # noqa: E402
from medpt.samples import SAMPLE_MCQ  # noqa: E402
from tests.servers import post  # noqa: E402

PROMPT = "问:发烧三天了\n答:"
RTOL = 1e-4  # the server's batched, left-padded forward against a lone forward, fp32


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)


def logprobs_of(reference, ids: list[int], which: str = "base") -> torch.Tensor:
    """log_softmax of the model's logits at every position of `ids` [positions, vocab]."""
    with reference[1].use(which) as model, torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().log_softmax(-1)


def completion(server, body: dict) -> dict:
    status, reply = post(server.url + "/v1/completions", body)
    assert status == 200, reply
    return reply


def test_completion_logprobs_are_the_models(server, reference, tiny_model_dir):
    tokenizer = reference[1].tokenizer
    reply = completion(server, {"model": tiny_model_dir.name, "prompt": PROMPT, "max_tokens": 5, "logprobs": 3})
    lp = choice_of(reply)["logprobs"]
    prompt_ids = tokenizer(PROMPT)["input_ids"]
    assert len(lp["tokens"]) == reply["usage"]["completion_tokens"] == 5
    answer = greedy_tokens(reference, prompt_ids, 5)
    expected = logprobs_of(reference, prompt_ids + answer)[len(prompt_ids) - 1 : -1]
    for step, (token, logprob, top) in enumerate(zip(answer, lp["token_logprobs"], lp["top_logprobs"])):
        assert logprob == pytest.approx(expected[step, token].item(), rel=RTOL)
        best = expected[step].topk(3)
        want = {tokenizer.decode([i]): v for i, v in zip(best.indices.tolist(), best.values.tolist())}
        assert top.keys() == want.keys() and max(top.values()) == pytest.approx(logprob, rel=RTOL)  # greedy
        assert list(top.values()) == pytest.approx(list(want.values()), rel=RTOL)
    assert lp["tokens"] == [tokenizer.decode([t]) for t in answer]
    assert lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:i]) for i in range(5)]


def greedy_tokens(reference, prompt_ids: list[int], n: int) -> list[int]:
    ids = list(prompt_ids)
    for _ in range(n):
        ids.append(int(logprobs_of(reference, ids)[-1].argmax()))
    return ids[len(prompt_ids) :]


def choice_of(reply: dict, index: int = 0) -> dict:
    return next(c for c in reply["choices"] if c["index"] == index)


TEXTS = [PROMPT, "问:咳嗽\n答:多喝水"]
SHAPES = {"text": 1, "texts": 2, "token ids": 1, "lists of token ids": 2}  # the shapes of `prompt`: prompts in it


@pytest.mark.parametrize("max_tokens", [0, 1, 3])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_echo_scores_the_prompt(server, reference, tiny_model_dir, shape, max_tokens):
    """echo + logprobs, as lm-evaluation-harness and vLLM users ask: the prompt's tokens, each with its
    log-probability given those before it (None for the first), then the answer's."""
    tokenizer = reference[1].tokenizer
    count = SHAPES[shape]
    texts, ids = TEXTS[:count], [tokenizer(t)["input_ids"] for t in TEXTS[:count]]
    prompt = {"text": texts[0], "texts": texts, "token ids": ids[0], "lists of token ids": ids}[shape]
    reply = completion(server, {"model": tiny_model_dir.name, "prompt": prompt, "max_tokens": max_tokens, "echo": True,
                                "logprobs": 2})  # fmt: skip
    assert [c["index"] for c in reply["choices"]] == list(range(count))
    assert reply["usage"]["prompt_tokens"] == sum(len(i) for i in ids)
    assert reply["usage"]["completion_tokens"] == count * max_tokens
    for k in range(count):
        choice = choice_of(reply, k)
        lp = choice["logprobs"]
        assert choice["text"].startswith(texts[k]) and len(lp["tokens"]) == len(ids[k]) + max_tokens
        assert choice["finish_reason"] == "length"
        assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
        expected = logprobs_of(reference, ids[k])
        scored = [expected[j - 1, ids[k][j]].item() for j in range(1, len(ids[k]))]
        assert lp["token_logprobs"][1 : len(ids[k])] == pytest.approx(scored, rel=RTOL)
        assert lp["tokens"][: len(ids[k])] == [tokenizer.decode([t]) for t in ids[k]]


def test_streamed_echo_and_logprobs_add_up_to_the_whole_answer(server, tiny_model_dir):
    body = {"model": tiny_model_dir.name, "prompt": [PROMPT, "问:咳嗽\n答:"], "max_tokens": 6, "echo": True,
            "logprobs": 1}  # fmt: skip
    whole = completion(server, body)
    request = urllib.request.Request(server.url + "/v1/completions", json.dumps({**body, "stream": True}).encode(),
                                     {"Content-Type": "application/json"})  # fmt: skip
    chunks = []
    with urllib.request.urlopen(request, timeout=60) as response:
        for line in response:
            if line.startswith(b"data: {"):
                chunks.append(json.loads(line[6:]))
    for k in range(2):
        mine = [c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["index"] == k]
        assert "".join(c["text"] for c in mine) == choice_of(whole, k)["text"]
        tokens = [t for c in mine if c["logprobs"] for t in c["logprobs"]["tokens"]]
        logprobs = [t for c in mine if c["logprobs"] for t in c["logprobs"]["token_logprobs"]]
        offsets = [t for c in mine if c["logprobs"] for t in c["logprobs"]["text_offset"]]
        assert tokens == choice_of(whole, k)["logprobs"]["tokens"] and logprobs[0] is None
        assert logprobs[1:] == pytest.approx(choice_of(whole, k)["logprobs"]["token_logprobs"][1:], rel=RTOL)
        assert offsets == choice_of(whole, k)["logprobs"]["text_offset"]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_chat_logprobs_and_top_logprobs(client, reference, tiny_model_dir, stream):
    tokenizer = reference[1].tokenizer
    ask = {"model": tiny_model_dir.name, "messages": [{"role": "user", "content": "头痛"}], "max_tokens": 4,
           "logprobs": True, "top_logprobs": 2}  # fmt: skip
    if stream:
        chunks = list(client.chat.completions.create(**ask, stream=True))
        content = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        reply = client.chat.completions.create(**ask)
        content, text = reply.choices[0].logprobs.content, reply.choices[0].message.content
    prompt_ids = tokenizer("问:头痛\n答:")["input_ids"]
    answer = greedy_tokens(reference, prompt_ids, len(content))
    expected = logprobs_of(reference, prompt_ids + answer)[len(prompt_ids) - 1 : -1]
    assert 1 <= len(content) <= 4  # every token sampled (a stop string or the end of text may come first)
    for step, entry in enumerate(content):
        assert entry.token == tokenizer.decode([answer[step]]) and entry.bytes == list(entry.token.encode())
        assert entry.logprob == pytest.approx(expected[step, answer[step]].item(), rel=RTOL)
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx(expected[step].topk(2).values.tolist(),
                                                                        rel=RTOL)  # fmt: skip
        assert entry.top_logprobs[0].token == entry.token  # greedy: the likeliest token is the one chosen
    assert text == tokenizer.decode(answer, skip_special_tokens=True)[: len(text)]


# --- lm-evaluation-harness ------------------------------------------------------------------------------------------
# The task as an lm-evaluation-harness user writes it: medpt eval's zero-shot prompt (medpt.eval.mcq), the option
# letters as the continuations, right after the cue.
DOC_TO_TEXT = ("以下是医学考试的单项选择题，请选出正确答案。\n\n{{question}}\n"
               "{% for letter, text in choices.items() %}{{letter}}. {{text}}\n{% endfor %}答案：")  # fmt: skip


def task_yaml(data: Path) -> str:
    return "\n".join([
        "task: medpt_mcq", "dataset_path: json", "dataset_kwargs:", "  data_files:", f"    test: {data}",
        "test_split: test", "output_type: multiple_choice",
        f"doc_to_text: {json.dumps(DOC_TO_TEXT, ensure_ascii=False)}",
        'doc_to_choice: "{{choices.keys() | list}}"', 'doc_to_target: "{{(choices.keys() | list).index(answer)}}"',
        'target_delimiter: ""', "metric_list:", "  - metric: acc", "",
    ])  # fmt: skip


def lm_eval_predictions(server, model: str, tokenizer_dir: Path, folder: Path) -> list[str]:
    """The letter lm-evaluation-harness's local-completions model picks for each question, through the server:
    echo + logprobs requests of token ids, eight prompts a request."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    args = (f"base_url={server.url}/v1/completions,model={model},tokenizer_backend=huggingface,"
            f"tokenizer={tokenizer_dir},add_bos_token=True,batch_size=8,max_length=4096")  # fmt: skip
    result = lm_eval.simple_evaluate(model="local-completions", model_args=args, tasks=["medpt_mcq"],
                                     task_manager=TaskManager(include_path=str(folder)), log_samples=True)  # fmt: skip
    samples = sorted(result["samples"]["medpt_mcq"], key=lambda s: s["doc_id"])
    picks = []
    for sample in samples:
        scores = [loglikelihood for loglikelihood, _ in sample["filtered_resps"]]
        picks.append(list(sample["doc"]["choices"])[scores.index(max(scores))])
    return picks


def test_lm_evaluation_harness_scores_through_the_server_as_medpt_eval_does(server, trained_run, tiny_model_dir,
                                                                            tmp_path):  # fmt: skip
    pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed (pip install 'lm-eval[api]')")
    lines = SAMPLE_MCQ.read_text(encoding="utf-8").splitlines()[:20]
    data = tmp_path / "questions.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "medpt_mcq.yaml").write_text(task_yaml(data), encoding="utf-8")
    out = tmp_path / "eval"
    assert main(["eval", "--adapter", str(trained_run), "--mcq_file", str(data), "--mcq_scoring", "letter",
                 "--output_dir", str(out)]) == 0  # fmt: skip
    medpt = [json.loads(line) for line in (out / "mcq" / "questions.predictions.jsonl").read_text().splitlines()]
    for which, model in (("base", tiny_model_dir.name), ("adapted", trained_run.name)):
        picks = lm_eval_predictions(server, model, trained_run, tmp_path)
        assert picks == [row[which]["letter"]["predicted"] for row in medpt], which
