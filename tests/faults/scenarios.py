"""The commands the fault suite breaks, each as a scenario: its argv inside a case folder, what the folder holds
before it runs, and the result a rerun must reproduce exactly (bytes where the bytes are the result)."""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from medpt.atomic import read_log
from medpt.rundir import BASE_RECORD, CONFIG_FILE, MANIFEST, RUN_DESCRIPTION, TRAINING_ARGS, RunDir
from medpt.samples import SAMPLE_GENERAL, SAMPLE_MCQ, SAMPLE_QA
from tests.faults.harness import file_bytes, json_file, without_timing

# Files whose bytes hold the case's path or the time (compared through their JSON, or not at all): the pickled
# TrainingArguments (output_dir inside), the trainer state (timings in its log history), the manifest (its time).
VOLATILE = ("training_args.bin", "trainer_state.json", MANIFEST)
# A run's files compared through their JSON or text (timings, the case's path), not their bytes.
RESULTS = ("metrics.jsonl", "loss_curve.png", "train_results.json", "all_results.json", "data_report.json",
           "eval_results.json", "medpt_config.yaml", "training_args.json")  # fmt: skip


@dataclass
class Scenario:
    name: str
    argv: Callable[[Path], list]  # case folder -> argv
    result: Callable[[Path], dict]  # case folder -> what must equal the uninterrupted run's
    setup: Callable[[Path], None] = lambda case: None  # what the case folder holds before the command
    outputs: tuple[str, ...] = ()  # folders (in the case) the command writes: no leftover may stay there
    env: dict[str, str] = field(default_factory=dict)


def train_argv(model: Path) -> Callable[[Path], list]:
    """4 steps of the 5m model: a checkpoint at steps 2 and 4, an evaluation at each (on ~10 held-out blocks), the
    loss curve drawn."""
    return lambda case: [
        "train", "--model_name_or_path", model, "--train_file_dir", SAMPLE_QA, "--validation_split_percentage", "3",
        "--block_size", "64", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "32",
        "--max_steps", "4", "--save_steps", "2", "--logging_steps", "1", "--eval_strategy", "steps",
        "--eval_steps", "2", "--do_eval", "--learning_rate", "3e-3", "--seed", "7", "--report_to", "none",
        "--disable_tqdm", "true", "--plot", "true", "--output_dir", case / "run", "--data_cache_dir", case / "cache",
    ]  # fmt: skip


def small_inputs(folder: Path) -> None:
    """A few questions and a few general documents: eval writes every file it would with the full samples."""
    lines = SAMPLE_MCQ.read_text(encoding="utf-8").splitlines()
    (folder / "mcq.jsonl").write_text("\n".join(lines[:6]) + "\n", encoding="utf-8")
    lines = SAMPLE_GENERAL.read_text(encoding="utf-8").splitlines()
    (folder / "general.jsonl").write_text("\n".join(lines[:6]) + "\n", encoding="utf-8")


def _cache_entry(case: Path) -> Path:
    entries = [p for p in (case / "cache").iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(entries) == 1, entries
    return entries[0]


def _data_report(path: Path, case: Path) -> dict:
    report = json_file(path, case)
    report["cache"].pop("reused")  # a rerun after the cache entry was complete finds it: the one expected change
    return report


def prepare_result(case: Path) -> dict:
    entry = _cache_entry(case)
    return {
        "blocks": file_bytes(entry, skip=("data_report.json",)),
        "cache report": _data_report(entry / "data_report.json", case),
        "report": _data_report(case / "out" / "data_report.json", case),
        "texts": file_bytes(case, skip=("cache", "out", MANIFEST)),
        "files": RunDir.open(case / "out").present(),
        "manifest": RunDir.open(case / "out").entries,
        "config": (case / "out" / "medpt_config.yaml").read_text().split("\n", 1)[1].replace(str(case), "CASE"),
    }


def prepare(model: Path) -> Scenario:
    argv = lambda case: [  # noqa: E731
        "prepare", "--model_name_or_path", model, "--train_file_dir", SAMPLE_QA, "--validation_file_dir",
        SAMPLE_GENERAL, "--block_size", "64", "--shard_mb", "0.03", "--check_contamination", SAMPLE_MCQ,
        "--dump_text", case / "texts.jsonl", "--output_dir", case / "out", "--data_cache_dir", case / "cache",
    ]  # fmt: skip
    return Scenario("prepare", argv, prepare_result, outputs=(".",))


def train_result(case: Path) -> dict:
    run = case / "run"
    # The summary line's train_loss is the session's (Trainer's own): train_results.json holds the whole run's.
    rows = [{k: v for k, v in without_timing(r).items() if k != "train_loss"} for r in read_log(run / "metrics.jsonl")]
    results = json_file(run / "train_results.json", case)
    checkpoints = {p.name: file_bytes(p, skip=(*VOLATILE, *RUN_DESCRIPTION)) for p in sorted(run.glob("checkpoint-*"))}
    return {
        "metrics.jsonl": rows,
        "final files": file_bytes(run, skip=(*VOLATILE, *checkpoints, *RESULTS)),
        "training_args": json_file(run / "training_args.json", case),
        "checkpoints": checkpoints,
        # The state of each checkpoint, but the flags Trainer saves beside it: the checkpoint Ctrl-C makes says
        # should_training_stop (the resumed run then goes on from it, with the same weights and optimizer).
        "states": {
            name: {k: v for k, v in json_file(run / name / "trainer_state.json").items() if k != "stateful_callbacks"}
            for name in checkpoints
        },  # fmt: skip
        # The run's description each checkpoint holds (it names the case's folder; the configuration its time).
        "descriptions": {name: description(run / name, case) for name in checkpoints},
        "eval": json_file(run / "eval_results.json", case),
        # After a resume Trainer's train_loss covers the resumed steps only; medpt weighs in the logged ones before
        # (train.whole_run_train_loss), summing in another order: equal to float rounding, not to the bit.
        "train_loss": round(results["train_loss"], 5),
        # A resumed run adds train_loss_since_resume and how many steps train_loss covers (medpt's, documented).
        "all": sorted(k for k in json_file(run / "all_results.json") if not k.startswith("train_loss_")),
        "data": _data_report(run / "data_report.json", case),
        "config": (run / "medpt_config.yaml").read_text().split("\n", 1)[1].replace(str(case), "CASE"),
        "curve": (run / "loss_curve.png").is_file(),
        "manifest": RunDir.open(run).entries,
        "files": RunDir.open(run).present(),
    }


def description(folder: Path, case: Path) -> dict:
    return {
        CONFIG_FILE: (folder / CONFIG_FILE).read_text().split("\n", 1)[1].replace(str(case), "CASE"),
        TRAINING_ARGS: json_file(folder / TRAINING_ARGS, case),
        BASE_RECORD: json_file(folder / BASE_RECORD, case),
    }


def train(model: Path) -> Scenario:
    return Scenario("train", train_argv(model), train_result, outputs=(".",))


def train_replay(model: Path) -> Scenario:
    """The same run on two named sources mixed 80/20, with --replay_kl on the general one: per-source held-out splits
    and losses, and the KL term's base (the adapter switched off) in every step a resume replays."""
    plain = train_argv(model)

    def argv(case: Path) -> list:
        args = plain(case)
        at = args.index("--train_file_dir")
        args[at + 1 : at + 2] = [f"medical={SAMPLE_QA}", f"general={SAMPLE_GENERAL}", "--mix",
                                 "medical=0.8,general=0.2", "--replay_kl", "1"]  # fmt: skip
        return args

    return Scenario("train --replay_kl", argv, train_result, outputs=(".",))


def copy_run(base: Path) -> Callable[[Path], None]:
    return lambda case: shutil.copytree(base, case / "run", symlinks=True)


def eval_result(case: Path) -> dict:
    out = case / "run" / "eval"
    return {
        "results": json_file(out / "eval_results.json", case),
        "files": file_bytes(out, skip=(MANIFEST, "eval_results.json", "eval.md")),
        "manifest": RunDir.open(out).entries,
        "run manifest": RunDir.open(case / "run").entries,
    }


def evaluate(base: Path) -> Scenario:
    """Base vs adapted on the run's held-out split and a named set, a few multiple-choice questions (their
    predictions in eval/mcq/), and the contamination check of the questions against the run's training data."""
    argv = lambda case: [  # noqa: E731
        "eval", "--adapter", case / "run", "--data_cache_dir", case / "cache", "--eval_sets",
        f"general={base.parent / 'general.jsonl'}", "--mcq_file", base.parent / "mcq.jsonl",
    ]  # fmt: skip
    return Scenario("eval", argv, eval_result, setup=copy_run(base), outputs=(".",))


def folder_result(name: str, notes: str) -> Callable[[Path], dict]:
    """A folder written whole (merge, export): its bytes, and its JSON note (which names the case's paths)."""

    def result(case: Path) -> dict:
        return {"bytes": file_bytes(case / name, skip=(MANIFEST, notes)), "note": json_file(case / name / notes, case),
                "manifest": RunDir.open(case / name).entries, "kind": RunDir.open(case / name).kind}  # fmt: skip

    return result


def merge(base: Path, overwrite: bool = False) -> Scenario:
    argv = lambda case: ["merge", "--adapter", case / "run", "--output_dir", case / "merged",  # noqa: E731
                         *(["--overwrite"] if overwrite else [])]  # fmt: skip

    def setup(case: Path) -> None:
        copy_run(base)(case)
        if overwrite:  # an earlier merge (of the same run) to replace
            shutil.copytree(base.parent / "merged", case / "merged")

    name = "merge --overwrite" if overwrite else "merge"
    return Scenario(name, argv, folder_result("merged", "medpt_merge.json"), setup=setup, outputs=(".",))


def export(base: Path, overwrite: bool = False) -> Scenario:
    argv = lambda case: ["export", "--adapter", case / "run", "--target", "vllm",  # noqa: E731
                         "--output_dir", case / "exported", *(["--overwrite"] if overwrite else [])]  # fmt: skip

    def setup(case: Path) -> None:
        copy_run(base)(case)
        if overwrite:
            shutil.copytree(base.parent / "exported", case / "exported")

    name = "export --overwrite" if overwrite else "export"
    return Scenario(name, argv, folder_result("exported", "export.json"), setup=setup, outputs=(".",))


def tune(model: Path) -> Scenario:
    """One trial of 2 steps. A killed trial fails (it does not count) and the rerun runs another, drawn by a sampler
    seeded by how many workers joined: the study's result cannot equal an uninterrupted one's. What must hold: the
    study completes --n_trials trials, each a finished run, and its summary names them."""
    argv = lambda case: [  # noqa: E731
        "tune", "--model_name_or_path", model, "--train_file_dir", SAMPLE_QA, "--validation_split_percentage", "3",
        "--block_size", "64", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "32",
        "--max_steps", "2", "--eval_steps", "2", "--n_trials", "1", "--report_to", "none", "--disable_tqdm", "true",
        "--plot", "false", "--output_dir", case / "study", "--data_cache_dir", case / "cache",
    ]  # fmt: skip

    def result(case: Path) -> dict:
        import optuna

        study = optuna.load_study(study_name="medpt-tune", storage=f"sqlite:///{case / 'study' / 'study.db'}")
        done = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
        finished = [t for t in done if (case / "study" / "trials" / str(t.number) / "all_results.json").is_file()]
        listed = (case / "study" / "trials.csv").read_text().splitlines()[1:]
        return {
            "finished trials": len(done),
            "each a finished run": len(finished) == len(done),
            "values finite": all(math.isfinite(t.value) for t in done if t.value is not None),
            "summary rows": len(listed) >= len(done),
            "best.yaml": (case / "study" / "best.yaml").is_file(),
            "files": sorted(n for n in RunDir.open(case / "study").present() if not n.startswith("study.db-")),
        }

    return Scenario("tune", argv, result, outputs=(".",))


class Suite:
    """The session's scenarios, the trained run eval/merge/export start from, and each scenario's uninterrupted run
    (its write events and its result), computed once and shared by the kill, interrupt and disk-full tests."""

    NAMES = ("prepare", "train", "train --replay_kl", "eval", "merge", "merge --overwrite", "export",
             "export --overwrite", "tune")  # fmt: skip

    def __init__(self, zygote, model: Path, root: Path):
        self.zygote, self.model, self.root = zygote, model, root
        self._base: Path | None = None
        self._uninterrupted: dict[str, tuple[list, dict]] = {}

    @property
    def base(self) -> Path:
        """An uninterrupted training run, and a merge and an export of it."""
        if self._base is None:
            case = self.root / "base"
            case.mkdir()
            small_inputs(case)
            for argv in (
                train_argv(self.model)(case),
                ["merge", "--adapter", case / "run", "--output_dir", case / "merged"],
                ["export", "--adapter", case / "run", "--target", "vllm", "--output_dir", case / "exported"],
            ):
                result = self.zygote.run(argv, case)
                assert result.code == 0, result.err[-3000:]  # fmt: skip
            self._base = case / "run"
        return self._base

    def scenario(self, name: str) -> Scenario:
        model = self.model
        return {
            "prepare": lambda: prepare(model),
            "train": lambda: train(model),
            "train --replay_kl": lambda: train_replay(model),
            "eval": lambda: evaluate(self.base),
            "merge": lambda: merge(self.base),
            "merge --overwrite": lambda: merge(self.base, overwrite=True),
            "export": lambda: export(self.base),
            "export --overwrite": lambda: export(self.base, overwrite=True),
            "tune": lambda: tune(model),
        }[name]()

    def uninterrupted(self, name: str) -> tuple[list, dict]:
        """(write events, result) of the scenario run once without a fault."""
        if name not in self._uninterrupted:
            from tests.faults.harness import count_events, fresh

            scenario = self.scenario(name)
            case = fresh(self.root / ("uninterrupted-" + name.replace(" ", "").replace("-", "")))
            scenario.setup(case)
            events = count_events(self.zygote, scenario.argv(case), case, scenario.env)
            self._uninterrupted[name] = (events, scenario.result(case))
        return self._uninterrupted[name]
