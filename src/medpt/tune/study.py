"""`medpt tune`: an Optuna study whose trials are short `medpt train` runs.

Reads top to bottom: checks that need nothing loaded → claim the output folder → prepare the data once → open the
study → run trials until the study holds --n_trials → wait for the other workers' last trials → write the summary.

The storage is the only state the workers share: processes pointed at the same storage run one study,
each trial's number comes from it, and a rerun continues it. Processes that share an --output_dir (the default
SQLite storage lives there) also share a lock on that folder, which serialises what must not race: claiming the
folder, creating the SQLite tables, preparing data into medpt's cache, and counting the trials before asking for
a new one, which is why `--n_trials N` is exact for them.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any

from medpt.args.commands import COMMANDS
from medpt.args.resolve import Config, inputs_of
from medpt.atomic import PathLock, atomic_write_text, before_write, owner, owner_dead, remove_stale_leftovers
from medpt.errors import MedptError
from medpt.rundir import (
    SEARCH_SPACE,
    STUDY_DB,
    TRIALS_DIR,
    TUNE_INFO,
    check_output,
    claim_dir,
)
from medpt.strictjson import dumps
from medpt.tune.objective import PruningCallback, prepared_sets
from medpt.tune.setup import Setup, check_space_fits, make_setup, trial_config

# A trial whose process died stops writing heartbeats; after the grace period the next worker marks it failed, and
# failed trials do not count toward --n_trials (a rerun replaces them). Seconds.
HEARTBEAT_S, GRACE_S = 20, 90
POLL_S = 5.0  # how often a finished worker checks whether the others' last trials are done
SQLITE_TIMEOUT_S = 60  # how long a worker waits for another's SQLite write lock before failing


def run_tune(config: Config, log: Any = print) -> int:
    optuna = import_optuna()
    setup = make_setup(config)
    out = setup.out
    # 1. What needs nothing loaded, for the configuration every trial shares.
    from medpt.train.recipe import check_before_loading

    shared = trial_config(setup, {}, out)  # the trials' configuration, but the values they draw
    check_space_fits(setup, check_before_loading(shared))
    # 2. The folder, the data (prepared once: every trial then finds it in medpt's cache) and the study.
    in_use = claim_tune_dir(config, setup)
    try:
        return _run_study(optuna, config, setup, shared, log)
    finally:
        in_use.release()


def _run_study(optuna: Any, config: Config, setup: Setup, shared: Config, log: Any) -> int:
    from medpt.train.recipe import prepare_all

    out = setup.out
    lock = PathLock(out)
    with lock:
        data, eval_sets = prepare_all(shared, out, log)
        setup.objective.check_prepared(prepared_sets(data, eval_sets))
        del data, eval_sets  # memory-mapped blocks: each trial opens its own
        if not config.tune.storage:
            # The default SQLite file, and the side files SQLite may make beside it: recorded before SQLite writes.
            for name in (STUDY_DB, *(STUDY_DB + side for side in ("-journal", "-wal", "-shm"))):
                before_write(out / name)
        study = open_study(optuna, config, out)
    where = describe_storage(storage_url(config))
    log(f"study {config.tune.study_name!r} in {where}; each trial minimises {setup.objective.describe()}")
    # 3. Trials, until the study holds --n_trials; then the summary.
    from medpt.tune.summary import write_plots, write_summary

    error = work(optuna, study, setup, lock, config.tune.n_trials, log)
    with lock:
        table = write_summary(study, setup)
        write_plots(study, out, log)
    if error is not None:
        raise error
    log(table)
    return 0


def import_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise MedptError("medpt tune needs Optuna: pip install 'medpt[tune]'") from None
    return optuna


# --- the folder -------------------------------------------------------------------------------------------------
def claim_tune_dir(config: Config, setup: Setup) -> PathLock:
    """Claim --output_dir for `medpt tune` (a second process finds it already a tune folder and joins it), record
    which study it holds, and claim its trials/ folder. Returns a shared lock on tune.json, held for as long as this
    process works on the study: --overwrite_output_dir, which deletes the study, is refused while
    another process holds one (two identical commands with that flag would otherwise delete each other's study)."""
    out = setup.out
    check_output("output_dir", out, inputs_of(config))  # before anything is created
    with contextlib.suppress(OSError):
        out.mkdir(parents=True, exist_ok=True)
    if not out.is_dir():
        claim_dir(out, COMMANDS["tune"], inputs=inputs_of(config))  # says why (a file there, permissions) in one line
    with PathLock(out):
        if config.run.overwrite_output_dir:
            _refuse_if_in_use(out / TUNE_INFO)
        claim_dir(out, COMMANDS["tune"], inputs=inputs_of(config), overwrite=config.run.overwrite_output_dir)
        _check_study_record(out / TUNE_INFO, config)
        config.save(out)
        atomic_write_text(out / SEARCH_SPACE, f"# {setup.space.source}\n{setup.space.text}")
        claim_dir(out / TRIALS_DIR, COMMANDS["tune"], writes=())
        for trial in (out / TRIALS_DIR).iterdir():  # a killed worker's trial is never continued: tidy it here
            remove_stale_leftovers(trial)
        in_use = PathLock(out / TUNE_INFO, shared=True)
        in_use.acquire()
    return in_use


def _refuse_if_in_use(record: Path) -> None:
    if not record.is_file():
        return
    probe = PathLock(record)
    if not probe.acquire(wait=False):
        raise MedptError(
            f"--overwrite_output_dir would delete the study in {record.parent}, which another medpt tune process is "
            "working on; let it finish (or stop it) first, or join it without --overwrite_output_dir"
        )
    probe.release()


def _check_study_record(path: Path, config: Config) -> None:
    """One study per folder: trial folders are named by trial number, which restarts in every study."""
    record = {"study_name": config.tune.study_name, "storage": describe_storage(storage_url(config))}
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved != record:
            raise MedptError(
                f"{path.parent} holds the study {saved['study_name']!r} in {saved['storage']}; this command asks for "
                f"{record['study_name']!r} in {record['storage']}. Use another --output_dir for another study"
            )
        return
    atomic_write_text(path, dumps(record, indent=2) + "\n")


# --- the study --------------------------------------------------------------------------------------------------
def storage_url(config: Config) -> str:
    return config.tune.storage or f"sqlite:///{Path(config.run.output_dir).expanduser().absolute() / STUDY_DB}"


def describe_storage(url: str) -> str:
    """The URL without its password, for messages and files."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an invalid URL: open_study reports it
        return url


def open_study(optuna: Any, config: Config, out: Path) -> Any:
    """Create or load the study, and give this process a sampler seeded by the order in which it joined."""
    url, tune = storage_url(config), config.tune
    kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if url.startswith("sqlite") else {}
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 4 and 5 (since 2.9)
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_S,
                                                 grace_period=GRACE_S)  # fmt: skip
        study = optuna.create_study(storage=storage, study_name=tune.study_name, direction="minimize",
                                    load_if_exists=True)  # fmt: skip
    except ImportError as e:
        raise MedptError(f"--storage {describe_storage(url)}: its database driver is not installed ({e})") from None
    except Exception as e:  # sqlalchemy's errors: a bad URL, an unreachable server, a locked file
        raise MedptError(f"--storage {describe_storage(url)}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    if study.direction != optuna.study.StudyDirection.MINIMIZE:
        raise MedptError(f"study {tune.study_name!r} maximises; medpt tune minimises a loss: use another --study_name")
    joined = int(study.user_attrs.get("workers", 0))
    study.set_user_attr("workers", joined + 1)
    seed = (tune.sampler_seed if tune.sampler_seed is not None else config.run.seed) + joined
    # constant_liar: a running trial counts as a bad result, so parallel workers do not all sample the same region.
    study.sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=tune.sampler_startup_trials,
                                               constant_liar=True)  # fmt: skip
    study.pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=tune.pruner_startup_trials,
                                    n_warmup_steps=tune.pruner_warmup_steps)
        if tune.pruner == "median"
        else optuna.pruners.NopPruner()
    )  # fmt: skip
    return study


# --- the workers ------------------------------------------------------------------------------------------------
def work(optuna: Any, study: Any, setup: Setup, lock: PathLock, n_trials: int, log: Any) -> MedptError | None:
    """Run trials until the study holds n_trials complete or pruned ones (failed ones do not count), then wait for
    the trials other workers still run. Returns the error that stopped a trial, if any."""
    from medpt.tune.summary import write_summary

    state = optuna.trial.TrialState
    while True:
        lock.acquire()
        _fail_stale(optuna, study)
        done = len(study.get_trials(deepcopy=False, states=(state.COMPLETE, state.PRUNED)))
        running = len(study.get_trials(deepcopy=False, states=(state.RUNNING,)))
        if done + running < n_trials:
            error = run_one(study, setup, lock)  # releases the lock
            with lock:
                write_summary(study, setup)
            if error is not None:
                return error
            continue
        lock.release()
        if running == 0:
            log(f"the study holds {done} finished trial(s) (--n_trials {n_trials})")
            return None
        time.sleep(POLL_S)


def run_one(study: Any, setup: Setup, lock: PathLock) -> MedptError | None:
    """One trial. Called holding the lock: Optuna creates the trial (so it counts as running) and the objective
    releases the lock, so no other worker of this folder can ask for a trial past --n_trials in between."""
    errors: list[MedptError] = []

    def objective(trial: Any) -> float:
        trial.set_user_attr("owner", owner())  # first: a kill from here on fails the trial at once (_fail_dead)
        lock.release()
        try:
            return run_trial(trial, setup, lock)
        except MedptError as e:  # a user's mistake: a one-line FAIL, no traceback in Optuna's log
            errors.append(e)
            return float("nan")

    try:
        study.optimize(objective, n_trials=1, gc_after_trial=True)
    finally:
        if lock.held:  # the trial was never started
            lock.release()
    return errors[0] if errors else None


def _fail_stale(optuna: Any, study: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    _fail_dead(optuna, study)


def _fail_dead(optuna: Any, study: Any) -> None:
    """A running trial whose process ran on this machine and is gone (killed) fails now, not after the heartbeat's
    grace period (GRACE_S): the same command, rerun after a kill, would otherwise wait that long for it."""
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for trial in running:
        if owner_dead(trial.user_attrs.get("owner", "")):
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)


def run_trial(trial: Any, setup: Setup, lock: PathLock) -> float:
    """The objective: one `medpt train` run with the trial's values, through the same `train` the CLI calls."""
    import optuna

    from medpt.train.recipe import DivergedError, prepare_all, train

    values = setup.space.suggest(trial, setup.base)
    out = setup.out / TRIALS_DIR / str(trial.number)
    config = trial_config(setup, values, out)
    trial.set_user_attr("flags", values)
    trial.set_user_attr("max_steps", int(config.trainer["max_steps"]))
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    log = _prefixed(f"[trial {trial.number}]")
    with lock:  # trials/ is shared: its manifest (and the data cache) take one writer at a time
        claim_dir(out, COMMANDS["train"], inputs=inputs_of(config))
        if setup.prepare_each:
            prepare_all(config, out, log)
    callback = PruningCallback(trial, setup.objective)
    try:
        code = train(config, log=log, callbacks=(callback,))
    except DivergedError as e:
        _record(trial, callback, f"diverged after step {callback.step}")
        raise optuna.TrialPruned(str(e)) from None
    if code == 130:
        raise KeyboardInterrupt
    if callback.pruned_at is not None:
        _record(trial, callback, f"pruned at step {callback.pruned_at}")
        raise optuna.TrialPruned(f"at step {callback.pruned_at}, value {callback.value:.4f}")
    _record(trial, callback, "")
    if callback.value is None:
        raise MedptError(f"trial {trial.number}: no evaluation reported {setup.objective.describe()}; see {out}")
    return callback.value


def _record(trial: Any, callback: PruningCallback, stopped: str) -> None:
    trial.set_user_attr("steps", callback.step)
    trial.set_user_attr("stopped", stopped)


def _prefixed(prefix: str) -> Any:
    def log(message: str) -> None:
        print(f"{prefix} {message}", flush=True)

    return log
