"""What a trial minimises, read from the eval metrics `medpt train` reports, and the callback that reports it.

`--objective loss` (the default) is the held-out loss of the one unnamed training source (`eval_loss`); with named
sources or `--eval_sets`, `--objective NAME` is `eval_NAME_loss`. `--objective_penalty general=0.5` adds
0.5 x max(0, eval_general_loss - eval_general_loss before training): forgetting costs, learning never earns. The
"before" value is measured by an evaluation at step 0 (`eval_on_start`), where a fresh LoRA adapter (B = 0) is the
base model itself (with --peft_path: the adapter the trial starts from).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import TrainerCallback

from medpt.args.resolve import Config
from medpt.errors import MedptError


@dataclass(frozen=True)
class Objective:
    name: str  # "loss" or the name of an eval set
    penalties: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, config: Config) -> Objective:
        """From --objective / --objective_penalty, checked against the sets the configuration names."""
        objective = cls(config.tune.objective, config.tune.penalties())
        known = configured_sets(config)
        for flag, name in [("objective", objective.name), *(("objective_penalty", n) for n in objective.penalties)]:
            if name not in known:
                raise MedptError(f"--{flag} {name}: no such eval set; the configuration has {_listed(known)}")
        return objective

    def check_prepared(self, available: set[str]) -> None:
        """Every set the objective reads has held-out blocks (a source with no validation split has none)."""
        for name in (self.name, *self.penalties):
            if name not in available:
                raise MedptError(
                    f"--objective{'_penalty' if name != self.name else ''} {name}: no held-out blocks were prepared "
                    f"for it (prepared: {_listed(available)}); give --validation_file_dir or a "
                    "--validation_split_percentage above 0"
                )

    def describe(self) -> str:
        text = _metric(self.name)
        for name, weight in self.penalties.items():
            text += f" + {weight:g} x max(0, {_metric(name)} - its value before training)"
        return text

    def value(self, metrics: dict[str, float], before: dict[str, float]) -> float | None:
        """The objective from one evaluation's metrics (None until every set it reads is in)."""
        keys = [metric_key(n, metrics) for n in (self.name, *self.penalties)]
        if any(k not in metrics for k in keys):
            return None
        total = metrics[keys[0]]
        for (name, weight), key in zip(self.penalties.items(), keys[1:]):
            total += weight * max(0.0, metrics[key] - before[name])
        return float(total)


def configured_sets(config: Config) -> list[str]:
    """The eval sets a trial of this configuration reports: `loss` for one unnamed source, else each named source,
    plus every --eval_sets name."""
    sources = config.data.source_names()
    named = [n for n in sources if n]
    unnamed = ["loss"] if sources == [""] or not sources else []
    return [*unnamed, *named, *(item.partition("=")[0] for item in config.data.eval_sets or [])]


def prepared_sets(data: Any, eval_sets: dict[str, Any]) -> set[str]:
    """The sets that got blocks (medpt.train.recipe.prepare_all's result)."""
    unnamed = {"loss"} if data.validation is not None and not data.validation_sets else set()
    return unnamed | set(data.validation_sets) | set(eval_sets)


def metric_key(name: str, metrics: dict[str, float]) -> str:
    # With --eval_sets beside one unnamed source, medpt.train.recipe names that source's held-out set "valid".
    if name == "loss":
        return "eval_loss" if "eval_valid_loss" not in metrics else "eval_valid_loss"
    return f"eval_{name}_loss"


def _metric(name: str) -> str:
    return "eval_loss" if name == "loss" else f"eval_{name}_loss"


def _listed(names: Any) -> str:
    return ", ".join(sorted(names)) or "no eval set"


class PruningCallback(TrainerCallback):
    """Reports the objective to the trial at each evaluation and stops training cleanly when the pruner says so.

    Training stops through `control.should_training_stop` (as medpt's Ctrl-C does), so `medpt train` still saves
    the trial's folder as a complete run; the objective then marks the trial pruned."""

    def __init__(self, trial: Any, objective: Objective):
        self.trial, self.objective = trial, objective
        self.before: dict[str, float] = {}
        self.metrics: dict[int, dict[str, float]] = {}  # step → metrics (named sets arrive one evaluate call each)
        self.reported: set[int] = set()
        self.value: float | None = None
        self.pruned_at: int | None = None
        self.step = 0  # optimizer steps run
        self.max_steps = 0

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.step, self.max_steps = state.global_step, state.max_steps

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict | None = None, **kwargs: Any) -> None:
        step = state.global_step
        seen = self.metrics.setdefault(step, {})
        seen.update(metrics or {})
        if step == 0:  # eval_on_start: the model before training, the baseline of the penalties
            keys = {n: metric_key(n, seen) for n in self.objective.penalties}
            self.before = {n: seen[k] for n, k in keys.items() if k in seen}
            return
        # The final evaluation repeats the last step's when max_steps is a multiple of eval_steps: report once.
        if self.pruned_at is not None or step in self.reported:
            return
        value = self.objective.value(seen, self.before)
        if value is None:
            return
        self.reported.add(step)
        self.value = value
        self.trial.report(value, step)
        if self.trial.should_prune():
            self.pruned_at = step
            control.should_training_stop = True
