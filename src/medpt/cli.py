"""The `medpt` command: a table of subcommands, argument parsing, and dispatch. Nothing else lives here.

Every command takes --help (generated from the schema in medpt.args). Commands that take the shared configuration
also take --dry_run (print the resolved configuration, load nothing, exit) and YAML files before their flags.
A mistake a user can make ends as one line on stderr, `medpt: error: ...`, and exit status 2.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass

from medpt import __version__
from medpt.args import DemoArguments, DownloadArguments, InitTinyArguments, ReportArguments
from medpt.args.flags import FlagSpec, closest, format_help, specs_of, split_argv, value_of
from medpt.errors import MedptError, user_message


@dataclass(frozen=True)
class Command:
    target: str  # "module:function"; the function takes a Config (args is None) or an instance of `args`
    summary: str
    args: type | None = None  # a small command's own flags; None: the shared configuration (medpt.args sections)
    positional: str | None = None  # the flag a leading positional argument fills: `medpt report RUN`
    dry_run: str | None = None  # "module:function" printing what --dry_run adds after the resolved configuration


COMMANDS: dict[str, Command] = {
    "prepare": Command(
        "medpt.data.prepare:run_prepare", "read, render, tokenize and pack training data; data_report.json"
    ),
    "train": Command(
        "medpt.train.command:run_train",
        "continued pretraining with LoRA / QLoRA / full fine-tuning",
        dry_run="medpt.plan.command:print_dry_run",
    ),
    "plan": Command(
        "medpt.plan.command:run_plan", "will it fit? peak memory by part and the largest micro-batch, before loading"
    ),
    "tune": Command(
        "medpt.tune.study:run_tune", "hyperparameter search: an Optuna study of short train runs, shareable"
    ),
    "eval": Command(
        "medpt.eval.command:run_eval",
        "base vs adapted with 95% CIs: perplexity, multiple-choice benchmarks, generated answers",
    ),
    "verify": Command(
        "medpt.eval.verify:run_verify", "check that an adapter fits its base, learned something, changes outputs"
    ),
    "compare": Command(
        "medpt.generate.command:run_compare", "base and adapted answers side by side (Markdown, HTML, JSONL)"
    ),
    "generate": Command("medpt.generate.command:run_generate", "answer a file of questions (jsonl in, jsonl out)"),
    "chat": Command("medpt.generate.command:run_chat", "interactive chat, streamed, in the 问/答 template"),
    "merge": Command("medpt.export.merge:run_merge", "fold the adapter into the base and save a standalone model"),
    "serve": Command("medpt.serve.command:run_serve", "an OpenAI-compatible API and a before/after web page for a run"),
    "export": Command(
        "medpt.export.command:run_export",
        "the adapter for vLLM, SGLang, llama.cpp or Ollama, checked against their limits",
    ),
    "report": Command(
        "medpt.report.command:run_report", "one HTML + Markdown page for a run", ReportArguments, "run_dir"
    ),
    "init-tiny": Command(
        "medpt.model.init_tiny:run_init_tiny", "build a tiny offline LLaMA-architecture model", InitTinyArguments
    ),
    "download": Command(
        "medpt.model.download:run_download",
        "fetch a model or dataset (HF_ENDPOINT mirrors)",
        DownloadArguments,
        "repo_id",
    ),  # fmt: skip
    "demo": Command(
        "medpt.demo:run_demo", "the whole workflow, offline on a CPU, on the bundled sample", DemoArguments
    ),
}


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
        return _target(command.target)(parse_small(command.args, argv, name))
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
    return _target(command.target)(config)


def _config_help(name: str) -> str:
    from medpt.args import COMMAND_FLAGS
    from medpt.args.resolve import command_specs, trainer_specs

    groups: dict[str, list[FlagSpec]] = {}
    for spec in command_specs(name):
        groups.setdefault(spec.section, []).append(spec)
    sections = list(groups.items())
    trainer = COMMAND_FLAGS[name].trainer
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
