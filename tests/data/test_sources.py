"""One file reached twice (two sources, overlapping globs and folders, a symlink, a hard link, a copy, train and
validation) would be read twice and trained on twice, or held out and trained on at once: `prepare` and `train`
refuse it in one line naming both inputs, before anything is read."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from medpt.cli import main
from tests.conftest import conv, write_jsonl


@dataclass
class Twice:
    name: str
    flags: Callable[[Path], list[str]]  # the data folder -> the data flags
    needle: str  # the one line names both inputs and what would happen


CASES = [
    Twice("one file in two named sources",
          lambda d: ["--train_file_dir", f"medical={d / 'a.jsonl'}", f"general={d / 'a.jsonl'}"],
          "--train_file_dir medical={d}/a.jsonl and --train_file_dir general={d}/a.jsonl are the same file: its "
          "documents would be trained on twice; give it once"),
    Twice("one file given twice", lambda d: ["--train_file_dir", str(d / "a.jsonl"), str(d / "a.jsonl")],
          "--train_file_dir {d}/a.jsonl and --train_file_dir {d}/a.jsonl are the same file"),
    Twice("a folder and a file inside it", lambda d: ["--train_file_dir", str(d), str(d / "a.jsonl")],
          "--train_file_dir {d}/a.jsonl and --train_file_dir {d}/a.jsonl are the same file"),
    Twice("a glob and a folder that overlap",
          lambda d: ["--train_file_dir", f"medical={d}/*.jsonl", f"general={d}"],
          "--train_file_dir medical={d}/a.jsonl and --train_file_dir general={d}/a.jsonl are the same file"),
    Twice("another spelling of the path",
          lambda d: ["--train_file_dir", f"medical={d / 'a.jsonl'}", f"general={d}/../data/./a.jsonl"],
          "and --train_file_dir general={d}/../data/a.jsonl are the same file"),
    Twice("a symlink", lambda d: ["--train_file_dir", f"medical={d / 'a.jsonl'}", f"general={d / 'link.jsonl'}"],
          "--train_file_dir medical={d}/a.jsonl and --train_file_dir general={d}/link.jsonl are the same file"),
    Twice("a hard link", lambda d: ["--train_file_dir", f"medical={d / 'a.jsonl'}", f"general={d / 'hard.jsonl'}"],
          "--train_file_dir medical={d}/a.jsonl and --train_file_dir general={d}/hard.jsonl are the same file"),
    Twice("a copy", lambda d: ["--train_file_dir", f"medical={d / 'a.jsonl'}", f"general={d / 'copy.jsonl'}"],
          "--train_file_dir medical={d}/a.jsonl and --train_file_dir general={d}/copy.jsonl hold the same bytes: its "
          "documents would be trained on twice"),
    Twice("training and validation", lambda d: ["--train_file_dir", str(d / "a.jsonl"), "--validation_file_dir",
                                                str(d / "link.jsonl")],
          "--train_file_dir {d}/a.jsonl and --validation_file_dir {d}/link.jsonl are the same file: its documents "
          "would be held out and trained on at once"),
    Twice("two validation files", lambda d: ["--train_file_dir", str(d.parent / "b.jsonl"), "--validation_file_dir",
                                             str(d / "a.jsonl"), str(d / "copy.jsonl")],
          "--validation_file_dir {d}/a.jsonl and --validation_file_dir {d}/copy.jsonl hold the same bytes: its "
          "documents would be counted twice"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_one_file_reached_twice_is_refused_in_one_line(tokenizer_dir, tmp_path, capsys, case):
    from tests.test_safety import one_line_error

    d = tmp_path / "data"
    a = write_jsonl(d / "a.jsonl", [conv(f"问题{i}是什么？", f"回答{i}。" * 5) for i in range(30)])
    write_jsonl(tmp_path / "b.jsonl", [conv(f"别的问题{i}？", f"别的回答{i}。" * 5) for i in range(30)])
    flags = case.flags(d)
    given = " ".join(flags)
    if "link.jsonl" in given:  # the links and the copy exist only where a case names them (a folder reads all)
        (d / "link.jsonl").symlink_to(a)
    if "hard.jsonl" in given:
        os.link(a, d / "hard.jsonl")
    if "copy.jsonl" in given:
        shutil.copyfile(a, d / "copy.jsonl")
    out = tmp_path / "out"
    argv = ["prepare", "--model_name_or_path", str(tokenizer_dir), *flags, "--output_dir", str(out)]
    assert main(argv) == 2
    one_line_error(capsys, case.needle.format(d=d))
    assert not (out / "data_report.json").exists()  # refused before anything was read
    assert not list((tmp_path / "medpt-cache").glob("*/data_report.json"))


def test_distinct_files_and_empty_ones_are_read(tokenizer_dir, tmp_path, capsys):
    """Two empty files are alike without being one file: not refused (each is read, and skipped as empty)."""
    a = write_jsonl(tmp_path / "a.jsonl", [conv(f"问题{i}是什么？", f"回答{i}。" * 5) for i in range(30)])
    b = write_jsonl(tmp_path / "b.jsonl", [conv(f"别的问题{i}？", f"别的回答{i}。" * 5) for i in range(30)])
    (tmp_path / "e1.jsonl").write_text("")
    (tmp_path / "e2.jsonl").write_text("")
    argv = ["prepare", "--model_name_or_path", str(tokenizer_dir), "--train_file_dir", str(a), str(b),
            str(tmp_path / "e1.jsonl"), str(tmp_path / "e2.jsonl"), "--on_bad_record", "skip",
            "--output_dir", str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    assert "records read: 60" in capsys.readouterr().out
