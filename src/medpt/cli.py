"""The `medpt` command: one entry point, one function per subcommand.

    medpt prepare [CONFIG.yaml ...] [--flag value ...]   files or a hub dataset → packed blocks + data report
    medpt init-tiny --output_dir DIR [--size 5m]         a tiny offline LLaMA-architecture model and tokenizer
    medpt demo                                           the whole workflow, offline, on the bundled sample
    medpt train ...                                      (parses the reference command; training is next)

Every command takes --help (generated from the schema) and --dry_run (print the resolved config and stop).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from medpt import __version__
from medpt.config import Config, ModelArguments, load_config, own_specs, trainer_specs
from medpt.errors import MedptError
from medpt.flags import FlagSpec, closest, convert, format_help, specs_of, split_argv
from medpt.samples import SAMPLE_QA


@dataclass
class Command:
    run: Callable[[list[str]], int]
    summary: str


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
        print(
            f"medpt: error: unknown command {name!r}" + (f"; did you mean {hint!r}?" if hint else ""), file=sys.stderr
        )
        return 2
    try:
        return COMMANDS[name].run(rest)
    except MedptError as e:
        print(f"medpt: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medpt: interrupted", file=sys.stderr)
        return 130


def _usage() -> str:
    lines = [f"medpt {__version__}: continued pretraining of causal LLMs on medical text with LoRA", "", "commands:"]
    lines += [f"  {name:<10} {cmd.summary}" for name, cmd in COMMANDS.items()]
    lines += [
        "",
        "`medpt COMMAND --help` lists the flags of a command; --dry_run prints the resolved config and stops.",
    ]
    return "\n".join(lines)


def _pop_flag(argv: list[str], flag: str) -> bool:
    found = flag in argv
    while flag in argv:
        argv.remove(flag)
    return found


def _config_command(
    name: str, sections: tuple[str, ...], body: Callable[[Config], int], with_trainer: bool
) -> Callable:
    """Wrap a command that takes the shared configuration: handles --help and --dry_run uniformly."""

    def run(argv: list[str]) -> int:
        if _pop_flag(argv, "--help") | _pop_flag(argv, "-h"):
            groups: dict[str, list[FlagSpec]] = {s: [] for s in sections}
            for spec in own_specs().values():
                if spec.section in groups:
                    groups[spec.section].append(spec)
            help_sections = [(title, specs) for title, specs in groups.items()]
            if with_trainer:
                help_sections.append(("trainer (transformers.TrainingArguments)", list(trainer_specs().values())))
            print(f"usage: medpt {name} [CONFIG.yaml ...] [--flag value ...] [--dry_run]")
            print(format_help(help_sections))
            if not with_trainer:
                print("\nFlags of transformers.TrainingArguments are accepted too (and ignored by this command).")
            return 0
        dry_run = _pop_flag(argv, "--dry_run")
        config = load_config(argv, command=name)
        if dry_run:
            print(config.to_yaml(), end="")
            return 0
        return body(config)

    return run


def _prepare(config: Config) -> int:
    from medpt.data.pipeline import prepare_data
    from medpt.model import apply_offline

    apply_offline(config.model.offline)
    out = Path(config.run.output_dir)
    prepare_data(
        config.data, tokenizer_source(config.model), config.run.seed, out, hub_cache_dir=config.model.cache_dir
    )
    print(f"configuration: {config.save(out)}")
    return 0


def tokenizer_source(model: ModelArguments):
    from medpt.model import TokenizerSource

    name = model.tokenizer_name_or_path or model.model_name_or_path
    if not name:
        raise MedptError("a tokenizer is needed: pass --model_name_or_path (or --tokenizer_name_or_path)")
    return TokenizerSource(name, model.revision, model.cache_dir, model.trust_remote_code)


def _train(config: Config) -> int:
    raise MedptError("training is not implemented yet; `medpt train --dry_run` shows the resolved configuration")


# ---------------------------------------------------------------------------------------------------------------
@dataclass
class InitTinyArguments:
    output_dir: str = field(default="outputs/tiny-model", metadata={"help": "Where the model and tokenizer go."})
    size: str = field(default="5m", metadata={"help": "Nominal size: 5m, 25m or 100m parameters."})
    corpus: list[str] = field(
        default_factory=lambda: [str(SAMPLE_QA)],
        metadata={"help": "Files, folders or globs the tokenizer is trained on (default: the bundled sample)."},
    )
    seed: int = field(default=42, metadata={"help": "Seed of the random initialisation."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing directory."})


def parse_small(cls: type, argv: list[str], name: str):
    """Parse flags for a command with its own small dataclass (not the shared training configuration)."""
    specs = {s.name: s for s in specs_of(cls, name)}

    def lookup(flag: str) -> FlagSpec:
        if flag not in specs:
            hint = closest(flag, specs)
            raise MedptError(f"unknown flag --{flag} for {name}" + (f"; did you mean --{hint}?" if hint else ""))
        return specs[flag]

    if _pop_flag(argv, "--help") | _pop_flag(argv, "-h"):
        print(f"usage: medpt {name} [--flag value ...]" + format_help([(name, list(specs.values()))]))
        return None
    configs, pairs = split_argv(argv, lookup)
    if configs:
        raise MedptError(f"medpt {name} takes no configuration file, got {configs[0]!r}")
    return cls(**{k: convert(v, specs[k].type, k) for k, v in pairs})


def _init_tiny(argv: list[str]) -> int:
    args = parse_small(InitTinyArguments, argv, "init-tiny")
    if args is None:
        return 0
    build_tiny(args)
    return 0


def build_tiny(args: InitTinyArguments) -> dict:
    from medpt.data.pipeline import read_texts
    from medpt.model import init_tiny

    out = Path(args.output_dir)
    if out.exists() and any(out.iterdir()) and not (args.overwrite and (out / "medpt_tiny.json").is_file()):
        raise MedptError(
            f"{out} exists and is not empty; pass --overwrite to replace a tiny model there, or another --output_dir"
        )
    texts = read_texts(args.corpus)
    info = init_tiny(out, args.size, texts, args.seed)
    print(
        f"tiny model ({args.size}): {info['parameters'] / 1e6:.1f}M parameters, vocabulary {info['tokenizer_vocab']:,} "
        f"(trained on {info['corpus_texts']:,} documents) → {out}"
    )
    return info


# ---------------------------------------------------------------------------------------------------------------
@dataclass
class DemoArguments:
    output_dir: str = field(default="outputs/demo", metadata={"help": "Where every artifact of the demo goes."})
    size: str = field(default="5m", metadata={"help": "Tiny model size: 5m, 25m or 100m."})


def _demo(argv: list[str]) -> int:
    args = parse_small(DemoArguments, argv, "demo")
    if args is None:
        return 0
    from medpt.config import Config
    from medpt.data.pipeline import prepare_data

    out = Path(args.output_dir)
    model_dir = out / "tiny-model"
    print(f"[1/2] tiny {args.size} model and tokenizer → {model_dir}")
    if not (model_dir / "medpt_tiny.json").is_file():
        build_tiny(InitTinyArguments(output_dir=str(model_dir), size=args.size))
    else:
        print("      (already there)")
    print(f"[2/2] prepare the bundled sample ({SAMPLE_QA.name})")
    config = Config.from_values(
        {
            "model_name_or_path": str(model_dir),
            "train_file_dir": [str(SAMPLE_QA)],
            "validation_split_percentage": 10.0,
            "block_size": 256,
            "output_dir": str(out / "prepared"),
            "data_cache_dir": str(out / "cache"),
        },
        command="demo",
    )
    prepare_data(config.data, tokenizer_source(config.model), config.run.seed, config.run.output_dir)
    print(f"configuration: {config.save(config.run.output_dir)}")
    print(f"demo outputs are in {out}")
    return 0


COMMANDS: dict[str, Command] = {
    "prepare": Command(
        _config_command("prepare", ("model", "data", "run"), _prepare, with_trainer=False),
        "read, render, tokenize and pack training data; write data_report.json",
    ),
    "train": Command(
        _config_command("train", ("model", "data", "lora", "run"), _train, with_trainer=True),
        "continued pretraining with LoRA (configuration parses; training lands next)",
    ),
    "init-tiny": Command(_init_tiny, "build a tiny offline LLaMA-architecture model and tokenizer"),
    "demo": Command(_demo, "offline end-to-end run on the bundled sample"),
}
