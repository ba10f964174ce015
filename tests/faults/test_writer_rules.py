"""The writer's rules, each tested on the case an outside probe found broken:

1. a dead process's temporary file is medpt's: it never makes a folder (output or cache) look foreign;
2. every log read tolerates a cut last line;
3. one process writes a folder at a time: a second `medpt train` into a run being trained is refused in one line;
4. a name enters a manifest only right before medpt writes it: a refused or failed command claims nothing;
5. nothing is written in place: a hard-linked backup of a run keeps its bytes when the run continues;
6. an output file never collides with the run's own files (`--dump_text RUN/data_report.json`);
7. files and folders get the umask's mode, not mkstemp's 0600.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from medpt.atomic import MedptError, cut_log, owner, read_log
from medpt.cli import main
from medpt.rundir import MANIFEST, RunDir
from medpt.samples import SAMPLE_QA
from tests.conftest import conv, write_jsonl
from tests.data.test_cache import _dead_pid
from tests.faults.harness import Run, wait_for
from tests.test_safety import FAST, one_line_error, snapshot


def _prepare(model: Path, out: Path, *extra: str) -> list[str]:
    return ["prepare", "--model_name_or_path", str(model), "--train_file_dir", str(SAMPLE_QA), "--block_size", "64",
            "--output_dir", str(out), *extra]  # fmt: skip


def _dead_writers_manifest_temporary(folder: Path) -> Path:
    """What a kill -9 during a manifest update leaves: `..medpt-manifest.json.pid<PID>@<MACHINE>.<random>.tmp`."""
    folder.mkdir(parents=True, exist_ok=True)
    machine = owner().split("@")[1]
    left = folder / f".{MANIFEST}.pid{_dead_pid()}@{machine}.k2j3h4l5.tmp"
    left.write_text('{"entries": {"half": "written"')
    return left


# 1. -------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["output folder", "new output folder", "cache folder"])
def test_a_dead_writers_temporary_never_makes_a_folder_foreign(where, tiny_model_dir, tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    argv = _prepare(tiny_model_dir, out, "--data_cache_dir", str(cache))
    if where == "output folder":
        assert main(argv) == 0
    left = _dead_writers_manifest_temporary(cache if where == "cache folder" else out)
    assert main(argv) == 0  # the same command: not "holds files medpt did not write"
    assert main(argv) == 0  # and every later one
    assert not left.exists()  # and the leftover is gone


# 2. -------------------------------------------------------------------------------------------------------------
def test_a_cut_last_line_is_left_out_by_every_reader_and_dropped_when_the_log_is_cut(tmp_path):
    log = tmp_path / "metrics.jsonl"
    whole = [{"step": 1, "loss": 8.7}, {"step": 2, "loss": 8.6, "note": "头痛"}]
    line = json.dumps({"step": 3, "loss": 8.5, "note": "头痛"}, ensure_ascii=False).encode()
    for cut in (5, len(line) - 4):  # inside the JSON, and inside a multi-byte character
        log.write_bytes(b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in whole) + line[:cut])
        assert read_log(log) == whole
        assert cut_log(log, 2) == 0 and log.read_bytes().endswith(b"\n") and read_log(log) == whole
    log.write_text('{"step": 1}\n{"step": 2\n{"step": 3}\n')
    with pytest.raises(MedptError, match="metrics.jsonl:2: not a JSON line"):  # damage inside the file is not a cut
        read_log(log)


def test_report_and_loss_curve_read_a_run_whose_log_ends_in_a_cut_line(suite, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(suite.base, run)
    with open(run / "metrics.jsonl", "ab") as f:
        f.write(b'{"step": 31, "lo')
    assert main(["report", str(run)]) == 0, capsys.readouterr().err


# 3. -------------------------------------------------------------------------------------------------------------
def test_a_second_train_into_a_folder_being_trained_is_refused_in_one_line(suite, tiny_model_dir, tmp_path):
    argv = ["train", "--model_name_or_path", tiny_model_dir, "--train_file_dir", SAMPLE_QA, "--block_size", "64",
            "--per_device_train_batch_size", "4", "--max_steps", "500", "--logging_steps", "1", "--save_steps", "1000",
            "--output_dir", tmp_path / "run", "--report_to", "none", "--disable_tqdm", "true",
            "--plot", "false"]  # fmt: skip
    first = suite.zygote.start(Run(argv, tmp_path))
    try:
        assert wait_for(lambda: len(read_log(tmp_path / "run" / "metrics.jsonl")) >= 2), "the first never trained"
        second = suite.zygote.run(argv, tmp_path)
        assert second.code == 2
        second.one_line_error("is being written by another medpt process")
    finally:
        os.killpg(first, signal.SIGINT)  # Ctrl-C: the first saves a checkpoint and stops
        stopped = suite.zygote.wait([first], timeout=120)
    assert stopped.code == 130, stopped.err[-3000:]
    steps = [row["step"] for row in read_log(tmp_path / "run" / "metrics.jsonl") if "loss" in row]
    assert steps == list(range(1, len(steps) + 1))  # each step logged once, by one process


# 4. -------------------------------------------------------------------------------------------------------------
def test_report_on_a_folder_that_is_not_a_run_claims_nothing_there(tiny_model_dir, tmp_path, capsys):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    before = snapshot(model)
    assert main(["report", str(model)]) == 2
    one_line_error(capsys, "is not a medpt run")
    assert snapshot(model) == before  # its manifest names no report.html, report.md, ...
    (model / "report.md").write_text("my own notes on this model")
    main(["init-tiny", "--output_dir", str(model), "--overwrite"])  # refused: report.md is the user's
    assert (model / "report.md").read_text() == "my own notes on this model"


def test_a_train_that_failed_claimed_nothing_so_it_never_replaces_the_users_file(tiny_model_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", [conv("头痛", "休息"), {"broken": "record"}, conv("发热", "喝水")])
    run = tmp_path / "R"
    argv = ["train", "--model_name_or_path", str(tiny_model_dir), "--train_file_dir", str(data),
            "--output_dir", str(run), *FAST]  # fmt: skip
    assert main(argv) == 2  # a bad record: the run stops before training
    capsys.readouterr()
    assert "README.md" not in RunDir.open(run).entries
    (run / "README.md").write_text("what this experiment is about")
    assert main([*argv, "--on_bad_record", "skip"]) == 2  # the fixed command: refused, naming the file
    one_line_error(capsys, "README.md", "did not write")
    assert (run / "README.md").read_text() == "what this experiment is about"


# 5. -------------------------------------------------------------------------------------------------------------
def test_continuing_a_run_leaves_a_hard_linked_backup_of_it_as_it_was(tiny_model_dir, tmp_path):
    run, backup = tmp_path / "run", tmp_path / "run.bak"
    argv = ["train", "--model_name_or_path", str(tiny_model_dir), "--train_file_dir", str(SAMPLE_QA),
            "--output_dir", str(run), *FAST, "--save_strategy", "steps", "--save_steps", "2",
            "--validation_split_percentage", "5", "--do_eval"]  # fmt: skip
    assert main(argv) == 0
    subprocess.run(["cp", "-al", str(run), str(backup)], check=True)  # hard links, no copy: a cheap backup
    before = snapshot(backup)
    at = argv.index("--max_steps") + 1
    assert main([*argv[:at], "4", *argv[at + 1 :]]) == 0  # continue it for 2 more steps
    assert snapshot(backup) == before
    assert len(read_log(run / "metrics.jsonl")) > len(read_log(backup / "metrics.jsonl"))


# 6. -------------------------------------------------------------------------------------------------------------
def test_dump_text_onto_one_of_the_runs_own_files_is_refused(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_prepare(tiny_model_dir, out, "--dump_text", str(out / "data_report.json"))) == 2
    one_line_error(capsys, "data_report.json", "writes its own")
    assert not (out / "data_report.json").exists()


# 7. -------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_everything_medpt_writes_gets_the_umasks_mode(umask, tiny_model_dir, tmp_path):
    out, merged = tmp_path / "run", tmp_path / "merged"
    previous = os.umask(umask)
    try:
        argv = ["train", "--model_name_or_path", str(tiny_model_dir), "--train_file_dir", str(SAMPLE_QA),
                "--output_dir", str(out), "--data_cache_dir", str(tmp_path / "cache"), *FAST]  # fmt: skip
        assert main(argv) == 0
        assert main(["merge", "--adapter", str(out), "--output_dir", str(merged)]) == 0
        assert main(["report", str(out)]) == 0
    finally:
        os.umask(previous)
    wrong = {
        str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777)
        for p in [out, merged, *out.rglob("*"), *merged.rglob("*"), *(tmp_path / "cache").rglob("*")]
        if not p.is_symlink() and p.stat().st_mode & 0o777 != (0o777 if p.is_dir() else 0o666) & ~umask
    }
    assert wrong == {}
