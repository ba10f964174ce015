"""The sections of the commands that use a run: eval, generation, serve, export, tune; and SECTIONS."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from medpt.args.fields import (
    _arg,
    _check_named,
    _check_ranges,
    _comma_list,
)
from medpt.args.plan import PlanArguments
from medpt.args.training import DataArguments, LoraArguments, ModelArguments, RunArguments
from medpt.errors import MedptError

_EVAL = ("eval",)


@dataclass
class EvalArguments:
    adapter: str | None = _arg(
        None,
        "A medpt run (or any PEFT adapter folder): its saved config supplies the base model and data settings.",
        path="adapter",
    )
    allow_base_mismatch: bool = _arg(
        False,
        "Apply the adapter to a base other than the one it was trained on. Its numbers then describe neither "
        "model: use only to compare on purpose.",
    )
    adapter_scale: list[float] | None = _arg(
        None,
        "Scale the adapter's update (0: the base, 1: as trained): eval takes several (0.25,0.5,0.75,1) and prints the "
        "frontier of Δ perplexity per set; merge, export and serve take one.",
        ge=0,
        only=("eval", "merge", "export", "serve"),
    )
    mcq: list[str] | None = _arg(
        None,
        'Multiple-choice benchmarks, NAME=FILE (file, folder or glob of jsonl: {"question", "choices": '
        '{"A": ...}, "answer", "subject"}); few-shot examples from a dev.jsonl beside FILE when present.',
        path="benchmark {name!r}",
        only=_EVAL,
    )
    mcq_dir: str | None = _arg(
        None,
        "A folder of benchmarks: every DIR/medical_mcq_*/ and DIR/general_mcq_*/ holding a test.jsonl is one, named "
        "after its folder, with few-shot examples from its dev.jsonl when present.",
        path="benchmark folder (--mcq_dir)",
        only=_EVAL,
    )
    mcq_file: list[str] | None = _arg(
        None,
        "Multiple-choice questions as one benchmark (named after the file, or its folder for test.jsonl).",
        path="multiple-choice file",
        only=_EVAL,
    )
    fewshot_file: str | None = _arg(
        None,
        "Solved questions (same shape) to show before each question, for every benchmark.",
        path="few-shot file",
        only=_EVAL,
    )
    num_fewshot: int = _arg(
        0, "How many solved questions to show (same subject first; from --fewshot_file, else each benchmark's "
        "dev.jsonl).", ge=0, le=64, only=_EVAL,
    )  # fmt: skip
    mcq_scoring: Literal["letter", "text", "both"] = _arg(
        "both",
        "letter: log-likelihood of the answer letter; text: of the choice text, per character; both.",
        only=_EVAL,
    )
    max_mcq_questions: int | None = _arg(
        None, "Score a seeded random sample of this many questions of each benchmark.", ge=1, only=_EVAL
    )
    circular: bool = _arg(
        False,
        "Ask every question once per rotation of its options (ABCD, BCDA, ...) and count it right only if every "
        "rotation is (OpenCompass's CircularEval): a model that prefers a letter scores at most chance.",
        only=_EVAL,
    )
    bootstrap_resamples: int = _arg(
        10_000, "Resamples of the paired bootstrap behind every 95% confidence interval.", ge=1000, le=1_000_000,
        only=_EVAL,
    )  # fmt: skip
    generate_eval: int | None = _arg(
        None,
        "Answer this many held-out questions (greedy, in the training template) with base and adapted model and "
        "score the answers against the reference answers (chrF, BLEU, ROUGE-L on characters).",
        ge=1,
        le=100_000,
        only=_EVAL,
    )
    generate_file: list[str] | None = _arg(
        None,
        "Where --generate_eval takes its questions and reference answers (conversation records: the first question "
        "and the answer to it); default: the run's validation data.",
        path="questions file (--generate_file)",
        only=_EVAL,
    )

    def __post_init__(self) -> None:
        _check_ranges(self)
        for scale in self.adapter_scale or []:  # a list: _check_ranges checks single numbers
            if not (math.isfinite(scale) and scale >= 0):
                raise MedptError(f"--adapter_scale takes numbers ≥ 0 (0: the base, 1: the adapter as trained), got "
                                 f"{scale:g}")  # fmt: skip
        _check_named("mcq", self.mcq, "cmexam=data/cmexam/test.jsonl")
        has_mcq = bool(self.mcq or self.mcq_dir or self.mcq_file)
        if self.num_fewshot and not (self.fewshot_file or self.mcq or self.mcq_dir):
            raise MedptError(
                "--num_fewshot needs solved questions: --fewshot_file, or benchmarks with a dev.jsonl (--mcq_dir, "
                "--mcq)"
            )
        for flag, value in (("circular", self.circular), ("fewshot_file", self.fewshot_file),
                            ("max_mcq_questions", self.max_mcq_questions)):  # fmt: skip
            if value and not has_mcq:
                raise MedptError(f"--{flag} applies to multiple-choice benchmarks: add --mcq, --mcq_dir or --mcq_file")
        if self.generate_file and not self.generate_eval:
            raise MedptError("--generate_file says where --generate_eval N takes its questions: add --generate_eval")


@dataclass
class GenerationArguments:
    question: list[str] | None = _arg(None, "Questions to answer (compare, generate).", only=("compare", "generate"))
    questions: str | None = _arg(
        None,
        'A file of questions: jsonl {"question": ...} or one per line (.txt).',
        path="questions file",
        only=("compare", "generate"),
    )
    answers_file: str | None = _arg(
        None, "Where `medpt generate` writes its answers (jsonl).", path=True, only=("generate",)
    )
    max_new_tokens: int = _arg(160, "Longest answer, in tokens.", ge=1)
    do_sample: bool = _arg(False, "Sample instead of greedy decoding.")
    temperature: float = _arg(0.7, "Sampling temperature (with --do_sample).", gt=0)
    top_p: float = _arg(0.9, "Nucleus sampling mass (with --do_sample).", gt=0, le=1)
    repetition_penalty: float = _arg(
        1.0, "Penalise repeated tokens (>1); 1.0 leaves the model's distribution as is.", gt=0
    )

    def __post_init__(self) -> None:
        _check_ranges(self)


_SERVE = ("serve",)


@dataclass
class ServeArguments:
    host: str = _arg(
        "127.0.0.1",
        "Address to listen on. Anything but a loopback address makes the API reachable from the network.",
        only=_SERVE,
    )
    port: int = _arg(8000, "TCP port to listen on (0: any free port, printed at startup).", ge=0, le=65535, only=_SERVE)
    api_key: str | None = _arg(
        None,
        "Require `Authorization: Bearer KEY` on /v1/*; default: $MEDPT_API_KEY if set (a key on the command line "
        "is visible to other users of the machine), else no authentication.",
        only=_SERVE,
        secret=True,
    )
    batching: Literal["continuous", "dynamic"] = _arg(
        "continuous",
        "continuous: a new request joins the running batch between two decoding steps; dynamic: requests that arrive "
        "within --batch_wait_ms form a batch, which runs until all of its answers are done.",
        only=_SERVE,
    )
    max_batch_size: int = _arg(
        16, "Most answers decoded together; more requests wait in a queue.", ge=1, le=1024, only=_SERVE
    )
    num_threads: int | None = _arg(
        None,
        "CPU threads torch computes with; default: the cores less one, at least 1. The HTTP side needs a core: "
        "torch's threads spin while they wait for each other, and sharing a core with them slows both many times.",
        ge=1,
        le=1024,
        only=_SERVE,
    )
    batch_wait_ms: float = _arg(
        5.0,
        "How long an idle server waits for more requests before it starts a batch (milliseconds).",
        ge=0,
        le=10_000,
        only=_SERVE,
    )
    max_request_mb: float = _arg(
        4.0,
        "Largest request body, in MiB (answered 413 beyond it, before it is parsed): the model's context is far "
        "smaller, and a huge body would hold memory and a worker thread.",
        gt=0,
        le=1024,
        only=_SERVE,
    )
    shutdown_grace_s: float = _arg(
        10.0,
        "On Ctrl-C or SIGTERM, how long answers in flight may run on (seconds); the rest are then ended (a stream "
        "with an error event and [DONE], a whole answer with 503).",
        ge=0,
        le=3600,
        only=_SERVE,
    )

    def __post_init__(self) -> None:
        _check_ranges(self)
        if self.api_key is not None and not self.api_key.strip():
            raise MedptError("--api_key is empty: give a key, or leave the flag out to serve without authentication")


@dataclass
class ExportArguments:
    target: Literal["vllm", "sglang", "llamacpp", "merged", "gguf"] | None = _arg(
        None,
        "What to export for: vllm or sglang (the LoRA adapter, converted where the engine needs it), llamacpp (GGUF "
        "base + GGUF LoRA), merged (a standalone model), gguf (the merged model as one GGUF file, with an Ollama "
        "Modelfile).",
    )
    quant: Literal["f16", "bf16", "q8_0", "q4_k_m", "q5_k_m", "q6_k"] = _arg(
        "f16",
        "GGUF weight type (targets gguf and llamacpp): f16, bf16, q8_0, or the k-quants q4_k_m, q5_k_m, q6_k "
        "(those need llama-cpp-python: pip install 'medpt[llamacpp]').",
    )
    base_model: str | None = _arg(
        None,
        "The base model the exported adapter names (targets vllm and sglang: base_model_name_or_path and the printed "
        "command), for a machine where the base lives elsewhere: a hub id or a path there. Default: the base it was "
        "trained on, as an absolute path (or its hub id).",
        only=("export",),
    )


@dataclass
class TuneArguments:
    n_trials: int = _arg(
        20,
        "Trials the study holds when done (complete or pruned), counted over every process sharing it; rerun with "
        "a larger number to add trials.",
        ge=1,
    )
    storage: str | None = _arg(
        None,
        "Optuna RDB storage URL shared by the workers (postgresql://..., mysql://..., sqlite:///FILE); default: "
        "sqlite:///OUTPUT_DIR/study.db, so processes given the same --output_dir share one study.",
    )
    study_name: str = _arg("medpt-tune", "Name of the study in the storage (one study per --output_dir).")
    search_space: str | None = _arg(
        None,
        "A YAML file (or inline YAML mapping) of flag: {log_uniform|uniform|int: [low, high]} | {choice: [...]} | "
        "lora_alpha: {per_rank: [1, 2]}; default: learning_rate, lora_rank, lora_alpha, lora_dropout, warmup_ratio "
        "(see docs/tune.md).",
    )
    objective: str = _arg(
        "loss",
        "What a trial minimises: loss (eval_loss of the one unnamed source) or NAME (eval_NAME_loss of a named "
        "source's held-out set or an --eval_sets entry).",
    )
    objective_penalty: list[str] | None = _arg(
        None,
        "NAME=WEIGHT items: add WEIGHT x max(0, eval_NAME_loss - its value before training) to the objective "
        "(e.g. general=0.5 penalises forgetting of general text).",
    )
    pruner: Literal["median", "none"] = _arg(
        "median", "median: stop a trial whose eval is worse than the median of earlier trials at the same step."
    )
    pruner_startup_trials: int = _arg(5, "Trials that run in full before the pruner stops any.", ge=0)
    pruner_warmup_steps: int = _arg(0, "Training steps of each trial before the pruner may stop it.", ge=0)
    sampler_seed: int | None = _arg(
        None, "Seed of the TPE sampler (default --seed); the k-th process to join the study uses seed + k.", ge=0
    )
    sampler_startup_trials: int = _arg(10, "Random trials before TPE models the results (Optuna's default).", ge=0)

    def __post_init__(self) -> None:
        _check_ranges(self)
        self.objective_penalty = _comma_list(self.objective_penalty) or None
        for item in self.objective_penalty or []:
            penalty_of(item)

    def penalties(self) -> dict[str, float]:
        return dict(penalty_of(item) for item in self.objective_penalty or [])


def penalty_of(item: str) -> tuple[str, float]:
    """`general=0.5` → ("general", 0.5), or a one-line error naming the flag."""
    name, eq, weight = item.partition("=")
    try:
        value = float(weight)
    except ValueError:
        value = math.nan
    if not eq or not name.isidentifier() or not math.isfinite(value) or value < 0:
        raise MedptError(f"--objective_penalty takes NAME=WEIGHT items with a weight >= 0 (e.g. general=0.5), got "
                         f"{item!r}")  # fmt: skip
    return name, value


SECTIONS: dict[str, type] = {
    "model": ModelArguments,
    "data": DataArguments,
    "lora": LoraArguments,
    "run": RunArguments,
    "eval": EvalArguments,
    "generate": GenerationArguments,
    "serve": ServeArguments,
    "export": ExportArguments,
    "tune": TuneArguments,
    "plan": PlanArguments,
}
