"""String → typed value conversion and argv splitting, table-driven."""

from typing import Literal

import pytest

from medpt.args.flags import FlagSpec, convert, split_argv
from medpt.errors import MedptError


@pytest.mark.parametrize(
    "value, tp, expected",
    [
        ("3", int, 3),
        ("1e3", int, 1000),
        ("2e-4", float, 2e-4),
        ("True", bool, True),
        ("false", bool, False),
        ("none", int | None, None),
        ("7", int | None, 7),
        ("a", list[str], ["a"]),
        (["a", "b"], list[str], ["a", "b"]),
        ('{"x": 1}', dict | str | None, {"x": 1}),
        ("steps", str | None, "steps"),
        ("concat", Literal["concat", "none"], "concat"),
        (["tensorboard"], None | str | list[str], ["tensorboard"]),
        ("all", str | bool, "all"),
        ("true", str | bool, True),
    ],
)
def test_convert(value, tp, expected):
    assert convert(value, tp, "flag") == expected


@pytest.mark.parametrize(
    "value, tp, message",
    [
        ("abc", int, "--flag takes an integer"),
        ("1.5", int, "--flag takes an integer"),
        ("x", float, "--flag takes a number"),
        ("maybe", bool, "--flag takes true or false"),
        ("conat", Literal["concat", "none"], "did you mean 'concat'"),
        ("{bad", dict | None, "--flag takes a JSON object"),
    ],
)
def test_convert_errors_name_the_flag(value, tp, message):
    with pytest.raises(MedptError, match=message):
        convert(value, tp, "flag")


SPECS = {
    "do_train": FlagSpec("do_train", "t", bool, False, ""),
    "lr": FlagSpec("lr", "t", float, 1.0, ""),
    "files": FlagSpec("files", "t", list[str] | None, None, ""),
    "name": FlagSpec("name", "t", str, "", ""),
}


def _lookup(name):
    if name not in SPECS:
        raise MedptError(f"unknown flag --{name}")
    return SPECS[name]


def test_split_argv_handles_bare_bools_lists_equals_and_negative_numbers():
    configs, pairs = split_argv(
        ["a.yaml", "b.yml", "--do_train", "--lr", "-1", "--files", "x", "y", "--name=z", "--do_train", "False"],
        _lookup,
    )
    assert configs == ["a.yaml", "b.yml"]
    assert pairs == [("do_train", True), ("lr", "-1"), ("files", ["x", "y"]), ("name", "z"), ("do_train", "False")]


def test_split_argv_rejects_stray_values_and_missing_values():
    with pytest.raises(MedptError, match="unexpected argument 'extra'"):
        split_argv(["--name", "a", "extra"], _lookup)
    with pytest.raises(MedptError, match="--lr needs a value"):
        split_argv(["--lr"], _lookup)


def test_a_bool_that_also_takes_words_reads_the_word():
    """`--dedup near` (Literal["none", "exact", "near"] | bool): the word is the value; a bare flag is still true."""
    from medpt.args.resolve import load_config

    config = load_config(["--train_file_dir", "x.jsonl", "--dedup", "near", "--model_name_or_path", "m"], "prepare")
    assert config.data.dedup == "near"
    config = load_config(["--train_file_dir", "x.jsonl", "--dedup", "--model_name_or_path", "m"], "prepare")
    assert config.data.dedup == "exact"
    config = load_config(["--train_file_dir", "x.jsonl", "--dedup", "none"], "prepare")
    assert config.data.dedup == "none"
