"""The command record: one entry per `medpt` command, the one place that says what a command is.

Each entry names its entry point ("module:function", imported only when the command runs), the flag sections it
takes (or its own small dataclass), and what it writes at the top of its output folder (rundir's names), so that the
CLI's dispatch and --help, the flags a command accepts, and the run-directory rules (which files a command may write
or replace) all read the same record. Also here: the TrainingArguments ranges medpt checks, and the small commands'
own flags."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from medpt import rundir as rd
from medpt.args.fields import (
    _arg,
    _check_ranges,
    check_range,
)
from medpt.errors import MedptError
from medpt.samples import SAMPLE_QA

# Ranges of the TrainingArguments flags medpt passes through, checked before anything loads (transformers checks
# some of them only when training starts, after data preparation and model loading; some, never).
TRAINER_RANGES: dict[str, tuple[float | None, ...]] = {
    # (ge, gt, le, lt)
    "learning_rate": (None, 0, None, None),
    "per_device_train_batch_size": (1, None, None, None),
    "per_device_eval_batch_size": (1, None, None, None),
    "gradient_accumulation_steps": (1, None, None, None),
    "eval_accumulation_steps": (1, None, None, None),
    "num_train_epochs": (None, 0, None, None),
    "warmup_steps": (0, None, None, None),
    "weight_decay": (0, None, None, None),
    "max_grad_norm": (0, None, None, None),
    "logging_steps": (None, 0, None, None),
    "eval_steps": (None, 0, None, None),
    "save_steps": (None, 0, None, None),
    "save_total_limit": (1, None, None, None),
    "adam_beta1": (0, None, None, 1),
    "adam_beta2": (0, None, None, 1),
    "adam_epsilon": (None, 0, None, None),
    "dataloader_num_workers": (0, None, None, None),
}


def check_trainer_values(values: dict[str, Any]) -> None:
    for name, bounds in TRAINER_RANGES.items():
        check_range(name, values.get(name), bounds)
    max_steps = values.get("max_steps")
    if max_steps is not None and not isinstance(max_steps, bool) and (max_steps == 0 or max_steps < -1):
        raise MedptError(
            f"--max_steps must be at least 1 (or -1: train for --num_train_epochs), got {max_steps}: with 0 steps "
            "nothing would be trained"
        )


# --- the small commands, each with its own flags -------------------------------------------------------------
@dataclass
class InitTinyArguments:
    output_dir: str = _arg("outputs/tiny-model", "Where the model and tokenizer go.", path=True)
    size: Literal["5m", "25m", "100m"] = _arg("5m", "Nominal size: 5m, 25m or 100m parameters.")
    corpus: list[str] = _arg(
        help="Files, folders or globs the tokenizer is trained on (default: the bundled sample).",
        factory=lambda: [str(SAMPLE_QA)],
        path=True,
    )
    seed: int = _arg(42, "Seed of the random initialisation.", ge=0, lt=2**32)
    overwrite: bool = _arg(False, "Replace a tiny model medpt wrote there earlier.")

    def __post_init__(self) -> None:
        _check_ranges(self)


@dataclass
class DemoArguments:
    output_dir: str = _arg("outputs/demo", "Where every artifact of the demo goes.", path=True)
    size: Literal["5m", "25m", "100m"] = _arg("5m", "Tiny model size: 5m, 25m or 100m.")


@dataclass
class DownloadArguments:
    repo_id: str = _arg("", "Repository to fetch, e.g. deepseek-ai/deepseek-coder-7b-base-v1.5.")
    repo_type: Literal["model", "dataset"] = _arg("model", "model or dataset.")
    revision: str | None = _arg(None, "Branch, tag or commit.")
    cache_dir: str | None = _arg(None, "Hub cache folder (default $HF_HOME/hub).", path=True)
    local_dir: str | None = _arg(None, "Also place the files in this folder.", path=True)
    include: list[str] | None = _arg(None, "Only files matching these globs.")


@dataclass
class ReportArguments:
    run_dir: str = _arg("", "The medpt run to report on.", path=True)
    output_dir: str | None = _arg(None, "Where report.html/.md go (default: the run).", path=True)


# --- the record --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Command:
    name: str
    summary: str  # one line of `medpt --help`
    entry: str  # "module:function"; the function takes a Config (args is None) or an instance of `args`
    sections: tuple[str, ...] = ()  # the shared configuration's sections it takes (medpt.args.SECTIONS)
    extra: tuple[str, ...] = ()  # single flags from sections the command does not take whole
    trainer: bool | tuple[str, ...] = ()  # True: every TrainingArguments flag; else the ones listed
    args: type | None = None  # a small command's own flags; None: the shared configuration (`sections`)
    positional: str | None = None  # the flag a leading positional argument fills: `medpt report RUN`
    dry_run: str | None = None  # "module:function" printing what --dry_run adds after the resolved configuration
    writes: tuple[str, ...] = ()  # top-level names it writes in its output folder (rundir's names)
    patterns: tuple[str, ...] = ()  # names it creates later (checkpoint-*)
    replaces: tuple[str, ...] = ()  # whose files it may replace besides its own

    def takes_section(self, section: str) -> bool:
        return section in self.sections


_TEMPLATE = ("template", "template_format")
_MEMORY = ("model_name_or_path", "revision", "cache_dir", "offline", "torch_dtype", "load_in_4bit",
           "attn_implementation", "block_size", "packing", "use_peft", "target_modules", "lora_rank", "lora_dropout",
           "lora_dropout_mode", "modules_to_save", "use_dora", "qlora", "replay_kl", "bf16", "fp16")  # fmt: skip
_MEMORY_TRAINER = ("per_device_train_batch_size", "gradient_accumulation_steps", "gradient_checkpointing", "optim")
_PREPARED = (rd.CONFIG_FILE, rd.DATA_REPORT, rd.REJECTED, rd.CONTAMINATION, rd.NEAR_DUPLICATES)
_TRAINED = (*_PREPARED, rd.METRICS, rd.BASE_RECORD, rd.LOSS_CURVE, rd.TRAINING_ARGS, rd.EVAL_SETS_DIR, rd.STAGING,
            *rd.TRAINER_FILES)  # fmt: skip
_STUDY = (*_PREPARED, rd.EVAL_SETS_DIR, rd.TUNE_INFO, rd.SEARCH_SPACE, rd.STUDY_DB,
          *(rd.STUDY_DB + side for side in ("-journal", "-wal", "-shm")), rd.TRIALS_DIR, rd.BEST_CONFIG, rd.TRIALS_CSV,
          rd.TRIALS_MD, rd.TUNE_HISTORY, rd.TUNE_IMPORTANCE)  # fmt: skip
_EVALUATED = (rd.EVAL_RESULTS, rd.EVAL_MD, rd.MCQ_DIR, f"{rd.GENERATED}.jsonl", f"{rd.GENERATED}.md", rd.CONTAMINATION)
_REPORTED = (rd.REPORT_HTML, rd.REPORT_MD, rd.REPORT_CURVE, rd.FORGETTING_CHART, rd.REPORT_DELTAS, rd.REPORT_FRONTIER)
_DEMO = ("tiny-model", "run", "cache", rd.DEMO_QUESTIONS)  # the demo's own layout of its --output_dir

COMMANDS: dict[str, Command] = {c.name: c for c in (
    Command("prepare", "read, render, tokenize and pack training data; data_report.json",
            "medpt.data.prepare:run_prepare", ("model", "data", "run"), writes=_PREPARED),
    Command("train", "continued pretraining with LoRA / QLoRA / full fine-tuning", "medpt.train.command:run_train",
            ("model", "data", "lora", "run", "plan"), trainer=True, dry_run="medpt.plan.command:print_dry_run",
            writes=_TRAINED, patterns=(f"{rd.CHECKPOINT_PREFIX}*",),
            # training into a folder `medpt prepare` wrote writes a newer config and data report there; nothing
            # replaces a training run's files but --overwrite_output_dir
            replaces=("prepare",)),
    # The memory plan takes the train flags memory depends on (a train YAML file works as it is: its other keys are
    # ignored, as in every shared YAML).
    Command("plan", "will it fit? peak memory by part and the largest micro-batch, before loading",
            "medpt.plan.command:run_plan", ("plan",), extra=_MEMORY, trainer=_MEMORY_TRAINER),
    Command("tune", "hyperparameter search: an Optuna study of short train runs, shareable",
            "medpt.tune.study:run_tune", ("model", "data", "lora", "run", "tune"), trainer=True, writes=_STUDY),
    Command("eval", "base vs adapted with 95% CIs: perplexity, multiple-choice benchmarks, generated answers",
            "medpt.eval.command:run_eval", ("model", "data", "eval", "run"), extra=("max_new_tokens",),
            trainer=("per_device_eval_batch_size",), writes=_EVALUATED),
    Command("verify", "check that an adapter fits its base, learned something, changes outputs",
            "medpt.eval.verify:run_verify", ("model", "eval")),
    Command("compare", "base and adapted answers side by side (Markdown, HTML, JSONL)",
            "medpt.generate.command:run_compare", ("model", "eval", "generate", "run"), extra=_TEMPLATE,
            writes=(rd.COMPARE_JSONL, rd.COMPARE_MD, rd.COMPARE_HTML)),
    Command("generate", "answer a file of questions (jsonl in, jsonl out)", "medpt.generate.command:run_generate",
            ("model", "eval", "generate"), extra=(*_TEMPLATE, "seed")),
    Command("chat", "interactive chat, streamed, in the 问/答 template", "medpt.generate.command:run_chat",
            ("model", "eval", "generate"), extra=(*_TEMPLATE, "seed")),
    Command("merge", "fold the adapter into the base and save a standalone model", "medpt.export.merge:run_merge",
            ("model", "eval", "run")),
    Command("serve", "an OpenAI-compatible API and a before/after web page for a run", "medpt.serve.command:run_serve",
            ("model", "eval", "generate", "serve"), extra=_TEMPLATE),
    # The template (inherited from the run) shapes the Ollama Modelfile of --target gguf.
    Command("export", "the adapter for vLLM, SGLang, llama.cpp or Ollama, checked against their limits",
            "medpt.export.command:run_export", ("model", "eval", "export"),
            extra=("output_dir", "overwrite_output_dir", *_TEMPLATE)),
    Command("report", "one HTML + Markdown page for a run", "medpt.report.command:run_report", args=ReportArguments,
            positional="run_dir", writes=_REPORTED),
    Command("init-tiny", "build a tiny offline LLaMA-architecture model", "medpt.model.init_tiny:run_init_tiny",
            args=InitTinyArguments),
    Command("download", "fetch a model or dataset (HF_ENDPOINT mirrors)", "medpt.model.download:run_download",
            args=DownloadArguments, positional="repo_id"),
    Command("demo", "the whole workflow, offline on a CPU, on the bundled sample", "medpt.demo:run_demo",
            args=DemoArguments, writes=_DEMO),
)}  # fmt: skip
