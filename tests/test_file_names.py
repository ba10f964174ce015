"""Every run-directory file name is defined once, in medpt.rundir (and a model folder's in medpt.model.files), and
the names medpt shares with transformers and PEFT are the ones those libraries write and read."""

from __future__ import annotations

import ast
from pathlib import Path

import medpt.rundir as rundir
from medpt.model import files, loading

SRC = Path(rundir.__file__).parent


def _names(module) -> dict[str, str]:
    """The module's upper-case string constants that are file names (they have a suffix)."""
    found = {}
    for key, value in vars(module).items():
        if key.isupper() and isinstance(value, str) and "." in value.strip("."):
            found[key] = value
    return found


def test_the_names_medpt_shares_with_the_libraries_are_theirs():
    from peft.utils import CONFIG_NAME as PEFT_CONFIG
    from peft.utils import SAFETENSORS_WEIGHTS_NAME as PEFT_WEIGHTS
    from transformers import trainer
    from transformers.utils import CONFIG_NAME, GENERATION_CONFIG_NAME, SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

    assert (rundir.ADAPTER_CONFIG, rundir.ADAPTER_WEIGHTS) == (PEFT_CONFIG, PEFT_WEIGHTS)
    assert (files.CONFIG, files.SAFE_WEIGHTS, files.SAFE_INDEX) == (
        CONFIG_NAME,
        SAFE_WEIGHTS_NAME,
        SAFE_WEIGHTS_INDEX_NAME,
    )
    assert files.GENERATION_CONFIG == GENERATION_CONFIG_NAME
    assert rundir.TRAINER_STATE == trainer.TRAINER_STATE_NAME
    assert rundir.TRAINER_ARGS_BIN == trainer.TRAINING_ARGS_NAME
    assert (rundir.OPTIMIZER_STATE, rundir.SCHEDULER_STATE) == (trainer.OPTIMIZER_NAME, trainer.SCHEDULER_NAME)


def _defined() -> dict[str, str]:
    defined = {**_names(rundir), **_names(files), "TOKENIZER_CONFIG": loading.TOKENIZER_CONFIG}
    assert len(defined) > 30, sorted(defined)  # the scan has something to look for
    return defined


def _spelled(paths: list[Path], root: Path) -> list[str]:
    """Each string literal in `paths` that is one of the defined file names, as `file:line: 'name'`."""
    names = set(_defined().values())
    found = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in names:
                found.append(f"{path.relative_to(root)}:{node.lineno}: {node.value!r}")
    return found


def test_no_module_spells_a_run_directory_file_name_itself():
    """A file name written as a string literal anywhere but where it is defined can drift from it: every other
    module uses the constant (f-strings included: their literal parts are constants too)."""
    owners = {Path(rundir.__file__), Path(files.__file__), Path(loading.__file__)}
    assert _spelled([p for p in sorted(SRC.rglob("*.py")) if p not in owners], SRC) == []


def test_the_scan_finds_a_planted_literal(tmp_path):
    """The check above can fail: a module that spells a name, plainly or inside an f-string, is found."""
    planted = tmp_path / "planted.py"
    planted.write_text(f'a = run / "{rundir.EVAL_RESULTS}"\nb = "x"\nc = f"{{run}}" / "{files.CONFIG}"\n')
    assert _spelled([planted], tmp_path) == [
        f"planted.py:1: {rundir.EVAL_RESULTS!r}",
        f"planted.py:3: {files.CONFIG!r}",
    ]
