"""Hand medpt inputs that would exhaust memory or time: a mix of a trillion tokens, a record of many megabytes, a
questions file in another encoding, a prompt longer than the model's positions.

The limits (docs/crash-safety.md, "Limits"): --mix totals that do not fit in memory are refused before anything is
allocated; a record over --max_record_mb (default 16 MiB) is a bad record (skippable, counted as too_large); a prompt
longer than the model's positions less --max_new_tokens is cut from the left with a one-line note (chat, compare,
generate)."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from medpt.cli import main
from medpt.samples import SAMPLE_GENERAL, SAMPLE_QA
from tests.conftest import conv, write_jsonl
from tests.test_safety import one_line_error

# --- 1. the size of a --mix -----------------------------------------------------------------------------------------
MIXES = [
    (["--mix", "medical=0.5,general=0.5", "--mix_tokens", "1e12"], "--mix_tokens 1,000,000,000,000 would repeat"),
    (["--mix", "medical=1e-12,general=1"], "--mix (a total of"),  # a tiny first share anchors a huge total
]


@pytest.mark.parametrize("mix, needle", MIXES, ids=["--mix_tokens 1e12", "a tiny anchor share"])
def test_a_mix_too_large_for_memory_is_refused_before_allocating(mix, needle, tiny_model_dir, tmp_path, capsys):
    argv = ["prepare", "--model_name_or_path", str(tiny_model_dir), "--train_file_dir", f"medical={SAMPLE_QA}",
            f"general={SAMPLE_GENERAL}", "--output_dir", str(tmp_path / "out"), *mix[:2]]  # fmt: skip
    assert main([*argv, *mix[2:]]) == 2
    line = one_line_error(capsys, needle, "GiB of memory", "Use --mix_tokens")
    most = int(line.rsplit("--mix_tokens ", 1)[1].split()[0].replace(",", ""))
    assert main([*argv, "--mix_tokens", str(min(most, 20_000))]) == 0  # what the message says works


# --- 2. the size of a record, in every format --------------------------------------------------------------------
BIG = "长" * 15_000  # 45,000 bytes of UTF-8: over a --max_record_mb 0.03 (31,457 bytes) limit
LIMIT = ["--max_record_mb", "0.03"]


def _parquet(path: Path, texts: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": texts}), path)


FORMATS: list[tuple[str, str, Callable[[Path], None], str]] = [
    ("jsonl", "d.jsonl", lambda p: write_jsonl(p, [conv("头痛", "休息"), conv("问", BIG), conv("发热", "喝水")]),
     "d.jsonl:2"),
    ("json array", "d.json", lambda p: p.write_text(json.dumps([{"text": "头痛休息"}, {"text": BIG},
                                                                {"text": "发热喝水"}], ensure_ascii=False)),
     "d.json:1"),
    ("csv", "d.csv", lambda p: p.write_text(f"text\n头痛休息\n{BIG}\n发热喝水\n"), "d.csv:3"),
    ("txt paragraphs", "d.txt", lambda p: p.write_text(f"头痛休息\n\n{BIG}\n\n发热喝水\n"), "d.txt:3"),
    ("parquet", "d.parquet", lambda p: _parquet(p, ["头痛休息", BIG, "发热喝水"]), "d.parquet row 2"),
]  # fmt: skip


@pytest.mark.parametrize("name, write, where", [c[1:] for c in FORMATS], ids=[c[0] for c in FORMATS])
def test_a_record_over_the_size_limit_is_a_bad_record(name, write, where, tiny_model_dir, tmp_path, capsys):
    data = tmp_path / name
    write(data)
    argv = ["prepare", "--model_name_or_path", str(tiny_model_dir), "--train_file_dir", str(data),
            "--validation_split_percentage", "0", *LIMIT]  # fmt: skip
    assert main([*argv, "--output_dir", str(tmp_path / "a")]) == 2
    one_line_error(capsys, where, "MiB limit", "--max_record_mb", "--on_bad_record skip")
    assert main([*argv, "--output_dir", str(tmp_path / "b"), "--on_bad_record", "skip"]) == 0
    records = json.loads((tmp_path / "b" / "data_report.json").read_text())["records"]
    assert records["skipped"]["too_large"] == 1 and records["skipped"]["bad_record"] == 0
    assert records["documents"]["train"] == 2  # the records around it are kept
    rejected = [json.loads(line) for line in (tmp_path / "b" / "rejected.jsonl").read_text().splitlines()]
    assert len(rejected) == 1 and "--max_record_mb" in rejected[0]["reason"]
    assert len(rejected[0]["record"]) < 300  # the head of the record, not all of it


def test_the_default_limit_refuses_a_runaway_line_before_parsing_it(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "joined.jsonl"
    with open(data, "w", encoding="utf-8") as f:  # 17 MiB on one line: files joined without their line ends
        f.write(json.dumps(conv("头痛", "休息"), ensure_ascii=False) + "\n")
        f.write('{"text": "' + "a" * (17 << 20) + '"}\n')
    argv = ["prepare", "--model_name_or_path", str(tiny_model_dir), "--train_file_dir", str(data),
            "--output_dir", str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 2
    one_line_error(capsys, "joined.jsonl:2", "17.0 MiB, over the 16 MiB limit")


# --- 3. questions files for compare and generate --------------------------------------------------------------------
QUESTIONS = [
    ("GBK text", "q.txt", "头痛怎么办\n发热怎么办\n".encode("gbk"), "q.txt:1: not valid utf-8"),
    ("GBK jsonl", "q.jsonl", (json.dumps({"question": "头痛怎么办"}, ensure_ascii=False) + "\n").encode("gbk"),
     "q.jsonl:1: not valid utf-8"),
    ("invalid JSON", "q.jsonl", b'{"question": "a"}\n{"question": \n', "q.jsonl:2: invalid JSON"),
    ("question not a string", "q.jsonl", b'{"question": ["a"]}\n', "q.jsonl:1: field 'question'"),
    ("a question of 17 MiB", "q.txt", b"a" * (17 << 20) + b"\n", "q.txt:1: a record of 17.0 MiB"),
]  # fmt: skip


@pytest.mark.parametrize("name, content, needle", [c[1:] for c in QUESTIONS], ids=[c[0] for c in QUESTIONS])
@pytest.mark.parametrize("command", ["generate", "compare"])
def test_a_bad_questions_file_is_one_line_before_loading(command, name, content, needle, trained_run, tmp_path,
                                                         capsys):  # fmt: skip
    questions = tmp_path / name
    questions.write_bytes(content)
    out = (
        ["--answers_file", str(tmp_path / "a.jsonl")]
        if command == "generate"
        else ["--output_dir", str(tmp_path / "c")]
    )
    assert main([command, "--adapter", str(trained_run), "--questions", str(questions), *out]) == 2
    one_line_error(capsys, needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # nothing written


# --- 4. prompts longer than the model's positions -----------------------------------------------------------------
LONG = "患者主诉头痛三天伴有发热。" * 80_000  # ~1 MiB of UTF-8, far more tokens than the tiny model's 4,096 positions


@pytest.mark.parametrize("command", ["generate", "compare", "chat"])
def test_a_prompt_longer_than_the_model_is_cut_from_the_left_with_a_note(command, trained_run, tmp_path, capsys,
                                                                         monkeypatch):  # fmt: skip
    argv = {
        "generate": ["generate", "--question", LONG, "--answers_file", str(tmp_path / "a.jsonl")],
        "compare": ["compare", "--question", LONG, "--output_dir", str(tmp_path / "c")],
        "chat": ["chat"],
    }[command]
    monkeypatch.setattr("sys.stdin", io.StringIO(LONG + "\n/quit\n"))
    assert main([*argv, "--adapter", str(trained_run), "--max_new_tokens", "3"]) == 0
    out = capsys.readouterr().out
    assert "cut from the left to 4,093" in out and "--max_new_tokens 3" in out
    if command == "generate":
        assert len((tmp_path / "a.jsonl").read_text().splitlines()) == 1


def test_max_new_tokens_beyond_the_model_is_refused_before_loading(trained_run, tmp_path, capsys):
    argv = ["generate", "--adapter", str(trained_run), "--question", "头痛", "--max_new_tokens", "4096",
            "--answers_file", str(tmp_path / "a.jsonl")]  # fmt: skip
    assert main(argv) == 2
    one_line_error(capsys, "--max_new_tokens 4,096 leaves no room", "4,096 positions")
    assert not (tmp_path / "a.jsonl").exists()
