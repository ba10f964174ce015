"""The search space of `medpt tune`: which `medpt train` flags a trial sets, and how each value is drawn.

A YAML mapping of flag: distribution, any train flag by its name or alias (`--search_space FILE.yaml`, or the same
mapping inline: `--search_space '{learning_rate: {log_uniform: [1e-4, 1e-2]}}'`):

    learning_rate: {log_uniform: [1.0e-5, 1.0e-2]}   # low, high: uniform in log space
    lora_dropout: {uniform: [0.0, 0.1]}              # low, high
    per_device_train_batch_size: {int: [2, 8]}        # low, high, both included
    lora_rank: {choice: [4, 8, 16]}                   # one of the values (any flag type)
    lora_alpha: {per_rank: [1, 2]}                    # alpha = ratio x the trial's lora_rank (or one ratio: 2)

Everything is checked once, before data is prepared: the flag exists and `medpt train` takes it, the distribution
fits the flag's type, and every bound and choice passes the flag's own validation (its range in the schema), so a
trial never fails on a value the file allowed. Errors name the file, line and key.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from medpt.args.flags import FlagSpec, convert
from medpt.args.resolve import Config, lookup, takes
from medpt.errors import MedptError

# The default: the knobs that matter most for LoRA continued pretraining, over ranges that hold for 7B models and
# the tiny ones alike. alpha follows the rank (the update is scaled by alpha / r, so a free alpha would make the
# rank's effect hard to read); ratio 1 or 2 is the usual choice.
DEFAULT_SPACE = """\
learning_rate: {log_uniform: [1.0e-5, 1.0e-2]}
lora_rank: {choice: [4, 8, 16, 32]}
lora_alpha: {per_rank: [1, 2]}
lora_dropout: {uniform: [0.0, 0.1]}
warmup_ratio: {uniform: [0.0, 0.1]}
"""
RANGES = ("log_uniform", "uniform", "int")
KINDS = (*RANGES, "choice", "per_rank")
# What a trial must own: its folder, its length (the pruner compares trials step by step), starting fresh.
NOT_SEARCHABLE = ("output_dir", "overwrite_output_dir", "max_steps", "resume_from_checkpoint")


@dataclass(frozen=True)
class Dimension:
    name: str  # as written in the space: Optuna's parameter name
    flag: str  # the train flag it sets (aliases resolved: warmup_ratio sets warmup_steps, where a value < 1 is a ratio)
    kind: str
    values: tuple[Any, ...]  # (low, high) for ranges; the choices; the ratios for per_rank

    def suggest(self, trial: Any, drawn: dict[str, Any]) -> Any:
        """The trial's value; `drawn` holds the flags already set for this trial (lora_rank for per_rank)."""
        if self.kind in ("log_uniform", "uniform"):
            return trial.suggest_float(self.name, *self.values, log=self.kind == "log_uniform")
        if self.kind == "int":
            return trial.suggest_int(self.name, *self.values)
        if self.kind == "choice":  # a list flag's choice (--mix a=0.7,b=0.3) goes to Optuna as its string
            options = [",".join(map(str, v)) if isinstance(v, list) else v for v in self.values]
            return self.values[options.index(trial.suggest_categorical(self.name, options))]
        ratio = self.values[0] if len(self.values) == 1 else trial.suggest_categorical(f"{self.name}_per_rank",
                                                                                       list(self.values))  # fmt: skip
        return float(ratio * drawn["lora_rank"])

    def candidates(self, base: dict[str, Any]) -> list[Any]:
        """The values that bound what a trial may draw: both ends of a range, every choice."""
        return _candidates(self.kind, self.values, base)


@dataclass(frozen=True)
class SearchSpace:
    dimensions: tuple[Dimension, ...]
    source: str  # the file, "--search_space" (inline) or "the default search space"
    text: str

    def suggest(self, trial: Any, base: dict[str, Any]) -> dict[str, Any]:
        """flag → value for one trial, on top of the base configuration's flat values."""
        drawn = dict(base)
        for dim in self.dimensions:  # per_rank comes last (see parse_space): lora_rank is drawn by then
            drawn[dim.flag] = dim.suggest(trial, drawn)
        return {dim.flag: drawn[dim.flag] for dim in self.dimensions}


def load_space(given: str | None, base: dict[str, Any]) -> SearchSpace:
    """--search_space: a .yaml/.yml file, an inline YAML mapping, or None for DEFAULT_SPACE."""
    if given is None:
        return parse_space(DEFAULT_SPACE, "the default search space", base)
    if given.strip().endswith((".yaml", ".yml")):
        path = Path(given).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise MedptError(f"--search_space {given}: no such file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise MedptError(f"--search_space {given}: cannot read it ({e})") from None
        return parse_space(text, given, base)
    return parse_space(given, "--search_space", base)


def parse_space(text: str, source: str, base: dict[str, Any]) -> SearchSpace:
    """Parse and check a space against `base`, the flat values of the configuration each trial starts from."""
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise MedptError(f"{source}: invalid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(node, yaml.MappingNode) or not isinstance(data, dict) or not data:
        raise MedptError(f"{source}: expected a mapping of flag: {{distribution: ...}}, e.g. learning_rate: "
                         "{log_uniform: [1.0e-5, 1.0e-2]}")  # fmt: skip
    lines: dict[str, int] = {}
    for key_node, _ in node.value:
        where = f"{source}:{key_node.start_mark.line + 1}"
        if key_node.value in lines:
            raise MedptError(f"{where}: {key_node.value} is given twice (first on line {lines[key_node.value]})")
        lines[key_node.value] = key_node.start_mark.line + 1
    dims = [_dimension(str(key), raw, f"{source}:{lines[str(key)]}", base) for key, raw in data.items()]
    first: dict[str, Dimension] = {}
    for dim in dims:
        other = first.setdefault(dim.flag, dim)
        if other is not dim:
            raise MedptError(f"{source}:{lines[dim.name]}: {dim.name} sets --{dim.flag}, as {other.name} on line "
                             f"{lines[other.name]} does")  # fmt: skip
    dims.sort(key=lambda d: d.kind == "per_rank")  # stable: the file's order otherwise
    return SearchSpace(tuple(dims), source, text)


def _dimension(key: str, raw: Any, where: str, base: dict[str, Any]) -> Dimension:
    try:
        spec = lookup(key)
    except MedptError as e:
        raise MedptError(f"{where}: {e}") from None
    if spec.section == "tune" or not takes("train", spec) or spec.name in NOT_SEARCHABLE:
        raise MedptError(f"{where}: {key} cannot be searched (each trial sets it, or `medpt train` does not take it)")
    kinds = [k for k in KINDS if k != "per_rank" or spec.name == "lora_alpha"]
    if not isinstance(raw, dict) or len(raw) != 1 or next(iter(raw)) not in kinds:
        raise MedptError(f"{where}: {key}: expected one of {', '.join('{' + k + ': ...}' for k in kinds)}; got "
                         f"{raw!r}")  # fmt: skip
    kind, given = next(iter(raw.items()))
    prefix = f"{where}: {key}: {kind}"
    values = _values(kind, given, spec, prefix)
    for candidate in _candidates(kind, values, base):
        try:
            Config.from_values({**base, spec.name: candidate}, command="train")
        except MedptError as e:
            raise MedptError(f"{prefix} {_flow(given)}: {e}") from None
    return Dimension(key, spec.name, kind, values)


def _values(kind: str, given: Any, spec: FlagSpec, prefix: str) -> tuple[Any, ...]:
    if kind == "choice":
        if not isinstance(given, list) or not given:
            raise MedptError(f"{prefix}: expected a non-empty list of values, got {_flow(given)}")
        if any(isinstance(v, (list, dict)) for v in given):
            raise MedptError(f"{prefix}: each choice must be a single value (write a list flag as 'a,b'); got "
                             f"{_flow(given)}")  # fmt: skip
        if len(set(map(repr, given))) != len(given):
            raise MedptError(f"{prefix}: {_flow(given)} repeats a value")
        return tuple(convert(v, spec.type, spec.name) for v in given)
    if kind == "per_rank":
        ratios = given if isinstance(given, list) else [given]
        numbers = [_number(v, float, prefix) for v in ratios]
        if not numbers or any(r <= 0 for r in numbers):
            raise MedptError(f"{prefix}: expected a ratio > 0 or a list of them, got {_flow(given)}")
        return tuple(numbers)
    number = int if kind == "int" else float
    if kind != "int" and _is_int_flag(spec):
        raise MedptError(f"{prefix}: --{spec.name} takes whole numbers; use int: [low, high] or choice: [...]")
    if not isinstance(given, list) or len(given) != 2:
        raise MedptError(f"{prefix}: expected [low, high], got {_flow(given)}")
    low, high = (_number(v, number, prefix) for v in given)
    if not low < high:
        raise MedptError(f"{prefix}: low must be below high, got {_flow(given)}")
    if kind == "log_uniform" and low <= 0:
        raise MedptError(f"{prefix}: a log-uniform range must be above 0, got {_flow(given)}")
    return low, high


def _number(value: Any, number: type, prefix: str) -> Any:
    # PyYAML reads 1e-5 (no dot) as a string: accept it as the number it looks like.
    try:
        result = number(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        result = None
    if result is None or (number is int and result != float(value)) or not math.isfinite(result):
        raise MedptError(f"{prefix}: expected {'a whole number' if number is int else 'a number'}, got {value!r}")
    return result


def _is_int_flag(spec: FlagSpec) -> bool:
    kinds = [m for m in (typing.get_args(spec.type) or (spec.type,)) if m is not type(None)]
    return kinds == [int]


def _candidates(kind: str, values: tuple[Any, ...], base: dict[str, Any]) -> list[Any]:
    """The values to validate: both bounds, every choice; for per_rank, each ratio times the base rank."""
    if kind == "per_rank":
        return [float(r * base["lora_rank"]) for r in values]
    return list(values)


def _flow(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()
