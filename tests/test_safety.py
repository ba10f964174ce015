"""medpt never deletes or overwrites what it did not write, and every mistake a user can make ends as one line.

Table-driven: each data-loss case builds the user's files, runs the command, and proves the files are byte-identical
afterwards (with a non-zero exit status, or a success that did not touch them); each error case asserts a one-line
`medpt: error:` message on stderr and no traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from medpt.cli import main
from medpt.samples import SAMPLE_GENERAL, SAMPLE_QA
from tests.conftest import conv, one_error_line, write_jsonl

FAST = ["--max_steps", "2", "--per_device_train_batch_size", "4", "--block_size", "64", "--report_to", "none",
        "--disable_tqdm", "true", "--plot", "false", "--save_strategy", "no", "--logging_steps", "1"]  # fmt: skip


def snapshot(root: Path) -> dict[str, str]:
    """Every file under root (following nothing), by relative path, with the sha256 of its bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def one_line_error(capsys: pytest.CaptureFixture, *needles: str) -> str:
    return one_error_line(capsys.readouterr().err, *needles)


# ---------------------------------------------------------------------------------------------------------------
# 1. The data-loss cases from the issue: the user's files come out byte-identical.
@dataclass
class Loss:
    name: str
    setup: Callable[[Path, Path], list[str]]  # (tmp folder, tiny model) -> argv; builds the user's files
    protected: str  # folder (relative to tmp) whose files must stay byte-identical
    needle: str  # a word of the refusal


def _model_as_output(tmp: Path, model: Path) -> list[str]:
    shutil.copytree(model, tmp / "M")
    return ["train", "--model_name_or_path", str(tmp / "M"), "--train_file_dir", str(SAMPLE_QA),
            "--output_dir", str(tmp / "M"), "--overwrite_output_dir", *FAST]  # fmt: skip


def _project_folder(tmp: Path, model: Path) -> list[str]:
    proj = tmp / "proj"
    write_jsonl(proj / "train.jsonl", [conv(f"问题{i}", f"回答{i}") for i in range(40)])
    write_jsonl(proj / "eval" / "valid.jsonl", [conv(f"验证{i}", f"答{i}") for i in range(5)])
    (proj / "baseline_results.json").write_text('{"mine": true}')
    return ["train", "--model_name_or_path", str(model), "--train_file_dir", str(proj / "train.jsonl"),
            "--validation_file_dir", str(proj / "eval"), "--output_dir", str(proj), "--overwrite_output_dir",
            *FAST]  # fmt: skip


def _merge_over_parent(tmp: Path, model: Path) -> list[str]:
    work = tmp / "work"
    shutil.copytree(model, work / "base")
    _fake_adapter(work / "run", work / "base")
    (work / "notes.txt").write_text("my notes")
    return ["merge", "--adapter", str(work / "run"), "--output_dir", str(work), "--overwrite"]


def _dump_over_input(tmp: Path, model: Path) -> list[str]:
    x = write_jsonl(tmp / "data" / "x.jsonl", [conv("头痛", "休息")])
    return ["prepare", "--model_name_or_path", str(model), "--train_file_dir", str(x), "--dump_text", str(x),
            "--output_dir", str(tmp / "out")]  # fmt: skip


def _prepare_into_input(tmp: Path, model: Path) -> list[str]:
    d = tmp / "D"
    write_jsonl(d / "a.jsonl", [conv(f"问{i}", f"答{i}") for i in range(20)])
    return ["prepare", "--model_name_or_path", str(model), "--train_file_dir", str(d), "--output_dir", str(d)]


def _fake_adapter(run: Path, base: Path) -> None:
    """A minimal LoRA folder (what PEFT reads), enough for the path checks that come before any loading."""
    run.mkdir(parents=True)
    (run / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base), "r": 4}))
    (run / "adapter_model.safetensors").write_bytes(b"not really")


LOSSES = [
    Loss("model folder as output", _model_as_output, "M", "is the base model"),
    Loss("project folder with data as output", _project_folder, "proj", "proj"),
    Loss("merge output holding the adapter", _merge_over_parent, "work", "holds the adapter"),
    Loss("--dump_text onto the input", _dump_over_input, "data", "training data"),
    Loss("prepare into its own input folder", _prepare_into_input, "D", "training data"),
]


@pytest.mark.parametrize("case", LOSSES, ids=[c.name for c in LOSSES])
def test_user_files_survive(case: Loss, tiny_model_dir, tmp_path, capsys):
    argv = case.setup(tmp_path, tiny_model_dir)
    before = snapshot(tmp_path / case.protected)
    assert main(argv) == 2
    one_line_error(capsys, case.needle)
    assert snapshot(tmp_path / case.protected) == before


def test_prepare_into_a_training_run_needs_overwrite_and_keeps_the_run(trained_run, tiny_model_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = snapshot(run)
    argv = ["prepare", "--model_name_or_path", str(tiny_model_dir), "--train_file_dir", str(SAMPLE_QA),
            "--output_dir", str(run)]  # fmt: skip
    assert main(argv) == 2
    one_line_error(capsys, "medpt train", "--overwrite_output_dir")
    assert snapshot(run) == before
    assert main(["eval", "--adapter", str(run), "--output_dir", str(tmp_path / "e")]) == 0  # still a usable run


def test_overwrite_removes_exactly_what_medpt_wrote(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    base = ["train", "--model_name_or_path", str(tiny_model_dir), "--train_file_dir", str(SAMPLE_QA),
            "--output_dir", str(out), *FAST]  # fmt: skip
    assert main(base) == 0
    (out / "notes.txt").write_text("keep me")
    (out / "mine").mkdir()
    (out / "mine" / "model.safetensors").write_text("also mine")  # a name medpt uses, inside a folder of the user's
    assert main([*base, "--overwrite_output_dir"]) == 0
    assert (out / "notes.txt").read_text() == "keep me" and (out / "mine" / "model.safetensors").is_file()
    assert (out / "adapter_model.safetensors").is_file()
    manifest = json.loads((out / ".medpt-manifest.json").read_text())
    assert "notes.txt" not in manifest["entries"] and manifest["entries"]["adapter_model.safetensors"] == "train"


def test_a_folder_of_user_files_is_refused_with_their_names(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.docx").write_text("years of work")
    argv = ["prepare", "--model_name_or_path", str(tiny_model_dir), "--train_file_dir", str(SAMPLE_QA),
            "--output_dir", str(out), "--overwrite_output_dir"]  # fmt: skip
    assert main(argv) == 2
    one_line_error(capsys, "thesis.docx", "did not write")
    assert snapshot(out) == {"thesis.docx": hashlib.sha256(b"years of work").hexdigest()}


def test_generate_never_replaces_a_file_it_did_not_write(trained_run, tmp_path, capsys):
    answers = tmp_path / "answers.jsonl"
    answers.write_text("my own answers\n")
    argv = ["generate", "--adapter", str(trained_run), "--question", "头痛", "--answers_file", str(answers)]
    assert main(argv) == 2
    one_line_error(capsys, "medpt did not write it")
    assert answers.read_text() == "my own answers\n"
    fresh = tmp_path / "new.jsonl"
    assert main([*argv[:-1], str(fresh), "--max_new_tokens", "4"]) == 0
    assert main([*argv[:-1], str(fresh), "--max_new_tokens", "4"]) == 0  # its own file: replaced


def test_eval_cannot_write_over_the_training_results(trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = snapshot(run)
    assert main(["eval", "--adapter", str(run), "--output_dir", str(run)]) == 2
    one_line_error(capsys, "is the adapter")
    assert snapshot(run) == before


# ---------------------------------------------------------------------------------------------------------------
# 2. Mistakes that used to end in a traceback (or a silent wrong result): one line, before anything heavy runs.
def _train(model: Path, tmp: Path, *extra: str) -> list[str]:
    return ["train", "--model_name_or_path", str(model), "--train_file_dir", str(SAMPLE_QA),
            "--output_dir", str(tmp / "run"), *FAST, *extra]  # fmt: skip


FLAG_ERRORS = [
    (["--learning_rate", "-1"], "--learning_rate must be greater than 0, got -1"),
    (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size must be at least 1, got 0"),
    (["--attn_implementation", "flash"], "--attn_implementation must be one of"),
    (["--max_steps", "0"], "--max_steps must be at least 1"),
    (["--block_size", "1000000000"], "--block_size must be at most 1,048,576"),
    (["--block_size", "8192"], "--block_size 8192 is longer than the 4,096 positions"),
    (["--target_modules", "q_proj,nonexistent"], "--target_modules nonexistent: no such module"),
    (["--peft_path", "/nowhere/adapter"], "/nowhere/adapter: no such local folder"),
    (["--resume_from_checkpoint", "/nowhere/ckpt"], "no such checkpoint directory"),
]


@pytest.mark.parametrize("extra, message", FLAG_ERRORS, ids=[e[0][0] for e in FLAG_ERRORS])
def test_bad_training_flags_fail_before_data_or_model(extra, message, tiny_model_dir, tmp_path, capsys):
    assert main(_train(tiny_model_dir, tmp_path, *extra)) == 2
    one_line_error(capsys, message)
    assert not (tmp_path / "run" / "data_report.json").exists()  # nothing was prepared
    assert not any((tmp_path / "medpt-cache").glob("*"))  # the cache was never touched


def test_a_missing_local_model_is_not_reported_as_an_unreachable_hub(tmp_path, capsys):
    gone = tmp_path / "models" / "deleted-model"
    assert main(["train", "--model_name_or_path", str(gone), "--train_file_dir", str(SAMPLE_QA),
                 "--output_dir", str(tmp_path / "run"), *FAST]) == 2  # fmt: skip
    line = one_line_error(capsys, str(gone), "no such local folder")
    assert "hub" not in line.split("(")[0]


@pytest.mark.parametrize(
    "command, flag, value, owner",
    [
        ("verify", "--lora_rank", "4", "train"),
        ("verify", "--max_new_tokens", "5", "compare/generate/chat/serve"),
        ("eval", "--learning_rate", "1e-4", "train"),
        ("chat", "--answers_file", "a.jsonl", "generate"),
        ("prepare", "--mcq_file", "q.jsonl", "eval"),
    ],
)
def test_a_flag_the_command_would_ignore_is_an_error(command, flag, value, owner, capsys):
    assert main([command, flag, value]) == 2
    one_line_error(capsys, f"{flag} is", f"{owner} flag, not a{'n' if command[0] in 'aeiou' else ''} {command} flag")


def test_yaml_files_may_be_shared_between_commands(tmp_path):
    from medpt.args.resolve import load_config

    shared = tmp_path / "shared.yaml"
    shared.write_text("lora_rank: 4\nmax_new_tokens: 5\nblock_size: 64\n")
    config = load_config([str(shared)], command="verify")  # keys of other commands: allowed, not applied
    assert config.lora.lora_rank == 8 and config.generate.max_new_tokens == 160


def test_a_yaml_file_that_is_not_utf8(tmp_path, capsys):
    cfg = tmp_path / "gbk.yaml"
    cfg.write_bytes("block_size: 64\n# 中文注释\n".encode("gbk"))
    assert main(["prepare", str(cfg)]) == 2
    one_line_error(capsys, "gbk.yaml:2: not valid UTF-8")


def test_output_path_that_is_a_file(tiny_model_dir, tmp_path, capsys):
    f = tmp_path / "out.txt"
    f.write_text("x")
    assert main(["prepare", "--model_name_or_path", str(tiny_model_dir), "--train_file_dir", str(SAMPLE_QA),
                 "--output_dir", str(f)]) == 2  # fmt: skip
    one_line_error(capsys, "is a file, not a folder")
    assert f.read_text() == "x"


@pytest.mark.parametrize("flag", ["--output_dir", "--data_cache_dir"])
def test_an_unwritable_output_or_cache_folder(flag, tiny_model_dir, tmp_path, capsys):
    # /sys refuses new folders even to root: a real operating-system refusal, wherever the tests run.
    where = {"--output_dir": str(tmp_path / "out"), "--data_cache_dir": str(tmp_path / "cache")}
    where[flag] = "/sys/medpt-test-folder"
    argv = ["prepare", "--model_name_or_path", str(tiny_model_dir), "--train_file_dir", str(SAMPLE_QA)]
    assert main([*argv, "--output_dir", where["--output_dir"], "--data_cache_dir", where["--data_cache_dir"]]) == 2
    one_line_error(capsys, "/sys/medpt-test-folder")


def test_disk_full_says_how_much_space_was_needed(tiny_model_dir, tmp_path, monkeypatch, capsys):
    import shutil as sh

    real = sh.disk_usage
    monkeypatch.setattr(sh, "disk_usage", lambda p: real(p)._replace(free=1000))
    assert main(["prepare", "--model_name_or_path", str(tiny_model_dir), "--train_file_dir", str(SAMPLE_QA),
                 "--output_dir", str(tmp_path / "out")]) == 2  # fmt: skip
    one_line_error(capsys, "needs about", "free")


def test_disk_full_while_writing_is_one_line(tiny_model_dir, tmp_path, monkeypatch, capsys):
    import errno

    from medpt import atomic

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "x"))

    monkeypatch.setattr(atomic.os, "fsync", full)
    assert main(["prepare", "--model_name_or_path", str(tiny_model_dir), "--train_file_dir", str(SAMPLE_QA),
                 "--output_dir", str(tmp_path / "out")]) == 2  # fmt: skip
    one_line_error(capsys, "no space left on the device", "MiB free there")


def _broken_copy(run: Path, tmp: Path, how: str) -> Path:
    copy = tmp / f"run-{how}"
    shutil.copytree(run, copy)
    weights = copy / "adapter_model.safetensors"
    if how == "truncated":
        weights.write_bytes(weights.read_bytes()[:100])
    else:
        import torch
        from safetensors.torch import load_file, save_file

        tensors = load_file(weights)
        save_file({k: torch.full_like(v, float("nan")) for k, v in tensors.items()}, weights)
    return copy


@pytest.mark.parametrize("how, needle", [("truncated", "not a readable safetensors"), ("nan", "NaN/inf")])
@pytest.mark.parametrize("command", ["eval", "merge", "generate", "chat", "verify"])
def test_a_broken_adapter_is_refused(command, how, needle, trained_run, tmp_path, monkeypatch, capsys):
    import io

    run = _broken_copy(trained_run, tmp_path, how)
    argv = {
        "eval": ["eval", "--adapter", str(run)],
        "merge": ["merge", "--adapter", str(run), "--output_dir", str(tmp_path / "merged")],
        "generate": ["generate", "--adapter", str(run), "--question", "头痛", "--max_new_tokens", "3"],
        "chat": ["chat", "--adapter", str(run), "--max_new_tokens", "3"],
        "verify": ["verify", "--adapter", str(run)],
    }[command]
    monkeypatch.setattr("sys.stdin", io.StringIO("头痛\n/quit\n"))
    code = main(argv)
    if command == "verify" and how == "nan":  # verify reports it as a failed check
        assert code == 1 and "[FAIL] finite weights" in capsys.readouterr().out
        return
    assert code == 2
    one_line_error(capsys, needle)
    assert not (tmp_path / "merged").exists()


@pytest.mark.parametrize("command", ["eval", "merge"])
def test_eval_and_merge_check_the_base_like_verify(command, trained_run, tmp_path, capsys):
    from medpt.data.pipeline import read_texts
    from medpt.model.init_tiny import init_tiny

    other = tmp_path / "other-base"
    init_tiny(other, "5m", read_texts([str(SAMPLE_QA)]), seed=123)  # same shape, other weights
    argv = [command, "--adapter", str(trained_run), "--model_name_or_path", str(other),
            "--output_dir", str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 2
    one_line_error(capsys, "is not the base the adapter was trained on", "--allow_base_mismatch")
    assert main([*argv, "--allow_base_mismatch"]) == 0
    assert "applied anyway" in capsys.readouterr().out


def test_chat_with_stdin_closed(trained_run):
    run = subprocess.run(
        [sys.executable, "-m", "medpt", "chat", "--adapter", str(trained_run)],
        capture_output=True, text=True, preexec_fn=lambda: os.close(0), timeout=300,
    )  # fmt: skip
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().startswith("medpt: error: chat reads questions from standard input, which is closed")


def test_mcq_answer_of_the_wrong_type(trained_run, tmp_path, capsys):
    mcq = write_jsonl(tmp_path / "q.jsonl", [{"question": "q", "choices": {"A": "a", "B": "b"}, "answer": ["A"]}])
    assert (
        main(["eval", "--adapter", str(trained_run), "--mcq_file", str(mcq), "--output_dir", str(tmp_path / "e")]) == 2
    )
    one_line_error(capsys, "q.jsonl:1", "answer")


def test_json_nested_too_deep_is_a_bad_record(tiny_model_dir, tmp_path, capsys):
    deep = "[" * 100_000 + "]" * 100_000
    data = write_jsonl(tmp_path / "d.jsonl", [conv("头痛", "休息"), deep, conv("发热", "喝水")])
    argv = ["prepare", "--model_name_or_path", str(tiny_model_dir), "--train_file_dir", str(data)]
    assert main([*argv, "--output_dir", str(tmp_path / "a")]) == 2
    one_line_error(capsys, "d.jsonl:2")
    assert main([*argv, "--output_dir", str(tmp_path / "b"), "--on_bad_record", "skip"]) == 0
    report = json.loads((tmp_path / "b" / "data_report.json").read_text())
    assert report["records"]["skipped"]["bad_record"] == 1 and report["records"]["documents"]["train"] == 2


@pytest.mark.parametrize(
    "content, needle",
    [
        ("text\n" + '"' + "长" * 140_000 + '"\n', "d.csv"),  # a cell over csv's default 131,072-character limit
        ('text\n"ok"\n"unclosed\nrest of the file\n', "d.csv:3"),  # used to swallow the rest of the file silently
    ],
    ids=["huge cell", "unclosed quote"],
)
def test_csv_problems(content, needle, tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "d.csv"
    data.write_text(content, encoding="utf-8")
    argv = ["prepare", "--model_name_or_path", str(tiny_model_dir), "--train_file_dir", str(data),
            "--output_dir", str(tmp_path / "out")]  # fmt: skip
    code = main(argv)
    if "unclosed" in content:
        assert code == 2
        one_line_error(capsys, needle, "quote")
    else:  # a long cell is a valid cell: read, not refused
        assert code == 0, capsys.readouterr().err


@pytest.mark.parametrize("damage", ["truncate", "bitflip"])
def test_a_damaged_cache_file_is_caught(damage, tiny_model_dir, tmp_path, capsys):
    argv = ["prepare", "--model_name_or_path", str(tiny_model_dir), "--train_file_dir", str(SAMPLE_QA),
            "--output_dir", str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 0
    tokens = next((tmp_path / "medpt-cache").glob("*/train/tokens.npy"))
    data = bytearray(tokens.read_bytes())
    if damage == "truncate":
        tokens.write_bytes(bytes(data[: len(data) // 2]))
    else:
        data[-7] ^= 0x10
        tokens.write_bytes(bytes(data))
    assert main(argv) == 2
    one_line_error(capsys, "--overwrite_cache")
    assert main([*argv, "--overwrite_cache"]) == 0


def test_a_rename_interrupted_by_a_kill_is_cleaned_up(tiny_model_dir, tmp_path):
    cache = tmp_path / "medpt-cache"
    cache.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = cache / f".0123456789abcdef01234567.old-{dead.stdout.strip()}"
    (left / "train").mkdir(parents=True)
    assert main(["prepare", "--model_name_or_path", str(tiny_model_dir), "--train_file_dir", str(SAMPLE_QA),
                 "--output_dir", str(tmp_path / "out")]) == 0  # fmt: skip
    assert not left.exists()


def test_a_run_is_usable_from_another_working_directory(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_model_dir, tmp_path / "model")
    shutil.copy(SAMPLE_QA, tmp_path / "qa.jsonl")
    assert main(["train", "--model_name_or_path", "model", "--train_file_dir", "qa.jsonl", "--output_dir", "run",
                 "--validation_split_percentage", "10", *FAST]) == 0  # fmt: skip
    saved = (tmp_path / "run" / "medpt_config.yaml").read_text()
    assert f"model_name_or_path: {tmp_path / 'model'}  # set; given as model" in saved
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["eval", "--adapter", str(tmp_path / "run")]) == 0


def test_resume_from_checkpoint_none_starts_over(tiny_model_dir, tmp_path, capsys):
    argv = [*_train(tiny_model_dir, tmp_path), "--save_strategy", "steps", "--save_steps", "1"]
    assert main(argv) == 0
    assert main([*argv, "--resume_from_checkpoint", "none"]) == 2  # "none" means start over, which needs overwrite
    one_line_error(capsys, "already holds a run")
    assert main([*argv, "--resume_from_checkpoint", "none", "--overwrite_output_dir"]) == 0
    assert "resuming" not in capsys.readouterr().out


def test_eval_sets_do_not_retokenize_the_training_corpus(trained_run):
    from medpt.args.resolve import load_config
    from medpt.data.pipeline import prepare_data
    from medpt.model.loading import tokenizer_source

    config = load_config(["--adapter", str(trained_run), "--eval_sets", f"general={SAMPLE_GENERAL}"], command="eval")
    logged: list[str] = []
    prepare_data(config.data, tokenizer_source(config.model), config.run.seed, log=logged.append)
    assert any("reusing prepared data" in line for line in logged)  # the training run's own cache entry
