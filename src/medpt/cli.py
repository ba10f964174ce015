"""The `medpt` command: argument parsing and dispatch, both read from the command record (medpt.args.commands).

Every command takes --help (generated from the schema in medpt.args). Commands that take the shared configuration
also take --dry_run (print the resolved configuration, load nothing, exit) and YAML files before their flags.
A mistake a user can make ends as one line on stderr, `medpt: error: ...`, and exit status 2.
"""

from __future__ import annotations

import importlib
import sys

from medpt import __version__
from medpt.args.commands import COMMANDS, Command
from medpt.args.flags import FlagSpec, closest, format_help, specs_of, split_argv, value_of
from medpt.errors import MedptError, user_message


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"medpt {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        hint = closest(name, COMMANDS)
        return _fail(f"unknown command {name!r}" + (f"; did you mean {hint!r}?" if hint else ""))
    from medpt.rundir import forget_claims

    forget_claims()
    # The one exception boundary: a user's mistake, a full disk, a limit or the system is one line; a bug a traceback.
    try:
        return _run(name, COMMANDS[name], rest)
    except MedptError as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        print("medpt: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        message = user_message(e)
        if message is None:
            raise
        return _fail(message)


def _fail(message: str) -> int:
    print(f"medpt: error: {message}", file=sys.stderr)
    return 2


def _usage() -> str:
    lines = [f"medpt {__version__}: continued pretraining of causal LLMs on medical text with LoRA", "", "commands:"]
    lines += [f"  {name:<10} {cmd.summary}" for name, cmd in COMMANDS.items()]
    lines += [
        "",
        "`medpt COMMAND --help` lists the flags of a command; --dry_run prints the resolved config and stops.",
    ]
    return "\n".join(lines)


def _target(target: str):
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)


def _pop_flag(argv: list[str], flag: str) -> bool:
    found = flag in argv
    while flag in argv:
        argv.remove(flag)
    return found


def _run(name: str, command: Command, argv: list[str]) -> int:
    wants_help = _pop_flag(argv, "--help") | _pop_flag(argv, "-h")
    if command.args is not None:
        if command.positional and argv and not argv[0].startswith("-"):
            argv = [f"--{command.positional}", argv[0], *argv[1:]]
        if wants_help:
            print(f"usage: medpt {name} [--flag value ...]" + format_help([(name, list(specs_of(command.args, name)))]))
            return 0
        return _target(command.entry)(parse_small(command.args, argv, name))
    if wants_help:
        print(_config_help(name))
        return 0
    from medpt.args.resolve import load_config
    from medpt.model.hub import apply_offline

    dry_run = _pop_flag(argv, "--dry_run")
    config = load_config(argv, command=name)
    if dry_run:
        print(config.to_yaml(), end="")
        if command.dry_run:
            _target(command.dry_run)(config)
        return 0
    apply_offline(config.model.offline)  # every command that takes a config loads from the hub or a path
    return _target(command.entry)(config)


def _config_help(name: str) -> str:
    from medpt.args.resolve import command_specs, trainer_specs

    groups: dict[str, list[FlagSpec]] = {}
    for spec in command_specs(name):
        groups.setdefault(spec.section, []).append(spec)
    sections = list(groups.items())
    trainer = COMMANDS[name].trainer
    if trainer is True:
        sections.append(("trainer (transformers.TrainingArguments)", list(trainer_specs().values())))
    elif trainer:
        sections.append(("trainer", [trainer_specs()[t] for t in trainer]))
    return f"usage: medpt {name} [CONFIG.yaml ...] [--flag value ...] [--dry_run]" + format_help(sections)


def parse_small(cls: type, argv: list[str], name: str):
    """Flags for a command with its own small dataclass (not the shared training configuration)."""
    specs = {s.name: s for s in specs_of(cls, name)}

    def lookup(flag: str) -> FlagSpec:
        if flag not in specs:
            hint = closest(flag, specs)
            raise MedptError(f"unknown flag --{flag} for {name}" + (f"; did you mean --{hint}?" if hint else ""))
        return specs[flag]

    configs, pairs = split_argv(argv, lookup)
    if configs:
        raise MedptError(f"medpt {name} takes no configuration file, got {configs[0]!r}")
    return cls(**{k: value_of(v, specs[k]) for k, v in pairs})
