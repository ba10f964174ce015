"""compare / generate / chat: prompts in the training template, stopping at the next question, files written."""

import io
import json

import torch
from transformers import LogitsProcessor

from medpt.args.resolve import DataArguments
from medpt.cli import main
from medpt.generate import prompting
from medpt.generate.prompting import StopAwareStreamer, build_prompt, cut_at_stop, stop_strings


def test_prompt_and_stops_follow_the_template(tokenizer):
    data = DataArguments()
    assert (
        build_prompt("头痛怎么办", [("发热呢", "多喝水")], data, tokenizer)
        == "问:发热呢\n答:多喝水\n问:头痛怎么办\n答:"
    )
    assert stop_strings(data) == ["\n问:", "\n答:", "=========="]  # a new turn starts at a line start
    assert cut_at_stop("多喝水。\n问:下一个", stop_strings(data)) == "多喝水。"
    assert cut_at_stop("多喝水。\n答:再答一遍", stop_strings(data)) == "多喝水。"
    assert cut_at_stop("问:不是新的一轮", stop_strings(data)) == "问:不是新的一轮"  # not at a line start
    custom = DataArguments(template="custom", template_format={"human": "Q: {text}\n", "gpt": "A: {text}\n"})
    assert build_prompt("x", [], custom, tokenizer) == "Q: x\nA: "
    assert stop_strings(custom) == ["\nQ:", "\nA:"]


def test_streamer_never_shows_a_stop_string_even_split_across_tokens(tokenizer):
    shown = []
    streamer = StopAwareStreamer(tokenizer, ["问:"], shown.append)
    streamer.put(torch.tensor([[1, 2]]))  # the prompt: ignored
    ids = tokenizer("多喝水。\n问:下一个", add_special_tokens=False)["input_ids"]
    assert len(ids) > 4  # arrives token by token, "问" and ":" possibly apart
    for tid in ids:
        streamer.put(torch.tensor([tid]))
    streamer.end()
    assert "".join(shown) == "多喝水。" == streamer.final()


class Script(LogitsProcessor):
    """Forces the model to emit a given token sequence (then EOS), so a test controls what 'the model' says."""

    def __init__(self, ids, eos):
        self.ids, self.eos, self.start = ids, eos, None

    def __call__(self, input_ids, scores):
        if self.start is None:
            self.start = input_ids.shape[1]
        step = input_ids.shape[1] - self.start
        target = self.ids[step] if step < len(self.ids) else self.eos
        forced = torch.full_like(scores, -1e9)
        forced[:, target] = 0
        return forced


def test_chat_stops_at_the_next_question_and_keeps_history(trained_run, monkeypatch):
    from medpt.model.loading import load_tokenizer

    tokenizer = load_tokenizer(str(trained_run))  # the run's own tokenizer: the ids must mean the same tokens
    said = tokenizer("多喝水，注意休息。\n问:我还想问", add_special_tokens=False)["input_ids"]
    prompts = []
    real_build = prompting.build_prompt

    def recording_build(question, history, data, tok):
        prompts.append(real_build(question, history, data, tok))
        return prompts[-1]

    monkeypatch.setattr(prompting, "extra_logits_processors", lambda: [Script(said, tokenizer.eos_token_id)])
    monkeypatch.setattr(prompting, "build_prompt", recording_build)
    stdin = io.StringIO("感冒了怎么办\n/adapter off\n还有呢\n/reset\n/help\n/quit\n")
    stdout = io.StringIO()
    monkeypatch.setattr("sys.stdin", stdin)
    monkeypatch.setattr("sys.stdout", stdout)
    assert main(["chat", "--adapter", str(trained_run), "--max_new_tokens", "40"]) == 0
    out = stdout.getvalue()
    assert out.count("答: 多喝水，注意休息。\n") == 2
    assert "我还想问" not in out and "(adapter off)" in out and "(new conversation)" in out
    assert prompts[1] == "问:感冒了怎么办\n答:多喝水，注意休息。\n问:还有呢\n答:"


def test_compare_writes_markdown_html_and_jsonl(trained_run, tmp_path):
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question": "高血压<要>注意什么？"}\n{"question": "孩子发烧怎么办"}\n', encoding="utf-8")
    out = tmp_path / "cmp"
    flags = [
        "--adapter",
        str(trained_run),
        "--questions",
        str(questions),
        "--max_new_tokens",
        "8",
        "--output_dir",
        str(out),
    ]
    assert main(["compare", *flags]) == 0
    rows = [json.loads(x) for x in (out / "compare.jsonl").read_text().splitlines()]
    assert [r["question"] for r in rows] == ["高血压<要>注意什么？", "孩子发烧怎么办"]
    assert all(set(r) == {"question", "base", "adapted"} for r in rows)
    assert "greedy" in (out / "compare.md").read_text() and "## 2. 孩子发烧怎么办" in (out / "compare.md").read_text()
    page = (out / "compare.html").read_text()
    assert "高血压&lt;要&gt;注意什么？" in page and "<th>adapted</th>" in page


def test_generate_answers_a_file(trained_run, tmp_path):
    questions = tmp_path / "q.txt"
    questions.write_text("头痛\n\n咳嗽\n", encoding="utf-8")
    answers = tmp_path / "a.jsonl"
    flags = ["--adapter", str(trained_run), "--questions", str(questions), "--answers_file", str(answers),
             "--max_new_tokens", "6", "--do_sample", "--temperature", "0.8"]  # fmt: skip
    assert main(["generate", *flags]) == 0
    rows = [json.loads(x) for x in answers.read_text().splitlines()]
    assert [r["question"] for r in rows] == ["头痛", "咳嗽"] and all(r["model"] == "adapted" for r in rows)


def test_questions_file_errors_name_the_line(trained_run, tmp_path, capsys):
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"question": "ok"}\n{"q": 1}\n')
    assert main(["generate", "--adapter", str(trained_run), "--questions", str(bad)]) == 2
    assert "q.jsonl:2: field 'question'" in capsys.readouterr().err
