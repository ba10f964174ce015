"""Hand medpt awkward paths: `~` in every kind of path flag, data folders given as `.`, with `..`, inside a hidden
folder, holding symbolic links (to files, to folders, in a loop), hard links, hidden entries and medpt's own
folders (a data cache, an earlier run), and links that lead nowhere.

The rules (docs/crash-safety.md, "Paths"): `~` is expanded once, when a flag is read; a folder is walked following
links (each folder once) and skipping entries whose name starts with "." below it; a file reached twice is read once;
a folder medpt wrote (it holds .medpt-manifest.json) is never read as data; a broken or looping link is one line."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from medpt.cli import main
from tests.conftest import conv, write_jsonl
from tests.test_safety import one_line_error, snapshot

N = 12  # records per data file


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home folder of our own, and a working directory beside it (so a literal `~` folder would show up there)."""
    home = tmp_path / "home"
    (tmp_path / "work").mkdir()
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path / "work")
    return home


def data_file(path: Path, tag: str) -> Path:
    return write_jsonl(path, [conv(f"{tag}问题{i}", f"{tag}回答{i}") for i in range(N)])


def report(out: Path) -> dict:
    return json.loads((out / "data_report.json").read_text())


def prepare(model: Path, data: str, out: Path | str, *extra: str) -> int:
    return main(["prepare", "--model_name_or_path", str(model), "--train_file_dir", data, "--output_dir", str(out),
                 "--validation_split_percentage", "0", *extra])  # fmt: skip


# --- 1. `~` in every kind of path flag ---------------------------------------------------------------------------
def _output(h: Path) -> list[str]:
    return ["--train_file_dir", str(data_file(h / "d.jsonl", "a")), "--output_dir", "~/out"]


def _train_folder(h: Path) -> list[str]:
    data_file(h / "data" / "d.jsonl", "a")
    return ["--train_file_dir", "~/data", "--output_dir", str(h / "out")]


def _named_source(h: Path) -> list[str]:
    data_file(h / "data" / "d.jsonl", "a")
    return ["--train_file_dir", "med=~/data", "--output_dir", str(h / "out")]


def _validation(h: Path) -> list[str]:
    data_file(h / "v.jsonl", "v")
    return ["--train_file_dir", str(data_file(h / "t.jsonl", "t")), "--validation_file_dir", "~/v.jsonl",
            "--output_dir", str(h / "out")]  # fmt: skip


def _cache(h: Path) -> list[str]:
    return [*_output(h)[:2], "--output_dir", str(h / "out"), "--data_cache_dir", "~/cache"]


def _dump(h: Path) -> list[str]:
    return [*_output(h)[:2], "--output_dir", str(h / "out"), "--dump_text", "~/dump.jsonl"]


def _model(h: Path) -> list[str]:
    os.symlink(os.environ["MEDPT_TEST_MODEL"], h / "model")
    return ["--model_name_or_path", "~/model", *_output(h)]


TILDE = [
    ("--output_dir", _output, "out/data_report.json"),
    ("--train_file_dir", _train_folder, "out/data_report.json"),
    ("NAME=~/PATH", _named_source, "out/data_report.json"),
    ("--validation_file_dir", _validation, "out/data_report.json"),
    ("--data_cache_dir", _cache, "cache/.medpt-manifest.json"),
    ("--dump_text", _dump, "dump.jsonl"),
    ("--model_name_or_path", _model, "out/data_report.json"),
]


@pytest.mark.parametrize("build, expected", [c[1:] for c in TILDE], ids=[c[0] for c in TILDE])
def test_a_tilde_in_a_path_flag_is_the_home_folder(build, expected, home, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDPT_TEST_MODEL", str(tiny_model_dir))
    argv = ["prepare", "--model_name_or_path", str(tiny_model_dir), "--validation_split_percentage", "0", *build(home)]
    assert main(argv) == 0  # (a later --model_name_or_path wins)
    assert (home / expected).is_file()
    assert not (tmp_path / "work" / "~").exists()  # nothing written under a literal `~` folder


def test_a_tilde_in_a_yaml_file_and_in_a_small_command(home, tiny_model_dir, tmp_path):
    data_file(home / "data" / "d.jsonl", "a")
    (tmp_path / "c.yaml").write_text("train_file_dir: ~/data\noutput_dir: ~/out\n")
    assert main(["prepare", str(tmp_path / "c.yaml"), "--model_name_or_path", str(tiny_model_dir)]) == 0
    assert report(home / "out")["records"]["read"] == N
    assert main(["report", "~/out"]) == 0 and (home / "out" / "report.html").is_file()
    assert not (tmp_path / "work" / "~").exists()


# --- 2. how a data folder is read ---------------------------------------------------------------------------------
def _hidden_parent(h: Path) -> tuple[str, int]:
    data_file(h / ".cache" / "corpus" / "a.jsonl", "a")
    return str(h / ".cache" / "corpus"), N


def _dot_dot(h: Path) -> tuple[str, int]:
    data_file(h / "data" / "a.jsonl", "a")
    (h / "sub").mkdir()
    os.chdir(h / "sub")
    return "../data", N


def _dot(h: Path) -> tuple[str, int]:
    data_file(h / "data" / "a.jsonl", "a")
    os.chdir(h / "data")
    return ".", N


def _hidden_below(h: Path) -> tuple[str, int]:
    data_file(h / "data" / "a.jsonl", "a")
    data_file(h / "data" / ".git" / "x.jsonl", "git")
    data_file(h / "data" / ".backup.jsonl", "backup")
    return str(h / "data"), N


def _linked_folder(h: Path) -> tuple[str, int]:
    data_file(h / "data" / "a.jsonl", "a")
    data_file(h / "elsewhere" / "b.jsonl", "b")
    os.symlink(h / "elsewhere", h / "data" / "more")
    return str(h / "data"), 2 * N


def _linked_file(h: Path) -> tuple[str, int]:
    data_file(h / "data" / "a.jsonl", "a")
    os.symlink(h / "data" / "a.jsonl", h / "data" / "same.jsonl")
    return str(h / "data"), N


def _hard_link(h: Path) -> tuple[str, int]:
    data_file(h / "data" / "a.jsonl", "a")
    os.link(h / "data" / "a.jsonl", h / "data" / "same.jsonl")
    return str(h / "data"), N


def _loop_in_folder(h: Path) -> tuple[str, int]:
    data_file(h / "data" / "a.jsonl", "a")
    os.symlink(h / "data", h / "data" / "again")
    return str(h / "data"), N


def _loop_in_glob(h: Path) -> tuple[str, int]:
    data_file(h / "data" / "a.jsonl", "a")
    os.symlink(h / "data", h / "data" / "again")
    return str(h / "data" / "**" / "*.jsonl"), N


def _broken_link_below(h: Path) -> tuple[str, int]:
    data_file(h / "data" / "a.jsonl", "a")
    os.symlink(h / "nowhere.jsonl", h / "data" / "gone.jsonl")
    return str(h / "data"), N


def _earlier_run_below(h: Path) -> tuple[str, int]:
    """A project folder holding its data and, from an earlier run, medpt's outputs (rejected.jsonl among them)."""
    data_file(h / "proj" / "a.jsonl", "a")
    run = h / "proj" / "outputs" / "run"
    data_file(run / "rejected.jsonl", "rejected")
    (run / ".medpt-manifest.json").write_text(json.dumps({"kind": "train", "entries": {"rejected.jsonl": "train"}}))
    return str(h / "proj"), N


def _earlier_run_in_glob(h: Path) -> tuple[str, int]:
    _earlier_run_below(h)
    return str(h / "proj" / "**" / "*.jsonl"), N


FOLDERS: list[tuple[str, Callable[[Path], tuple[str, int]]]] = [
    ("a folder inside a hidden folder", _hidden_parent),
    ("a folder given with ..", _dot_dot),
    ("the working directory as .", _dot),
    ("hidden entries below the folder are skipped", _hidden_below),
    ("a linked folder inside is read", _linked_folder),
    ("a linked file beside its target is read once", _linked_file),
    ("a hard link beside its target is read once", _hard_link),
    ("a link loop inside the folder ends", _loop_in_folder),
    ("a link loop under a ** glob is read once", _loop_in_glob),
    ("a broken link inside is skipped", _broken_link_below),
    ("an earlier run inside the folder is not data", _earlier_run_below),
    ("an earlier run under a ** glob is not data", _earlier_run_in_glob),
]


@pytest.mark.parametrize("layout", [c[1] for c in FOLDERS], ids=[c[0] for c in FOLDERS])
def test_a_data_folder_is_read_by_the_rules(layout, home, tiny_model_dir, tmp_path):
    data, expected = layout(home)
    # --dedup none: a file read twice would show as twice the records, not be hidden by deduplication.
    assert prepare(tiny_model_dir, data, tmp_path / "out", "--dedup", "none") == 0
    assert report(tmp_path / "out")["records"]["read"] == expected


def test_a_cache_inside_the_data_folder_is_not_read_back_as_data(home, tiny_model_dir, tmp_path):
    data_file(home / "data" / "a.jsonl", "a")
    cache = str(home / "data" / "cache")
    assert prepare(tiny_model_dir, str(home / "data"), tmp_path / "one", "--data_cache_dir", cache) == 0
    assert any((home / "data" / "cache").iterdir())
    assert prepare(tiny_model_dir, str(home / "data"), tmp_path / "two", "--data_cache_dir", cache) == 0
    assert report(tmp_path / "two")["records"]["read"] == N  # the cache's data_report.json is not a record
    assert report(tmp_path / "two")["cache"]["reused"]  # same inputs: the first run's entry


# --- 3. paths that cannot be used: one line --------------------------------------------------------------------------
def _loop(h: Path) -> Path:
    os.symlink(h / "loop-b", h / "loop-a")
    os.symlink(h / "loop-a", h / "loop-b")
    return h / "loop-a"


BAD_PATHS: list[tuple[str, Callable[[Path], list[str]], str]] = [
    ("a link loop as the data", lambda h: ["--train_file_dir", str(_loop(h))], "leads nowhere"),
    ("a broken link as the data", lambda h: ["--train_file_dir", str(os.symlink(h / "gone", h / "l") or h / "l")],
     "leads nowhere"),
    ("a glob matching a link loop", lambda h: ["--train_file_dir", str(_loop(h).parent / "loop-*")], "a loop"),
    ("a link loop as the output", lambda h: ["--output_dir", str(_loop(h))], "a loop"),
    ("a folder medpt wrote as the data", lambda h: ["--train_file_dir", str(_run_folder(h))], "a folder medpt wrote"),
    ("a model name that is neither a folder nor a hub id", lambda h: ["--model_name_or_path", "my model!"],
     "not a hub id"),
]  # fmt: skip


def _run_folder(h: Path) -> Path:
    run = h / "run"
    data_file(run / "rejected.jsonl", "r")
    (run / ".medpt-manifest.json").write_text(json.dumps({"kind": "train", "entries": {"rejected.jsonl": "train"}}))
    return run


@pytest.mark.parametrize("build, needle", [c[1:] for c in BAD_PATHS], ids=[c[0] for c in BAD_PATHS])
def test_a_path_that_cannot_be_used_is_one_line(build, needle, home, tiny_model_dir, tmp_path, capsys):
    data = data_file(tmp_path / "d.jsonl", "a")
    argv = ["prepare", "--model_name_or_path", str(tiny_model_dir), "--train_file_dir", str(data),
            "--output_dir", str(tmp_path / "out")]  # fmt: skip
    extra = build(home)
    before = snapshot(home)
    assert main([*argv, *extra]) == 2
    one_line_error(capsys, needle)
    assert snapshot(home) == before
