"""The run directory: what medpt writes where, and the rule that medpt removes or replaces only what it wrote.

Every folder medpt writes into holds a manifest, `.medpt-manifest.json`, naming each top-level entry medpt created
there and the command that created it. A name is recorded right before the entry is written, by the writer
(medpt.atomic tells `_record_write` about every write into a folder this process claimed), never earlier: a crash
never leaves a medpt file the manifest does not know, nor a name in it for a file medpt never wrote (which a later
--overwrite would delete although it is the user's). A temporary file of medpt's writer is medpt's too, whether its
writer runs or was killed (medpt.atomic.is_leftover): it never makes a folder look foreign. From that:

1. `--overwrite_output_dir` / `--overwrite` remove exactly the manifest's entries; anything else in the folder (your
   notes, your data) stays.
2. A folder that holds entries medpt did not write is refused, with their names, unless it is a medpt run; and even
   in a run, an entry a command is about to write that medpt did not write is refused.
3. An entry written by one command is never replaced by another (an `eval` never writes over a training result).
4. Before anything is written, an output that is, holds or sits inside an input (data, a model, an adapter, a
   tokenizer, a cache) is refused, naming both paths. The one exception is the intended layout of a run: `eval`,
   `compare`, `verify` and `report` write *inside* the adapter's run directory (RUN/eval, RUN/compare, ...).

5. One process writes a folder at a time (`holding`): a second `medpt train` into a run being trained is refused.

The file names of a run are defined here, once; other modules import them.
"""

from __future__ import annotations

import contextlib
import datetime
import fnmatch
import glob
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from medpt import __version__, atomic
from medpt.atomic import atomic_write_text, is_leftover
from medpt.errors import MedptError
from medpt.strictjson import dumps

MANIFEST = ".medpt-manifest.json"

# --- what a run holds ---------------------------------------------------------------------------------------------
CONFIG_FILE = "medpt_config.yaml"  # the fully resolved configuration
DATA_REPORT = "data_report.json"  # where every record and token went
REJECTED = "rejected.jsonl"  # records skipped with --on_bad_record skip, with their reasons
CONTAMINATION = "contamination.jsonl"  # benchmark items found in the training documents (--check_contamination)
NEAR_DUPLICATES = "near_duplicates.jsonl"  # documents dropped by --dedup near, each with the one it resembles
METRICS = "metrics.jsonl"  # one line per log step
BASE_RECORD = "base_model.json"  # fingerprint of the base weights the adapter was trained on
VERIFY = "verify.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
LOSS_CURVE = "loss_curve.png"
TRAINING_ARGS = "training_args.json"
EVAL_SETS_DIR = "eval_sets"  # data reports of the named --eval_sets
EVAL_DIR = "eval"  # `medpt eval` results
GENERATED = "generated_answers"  # inside EVAL_DIR, .jsonl and .md: `eval --generate_eval` answers and their scores
MCQ_DIR = "mcq"  # inside EVAL_DIR: NAME.predictions.jsonl per benchmark, kept when another benchmark is evaluated
COMPARE_DIR = "compare"
ANSWERS = "answers.jsonl"
REPORT_HTML, REPORT_MD = "report.html", "report.md"
REPORT_CURVE = "report_loss_curve.png"
FORGETTING_CHART = "report_forgetting.png"  # medical vs general perplexity during training (named eval sets)
REPORT_FRONTIER = "report_frontier.png"  # medical vs general Δ perplexity per adapter scale (eval --adapter_scale)
REPORT_DELTAS = "report_mcq_ci.png"  # each benchmark's accuracies and Δ accuracy with their 95% intervals
EXPORT_INFO = "export.json"  # what `medpt export` did with each feature of the adapter, and the commands
STAGING = ".staging"  # checkpoints and final files are written here, then renamed into place
CHECKPOINT_PREFIX = "checkpoint-"
TINY_INFO = "medpt_tiny.json"
DEMO_QUESTIONS = "questions.jsonl"  # `medpt demo`: the questions it asks both models
MERGE_INFO = "medpt_merge.json"
# `medpt tune`: the study (its default SQLite storage and SQLite's side files), one run per trial, the summary.
STUDY_DB = "study.db"
TUNE_INFO = "tune.json"  # which study this folder holds
SEARCH_SPACE = "search_space.yaml"  # the search space as resolved
TRIALS_DIR = "trials"  # trials/<number>: a `medpt train` run each
BEST_CONFIG = "best.yaml"  # runs as `medpt train DIR/best.yaml`
TRIALS_CSV, TRIALS_MD = "trials.csv", "trials.md"
TUNE_HISTORY, TUNE_IMPORTANCE = "tune_history.png", "tune_importance.png"
# transformers' Trainer: its results, its state (in a run and in each checkpoint) and its pickled arguments.
TRAIN_RESULTS, EVAL_RESULTS, ALL_RESULTS = "train_results.json", "eval_results.json", "all_results.json"
TRAINER_STATE, TRAINER_ARGS_BIN = "trainer_state.json", "training_args.bin"
OPTIMIZER_STATE, SCHEDULER_STATE = "optimizer.pt", "scheduler.pt"  # in each checkpoint: what Trainer resumes from
EVAL_MD = "eval.md"  # inside EVAL_DIR, beside EVAL_RESULTS
COMPARE_JSONL, COMPARE_MD, COMPARE_HTML = "compare.jsonl", "compare.md", "compare.html"  # inside COMPARE_DIR

# A run's description, written at its start (medpt.train.recipe.describe_run) and into each of its checkpoints, so a
# run stopped at any point, and each checkpoint on its own, says what it is (litgpt and nanoGPT save it the same way).
RUN_DESCRIPTION = (CONFIG_FILE, BASE_RECORD, TRAINING_ARGS)

# What Trainer writes at the top of a run besides medpt's files (what each command writes is its record's `writes`,
# medpt.args.commands).
TRAINER_FILES = (TRAIN_RESULTS, EVAL_RESULTS, ALL_RESULTS, TRAINER_STATE, TRAINER_ARGS_BIN, "runs", "README.md")


class Writer(Protocol):
    """What the rules below need of a command (its record in medpt.args.commands): its name (recorded in the
    manifest), the top-level names it writes, the names it creates later (checkpoint-*), and whose files it may
    replace besides its own."""

    name: str
    writes: tuple[str, ...]
    patterns: tuple[str, ...]
    replaces: tuple[str, ...]


# --- the manifest -------------------------------------------------------------------------------------------------
@dataclass
class RunDir:
    """A folder medpt writes into, with its manifest (empty when the folder is new or not medpt's)."""

    path: Path
    entries: dict[str, str] = field(default_factory=dict)  # name -> command that wrote it
    kind: str | None = None  # the command that first claimed the folder
    legacy: bool = False  # a run written before manifests existed (it has medpt_config.yaml)

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        path = Path(path)
        manifest = path / MANIFEST
        if not manifest.is_file():
            return cls(path, legacy=(path / CONFIG_FILE).is_file())
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
            return cls(path, dict(data["entries"]), data.get("kind"))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise MedptError(
                f"{manifest} is unreadable ({e}); medpt cannot tell which files there it wrote. Move the folder's "
                "contents you want to keep elsewhere and delete it, or use another output folder"
            ) from None

    @property
    def is_medpt(self) -> bool:
        return self.kind is not None or bool(self.entries) or self.legacy

    def present(self) -> list[str]:
        if not self.path.is_dir():
            return []
        # The manifest is the folder's bookkeeping; the writer's temporary names (`..medpt-manifest.json.pid...tmp`,
        # a killed run's `.adapter_model.safetensors.pid...tmp`) are medpt's work in progress or leftovers.
        return sorted(p.name for p in self.path.iterdir() if p.name != MANIFEST and not is_leftover(p.name))

    def foreign(self) -> list[str]:
        """Entries of the folder that medpt did not write."""
        return [name for name in self.present() if name not in self.entries]

    def owned(self) -> list[str]:
        """Entries medpt wrote that are still there."""
        return [name for name in self.present() if name in self.entries]

    def record(self, names: Iterable[str], command: str) -> None:
        """Add names to the manifest, right before they are written."""
        new = {n: command for n in names if self.entries.get(n) != command}
        if not new and (self.path / MANIFEST).is_file():
            return
        self.entries.update(new)
        self.kind = self.kind or command
        self._save()

    def forget(self, names: Iterable[str]) -> None:
        for name in names:
            self.entries.pop(name, None)
        self._save()

    def remove_owned(self) -> list[str]:
        """Delete every entry medpt wrote here (and nothing else); returns what was removed."""
        removed = []
        for name in self.owned():
            target = self.path / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink()
            removed.append(name)
        self.entries, self.kind = {}, None
        self._save()
        return removed

    def _save(self) -> None:
        data = {
            "about": "entries medpt wrote in this folder; `--overwrite*` removes exactly these, nothing else",
            "medpt_version": __version__,
            "updated": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "kind": self.kind,
            "entries": dict(sorted(self.entries.items())),
        }
        atomic_write_text(self.path / MANIFEST, dumps(data, indent=2) + "\n")


# --- inputs, and outputs that must not touch them -----------------------------------------------------------------
@dataclass
class Inputs:
    """What a command reads, by role, so that no output is, holds or sits inside one of them."""

    paths: list[tuple[str, Path]] = field(default_factory=list)  # (what it is, path), files or folders
    patterns: list[tuple[str, str]] = field(default_factory=list)  # (what, glob) for input globs
    adapter: Path | None = None  # outputs may sit inside the adapter's run (RUN/eval), never be or hold it

    def add(self, what: str, path: str | os.PathLike | None, even_if_missing: bool = False) -> None:
        """A local file or folder (hub ids and missing paths are skipped: they hold nothing to protect, except a
        folder medpt is about to create, such as a cache: `even_if_missing`)."""
        if path is None:
            return
        text = str(path)
        if any(ch in text for ch in "*?["):
            self.patterns.append((what, os.path.abspath(os.path.expanduser(text))))
            # A recursive glob reads any depth under its fixed part: that folder is an input as a whole.
            if "**" in text:
                self.paths.append((what, resolved(Path(fixed_part(text)))))
            for match in glob.glob(text, recursive=True):
                self.paths.append((what, resolved(Path(match))))
            return
        expanded = Path(os.path.expanduser(text))
        if expanded.exists() or even_if_missing:
            self.paths.append((what, resolved(expanded)))

    def add_all(self, what: str, paths: Iterable[str] | None) -> None:
        for p in paths or []:
            self.add(what, p)


def resolved(path: Path) -> Path:
    """The absolute path with symbolic links followed, or one line when they form a loop."""
    try:
        return path.resolve()
    except (RuntimeError, OSError):  # a link loop: RuntimeError up to Python 3.12, OSError (ELOOP) after
        raise MedptError(f"{path}: symbolic links that lead back to themselves (a loop); remove or fix them") from None


def fixed_part(pattern: str) -> str:
    """The folder a glob starts from: its path up to the first part with a wildcard."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if any(ch in part for ch in "*?["):
            break
        fixed.append(part)
    return str(Path(*fixed)) if fixed else "."


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_output(flag: str, output: str | os.PathLike, inputs: Inputs, is_file: bool = False) -> Path:
    """Refuse an output that is, holds or sits inside an input; returns the output as an absolute path."""
    out = resolved(Path(os.path.expanduser(str(output))))
    for what, path in inputs.paths:
        if _inside(out, path) or _inside(path, out):
            relation = "is" if out == path else ("is inside" if _inside(out, path) else "holds")
            raise MedptError(
                f"--{flag} {output} {relation} the {what} {path}: medpt never writes over its inputs. Choose an "
                f"--{flag} outside it"
            )
    if inputs.adapter is not None:
        adapter = resolved(inputs.adapter)
        if out == adapter or _inside(adapter, out):
            relation = "is" if out == adapter else "holds"
            raise MedptError(
                f"--{flag} {output} {relation} the adapter {adapter}: write somewhere else (by default medpt writes "
                "inside the run, e.g. RUN/eval)"
            )
    if is_file:
        for what, pattern in inputs.patterns:
            if fnmatch.fnmatch(str(out), pattern):
                raise MedptError(
                    f"--{flag} {output} matches the {what} pattern {pattern}: a later run would read it as data. "
                    "Choose another name or folder"
                )
    return out


def hub_cache(cache_dir: str | None) -> str:
    """Where huggingface_hub keeps models and datasets (read from the environment, as it does, without importing it)."""
    if cache_dir:
        return cache_dir
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
    )
    return os.path.join(home, "hub")


# --- claiming an output ---------------------------------------------------------------------------------------------
# Folders (and single files) this process claimed, with the command writing them: medpt.atomic reports every write,
# and `_record_write` records its name in the manifest of the claimed folder it lands in, right before it is written.
_claims: dict[Path, tuple[Writer, bool]] = {}  # resolved path -> (command, is a single file)


def forget_claims() -> None:
    """Start a command with no claims (the CLI calls this: one process may run several commands, e.g. the tests)."""
    _claims.clear()


def _record_write(path: Path) -> None:
    if not _claims:
        return
    path = path.parent.resolve() / path.name
    claim = _claims.get(path)
    if claim is not None and claim[1]:
        RunDir.open(path.parent).record([path.name], claim[0].name)
        return
    for folder in path.parents:
        claim = _claims.get(folder)
        if claim is not None and not claim[1]:
            name = path.relative_to(folder).parts[0]
            if name != MANIFEST and not is_leftover(name):
                RunDir.open(folder).record([name], claim[0].name)
            return


atomic.observe_writes(_record_write)


def claim_dir(
    path: str | os.PathLike,
    command: Writer,
    *,
    flag: str = "output_dir",
    inputs: Inputs | None = None,
    overwrite: bool = False,
    writes: Iterable[str] | None = None,
) -> RunDir:
    """Make `path` this command's output folder, or refuse before anything is written.

    A name the command writes (`command.writes`) or creates later (`command.patterns`, checkpoint-*) that exists and
    that medpt did not write is refused. `writes` replaces the record's names for a sub-folder whose names depend on
    the data (RUN/eval/mcq/NAME.predictions.jsonl). Nothing is recorded here: each name is, when written.
    With `overwrite`, medpt's own earlier entries are removed first."""
    out = check_output(flag, path, inputs or Inputs())
    if out.exists() and not out.is_dir():
        raise MedptError(f"--{flag} {path} is a file, not a folder: pass a folder path")
    writes, patterns = command.writes if writes is None else tuple(writes), command.patterns
    run = RunDir.open(out)
    foreign = run.foreign()
    if foreign and not run.is_medpt:
        raise MedptError(
            f"--{flag} {path} holds files medpt did not write ({_names(foreign)}); medpt writes only into an empty "
            "folder or one of its own runs. Choose a new --" + flag
        )
    clashes = [n for n in foreign if n in writes or any(fnmatch.fnmatch(n, p) for p in patterns)]
    if clashes:
        raise MedptError(
            f"--{flag} {path}: {_names(clashes)} would be overwritten but medpt did not write "
            f"{'it' if len(clashes) == 1 else 'them'}; move {'it' if len(clashes) == 1 else 'them'} away or choose "
            "another --" + flag
        )
    if overwrite and run.owned():
        removed = run.remove_owned()
        print(f"--overwrite: removed medpt's earlier output in {path}: {_names(removed)}")
    allowed = (None, command.name, *command.replaces)
    foreign_to_command = [n for n in writes if run.entries.get(n) not in allowed and (out / n).exists()]
    if foreign_to_command:
        owner = run.entries[foreign_to_command[0]]
        raise MedptError(
            f"--{flag} {path}: {_names(foreign_to_command)} belong{'s' if len(foreign_to_command) == 1 else ''} to "
            f"`medpt {owner}`, which `medpt {command.name}` does not replace; pass --overwrite_output_dir to replace "
            "that output as a whole, or choose another --" + flag
        )
    _create(out, command.name, flag)
    for folder in (out, out.parent):  # the parent too: a killed run's temporaries of RUN/eval's manifest entry
        atomic.remove_stale_leftovers(folder)
    _claims[out] = (command, False)
    return run


@contextlib.contextmanager
def holding(
    path: str | os.PathLike, command: Writer, *, flag: str = "output_dir", inputs: Inputs | None = None
) -> Iterator[Path]:
    """Hold the output folder (created if needed) while the command writes it; refuse in one line while another
    process holds it: two `medpt train` into one folder would log every step twice and save the same files at once.
    Take it before claim_dir, whose --overwrite removes files. The lock dies with its process (atomic.PathLock)."""
    out = check_output(flag, path, inputs or Inputs())
    _create(out, command.name, flag)
    lock = atomic.PathLock(out)
    if not lock.acquire(wait=False):
        raise MedptError(
            f"--{flag} {path} is being written by another medpt process; wait for it to finish (or stop it), or "
            f"choose another --{flag}"
        )
    try:
        yield out
    finally:
        lock.release()


def _create(out: Path, command: str, flag: str) -> None:
    if out.exists() and not out.is_dir():
        raise MedptError(f"--{flag} {out} is a file, not a folder: pass a folder path")
    if not out.is_dir():
        atomic.before_write(out)  # a folder made inside a claimed one is recorded there, like a file
        _register_in_parent(out, command)
    _make_dir(out, flag)


def check_replaceable(out: Path, command: Writer, overwrite: bool, what: str) -> None:
    """For the commands that write their output folder as a whole, in one rename (merge, export, init-tiny): the
    folder must be new or empty, or, with --overwrite, hold that command's earlier output and nothing else."""
    existing = RunDir.open(out)
    if existing.present() and not (overwrite and existing.kind == command.name and not existing.foreign()):
        raise MedptError(
            f"{out} exists and is not empty; pass --overwrite to replace {what} medpt wrote there (the folder must "
            "hold nothing else), or choose another --output_dir"
        )


def claim_file(path: str | os.PathLike, command: Writer, *, flag: str, inputs: Inputs | None = None) -> Path:
    """A single output file: replaced only if medpt wrote it (per its folder's manifest), and never one of the files
    a command of this process writes in the folder it claimed (`--dump_text RUN/data_report.json`)."""
    out = check_output(flag, path, inputs or Inputs(), is_file=True)
    if out.is_dir():
        raise MedptError(f"--{flag} {path} is a folder; pass a file path")
    parent = RunDir.open(out.parent)
    owner = parent.entries.get(out.name)
    if out.exists() and owner is None:
        raise MedptError(
            f"--{flag} {path} exists and medpt did not write it; medpt does not replace your files. Choose another "
            "path, or move it away"
        )
    if owner not in (None, command.name):
        raise MedptError(f"--{flag} {path} belongs to `medpt {owner}`; `medpt {command.name}` does not replace it")
    folder = _claims.get(out.parent)
    if folder is not None and not folder[1] and _written_by(folder[0], out.name):
        raise MedptError(
            f"--{flag} {path}: `medpt {folder[0].name}` writes its own {out.name} in {out.parent}; choose another name"
        )
    _make_dir(out.parent, flag)
    atomic.remove_stale_leftovers(out.parent)
    _claims[out] = (command, True)
    return out


def _written_by(command: Writer, name: str) -> bool:
    return name in command.writes or any(fnmatch.fnmatch(name, p) for p in command.patterns)


def _register_in_parent(out: Path, command: str) -> None:
    """A folder made inside a medpt folder (RUN/eval) is recorded in that folder's manifest too."""
    parent = RunDir.open(out.parent)
    if parent.is_medpt and out.name not in parent.entries:
        parent.record([out.name], command)


def _make_dir(path: Path, flag: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise MedptError(f"--{flag} {path}: a file stands where a folder is needed") from None
    except OSError as e:
        raise MedptError(f"--{flag} {path}: cannot create the folder: {e.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise MedptError(f"--{flag} {path}: the folder is not writable")


def _names(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


# --- reading a run ----------------------------------------------------------------------------------------------
def is_lora_run(path: str | os.PathLike) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def run_config_path(path: str | os.PathLike) -> Path:
    return Path(path) / CONFIG_FILE


def checkpoints(path: Path) -> list[Path]:
    return sorted(p for p in path.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir())


def checkpoint_step(path: str | Path) -> int:
    """N of checkpoint-N (-1 for any other name)."""
    try:
        return int(Path(path).name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


@dataclass(frozen=True)
class StoppedRun:
    """A train run stopped before it saved its final adapter (a kill, a crash, Ctrl-C, a full disk), and its latest
    complete checkpoint, which eval and report use in its place (None: stopped before its first)."""

    run: Path
    checkpoint: Path | None

    @property
    def step(self) -> int:
        return checkpoint_step(self.checkpoint) if self.checkpoint is not None else 0

    def line(self, doing: str) -> str:
        """What the command tells the user, once: `doing` is e.g. "evaluating"."""
        if self.checkpoint is None:
            return f"{self.run} was stopped before its first checkpoint (no final adapter)"
        return f"{self.run} was stopped at step {self.step} (no final adapter): {doing} its latest checkpoint, " + str(
            self.checkpoint
        )


def stopped_run(run: Path) -> StoppedRun | None:
    """The run as a StoppedRun when `medpt train` started it (TRAINING_ARGS) and it has neither its final weights
    nor ALL_RESULTS (the last file a finished run writes); None for a finished run or any other folder."""
    if not (run / TRAINING_ARGS).is_file() or (run / ALL_RESULTS).is_file() or _has_weights(run):
        return None
    complete = [p for p in checkpoints(run) if (p / TRAINER_STATE).is_file() and _has_weights(p)]
    return StoppedRun(run, max(complete, key=checkpoint_step) if complete else None)


def _has_weights(folder: Path) -> bool:
    """An adapter (ADAPTER_CONFIG beside its weights) or a fully fine-tuned model's safetensors."""
    return (folder / ADAPTER_CONFIG).is_file() or any(folder.glob("*.safetensors"))


def describe(path: Path) -> dict[str, Any]:
    """What the manifest says, for reports and error messages."""
    run = RunDir.open(path)
    return {"kind": run.kind, "entries": run.entries, "foreign": run.foreign()}
