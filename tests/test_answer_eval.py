"""`medpt eval --generate_eval N`: held-out questions answered by both models and scored against the references."""

import json

import pytest

pytest.importorskip("sacrebleu")

from medpt.args import DataArguments  # noqa: E402
from medpt.cli import main  # noqa: E402
from medpt.data.hygiene import in_validation  # noqa: E402
from medpt.eval.answers import HeldOut, read_pairs  # noqa: E402
from medpt.eval.textmetrics import METRICS, score_answer  # noqa: E402
from tests.conftest import conv, write_jsonl  # noqa: E402


def test_pairs_are_the_first_question_and_its_answer(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [
        conv("头痛怎么办？", "多休息。", "还要吃药吗？", "不必。"),
        {"conversations": [{"from": "system", "value": "你是医生"}, {"from": "human", "value": "发热？"},
                           {"from": "gpt", "value": "量体温。"}]},
        {"text": "没有问答的纯文本"},
        {"instruction": "咳嗽怎么办", "output": "多喝水"},
        conv("只有问题", ""),
    ])  # fmt: skip
    pairs = read_pairs([str(path)], "generate_file", DataArguments(), held_out_only=False)
    assert pairs == [
        HeldOut("头痛怎么办？", "多休息。", f"{path}:1"),
        HeldOut("发热？", "量体温。", f"{path}:2"),
        HeldOut("咳嗽怎么办", "多喝水", f"{path}:4"),
    ]


def test_generate_eval_end_to_end(trained_run, tmp_path):
    out = tmp_path / "eval"
    flags = ["--adapter", str(trained_run), "--generate_eval", "5", "--max_new_tokens", "8", "--output_dir", str(out),
             "--bootstrap_resamples", "1000"]  # fmt: skip
    assert main(["eval", *flags]) == 0
    summary = json.loads((out / "eval_results.json").read_text())["generated"]
    rows = [json.loads(x) for x in (out / "generated_answers.jsonl").read_text().splitlines()]
    assert summary["answers"] == len(rows) == 5
    for row in rows:
        # the run held out 10% of its documents by the hash of the first question: these are from that side
        assert in_validation(row["question"], 10.0)
        for which in ("base", "adapted"):
            answer = row[which]["answer"]
            assert row[which] == {"answer": answer, **score_answer(answer, row["reference"])}
    for metric in METRICS:
        m = summary["metrics"][metric]
        for which in ("base", "adapted"):
            assert m[which] == pytest.approx(sum(r[which][metric] for r in rows) / 5)
        assert m["delta"] == pytest.approx(m["adapted"] - m["base"])
        assert m["ci"][0] <= m["delta"] <= m["ci"][1]
    md = (out / "eval.md").read_text()
    assert "Generated answers: 5 held-out questions" in md and "| chrf |" in md
    assert rows[0]["reference"] in (out / "generated_answers.md").read_text()
