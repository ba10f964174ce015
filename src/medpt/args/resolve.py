"""Configuration: how a command's settings are resolved, saved and read back. The schema itself is `medpt.args`.

A command is configured by defaults, then (for the commands that take `--adapter RUN`) that run's saved settings,
then YAML files (flat `flag: value` maps), then command-line flags: `medpt train configs/tiny-cpu.yaml --block_size
256`. Flag names follow transformers and MedicalGPT, so their command lines parse verbatim. Flags of
`transformers.TrainingArguments` that medpt does not own (learning rate, scheduler, logging, ...) are accepted by
`medpt train` as they are and handed to it unchanged; their schema is TrainingArguments itself, loaded only when
such a flag is used, because importing transformers costs seconds.

On the command line a flag must belong to the command (`--lora_rank` is a train flag, not a verify flag); in YAML files,
which are often shared between commands, keys of other commands are allowed and ignored.
"""

from __future__ import annotations

import datetime
import functools
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from medpt.args import (  # noqa: F401 - re-exported: the schema is imported from here by most modules
    COMMANDS,
    RESUME_WORDS,
    SECTIONS,
    TEMPLATES,
    DataArguments,
    EvalArguments,
    ExportArguments,
    GenerationArguments,
    LoraArguments,
    ModelArguments,
    PlanArguments,
    RunArguments,
    ServeArguments,
    TuneArguments,
    check_trainer_values,
)
from medpt.args.flags import FlagSpec, closest, specs_of, split_argv, value_of
from medpt.atomic import atomic_write_text
from medpt.errors import MedptError
from medpt.rundir import CONFIG_FILE, Inputs

# Names used by older transformers or by MedicalGPT, mapped to today's flag when the installed version lacks them.
# transformers 5 folded warmup_ratio into warmup_steps: a float below 1 there is a ratio of the total steps.
ALIASES = {
    "evaluation_strategy": "eval_strategy",
    "warmup_ratio": "warmup_steps",
    "lora_r": "lora_rank",
    "overwrite": "overwrite_output_dir",
}
# What a run passes on to the commands that use it (--adapter RUN): how to load the model and how its data was made.
INHERITED_SECTIONS = ("model", "data")
INHERITED_KEYS = ("seed", "per_device_eval_batch_size")


@functools.cache
def own_specs() -> dict[str, FlagSpec]:
    specs: dict[str, FlagSpec] = {}
    for section, cls in SECTIONS.items():
        for spec in specs_of(cls, section):
            assert spec.name not in specs, f"flag --{spec.name} is defined twice"
            specs[spec.name] = spec
    return specs


@functools.cache
def _only() -> dict[str, tuple[str, ...] | None]:
    return {f.name: f.metadata.get("only") for cls in SECTIONS.values() for f in fields(cls)}


@functools.cache
def path_flags() -> frozenset[str]:
    return frozenset(f.name for cls in SECTIONS.values() for f in fields(cls) if f.metadata.get("path"))


def inputs_of(config: Any) -> Inputs:
    """Everything a command configured by `config` reads: every flag the schema marks as an input (`path="what"`),
    so a new input flag is protected from outputs without a list to update. NAME=PATH items are named by NAME."""
    from medpt.data.cache import cache_root
    from medpt.rundir import hub_cache

    # Caches: their default (None) is a folder all the same, which medpt may create; no output may sit inside it.
    caches = {"cache_dir": hub_cache, "data_cache_dir": cache_root}
    inputs = Inputs()
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            what, value = f.metadata.get("path"), getattr(getattr(config, section), f.name)
            if not isinstance(what, str) or f.name == "adapter":
                continue
            if f.name in caches:
                inputs.add(what, caches[f.name](value), even_if_missing=True)
            elif f.name == "resume_from_checkpoint":
                if value and value.lower() not in RESUME_WORDS:
                    inputs.add(what, value)
            elif "{name" in what:
                for item in value or []:
                    name, _, path = item.partition("=")
                    inputs.add(what.format(name=name), path)
            else:
                inputs.add_all(what, [value] if isinstance(value, str) else value)
    if config.eval.adapter:  # outputs may sit inside the adapter's run (RUN/eval), never be or hold it
        inputs.adapter = Path(config.eval.adapter)
    return inputs


@functools.cache
def trainer_specs() -> dict[str, FlagSpec]:
    """The transformers.TrainingArguments flags that medpt does not own. Imports transformers (slow): on demand."""
    from transformers import TrainingArguments

    return {s.name: s for s in specs_of(TrainingArguments, "trainer", exclude=own_specs())}


def lookup(name: str) -> FlagSpec:
    specs = own_specs()
    if name in specs:
        return specs[name]
    if ALIASES.get(name) in specs:  # without importing transformers for the trainer flags
        return specs[ALIASES[name]]
    if name in trainer_specs():
        return trainer_specs()[name]
    if name in ALIASES:
        return lookup(ALIASES[name])
    hint = closest(name, [*specs, *trainer_specs()])
    raise MedptError(f"unknown flag --{name}" + (f"; did you mean --{hint}?" if hint else "; see --help"))


def takes(command: str, spec: FlagSpec) -> bool:
    """Whether `medpt COMMAND` uses the flag. A command without sections of its own (the demo, which builds the
    configurations of the commands it runs) takes everything."""
    flags = COMMANDS.get(command)
    if flags is None or not flags.sections:
        return True
    if spec.section == "trainer":
        return flags.trainer is True or spec.name in flags.trainer
    if spec.name in flags.extra:
        return True
    only = _only().get(spec.name)
    return flags.takes_section(spec.section) and (only is None or command in only)


def command_specs(command: str) -> list[FlagSpec]:
    return [s for s in own_specs().values() if takes(command, s)]


def _not_this_command(command: str, spec: FlagSpec) -> MedptError:
    users = [c for c, cmd in COMMANDS.items() if cmd.sections and takes(c, spec)]
    if "train" in users:  # tune runs train, plan plans it: naming train is enough
        users = [c for c in users if c not in ("tune", "plan")]
    owner = "/".join(users) if users else "no command's"
    return MedptError(
        f"--{spec.name} is {_a(owner)} {owner} flag, not {_a(command)} {command} flag; see `medpt {command} --help`"
    )


def _a(word: str) -> str:
    return "an" if word[:1] in ("a", "e", "i", "o", "u") else "a"


@dataclass
class Config:
    """The resolved configuration of one command."""

    model: ModelArguments
    data: DataArguments
    lora: LoraArguments
    run: RunArguments
    eval: EvalArguments
    generate: GenerationArguments
    serve: ServeArguments
    export: ExportArguments
    tune: TuneArguments
    plan: PlanArguments
    trainer: dict[str, Any] = field(default_factory=dict)
    """TrainingArguments values set explicitly (by YAML or flag); the rest keep transformers' defaults."""
    command: str = ""
    sources: list[str] = field(default_factory=list)
    explicit: set[str] = field(default_factory=set)
    """Flags set by a YAML file or the command line (not inherited from defaults or a run's saved config)."""
    given: dict[str, Any] = field(default_factory=dict)
    """Path values as the user wrote them (relative ones are saved absolute, with these beside them)."""

    @classmethod
    def from_values(cls, values: dict[str, Any], command: str = "", sources: list[str] | None = None) -> Config:
        """Build the sections from flat, already converted values; each section validates itself."""
        specs = own_specs()
        kwargs: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
        trainer = {}
        for key, value in values.items():
            if key in specs:
                kwargs[specs[key].section][key] = value
            else:
                trainer[key] = value
        check_trainer_values(trainer)
        built = {name: SECTIONS[name](**kwargs[name]) for name in SECTIONS}
        return cls(**built, trainer=trainer, command=command, sources=list(sources or []))

    @property
    def eval_batch_size(self) -> int:
        """--per_device_eval_batch_size, a TrainingArguments flag eval also takes; 8 is TrainingArguments' default."""
        return int(self.trainer.get("per_device_eval_batch_size", 8))

    def beside_adapter(self, name: str) -> Path:
        """Where eval/compare/generate write: --output_dir if given, else NAME inside the --adapter run, else
        outputs/NAME."""
        if "output_dir" in self.explicit:
            return Path(self.run.output_dir)
        return Path(self.eval.adapter) / name if self.eval.adapter else Path("outputs") / name

    def to_flat(self) -> dict[str, Any]:
        flat: dict[str, Any] = {}
        for name in SECTIONS:
            flat.update(asdict(getattr(self, name)))
        flat.update(self.trainer)
        return flat

    def to_yaml(self, absolute: bool = False) -> str:
        """Flat YAML grouped by section; keys that differ from the defaults are marked, so the file reads as a diff.
        With `absolute`, paths are written absolute (a run is read from any working directory), each relative one
        followed by the path as given."""
        stamp = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        lines = [
            f"# medpt {self.command} configuration, resolved {stamp}",
            "# '# set' marks values that differ from the defaults",
        ]
        for name, cls in SECTIONS.items():
            lines.append(f"\n# --- {name} ---")
            section = getattr(self, name)
            for f in fields(cls):
                value = getattr(section, f.name)
                if f.metadata.get("secret") and value is not None:
                    value = "(set, not shown)"
                note = ""
                if absolute and f.name in path_flags() and not _is_keyword(f.name, value):
                    value = absolute_paths(value)
                    if value != getattr(section, f.name):
                        note = f"; given as {_flow(getattr(section, f.name))}"
                changed = getattr(section, f.name) != own_specs()[f.name].default
                lines.append(_yaml_line(f.name, value, changed, note))
        lines.append("\n# --- trainer (transformers.TrainingArguments; unlisted fields keep its defaults) ---")
        lines.extend(_yaml_line(k, v, True) for k, v in self.trainer.items())
        return "\n".join(lines) + "\n"

    def save(self, output_dir: str | Path) -> Path:
        path = Path(output_dir) / CONFIG_FILE
        atomic_write_text(path, self.to_yaml(absolute=True))
        return path


def absolute_paths(value: Any) -> Any:
    """A path (or list of paths, or NAME=PATH items) made absolute; hub ids (org/name that is not a local path) stay."""
    if isinstance(value, list):
        return [absolute_paths(v) for v in value]
    if not isinstance(value, str) or not value:
        return value
    name, eq, path = value.partition("=")
    if eq and name.isidentifier() and path:
        return f"{name}={absolute_paths(path)}"
    expanded = os.path.expanduser(value)
    if os.path.isabs(expanded):
        return expanded
    if not os.path.exists(expanded) and _looks_like_hub_id(value):
        return value
    return os.path.abspath(expanded)


def _is_keyword(flag: str, value: Any) -> bool:
    """--resume_from_checkpoint holds a path or a word (auto, no): a word is saved as it is, not as a path."""
    return flag == "resume_from_checkpoint" and str(value).strip().lower() in ("", *RESUME_WORDS)


def _looks_like_hub_id(value: str) -> bool:
    return value.count("/") == 1 and not value.startswith((".", "~")) and not any(c in value for c in "*?[")


def _flow(value: Any) -> str:
    return (
        yaml.safe_dump(value, allow_unicode=True, default_flow_style=True, width=10_000)
        .strip()
        .removesuffix("...")
        .strip()
    )


def _yaml_line(key: str, value: Any, changed: bool, note: str = "") -> str:
    text = yaml.safe_dump({key: value}, allow_unicode=True, default_flow_style=True, width=10_000, sort_keys=False)
    text = text.strip().removeprefix("{").removesuffix("}")
    return text + ("  # set" + note if changed else (f"  #{note[1:]}" if note else ""))


def load_config(argv: list[str], command: str = "", base: dict[str, Any] | None = None) -> Config:
    """Defaults, then `base` (a run's saved values; for adapter commands read from --adapter when not given), then
    each YAML file in order, then command-line flags; errors name the file or flag."""
    config_paths, pairs = split_argv(argv, lookup)
    from_files: list[tuple[str, FlagSpec, Any]] = []
    for path in config_paths:
        for key, raw in _read_yaml(path).items():
            try:
                spec = lookup(str(key))
                from_files.append((path, spec, value_of(raw, spec)))
            except MedptError as e:
                raise MedptError(f"{path}: {e}") from None
    from_flags = []
    for name, raw in pairs:
        spec = lookup(name)
        if not takes(command, spec):
            raise _not_this_command(command, spec)
        from_flags.append((spec, value_of(raw, spec, name)))
    values: dict[str, Any] = {}
    explicit: set[str] = set()
    for path, spec, value in from_files:
        if takes(command, spec):  # a shared YAML file may hold other commands' keys
            values[spec.name] = value
            explicit.add(spec.name)
    for spec, value in from_flags:
        values[spec.name] = value
        explicit.add(spec.name)
    if base is None and "adapter" in values and command in COMMANDS:
        if COMMANDS[command].takes_section("eval"):
            base = inherited(values["adapter"])
    config = Config.from_values({**(base or {}), **values}, command=command, sources=config_paths)
    config.explicit = explicit
    return config


def inherited(adapter: str | None) -> dict[str, Any] | None:
    """The saved settings of the run named by --adapter, if it is a medpt run: its model and data sections."""
    if not adapter or not (Path(adapter) / CONFIG_FILE).is_file():
        return None
    saved = load_saved(adapter)
    keep = {k for name in INHERITED_SECTIONS for k in asdict(getattr(saved, name))}
    return {k: v for k, v in saved.to_flat().items() if k in keep or k in INHERITED_KEYS}


def load_saved(run_dir: str | Path) -> Config:
    """Read a run's saved configuration. Keys this version does not know are ignored, so old code reads new runs."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise MedptError(f"{run_dir} has no {CONFIG_FILE}: is it a medpt output directory?")
    data = _read_yaml(path)
    if not data:
        raise MedptError(f"{path} is empty: a run's saved configuration holds its model and data settings; copy "
                         "it again, or delete it and pass --model_name_or_path")  # fmt: skip
    specs = own_specs()
    trainer = {k: v for k, v in data.items() if k not in specs}
    try:
        # Converted like a YAML file's values: a hand-edited value of the wrong type is named here, not used.
        known = {k: value_of(v, specs[k]) for k, v in data.items() if k in specs}
        config = Config.from_values(known, command="saved", sources=[str(path)])
    except MedptError as e:
        raise MedptError(f"{path}: {e}") from None
    config.trainer = trainer
    return config


def _read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if p.suffix not in (".yaml", ".yml"):
        raise MedptError(f"{path}: configuration files must end in .yaml or .yml (flags start with --)")
    if not p.is_file():
        raise MedptError(f"{path}: no such configuration file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        line = p.read_bytes()[: e.start].count(b"\n") + 1
        raise MedptError(f"{path}:{line}: not valid UTF-8 (byte 0x{e.object[e.start]:02x}); save it as UTF-8") from None
    except yaml.YAMLError as e:
        raise MedptError(f"{path}: invalid YAML: {' '.join(str(e).split())}") from None
    except OSError as e:
        raise MedptError(f"{path}: cannot read: {e.strerror}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise MedptError(f"{path}: expected a mapping of flag: value, got {type(data).__name__}")
    return data
