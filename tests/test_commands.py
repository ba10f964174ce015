"""The command record (medpt.args.commands.COMMANDS) is what the CLI dispatches, what --help lists, which flags each
command accepts, and which files it may write in a run: these tests keep the four in sync, from the outside."""

from __future__ import annotations

import importlib
import re
from dataclasses import fields
from pathlib import Path

import pytest

from medpt import rundir
from medpt.args import SECTIONS
from medpt.args.commands import COMMANDS
from medpt.args.resolve import load_config
from medpt.cli import main
from medpt.errors import MedptError

SRC = Path(__file__).parents[1] / "src" / "medpt"

# The public command line: removing or renaming a command breaks users' scripts, so it takes changing this list too.
PUBLIC = ("prepare", "train", "plan", "tune", "eval", "verify", "compare", "generate", "chat", "merge", "serve",
          "export", "report", "init-tiny", "download", "demo")  # fmt: skip
CONFIG_COMMANDS = [name for name, c in COMMANDS.items() if c.args is None]


def _flags_in_help(text: str) -> set[str]:
    return set(re.findall(r"^  --(\w+) ", text, re.M))


def _section_flags(name: str) -> set[str]:
    """The flags of the record's sections (those a field's `only` keeps for this command) and its extra flags."""
    command = COMMANDS[name]
    own = {f.name: f.metadata.get("only") for cls in SECTIONS.values() for f in fields(cls)}
    in_sections = {f.name for s in command.sections for f in fields(SECTIONS[s])}
    return {n for n in in_sections if own[n] is None or name in own[n]} | set(command.extra)


def test_the_record_holds_every_public_command_in_order():
    assert tuple(COMMANDS) == PUBLIC
    assert all(name == c.name for name, c in COMMANDS.items())


def test_medpt_help_lists_exactly_the_record(capsys):
    assert main(["--help"]) == 0
    listed = re.findall(r"^  (\S+) +(.+)$", capsys.readouterr().out, re.M)
    assert listed == [(c.name, c.summary) for c in COMMANDS.values()]


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_entry_point_exists(name):
    command = COMMANDS[name]
    for target in filter(None, (command.entry, command.dry_run)):
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), target


def test_every_command_module_of_the_package_is_an_entry_point():
    """A `command.py` is a command: one the record does not name would be unreachable."""
    entries = {c.entry.split(":")[0] for c in COMMANDS.values()}
    modules = {".".join(("medpt", *p.relative_to(SRC).with_suffix("").parts)) for p in SRC.rglob("command.py")}
    assert modules <= entries


@pytest.mark.parametrize("name", CONFIG_COMMANDS)
def test_help_lists_the_flags_of_the_record_sections(name, capsys):
    assert main([name, "--help"]) == 0
    listed = _flags_in_help(capsys.readouterr().out)
    trainer = COMMANDS[name].trainer
    expected = _section_flags(name) | (set(trainer) if isinstance(trainer, tuple) else set())
    if trainer is True:  # every TrainingArguments flag medpt does not own: the record's sections are a part
        assert expected <= listed and "learning_rate" in listed
    else:
        assert listed == expected


@pytest.mark.parametrize("name", [n for n, c in COMMANDS.items() if c.args is not None])
def test_a_small_command_takes_exactly_its_own_flags(name, capsys):
    assert main([name, "--help"]) == 0
    assert _flags_in_help(capsys.readouterr().out) == {f.name for f in fields(COMMANDS[name].args)}


@pytest.mark.parametrize("name", CONFIG_COMMANDS)
def test_a_flag_outside_the_record_sections_is_refused(name):
    """Every section flag that the record does not give the command is an error naming the command, not a no-op."""
    takes = _section_flags(name)
    refused = [f.name for cls in SECTIONS.values() for f in fields(cls) if f.name not in takes and f.type == "bool"]
    for flag in refused:
        with pytest.raises(MedptError, match=f"not an? {name} flag"):
            load_config([f"--{flag}", "true"], command=name)


def test_what_a_command_writes_is_named_by_rundir():
    names = {v for k, v in vars(rundir).items() if k.isupper() and isinstance(v, str)} | set(rundir.TRAINER_FILES)
    for command in COMMANDS.values():
        if command.name == "demo":  # the demo's own folders inside its --output_dir, not a run's files
            continue
        unnamed = [
            n for n in command.writes if n not in names and not n.startswith((rundir.STUDY_DB, rundir.GENERATED))
        ]
        assert unnamed == [], command.name
        assert all(p.startswith(rundir.CHECKPOINT_PREFIX) for p in command.patterns)
        assert set(command.replaces) <= set(COMMANDS)
