"""What `medpt tune` leaves in its folder, read from the study: the trials table (trials.md, trials.csv), best.yaml
and two plots (optimisation history, parameter importances). Rewritten after every trial, so an interrupted study
still has them; each file is written to a temporary path and renamed."""

from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path
from typing import Any

from medpt.atomic import atomic_write_text, atomic_writer
from medpt.rundir import BEST_CONFIG, TRIALS_CSV, TRIALS_DIR, TRIALS_MD, TUNE_HISTORY, TUNE_IMPORTANCE
from medpt.tune.setup import Setup, trial_config


def write_summary(study: Any, setup: Setup) -> str:
    """trials.md / trials.csv and best.yaml (when a trial has completed); returns the Markdown."""
    trials = study.get_trials(deepcopy=False)
    columns = {d.name: d.flag for d in setup.space.dimensions}  # as written in the space → the flag it sets
    rows = [_row(t, columns) for t in trials]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["trial"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(setup.out / TRIALS_CSV, buffer.getvalue())
    best = _best(study)
    if best is not None:
        write_best(setup, best, study.study_name)
    text = _markdown(study.study_name, setup, trials, best, rows)
    atomic_write_text(setup.out / TRIALS_MD, text)
    return text


def _row(trial: Any, columns: dict[str, str]) -> dict[str, Any]:
    values = trial.user_attrs.get("flags", {})
    value = trial.value if trial.value is not None else _last_reported(trial)
    steps, max_steps = trial.user_attrs.get("steps"), trial.user_attrs.get("max_steps")
    seconds = trial.duration.total_seconds() if trial.duration is not None else None
    return {
        "trial": trial.number,
        "state": trial.state.name.lower(),
        "objective": None if value is None else round(value, 6),
        **{name: _short(values.get(flag)) for name, flag in columns.items()},
        "steps": steps,
        "max_steps": max_steps,
        "stopped": trial.user_attrs.get("stopped", ""),
        "seconds": None if seconds is None else round(seconds, 1),
        "worker": trial.user_attrs.get("worker", ""),
        "folder": f"{TRIALS_DIR}/{trial.number}",
    }


def _last_reported(trial: Any) -> float | None:
    if not trial.intermediate_values:
        return None
    return trial.intermediate_values[max(trial.intermediate_values)]


def _short(value: Any) -> Any:
    return float(f"{value:.4g}") if isinstance(value, float) else value


def _best(study: Any) -> Any:
    try:
        return study.best_trial
    except ValueError:  # no complete trial yet
        return None


def steps_saved(trials: list[Any]) -> tuple[int, int]:
    """(training steps the pruner saved: max_steps - steps run, summed over pruned trials; the steps a full run of
    every finished trial would take)."""
    saved = budget = 0
    for t in trials:
        max_steps, steps = t.user_attrs.get("max_steps"), t.user_attrs.get("steps")
        if t.state.name not in ("COMPLETE", "PRUNED") or max_steps is None or steps is None:
            continue
        budget += max_steps
        if t.user_attrs.get("stopped", "").startswith("pruned"):
            saved += max_steps - steps
    return saved, budget


def write_best(setup: Setup, best: Any, study_name: str) -> Path:
    """best.yaml: the base configuration plus the best trial's values, in the flat YAML `medpt train` reads."""
    config = trial_config(setup, best.user_attrs.get("flags", {}), setup.out / "best", for_trial=False)
    path = setup.out / BEST_CONFIG
    header = (
        f"# medpt tune: the best trial of study {study_name!r} so far, trial {best.number}, "
        f"{setup.objective.describe()} = {best.value:.6g}\n# run it as it is: medpt train {path}\n"
    )
    atomic_write_text(path, header + config.to_yaml(absolute=True))
    return path


def _markdown(name: str, setup: Setup, trials: list[Any], best: Any, rows: list[dict[str, Any]]) -> str:
    states = [t.state.name.lower() for t in trials]
    words = {"complete": "complete", "pruned": "pruned", "fail": "failed (not counted)", "running": "running"}
    counts = ", ".join(f"{states.count(s)} {word}" for s, word in words.items() if s in states)
    saved, budget = steps_saved(trials)
    lines = [
        f"# medpt tune: study {name!r}",
        "",
        f"- objective (minimised): {setup.objective.describe()}",
        f"- trials: {len(trials)} ({counts or 'none yet'})",
        f"- pruning saved {saved:,} of {budget:,} training steps ({100 * saved / max(budget, 1):.1f}%)",
    ]
    if best is not None:
        flags = best.user_attrs.get("flags", {})
        values = ", ".join(f"{d.name}={_short(flags.get(d.flag))}" for d in setup.space.dimensions)
        lines += [f"- best: trial {best.number}, {best.value:.6g} ({values})",
                  f"- `medpt train {setup.out / BEST_CONFIG}` trains it again"]  # fmt: skip
    lines.append("")
    if rows:
        header = list(rows[0])
        lines += ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        lines += ["| " + " | ".join("" if r[k] is None else str(r[k]) for k in header) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_plots(study: Any, out: Path, log: Any = print) -> list[Path]:
    """The optimisation history and the parameter importances (PED-ANOVA: Optuna's own, needs no scikit-learn),
    once there are complete trials to draw."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization.matplotlib import plot_optimization_history, plot_param_importances

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    drawn = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if complete:
            drawn.append(_save(plot_optimization_history(study), out / TUNE_HISTORY, plt))
        if len(complete) >= 2:
            evaluator = optuna.importance.PedAnovaImportanceEvaluator()
            try:
                drawn.append(_save(plot_param_importances(study, evaluator=evaluator), out / TUNE_IMPORTANCE, plt))
            except (ValueError, RuntimeError) as e:  # e.g. every trial has the same values
                log(f"parameter importances not drawn: {e}")
    return drawn


def _save(ax: Any, path: Path, plt: Any) -> Path:
    figure = ax.figure
    figure.set_size_inches(7, 4)
    figure.tight_layout()
    with atomic_writer(path, "wb") as f:
        figure.savefig(f, format="png", dpi=110)
    plt.close(figure)
    return path
