"""The command line as a user types it."""

import json

from medpt.cli import main
from medpt.samples import SAMPLE_QA
from tests.conftest import conv, write_jsonl


def test_prepare_writes_report_and_resolved_config(tokenizer_dir, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [
        "prepare",
        "--model_name_or_path",
        str(tokenizer_dir),
        "--train_file_dir",
        str(SAMPLE_QA),
        "--block_size",
        "128",
        "--output_dir",
        str(out),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "records read: 320" in printed and "tokens in blocks" in printed
    assert json.loads((out / "data_report.json").read_text())["train"]["block_size"] == 128
    assert "block_size: 128  # set" in (out / "medpt_config.yaml").read_text()


def test_prepare_without_data_or_tokenizer_says_which_flag(tmp_path, capsys):
    assert main(["prepare", "--output_dir", str(tmp_path)]) == 2
    assert "--model_name_or_path" in capsys.readouterr().err


def test_bad_record_error_reaches_the_user_in_one_line(tokenizer_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", [conv("q", "a"), '{"conversations": [{"from": "human", "value": null}]}'])
    assert main(["prepare", "--model_name_or_path", str(tokenizer_dir), "--train_file_dir", str(data)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"medpt: error: {data}:2: field 'conversations[0].value': expected a string")
    assert len(err.splitlines()) == 1


def test_init_tiny_on_a_custom_corpus_and_refusal_to_clobber(tmp_path, capsys):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": f"第{i}段文字，关于健康。"} for i in range(50)])
    out = tmp_path / "tiny"
    assert main(["init-tiny", "--output_dir", str(out), "--corpus", str(corpus)]) == 0
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert main(["init-tiny", "--output_dir", str(out)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert main(["init-tiny", "--output_dir", str(out), "--overwrite"]) == 0


def test_help_is_generated_from_the_schema(capsys):
    assert main(["prepare", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--block_size int (default: 512)" in text and "Tokens per training block" in text
    assert main(["--help"]) == 0
    assert "prepare" in capsys.readouterr().out
