"""Configuration. The dataclasses below are the schema: every flag, its type, default and help live here.

A run is configured by defaults, then YAML files (flat `flag: value` maps), then command-line flags:
`medpt train configs/tiny-cpu.yaml --block_size 256`. Flag names follow transformers and MedicalGPT, so their
command lines parse verbatim. Flags of `transformers.TrainingArguments` that medpt does not own (learning rate,
scheduler, logging, ...) are accepted as they are and handed to it unchanged; their schema is TrainingArguments
itself, loaded only when such a flag is used, because importing transformers costs seconds.
"""

from __future__ import annotations

import datetime
import functools
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from medpt.atomic import atomic_write_text
from medpt.errors import MedptError
from medpt.flags import FlagSpec, closest, convert, specs_of, split_argv

CONFIG_FILE = "medpt_config.yaml"
TEMPLATES = ("qa_separator", "qa", "chat_template", "custom")


def _arg(default: Any = None, help: str = "", factory: Any = None) -> Any:
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class ModelArguments:
    model_name_or_path: str | None = _arg(
        None, "Base model: a hub id (deepseek-ai/deepseek-coder-7b-base-v1.5) or a local directory."
    )
    tokenizer_name_or_path: str | None = _arg(None, "Tokenizer, when it is not the model's own.")
    cache_dir: str | None = _arg(None, "Cache for hub downloads (models and datasets); default $HF_HOME/hub.")
    revision: str | None = _arg(None, "Hub revision (branch, tag or commit) of the model and tokenizer.")
    trust_remote_code: bool = _arg(False, "Run Python code shipped with a hub model. Off unless you trust it.")
    torch_dtype: Literal["auto", "bfloat16", "float16", "float32"] | None = _arg(
        None, "Weight dtype when loading; None picks bfloat16 where the device supports it, else float32."
    )
    offline: bool = _arg(False, "Never touch the network (sets HF_HUB_OFFLINE=1); only local paths and caches.")
    load_in_4bit: bool = _arg(False, "Load the base model in 4-bit NF4 with double quantisation (QLoRA; bitsandbytes).")
    attn_implementation: str | None = _arg(None, "Attention kernel (sdpa, eager, flash_attention_2); default sdpa.")


@dataclass
class DataArguments:
    dataset_name: str | None = _arg(None, "Hub dataset id (or a local dataset folder) read with datasets.")
    dataset_config_name: str | None = _arg(None, "Configuration (subset) name of --dataset_name.")
    train_file_dir: list[str] | None = _arg(
        None, "Training files, folders or globs: .jsonl .json .parquet .csv .txt, each optionally .gz."
    )
    validation_file_dir: list[str] | None = _arg(
        None, "Validation files, folders or globs; without them a stable hash split of the training data is used."
    )
    data_format: Literal["auto", "sharegpt", "messages", "alpaca", "text"] = _arg(
        "auto", "Record shape; auto detects it per file from the first record's keys."
    )
    template: str = _arg(
        "qa_separator",
        "How conversations become text: qa_separator (问:/答: turns then a ===== line, the reference rendering), "
        "qa (no separator), chat_template (the tokenizer's), custom (--template_format).",
    )
    template_format: dict[str, str] | None = _arg(
        None,
        'For --template custom: {"system": "...{text}", "human": "Q: {text}\\n", "gpt": "A: {text}\\n", "end": ""}.',
    )
    txt_split: Literal["paragraph", "line", "file"] = _arg(
        "paragraph", "How a .txt file is cut into documents: blank-line paragraphs, single lines, or the whole file."
    )
    encoding: str = _arg("utf-8", "Text encoding of the input files (e.g. gb18030 for some Chinese corpora).")
    normalize: Literal["none", "nfc", "nfkc"] = _arg(
        "none", "Unicode normalisation plus whitespace cleanup of rendered text; none keeps the bytes exact."
    )
    dedup: bool = _arg(True, "Drop exact duplicate documents (after rendering); every drop is counted.")
    validation_split_percentage: float = _arg(
        1.0, "Percent of documents held out for validation by content hash when no validation files are given."
    )
    max_train_samples: int | None = _arg(None, "Use a seeded random sample of this many training documents.")
    max_eval_samples: int | None = _arg(None, "Use a seeded random sample of this many validation documents.")
    block_size: int = _arg(512, "Tokens per training block (sequence length).")
    packing: Literal["concat", "isolated", "none"] = _arg(
        "concat",
        "concat: join all documents and cut blocks; isolated: bin-pack whole documents with per-document "
        "positions; none: one document per row.",
    )
    preprocessing_num_workers: int | None = _arg(
        None, "Tokenizer processes; default: the number of CPU cores, up to 8."
    )
    on_bad_record: Literal["error", "skip"] = _arg(
        "error", "error stops at the first bad record; skip writes each one with its reason to rejected.jsonl."
    )
    dump_text: str | None = _arg(None, "Also write the rendered documents to this jsonl file ({'text': ...}).")
    data_cache_dir: str | None = _arg(None, "Where prepared blocks are cached; default $MEDPT_CACHE or ~/.cache/medpt.")
    overwrite_cache: bool = _arg(False, "Prepare again even when a cached result exists.")
    eval_sets: list[str] | None = _arg(
        None, "Extra named eval sets, NAME=PATH (files, folders or globs): each reported as eval_NAME_loss etc."
    )

    def __post_init__(self) -> None:
        for name in ("train_file_dir", "validation_file_dir"):
            value = getattr(self, name)
            if isinstance(value, str):
                setattr(self, name, [value])
        if self.block_size < 2:
            raise MedptError(f"--block_size must be at least 2, got {self.block_size}")
        if not 0 <= self.validation_split_percentage < 100:
            raise MedptError(
                f"--validation_split_percentage must be in [0, 100), got {self.validation_split_percentage}"
            )
        for name in ("max_train_samples", "max_eval_samples", "preprocessing_num_workers"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise MedptError(f"--{name} must be a positive integer, got {value}")
        if self.template not in TEMPLATES:
            hint = closest(self.template, TEMPLATES)
            raise MedptError(
                f"--template must be one of {', '.join(TEMPLATES)}; got {self.template!r}"
                + (f" (did you mean {hint!r}?)" if hint else "")
            )
        if (self.template == "custom") != (self.template_format is not None):
            raise MedptError("--template custom and --template_format go together: give both or neither")
        for item in self.eval_sets or []:
            name, eq, path = item.partition("=")
            if not eq or not name.isidentifier() or not path:
                raise MedptError(f"--eval_sets takes NAME=PATH items (e.g. medical=data/valid.jsonl), got {item!r}")
        if self.template_format is not None:
            unknown = set(self.template_format) - {"system", "human", "gpt", "end"}
            if unknown or not {"human", "gpt"} <= set(self.template_format):
                raise MedptError(
                    "--template_format needs keys human and gpt (each with {text}), optionally system and end; "
                    f"got {sorted(self.template_format)}"
                )


@dataclass
class LoraArguments:
    use_peft: bool = _arg(True, "Train a LoRA adapter (True) or the full model (False).")
    target_modules: str = _arg("all", "Modules that get LoRA: 'all' (every linear layer but the head) or a comma list.")
    lora_rank: int = _arg(8, "LoRA rank r.")
    lora_alpha: float = _arg(16.0, "LoRA scaling alpha (the update is scaled by alpha / r).")
    lora_dropout: float = _arg(0.05, "Dropout on the LoRA input.")
    modules_to_save: str | None = _arg(None, "Comma list of modules trained in full and saved (embed_tokens,lm_head).")
    peft_path: str | None = _arg(None, "Continue training this existing adapter.")
    use_rslora: bool = _arg(False, "Rank-stabilised LoRA: scale by alpha / sqrt(r) instead of alpha / r.")
    use_dora: bool = _arg(False, "DoRA: weight-decomposed LoRA (magnitude and direction trained separately).")
    qlora: bool = _arg(False, "QLoRA: LoRA on a 4-bit NF4 base model (same as --load_in_4bit with LoRA).")
    embedding_learning_rate: float | None = _arg(
        None, "Learning rate for --modules_to_save (embed_tokens, lm_head); default: --learning_rate."
    )

    def __post_init__(self) -> None:
        if self.lora_rank < 1:
            raise MedptError(f"--lora_rank must be at least 1, got {self.lora_rank}")
        if self.lora_alpha <= 0:
            raise MedptError(f"--lora_alpha must be positive, got {self.lora_alpha}")
        if not 0 <= self.lora_dropout < 1:
            raise MedptError(f"--lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if not self.target_modules.strip():
            raise MedptError("--target_modules is empty: use 'all' or a comma list such as q_proj,v_proj")
        if self.qlora and not self.use_peft:
            raise MedptError("--qlora trains a LoRA adapter on a 4-bit model: it needs --use_peft true")
        if self.embedding_learning_rate is not None and not self.modules_to_save:
            raise MedptError("--embedding_learning_rate applies to --modules_to_save (e.g. embed_tokens,lm_head)")


@dataclass
class RunArguments:
    output_dir: str = _arg("outputs/medpt-run", "Where results, checkpoints and the resolved config go.")
    overwrite_output_dir: bool = _arg(False, "Allow writing into an output directory that already holds a run.")
    seed: int = _arg(42, "Seed for sampling, initialisation and data order.")
    group_by_length: bool = _arg(
        False,
        "Accepted for MedicalGPT compatibility; batches rows of similar length (only matters for --packing none).",
    )
    resume_from_checkpoint: str | None = _arg(
        None,
        "auto: continue from the latest complete checkpoint in --output_dir; a path: from that one; no: start over. "
        "Default: auto, unless --overwrite_output_dir.",
    )
    bf16: bool | None = _arg(None, "bf16 mixed precision; default: on wherever the device supports it (CPUs too).")
    fp16: bool | None = _arg(None, "fp16 mixed precision; default: on for GPUs without bf16.")
    report_to: list[str] = _arg(
        help="Loggers for transformers (tensorboard, wandb, none).", factory=lambda: ["tensorboard"]
    )
    plot: bool = _arg(True, "Draw the train/eval loss curves to loss_curve.png when training ends.")


@dataclass
class EvalArguments:
    adapter: str | None = _arg(
        None, "A medpt run (or any PEFT adapter folder): its saved config supplies the base model and data settings."
    )
    mcq_file: list[str] | None = _arg(
        None, 'Multiple-choice questions (jsonl: {"question", "choices": {"A": ...}, "answer", "subject"}).'
    )
    fewshot_file: str | None = _arg(None, "Solved questions (same shape) to show before each question.")
    num_fewshot: int = _arg(0, "How many solved questions to show (same subject first).")
    mcq_scoring: Literal["letter", "text", "both"] = _arg(
        "both", "letter: log-likelihood of the answer letter; text: of the choice text, per character; both."
    )
    max_mcq_questions: int | None = _arg(None, "Score a seeded random sample of this many questions.")

    def __post_init__(self) -> None:
        if self.num_fewshot < 0:
            raise MedptError(f"--num_fewshot must be 0 or more, got {self.num_fewshot}")
        if self.num_fewshot and not self.fewshot_file:
            raise MedptError("--num_fewshot needs --fewshot_file (solved questions to show)")


@dataclass
class GenerationArguments:
    question: list[str] | None = _arg(None, "Questions to answer (compare, generate).")
    questions: str | None = _arg(None, 'A file of questions: jsonl {"question": ...} or one per line (.txt).')
    answers_file: str | None = _arg(None, "Where `medpt generate` writes its answers (jsonl).")
    max_new_tokens: int = _arg(160, "Longest answer, in tokens.")
    do_sample: bool = _arg(False, "Sample instead of greedy decoding.")
    temperature: float = _arg(0.7, "Sampling temperature (with --do_sample).")
    top_p: float = _arg(0.9, "Nucleus sampling mass (with --do_sample).")
    repetition_penalty: float = _arg(1.0, "Penalise repeated tokens (>1); 1.0 leaves the model's distribution as is.")

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise MedptError(f"--max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise MedptError("--temperature must be > 0 and --top_p in (0, 1]")


SECTIONS: dict[str, type] = {
    "model": ModelArguments,
    "data": DataArguments,
    "lora": LoraArguments,
    "run": RunArguments,
    "eval": EvalArguments,
    "generate": GenerationArguments,
}
# Names used by older transformers or by MedicalGPT, mapped to today's flag when the installed version lacks them.
# transformers 5 folded warmup_ratio into warmup_steps: a float below 1 there is a ratio of the total steps.
ALIASES = {
    "evaluation_strategy": "eval_strategy",
    "warmup_ratio": "warmup_steps",
    "lora_r": "lora_rank",
    "overwrite": "overwrite_output_dir",
}


@functools.cache
def own_specs() -> dict[str, FlagSpec]:
    specs: dict[str, FlagSpec] = {}
    for section, cls in SECTIONS.items():
        for spec in specs_of(cls, section):
            assert spec.name not in specs, f"flag --{spec.name} is defined twice"
            specs[spec.name] = spec
    return specs


@functools.cache
def trainer_specs() -> dict[str, FlagSpec]:
    """The transformers.TrainingArguments flags that medpt does not own. Imports transformers (slow): on demand."""
    from transformers import TrainingArguments

    return {s.name: s for s in specs_of(TrainingArguments, "trainer", exclude=own_specs())}


def lookup(name: str) -> FlagSpec:
    specs = own_specs()
    if name in specs:
        return specs[name]
    if name in trainer_specs():
        return trainer_specs()[name]
    if name in ALIASES:
        return lookup(ALIASES[name])
    hint = closest(name, [*specs, *trainer_specs()])
    raise MedptError(f"unknown flag --{name}" + (f"; did you mean --{hint}?" if hint else "; see --help"))


@dataclass
class Config:
    """The resolved configuration of one command."""

    model: ModelArguments
    data: DataArguments
    lora: LoraArguments
    run: RunArguments
    eval: EvalArguments
    generate: GenerationArguments
    trainer: dict[str, Any] = field(default_factory=dict)
    """TrainingArguments values set explicitly (by YAML or flag); the rest keep transformers' defaults."""
    command: str = ""
    sources: list[str] = field(default_factory=list)
    explicit: set[str] = field(default_factory=set)
    """Flags set by a YAML file or the command line (not inherited from defaults or a run's saved config)."""

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
        built = {name: SECTIONS[name](**kwargs[name]) for name in SECTIONS}
        return cls(**built, trainer=trainer, command=command, sources=list(sources or []))

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

    def to_yaml(self) -> str:
        """Flat YAML grouped by section; keys that differ from the defaults are marked, so the file reads as a diff."""
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
                lines.append(_yaml_line(f.name, value, value != own_specs()[f.name].default))
        lines.append("\n# --- trainer (transformers.TrainingArguments; unlisted fields keep its defaults) ---")
        lines.extend(_yaml_line(k, v, True) for k, v in self.trainer.items())
        return "\n".join(lines) + "\n"

    def save(self, output_dir: str | Path) -> Path:
        path = Path(output_dir) / CONFIG_FILE
        atomic_write_text(path, self.to_yaml())
        return path


def _yaml_line(key: str, value: Any, changed: bool) -> str:
    text = yaml.safe_dump({key: value}, allow_unicode=True, default_flow_style=True, width=10_000, sort_keys=False)
    text = text.strip().removeprefix("{").removesuffix("}")
    return text + ("  # set" if changed else "")


def load_config(argv: list[str], command: str = "", base: dict[str, Any] | None = None) -> Config:
    """Defaults, then `base` (a run's saved values), then each YAML file in order, then command-line flags; errors
    name the file or flag."""
    config_paths, pairs = split_argv(argv, lookup)
    values: dict[str, Any] = dict(base or {})
    explicit: set[str] = set()
    for path in config_paths:
        for key, raw in _read_yaml(path).items():
            try:
                spec = lookup(str(key))
                values[spec.name] = convert(raw, spec.type, spec.name)
            except MedptError as e:
                raise MedptError(f"{path}: {e}") from None
            explicit.add(spec.name)
    for name, raw in pairs:
        values[name] = convert(raw, lookup(name).type, name)
        explicit.add(name)
    config = Config.from_values(values, command=command, sources=config_paths)
    config.explicit = explicit
    return config


def load_saved(run_dir: str | Path) -> Config:
    """Read a run's saved configuration. Keys this version does not know are ignored, so old code reads new runs."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise MedptError(f"{run_dir} has no {CONFIG_FILE}: is it a medpt output directory?")
    data = _read_yaml(path)
    known = {k: v for k, v in data.items() if k in own_specs()}
    trainer = {k: v for k, v in data.items() if k not in own_specs()}
    config = Config.from_values(known, command="saved", sources=[str(path)])
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
    except yaml.YAMLError as e:
        raise MedptError(f"{path}: invalid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise MedptError(f"{path}: expected a mapping of flag: value, got {type(data).__name__}")
    return data
