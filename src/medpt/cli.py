"""The `medpt` command: one entry point, one function per subcommand.

    medpt prepare [CONFIG.yaml ...] [--flag value ...]   files or a hub dataset → packed blocks + data report
    medpt init-tiny --output_dir DIR [--size 5m]         a tiny offline LLaMA-architecture model and tokenizer
    medpt demo                                           the whole workflow, offline, on the bundled sample
    medpt train [CONFIG.yaml ...] [--flag value ...]     continued pretraining (LoRA, QLoRA, full), resumable
    medpt download REPO_ID [--repo_type dataset]         fetch from the hub (mirrors via HF_ENDPOINT, resumable)

Every command takes --help (generated from the schema) and --dry_run (print the resolved config and stop).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from medpt import __version__
from medpt.config import Config, ModelArguments, load_config, own_specs, trainer_specs
from medpt.errors import MedptError
from medpt.flags import FlagSpec, closest, convert, format_help, specs_of, split_argv
from medpt.hub import apply_offline
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
    """Wrap a command that takes the shared configuration: handles --help and --dry_run uniformly, and for the
    commands that take --adapter, starts from that run's saved settings (base model, template, block size, ...)."""

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
        config = load_config(argv, command=name, base=_inherited(argv) if "eval" in sections else None)
        if dry_run:
            print(config.to_yaml(), end="")
            return 0
        apply_offline(config.model.offline)  # every command that takes a config loads from the hub or a path
        return body(config)

    return run


# What a run passes on to the commands that use it: how to load the model and how its data was made.
_INHERITED_SECTIONS = ("model", "data")
_INHERITED_KEYS = ("seed", "per_device_eval_batch_size")


def _inherited(argv: list[str]) -> dict | None:
    """The saved settings of the run named by --adapter, if it is a medpt run."""
    from medpt.config import CONFIG_FILE, load_saved

    adapter = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--adapter"), None)
    if adapter is None:
        adapter = next((a.split("=", 1)[1] for a in argv if a.startswith("--adapter=")), None)
    if not adapter or not (Path(adapter) / CONFIG_FILE).is_file():
        return None
    saved = load_saved(adapter)
    keep = {k for name in _INHERITED_SECTIONS for k in asdict(getattr(saved, name))}
    return {k: v for k, v in saved.to_flat().items() if k in keep or k in _INHERITED_KEYS}


def _prepare(config: Config) -> int:
    from medpt.data.pipeline import prepare_data

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
    from medpt.train import train

    return train(config)


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
    from medpt.demo import run_demo

    args = parse_small(DemoArguments, argv, "demo")
    if args is None:
        return 0
    return run_demo(args.output_dir, args.size)


@dataclass
class DownloadArguments:
    repo_id: str = field(
        default="", metadata={"help": "Repository to fetch, e.g. deepseek-ai/deepseek-coder-7b-base-v1.5."}
    )
    repo_type: str = field(default="model", metadata={"help": "model or dataset."})
    revision: str | None = field(default=None, metadata={"help": "Branch, tag or commit."})
    cache_dir: str | None = field(default=None, metadata={"help": "Hub cache folder (default $HF_HOME/hub)."})
    local_dir: str | None = field(default=None, metadata={"help": "Also place the files in this folder."})
    include: list[str] | None = field(default=None, metadata={"help": "Only files matching these globs."})


def _download(argv: list[str]) -> int:
    from medpt.hub import download

    if argv and not argv[0].startswith("-"):
        argv = ["--repo_id", argv[0], *argv[1:]]  # `medpt download REPO_ID ...`
    args = parse_small(DownloadArguments, argv, "download")
    if args is None:
        return 0
    if not args.repo_id:
        raise MedptError("usage: medpt download REPO_ID [--repo_type dataset] [--revision REV] [--local_dir DIR]")
    if args.repo_type not in ("model", "dataset"):
        raise MedptError(f"--repo_type must be model or dataset, got {args.repo_type!r}")
    path = download(args.repo_id, args.repo_type, args.revision, args.cache_dir, args.local_dir, args.include)
    print(f"{args.repo_id}: {path}")
    return 0


def _eval(config: Config) -> int:
    from medpt.evaluate import run_eval

    run_eval(config)
    return 0


def _variants(config: Config):
    from medpt.model import inference_dtype, load_variants

    return load_variants(config.model, config.eval.adapter, inference_dtype(config.model.torch_dtype))


def _compare(config: Config) -> int:
    from medpt.generate import run_compare

    run_compare(config, _variants(config), config.beside_adapter("compare"))
    return 0


def _generate(config: Config) -> int:
    from medpt.generate import run_generate

    out = Path(config.generate.answers_file or config.beside_adapter("answers.jsonl"))
    run_generate(config, _variants(config), out)
    return 0


def _chat(config: Config) -> int:
    from medpt.generate import run_chat

    return run_chat(config, _variants(config))


def _verify(config: Config) -> int:
    from medpt.verify import run_verify

    return run_verify(config)


def _merge(config: Config) -> int:
    from medpt.merge import run_merge

    if "output_dir" not in config.explicit:
        raise MedptError("merge needs --output_dir (a new, empty directory for the merged model)")
    run_merge(config, Path(config.run.output_dir))
    return 0


@dataclass
class ReportArguments:
    run_dir: str = field(default="", metadata={"help": "The medpt run to report on."})
    output_dir: str | None = field(default=None, metadata={"help": "Where report.html/.md go (default: the run)."})


def _report(argv: list[str]) -> int:
    from medpt.report import write_report

    if argv and not argv[0].startswith("-"):
        argv = ["--run_dir", argv[0], *argv[1:]]  # `medpt report RUN_DIR`
    args = parse_small(ReportArguments, argv, "report")
    if args is None:
        return 0
    if not args.run_dir:
        raise MedptError("usage: medpt report RUN_DIR [--output_dir DIR]")
    write_report(Path(args.run_dir), Path(args.output_dir) if args.output_dir else None)
    return 0


_USE_RUN = ("model", "data", "eval", "generate", "run")
COMMANDS: dict[str, Command] = {
    "prepare": Command(
        _config_command("prepare", ("model", "data", "run"), _prepare, with_trainer=False),
        "read, render, tokenize and pack training data; write data_report.json",
    ),
    "train": Command(
        _config_command("train", ("model", "data", "lora", "run"), _train, with_trainer=True),
        "continued pretraining with LoRA / QLoRA / full fine-tuning on transformers.Trainer",
    ),
    "eval": Command(
        _config_command("eval", ("model", "data", "eval", "run"), _eval, with_trainer=False),
        "loss, token accuracy, perplexity (and multiple choice): base vs adapted, one table",
    ),
    "verify": Command(
        _config_command("verify", ("model", "eval"), _verify, with_trainer=False),
        "check that an adapter fits its base, learned something and changes the outputs",
    ),
    "compare": Command(
        _config_command("compare", _USE_RUN, _compare, with_trainer=False),
        "base and adapted answers side by side (Markdown, HTML, JSONL)",
    ),
    "generate": Command(
        _config_command("generate", _USE_RUN, _generate, with_trainer=False),
        "answer a file of questions (jsonl in, jsonl out)",
    ),
    "chat": Command(
        _config_command("chat", _USE_RUN, _chat, with_trainer=False),
        "interactive chat, streamed, in the 问/答 template",
    ),
    "merge": Command(
        _config_command("merge", ("model", "eval", "run"), _merge, with_trainer=False),
        "fold the adapter into the base and save a standalone model",
    ),
    "report": Command(_report, "one HTML + Markdown page for a run"),
    "init-tiny": Command(_init_tiny, "build a tiny offline LLaMA-architecture model and tokenizer"),
    "download": Command(_download, "fetch a model or dataset from the hub (HF_ENDPOINT mirrors; resumable)"),
    "demo": Command(_demo, "the whole workflow, offline on a CPU, on the bundled sample (a few minutes)"),
}
