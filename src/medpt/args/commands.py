"""Which command takes which flags, the TrainingArguments ranges medpt checks, and the small commands."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from medpt.args.fields import (
    _arg,
    _check_ranges,
    check_range,
)
from medpt.errors import MedptError
from medpt.samples import SAMPLE_QA


# --- which command takes which flags ---------------------------------------------------------------------------
@dataclass(frozen=True)
class CommandFlags:
    sections: tuple[str, ...]
    extra: tuple[str, ...] = ()  # single flags from sections the command does not take whole
    trainer: bool | tuple[str, ...] = ()  # True: every TrainingArguments flag; else the ones listed

    def takes_section(self, section: str) -> bool:
        return section in self.sections


_TEMPLATE = ("template", "template_format")
_MEMORY = ("model_name_or_path", "revision", "cache_dir", "offline", "torch_dtype", "load_in_4bit",
           "attn_implementation", "block_size", "packing", "use_peft", "target_modules", "lora_rank", "lora_dropout",
           "lora_dropout_mode", "modules_to_save", "use_dora", "qlora", "replay_kl", "bf16", "fp16")  # fmt: skip
_MEMORY_TRAINER = ("per_device_train_batch_size", "gradient_accumulation_steps", "gradient_checkpointing", "optim")
COMMAND_FLAGS: dict[str, CommandFlags] = {
    "prepare": CommandFlags(("model", "data", "run")),
    "train": CommandFlags(("model", "data", "lora", "run", "plan"), trainer=True),
    "tune": CommandFlags(("model", "data", "lora", "run", "tune"), trainer=True),
    "eval": CommandFlags(
        ("model", "data", "eval", "run"), extra=("max_new_tokens",), trainer=("per_device_eval_batch_size",)
    ),
    "verify": CommandFlags(("model", "eval")),
    "compare": CommandFlags(("model", "eval", "generate", "run"), extra=_TEMPLATE),
    "generate": CommandFlags(("model", "eval", "generate"), extra=(*_TEMPLATE, "seed")),
    "chat": CommandFlags(("model", "eval", "generate"), extra=(*_TEMPLATE, "seed")),
    "merge": CommandFlags(("model", "eval", "run")),
    "serve": CommandFlags(("model", "eval", "generate", "serve"), extra=_TEMPLATE),
    # The template (inherited from the run) shapes the Ollama Modelfile of --target gguf.
    "export": CommandFlags(("model", "eval", "export"), extra=("output_dir", "overwrite_output_dir", *_TEMPLATE)),
    # The memory plan takes the train flags memory depends on (a train YAML file works as it is: its other keys
    # are ignored, as in every shared YAML).
    "plan": CommandFlags(("plan",), extra=_MEMORY, trainer=_MEMORY_TRAINER),
}

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
