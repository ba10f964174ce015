"""The configuration of a `medpt tune` trial: what every trial starts from (Setup), and one trial's `medpt train`
configuration (the base, the values the trial draws, its own folder, evaluations for the pruner)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from medpt.args import TuneArguments
from medpt.args.resolve import Config
from medpt.errors import MedptError
from medpt.tune.objective import Objective
from medpt.tune.space import SearchSpace, load_space

REPORTS_PER_TRIAL = 4  # default --eval_steps: max_steps / 4, so the pruner sees each trial four times


@dataclass(frozen=True)
class Setup:
    """What every trial starts from."""

    out: Path
    base: dict[str, Any]  # the flat `medpt train` values of the command line and YAML files, without tune's own
    space: SearchSpace
    objective: Objective
    prepare_each: bool  # the space sets data flags: each trial prepares its own data (cached) under the folder lock


def make_setup(config: Config) -> Setup:
    if config.trainer.get("max_steps") in (None, -1):
        raise MedptError("medpt tune needs --max_steps: each trial is a short training run of that many steps")
    if str(config.trainer.get("eval_strategy", "steps")) in ("no", "IntervalStrategy.NO"):
        raise MedptError("medpt tune reads each trial's evaluations: drop --eval_strategy no (--eval_steps sets how "
                         "often a trial reports)")  # fmt: skip
    tune_keys = {f.name for f in fields(TuneArguments)}
    base = {k: v for k, v in config.to_flat().items() if k not in tune_keys}
    space = load_space(config.tune.search_space, base)
    data_flags = {f.name for f in fields(type(config.data))}
    return Setup(
        out=Path(config.run.output_dir).expanduser().absolute(),
        base=base,
        space=space,
        objective=Objective.of(config),
        prepare_each=any(d.flag in data_flags for d in space.dimensions),
    )


def check_space_fits(setup: Setup, facts: Any) -> None:
    """Every value the space may draw fits the model too (a block_size within its positions, target modules it
    has): the schema's ranges cannot know the model, and trial 0 would fail on such a value after the data is
    prepared. `facts`: the model's (medpt.model.files.ModelFacts), from the checks every trial shares."""
    from medpt.train.recipe import check_fits_model

    for dim in setup.space.dimensions:
        for value in dim.candidates(setup.base):
            try:
                check_fits_model(trial_config(setup, {dim.flag: value}, setup.out), facts)
            except MedptError as e:
                raise MedptError(f"{setup.space.source}: {dim.name}: {value}: {e}") from None


def trial_config(setup: Setup, values: dict[str, Any], out: Path, for_trial: bool = True) -> Config:
    """The `medpt train` configuration of one trial: the base, the trial's values, its own folder, and evaluations
    every --eval_steps (default max_steps / 4) for the pruner. Not `for_trial`: the same run as an ordinary one
    (checkpoints, resuming), which is what best.yaml holds."""
    merged: dict[str, Any] = {**setup.base, **values, "output_dir": str(out), "overwrite_output_dir": False}
    merged.setdefault("eval_strategy", "steps")
    merged.setdefault("eval_steps", max(1, int(merged["max_steps"]) // REPORTS_PER_TRIAL))
    if for_trial:
        merged["resume_from_checkpoint"] = "no"
        merged.setdefault("save_strategy", "no")  # a trial is short and never resumed: checkpoints only cost disk
        if setup.objective.penalties:
            merged["eval_on_start"] = True  # the "before training" losses the penalties compare with
    return Config.from_values(merged, command="train")
