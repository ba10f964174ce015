"""The schema: every flag medpt owns, its type, default, range, help, and which commands take it.

Each dataclass is one section; each field one flag. A field's metadata holds its help text, its valid range (checked
once, in `__post_init__`, before any data or model is loaded) and, when only some of the commands that take its
section use it, those commands (`only`), so that a flag a command would ignore is an error instead of a silent no-op.
Flags of `transformers.TrainingArguments` that medpt does not own are schema'd by that class; the ranges medpt checks
for the common ones are in `TRAINER_RANGES`.

The package: `fields` (how a flag is declared), `training` (model, data, LoRA, run), `tools` (eval, generation,
serve, export, tune), `plan` (the memory plan), `commands` (the command record: each command's entry point, flags and
run-directory writes; the small commands' flags).
"""

from __future__ import annotations

from medpt.args.commands import (
    COMMANDS,
    TRAINER_RANGES,
    Command,
    DemoArguments,
    DownloadArguments,
    InitTinyArguments,
    ReportArguments,
    check_trainer_values,
)
from medpt.args.fields import MAX_BLOCK_SIZE, TEMPLATES, check_range
from medpt.args.plan import PlanArguments, parse_size
from medpt.args.tools import (
    SECTIONS,
    EvalArguments,
    ExportArguments,
    GenerationArguments,
    ServeArguments,
    TuneArguments,
    penalty_of,
)
from medpt.args.training import (
    RESUME_WORDS,
    DataArguments,
    LoraArguments,
    ModelArguments,
    RunArguments,
    split_named,
)

__all__ = [
    "COMMANDS",
    "MAX_BLOCK_SIZE",
    "RESUME_WORDS",
    "SECTIONS",
    "TEMPLATES",
    "TRAINER_RANGES",
    "Command",
    "DataArguments",
    "DemoArguments",
    "DownloadArguments",
    "EvalArguments",
    "ExportArguments",
    "GenerationArguments",
    "InitTinyArguments",
    "LoraArguments",
    "ModelArguments",
    "PlanArguments",
    "ReportArguments",
    "RunArguments",
    "ServeArguments",
    "TuneArguments",
    "check_range",
    "check_trainer_values",
    "parse_size",
    "penalty_of",
    "split_named",
]
