"""`medpt tune`: the search space, the objective, pruning, two workers on one study, rerunning, best.yaml, report."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medpt.cli import main
from medpt.errors import MedptError
from medpt.samples import SAMPLE_GENERAL, SAMPLE_QA

optuna = pytest.importorskip("optuna")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The trials' matrices are tiny: one thread is as fast, and on a busy 2-core machine a second one stalls every
    op waiting for a core (trials ran up to 10x slower). The two-worker test gives its processes one each too."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _argv(model: Path, out: Path, *extra: str) -> list[str]:
    """A trial: 4 steps of the 5m model, evaluated at steps 2 and 4 on a small held-out split."""
    return ["tune", "--model_name_or_path", str(model), "--train_file_dir", str(SAMPLE_QA),
            "--validation_split_percentage", "5", "--block_size", "64", "--per_device_train_batch_size", "4",
            "--per_device_eval_batch_size", "32", "--max_steps", "4", "--eval_steps", "2", "--report_to", "none",
            "--disable_tqdm", "true", "--plot", "false", "--output_dir", str(out), *extra]  # fmt: skip


def _one_line_error(capsys: pytest.CaptureFixture, *fragments: str) -> str:
    """One `medpt: error:` line and no traceback (Optuna's own log lines may stand beside it on stderr)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("medpt: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# --- the search space --------------------------------------------------------------------------------------------
def _base() -> dict:
    from medpt.args.resolve import Config

    flat = Config.from_values({"max_steps": 4}, command="train").to_flat()
    return {k: v for k, v in flat.items() if k not in ("n_trials",)}


@pytest.mark.parametrize(
    "text, message",
    [
        ("learning_rat: {log_uniform: [1.0e-5, 1.0e-2]}", "space.yaml:1: unknown flag --learning_rat; did you mean "
                                                          "--learning_rate?"),
        ("lora_rank: {choice: [4, 8]}\nlora_dropout: {uniform: [0.0, 1.0]}",
         "space.yaml:2: lora_dropout: uniform [0.0, 1.0]: --lora_dropout must be in [0, 1), got 1"),
        ("per_device_train_batch_size: {int: [0, 8]}", "space.yaml:1: per_device_train_batch_size: int [0, 8]: "
                                                       "--per_device_train_batch_size must be at least 1, got 0"),
        ("lora_rank: {uniform: [4, 16]}", "space.yaml:1: lora_rank: uniform: --lora_rank takes whole numbers"),
        ("learning_rate: {log_uniform: [0, 1.0e-2]}", "space.yaml:1: learning_rate: log_uniform: a log-uniform range "
                                                      "must be above 0"),
        ("learning_rate: {uniform: [1.0e-2, 1.0e-3]}", "space.yaml:1: learning_rate: uniform: low must be below high"),
        ("learning_rate: {uniform: [1.0e-3]}", "expected [low, high], got [0.001]"),
        ("lora_rank: {int: [4, 8.5]}", "space.yaml:1: lora_rank: int: expected a whole number, got 8.5"),
        ("output_dir: {choice: [a, b]}", "space.yaml:1: output_dir cannot be searched"),
        ("n_trials: {choice: [1, 2]}", "space.yaml:1: n_trials cannot be searched"),
        ("mcq_file: {choice: [a, b]}", "space.yaml:1: mcq_file cannot be searched"),
        ("lora_rank: {normal: [8, 2]}", "space.yaml:1: lora_rank: expected one of {log_uniform: ...}"),
        ("lora_dropout: {per_rank: 2}", "space.yaml:1: lora_dropout: expected one of"),
        ("lora_alpha: {per_rank: [0, 2]}", "space.yaml:1: lora_alpha: per_rank: expected a ratio > 0"),
        ("lora_rank: {choice: []}", "space.yaml:1: lora_rank: choice: expected a non-empty list"),
        ("lora_rank: {choice: [4, 4]}", "space.yaml:1: lora_rank: choice: [4, 4] repeats a value"),
        ("target_modules: {choice: [[q_proj], [v_proj]]}", "each choice must be a single value"),
        ("lora_rank: {choice: [4]}\nlora_rank: {choice: [8]}", "space.yaml:2: lora_rank is given twice (first on "
                                                               "line 1)"),
        ("warmup_ratio: {uniform: [0.0, 0.1]}\nwarmup_steps: {int: [0, 10]}",
         "space.yaml:2: warmup_steps sets --warmup_steps, as warmup_ratio on line 1 does"),
        ("[learning_rate, lora_rank]", "space.yaml: expected a mapping of flag: {distribution: ...}"),
        ("learning_rate: {log_uniform: [1.0e-5", "space.yaml: invalid YAML"),
    ],
)  # fmt: skip
def test_a_bad_search_space_is_one_error_naming_the_line_and_key(text, message):
    from medpt.tune.space import parse_space

    with pytest.raises(MedptError) as caught:
        parse_space(text, "space.yaml", _base())
    assert message in str(caught.value)


def test_the_default_space_draws_alpha_from_the_rank_and_maps_warmup_ratio_to_its_flag():
    from medpt.tune.space import load_space

    space = load_space(None, _base())
    drawn = {"learning_rate": 3e-4, "lora_rank": 16, "lora_alpha_per_rank": 2, "lora_dropout": 0.05,
             "warmup_ratio": 0.03}  # fmt: skip
    values = space.suggest(optuna.trial.FixedTrial(drawn), _base())
    assert values == {"learning_rate": 3e-4, "lora_rank": 16, "lora_dropout": 0.05, "warmup_steps": 0.03,
                      "lora_alpha": 32.0}  # fmt: skip


def test_an_inline_space_and_numbers_pyyaml_reads_as_strings_are_accepted():
    from medpt.tune.space import load_space

    space = load_space("{learning_rate: {log_uniform: [1e-5, 1e-2]}, lora_alpha: {per_rank: 2}}", _base())
    assert [(d.name, d.kind, d.values) for d in space.dimensions] == [
        ("learning_rate", "log_uniform", (1e-5, 1e-2)),
        ("lora_alpha", "per_rank", (2.0,)),
    ]
    assert space.suggest(optuna.trial.FixedTrial({"learning_rate": 1e-3}), _base()) == {
        "learning_rate": 1e-3,
        "lora_alpha": 16.0,  # 2 x the base rank, 8
    }


# --- the objective ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, penalties, metrics, before, expected",
    [
        ("loss", {}, {"eval_loss": 2.5}, {}, 2.5),
        ("loss", {}, {"eval_valid_loss": 2.5, "eval_general_loss": 3.0}, {}, 2.5),  # unnamed source + --eval_sets
        ("medical", {"general": 0.5}, {"eval_medical_loss": 2.0, "eval_general_loss": 3.5}, {"general": 3.0}, 2.25),
        ("medical", {"general": 0.5}, {"eval_medical_loss": 2.0, "eval_general_loss": 2.9}, {"general": 3.0}, 2.0),
        ("medical", {"general": 0.5}, {"eval_medical_loss": 2.0}, {"general": 3.0}, None),  # general not in yet
    ],
)
def test_the_objective_adds_a_weighted_penalty_for_forgetting_only(name, penalties, metrics, before, expected):
    from medpt.tune.objective import Objective

    assert Objective(name, penalties).value(metrics, before) == expected


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--objective", "general"], "--objective general: no such eval set; the configuration has loss"),
        (["--objective_penalty", "general=x"], "--objective_penalty takes NAME=WEIGHT items with a weight >= 0"),
        (["--eval_sets", f"general={SAMPLE_GENERAL}", "--objective_penalty", "wiki=1"],
         "--objective_penalty wiki: no such eval set; the configuration has general, loss"),
        (["--eval_strategy", "no"], "medpt tune reads each trial's evaluations: drop --eval_strategy no"),
        (["--search_space", "missing.yaml"], "--search_space missing.yaml: no such file"),
        (["--resume_from_checkpoint", "auto"], "--resume_from_checkpoint is a train flag, not a tune flag"),
    ],
)  # fmt: skip
def test_tune_mistakes_are_one_line_errors_before_anything_is_written(extra, message, tiny_model_dir, tmp_path,
                                                                      capsys):  # fmt: skip
    out = tmp_path / "tune"
    assert main(_argv(tiny_model_dir, out, *extra)) == 2
    _one_line_error(capsys, message)
    assert not out.exists()


def test_tune_needs_max_steps(tiny_model_dir, tmp_path, capsys):
    argv = _argv(tiny_model_dir, tmp_path / "tune")
    at = argv.index("--max_steps")
    assert main(argv[:at] + argv[at + 2 :]) == 2
    _one_line_error(capsys, "medpt tune needs --max_steps")


def test_without_optuna_tune_says_what_to_install(tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # as if not installed: `import optuna` raises ImportError
    assert main(_argv(tiny_model_dir, tmp_path / "tune")) == 2
    _one_line_error(capsys, "medpt tune needs Optuna: pip install 'medpt[tune]'")


def test_overwrite_is_refused_while_another_process_works_on_the_study(tiny_model_dir, tmp_path, capsys):
    from medpt.args.resolve import load_config
    from medpt.tune.study import claim_tune_dir, make_setup

    out = tmp_path / "tune"
    argv = _argv(tiny_model_dir, out, "--n_trials", "1")
    config = load_config(argv[1:], command="tune")
    working = claim_tune_dir(config, make_setup(config))  # held by a process working on the study
    try:
        assert main([*argv, "--overwrite_output_dir"]) == 2  # two identical commands must not delete each other's study
    finally:
        working.release()
    _one_line_error(capsys, f"--overwrite_output_dir would delete the study in {out}", "another medpt tune process")
    assert (out / "tune.json").is_file() and (out / "trials").is_dir()


def test_a_mistake_found_by_a_trial_fails_it_in_one_line_and_it_does_not_count(tiny_model_dir, tmp_path, capsys):
    from medpt.args.resolve import load_config
    from medpt.tune.study import claim_tune_dir, make_setup

    out = tmp_path / "tune"
    argv = _argv(tiny_model_dir, out, "--n_trials", "1")
    config = load_config(argv[1:], command="tune")
    claim_tune_dir(config, make_setup(config)).release()
    # Trial 0's folder, which medpt made (its parent's manifest names it), holds a file medpt did not write: only
    # the trial finds out. (A folder medpt did not make in trials/ is refused by the command before any trial.)
    from medpt.rundir import RunDir

    notes = out / "trials" / "0" / "notes.txt"
    RunDir.open(out / "trials").record(["0"], "tune")
    notes.parent.mkdir()
    notes.write_text("mine")
    assert main(argv) == 2
    _one_line_error(capsys, f"--output_dir {notes.parent} holds files medpt did not write (notes.txt)")
    (trial,) = optuna.load_study(study_name="medpt-tune", storage=f"sqlite:///{out / 'study.db'}").trials
    assert trial.state.name == "FAIL" and notes.read_text() == "mine"
    assert "1 failed (not counted)" in (out / "trials.md").read_text()


# --- pruning --------------------------------------------------------------------------------------------------------
def test_a_trial_worse_than_the_median_at_its_first_report_is_pruned(tiny_model_dir, tmp_path):
    storage = f"sqlite:///{tmp_path / 'rigged.db'}"
    study = optuna.create_study(storage=storage, study_name="rigged", direction="minimize")
    # The order is fixed through the shared storage: two learning rates that learn, then one too small to move the
    # loss, so at its first report (step 2) it is above the median of the two before it.
    for lr in (2e-2, 1.5e-2, 1e-7):
        study.enqueue_trial({"learning_rate": lr})
    out = tmp_path / "tune"
    space = "{learning_rate: {choice: [1.0e-7, 1.5e-2, 2.0e-2]}}"
    argv = _argv(tiny_model_dir, out, "--storage", storage, "--study_name", "rigged", "--search_space", space,
                 "--n_trials", "3", "--pruner_startup_trials", "2", "--warmup_ratio", "0")  # fmt: skip
    assert main(argv) == 0
    trials = optuna.load_study(study_name="rigged", storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "PRUNED"]
    pruned = trials[2]
    assert pruned.params == {"learning_rate": 1e-7}
    assert (pruned.user_attrs["steps"], pruned.user_attrs["stopped"]) == (2, "pruned at step 2")
    assert list(pruned.intermediate_values) == [2]
    assert pruned.intermediate_values[2] > max(t.intermediate_values[2] for t in trials[:2])
    for t in trials[:2]:  # a complete trial's value is its final evaluation, the one in its eval_results.json
        assert t.value == json.loads((out / "trials" / str(t.number) / "eval_results.json").read_text())["eval_loss"]
    summary = (out / "trials.md").read_text()
    assert "pruning saved 2 of 12 training steps (16.7%)" in summary
    best = min(trials[:2], key=lambda t: t.value)
    assert f"best: trial {best.number}, {best.value:.6g}" in summary


# --- the objective end to end, with named sources --------------------------------------------------------------------
def test_the_penalised_objective_is_computed_from_the_trials_own_evaluations(tiny_model_dir, tmp_path):
    out = tmp_path / "tune"
    sources = ["--train_file_dir", f"medical={SAMPLE_QA}", f"general={SAMPLE_GENERAL}"]
    argv = _argv(tiny_model_dir, out, *sources, "--validation_split_percentage", "20", "--objective", "medical",
                 "--objective_penalty", "general=0.5", "--n_trials", "1", "--max_steps", "2",
                 "--search_space", "{learning_rate: {choice: [3.0e-2]}}")  # fmt: skip
    assert main(argv) == 0
    (trial,) = optuna.load_study(study_name="medpt-tune", storage=f"sqlite:///{out / 'study.db'}").trials
    logged = [json.loads(x) for x in (out / "trials" / "0" / "metrics.jsonl").read_text().splitlines()]
    general = {r["step"]: r["eval_general_loss"] for r in logged if "eval_general_loss" in r}
    medical = {r["step"]: r["eval_medical_loss"] for r in logged if "eval_medical_loss" in r}
    assert set(general) == {0, 2}  # before training (eval_on_start), then at the end
    expected = medical[2] + 0.5 * max(0.0, general[2] - general[0])
    assert trial.value == pytest.approx(expected, rel=0, abs=1e-12)
    assert trial.intermediate_values == {2: trial.value}


def test_tune_searches_replay_kl_and_the_mix_share_against_forgetting(tiny_model_dir, tmp_path):
    out = tmp_path / "tune"
    shares = ["medical=0.75,general=0.25", "medical=0.5,general=0.5"]
    space = f"{{replay_kl: {{choice: [0.5, 2.0]}}, mix: {{choice: ['{shares[0]}', '{shares[1]}']}}}}"
    argv = _argv(tiny_model_dir, out, "--train_file_dir", f"medical={SAMPLE_QA}", f"general={SAMPLE_GENERAL}",
                 "--validation_split_percentage", "20", "--objective", "medical", "--objective_penalty",
                 "general=0.5", "--n_trials", "2", "--max_steps", "2", "--logging_steps", "1",
                 "--search_space", space)  # fmt: skip
    assert main(argv) == 0
    trials = optuna.load_study(study_name="medpt-tune", storage=f"sqlite:///{out / 'study.db'}").trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    for t in trials:  # each trial trained with the values drawn: the mix it asked for, the KL weight it logged
        assert t.params["replay_kl"] in (0.5, 2.0) and t.params["mix"] in shares
        folder = out / "trials" / str(t.number)
        report = json.loads((folder / "data_report.json").read_text())["sources"]
        asked = dict(x.split("=") for x in t.params["mix"].split(","))
        assert report["general"]["mix"]["requested_share"] == pytest.approx(float(asked["general"]))
        assert f"replay_kl: {t.params['replay_kl']}" in (folder / "medpt_config.yaml").read_text()
        logged = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
        assert any("train_general_loss" in r for r in logged)


# --- two workers, rerunning, best.yaml, the report ----------------------------------------------------------------
@pytest.fixture(scope="module")
def two_workers(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two `medpt tune` processes started together on one --output_dir, --n_trials 4; the study as they left it."""
    root = tmp_path_factory.mktemp("tune")
    out = root / "study"
    argv = [sys.executable, "-m", "medpt", *_argv(tiny_model_dir, out, "--n_trials", "4", "--data_cache_dir",
                                                   str(root / "cache"))]  # fmt: skip
    # Two processes on a 2-core machine: one torch thread each, or their threads fight over the cores.
    env = {**os.environ, "HF_HOME": str(root / "hf-home"), "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(2)]  # fmt: skip
    outputs = [w.communicate(timeout=900)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    storage = f"sqlite:///{out / 'study.db'}"
    study = optuna.load_study(study_name="medpt-tune", storage=storage)
    pids = {f"{socket.gethostname()}:{w.pid}" for w in workers}
    return {"out": out, "storage": storage, "trials": study.trials, "attrs": study.user_attrs, "pids": pids,
            "outputs": outputs, "argv": argv[3:]}  # fmt: skip


def test_two_workers_sharing_a_folder_complete_exactly_n_distinct_trials(two_workers):
    trials, out = two_workers["trials"], two_workers["out"]
    # No duplicate trial: numbers 0..N-1, each run once, by one of the two processes, each with its own parameters,
    # each in its own folder; and no trial beyond --n_trials, none failed or left running.
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    assert {t.user_attrs["worker"] for t in trials} <= two_workers["pids"]
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4
    assert sorted(p.name for p in (out / "trials").iterdir() if not p.name.startswith(".")) == ["0", "1", "2", "3"]
    for t in trials:
        assert (out / "trials" / str(t.number) / "adapter_model.safetensors").is_file()
        assert t.user_attrs["steps"] == 4 or t.state.name == "PRUNED"
    assert two_workers["attrs"]["workers"] == 2  # both joined the study (seeds: --seed + 0 and + 1)
    for output in two_workers["outputs"]:
        assert "the study holds 4 finished trial(s) (--n_trials 4)" in output
    # The data was prepared once, before the study: every trial found it in the cache.
    assert sum(o.count("reusing prepared data") for o in two_workers["outputs"]) >= 4


def test_rerunning_continues_the_study_and_one_folder_holds_one_study(two_workers, capsys):
    argv, storage = two_workers["argv"], two_workers["storage"]
    n_trials = argv.index("--n_trials") + 1
    assert main([*argv[:n_trials], "5", *argv[n_trials + 1 :]]) == 0
    trials = optuna.load_study(study_name="medpt-tune", storage=storage).trials
    assert sorted(t.number for t in trials) == [0, 1, 2, 3, 4]
    assert trials[4].user_attrs["worker"] == f"{socket.gethostname()}:{os.getpid()}"
    assert main([*argv[:n_trials], "5", *argv[n_trials + 1 :]]) == 0  # already holds 5: nothing to run
    assert len(optuna.load_study(study_name="medpt-tune", storage=storage).trials) == 5
    capsys.readouterr()
    assert main([*argv, "--study_name", "another"]) == 2
    _one_line_error(capsys, "holds the study 'medpt-tune'", "Use another --output_dir for another study")


def test_best_yaml_runs_as_medpt_train_and_round_trips(two_workers, capsys):
    from medpt.args.resolve import load_config

    out = two_workers["out"]
    best_yaml = out / "best.yaml"
    best = optuna.load_study(study_name="medpt-tune", storage=two_workers["storage"]).best_trial
    assert f"trial {best.number}, eval_loss = {best.value:.6g}" in best_yaml.read_text().splitlines()[0]
    capsys.readouterr()
    assert main(["train", str(best_yaml), "--dry_run"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == yaml.safe_load(best_yaml.read_text())  # the same configuration, value for value
    config = load_config([str(best_yaml)], command="train")
    flat = config.to_flat()
    assert {k: flat[k] for k in best.user_attrs["flags"]} == best.user_attrs["flags"]
    assert flat["lora_alpha"] in (flat["lora_rank"], 2 * flat["lora_rank"])  # the default space: alpha = 1 or 2 x r
    assert (config.run.output_dir, flat["max_steps"], flat["eval_steps"]) == (str(out / "best"), 4, 2)
    assert "save_strategy" not in flat  # an ordinary run's checkpoints, unlike a trial


def test_report_shows_the_trials_table_and_the_plots(two_workers):
    out = two_workers["out"]
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert page.count("<img alt=") == 2 and "data:image/png;base64," in page
    assert "<th>trial</th><th>state</th><th>objective</th><th>learning_rate</th>" in page
    markdown = (out / "report.md").read_text()
    assert "![optimisation history](tune_history.png)" in markdown
    assert markdown.startswith((out / "trials.md").read_text())
    rows = (out / "trials.csv").read_text().splitlines()
    assert rows[0].startswith("trial,state,objective,learning_rate,lora_rank,lora_dropout,warmup_ratio,lora_alpha,")
    assert len(rows) == 1 + len(optuna.load_study(study_name="medpt-tune", storage=two_workers["storage"]).trials)
