"""The schema: every flag medpt owns, its type, default, range, help, and which commands take it.

Each dataclass is one section; each field one flag. A field's metadata holds its help text, its valid range (checked
once, in `__post_init__`, before any data or model is loaded) and, when only some of the commands that take its
section use it, those commands (`only`), so that a flag a command would ignore is an error instead of a silent no-op.
Flags of `transformers.TrainingArguments` that medpt does not own are schema'd by that class; the ranges medpt checks
for the common ones are in `TRAINER_RANGES`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from medpt.errors import MedptError
from medpt.flags import closest
from medpt.samples import SAMPLE_QA

TEMPLATES = ("qa_separator", "qa", "chat_template", "custom")
# An upper bound for --block_size that holds whatever the model: above it, three copies of a batch's logits no longer
# fit in any machine's memory. The model's own limit (max_position_embeddings) is checked when it is known.
MAX_BLOCK_SIZE = 1 << 20
_TRAIN = ("train", "tune")  # `medpt tune` runs `medpt train` once per trial: it takes the same flags


def _arg(
    default: Any = None,
    help: str = "",
    factory: Any = None,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    only: tuple[str, ...] | None = None,
    path: bool = False,
    secret: bool = False,
) -> Any:
    """A field with its help, range (ge/gt/le/lt), the commands that use it (`only`), whether it holds paths, and
    whether it is a secret (never printed: --dry_run shows it as set or not)."""
    meta = {"help": help, "range": (ge, gt, le, lt), "only": only, "path": path, "secret": secret}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def check_range(name: str, value: Any, bounds: tuple[float | None, ...]) -> None:
    """One message shape for every numeric flag: what it must be, and what it got."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    ge, gt, le, lt = bounds
    if isinstance(value, float) and math.isnan(value):
        raise MedptError(f"--{name} must be a number, got nan")
    low, high = (ge, "[") if ge is not None else (gt, "("), (le, "]") if le is not None else (lt, ")")
    if isinstance(value, float) and low[0] is not None and high[0] is not None:  # a fraction or percentage
        inside = (value >= ge if ge is not None else value > gt) and (value <= le if le is not None else value < lt)
        if not inside:
            raise MedptError(f"--{name} must be in {low[1]}{low[0]:g}, {high[0]:g}{high[1]}, got {value:g}")
        return
    if ge is not None and value < ge:
        raise MedptError(f"--{name} must be at least {_num(ge)}, got {_num(value)}")
    if gt is not None and value <= gt:
        raise MedptError(f"--{name} must be greater than {_num(gt)}, got {_num(value)}")
    if le is not None and value > le:
        raise MedptError(f"--{name} must be at most {_num(le)}, got {_num(value)}")
    if lt is not None and value >= lt:
        raise MedptError(f"--{name} must be less than {_num(lt)}, got {_num(value)}")


def _num(x: float) -> str:
    return f"{x:,}" if isinstance(x, int) or float(x).is_integer() and abs(x) >= 1000 else f"{x:g}"


def _check_ranges(section: Any) -> None:
    for f in fields(section):
        bounds = f.metadata.get("range")
        if bounds and any(b is not None for b in bounds):
            check_range(f.name, getattr(section, f.name), bounds)


def _comma_list(values: list[str] | None) -> list[str] | None:
    """`a,b c` → [a, b, c]: list flags take spaces (argv) and commas (MedicalGPT, YAML strings) alike."""
    if values is None:
        return None
    return [part.strip() for v in values for part in str(v).split(",") if part.strip()]


@dataclass
class ModelArguments:
    model_name_or_path: str | None = _arg(
        None, "Base model: a hub id (deepseek-ai/deepseek-coder-7b-base-v1.5) or a local directory.", path=True
    )
    tokenizer_name_or_path: str | None = _arg(None, "Tokenizer, when it is not the model's own.", path=True)
    cache_dir: str | None = _arg(
        None, "Cache for hub downloads (models and datasets); default $HF_HOME/hub.", path=True
    )
    revision: str | None = _arg(None, "Hub revision (branch, tag or commit) of the model and tokenizer.")
    trust_remote_code: bool = _arg(False, "Run Python code shipped with a hub model. Off unless you trust it.")
    torch_dtype: Literal["auto", "bfloat16", "float16", "float32"] | None = _arg(
        None, "Weight dtype when loading; None picks bfloat16 where the device supports it, else float32."
    )
    offline: bool = _arg(False, "Never touch the network (sets HF_HUB_OFFLINE=1); only local paths and caches.")
    load_in_4bit: bool = _arg(
        False, "Load the base model in 4-bit NF4 with double quantisation (QLoRA; bitsandbytes).", only=_TRAIN
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention"] | None = (
        _arg(None, "Attention kernel; default sdpa.")
    )

    def __post_init__(self) -> None:
        _check_ranges(self)


def split_named(item: str) -> tuple[str, str]:
    """`NAME=PATH` → (NAME, PATH); a plain path → ("", path). NAME must be an identifier, so a path that merely
    contains "=" stays a path."""
    name, eq, rest = item.partition("=")
    if eq and name.isidentifier() and rest:
        return name, rest
    return "", item


@dataclass
class DataArguments:
    dataset_name: list[str] | None = _arg(
        None, "Hub dataset ids (or local dataset folders) read with datasets; NAME=ID names a source.", path=True
    )
    dataset_config_name: str | None = _arg(None, "Configuration (subset) name of --dataset_name.")
    streaming: bool = _arg(
        False,
        "Read --dataset_name as a stream (datasets' streaming=True): prepared batch by batch as rows arrive, for "
        "datasets larger than the disk.",
    )
    train_file_dir: list[str] | None = _arg(
        None,
        "Training files, folders or globs (.jsonl .json .parquet .csv .txt, optionally .gz); NAME=PATH names a source "
        "(medical=data/qa general=wiki/), each with its own format detection.",
        path=True,
    )
    validation_file_dir: list[str] | None = _arg(
        None,
        "Validation files, folders or globs (NAME=PATH for a named source); without them a stable hash split of "
        "each source's training data is used.",
        path=True,
    )
    mix: list[str] | None = _arg(
        None,
        "Each named source's share of the training tokens, e.g. medical=0.95,general=0.05 (replay). The first "
        "source is used once and anchors the total; the others are repeated or sampled to their share (seeded).",
    )
    mix_tokens: int | None = _arg(
        None, "Total training tokens of the --mix (default: the first source's tokens / its share).", ge=1
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
        1.0,
        "Percent of documents held out for validation by content hash when no validation files are given.",
        ge=0,
        lt=100,
    )
    max_train_samples: int | None = _arg(None, "Use a seeded random sample of this many training documents.", ge=1)
    max_eval_samples: int | None = _arg(None, "Use a seeded random sample of this many validation documents.", ge=1)
    block_size: int = _arg(
        512, "Tokens per training block (sequence length); at most the model's positions.", ge=8, le=MAX_BLOCK_SIZE
    )
    packing: Literal["concat", "isolated", "none"] = _arg(
        "concat",
        "concat: join all documents and cut blocks; isolated: bin-pack whole documents with per-document "
        "positions; none: one document per row.",
    )
    preprocessing_num_workers: int | None = _arg(
        None, "Tokenizer processes; default: the number of CPU cores, up to 8.", ge=1, le=256
    )
    shard_mb: float = _arg(
        8.0,
        "Input per shard, in MiB: preparation holds a few shards in memory at a time (memory does not grow with the "
        "corpus) and a killed run resumes from its completed shards.",
        gt=0,
        le=4096,
    )
    on_bad_record: Literal["error", "skip"] = _arg(
        "error", "error stops at the first bad record; skip writes each one with its reason to rejected.jsonl."
    )
    dump_text: str | None = _arg(
        None, "Also write the rendered documents to this jsonl file ({'text': ...}).", path=True, only=("prepare",)
    )
    data_cache_dir: str | None = _arg(
        None, "Where prepared blocks are cached; default $MEDPT_CACHE or ~/.cache/medpt.", path=True
    )
    overwrite_cache: bool = _arg(False, "Prepare again even when a cached result exists.")
    eval_sets: list[str] | None = _arg(
        None,
        "Extra named eval sets, NAME=PATH (files, folders or globs): each reported as eval_NAME_loss etc.",
        path=True,
    )

    def __post_init__(self) -> None:
        for name in ("train_file_dir", "validation_file_dir", "dataset_name"):
            value = getattr(self, name)
            if isinstance(value, str):
                setattr(self, name, [value])
        self.mix = _comma_list(self.mix) or None
        _check_ranges(self)
        self._check_sources()
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
            if name in self.source_names():
                raise MedptError(f"--eval_sets {item}: {name!r} already names a training source (its held-out "
                                 "documents are evaluated as that name); choose another name")  # fmt: skip
        if self.template_format is not None:
            unknown = set(self.template_format) - {"system", "human", "gpt", "end"}
            if unknown or not {"human", "gpt"} <= set(self.template_format):
                raise MedptError(
                    "--template_format needs keys human and gpt (each with {text}), optionally system and end; "
                    f"got {sorted(self.template_format)}"
                )

    def source_names(self) -> list[str]:
        """The training sources in order of first appearance ("" for unnamed paths)."""
        names = [split_named(x)[0] for x in (*(self.dataset_name or []), *(self.train_file_dir or []))]
        return list(dict.fromkeys(names))

    def _check_sources(self) -> None:
        names = self.source_names()
        if "" in names and len(names) > 1:
            raise MedptError(
                "--train_file_dir / --dataset_name: name every source or none (NAME=PATH, e.g. medical=data/qa "
                f"general=wiki/); got named {[n for n in names if n]} beside unnamed paths"
            )
        named = bool(names) and names != [""]
        for item in self.validation_file_dir or []:
            name, _ = split_named(item)
            if named and name not in names:
                raise MedptError(
                    f"--validation_file_dir {item}: the training sources are named, so name its source "
                    f"({' or '.join(f'{n}=PATH' for n in names)})"
                )
            if not named and name:
                raise MedptError(f"--validation_file_dir {item}: names a source, but the training data is unnamed")
        if self.streaming and not self.dataset_name:
            raise MedptError("--streaming reads a --dataset_name as a stream; files are read in shards anyway")
        if self.mix is None:
            if self.mix_tokens is not None:
                raise MedptError("--mix_tokens sets the size of a --mix: give --mix too")
            return
        from medpt.data.mixing import parse_shares

        shares = parse_shares(self.mix)
        if names == [""] or not names:
            raise MedptError("--mix needs named sources: --train_file_dir medical=PATH general=PATH")
        unknown = [n for n in shares if n not in names]
        if unknown:
            hint = closest(unknown[0], names)
            raise MedptError(
                f"--mix {unknown[0]}: no such source (sources: {', '.join(names)})"
                + (f"; did you mean {hint!r}?" if hint else "")
            )
        missing = [n for n in names if n not in shares]
        if missing:
            raise MedptError(f"--mix gives no share to {', '.join(missing)}; give every source a share (0 to leave "
                             "it out of training)")  # fmt: skip

    def shares(self) -> dict[str, float] | None:
        from medpt.data.mixing import parse_shares

        return parse_shares(self.mix) if self.mix else None


@dataclass
class LoraArguments:
    use_peft: bool = _arg(True, "Train a LoRA adapter (True) or the full model (False).")
    target_modules: list[str] = _arg(
        help="Modules that get LoRA: all (every linear layer but the output head) or names (q_proj,v_proj).",
        factory=lambda: ["all"],
    )
    lora_rank: int = _arg(8, "LoRA rank r.", ge=1)
    lora_alpha: float = _arg(16.0, "LoRA scaling alpha (the update is scaled by alpha / r).", gt=0)
    lora_dropout: float = _arg(0.05, "Dropout on the LoRA input.", ge=0, lt=1)
    lora_dropout_mode: Literal["shared", "per_module"] = _arg(
        "shared",
        "shared: adapters that read the same tensor (q/k/v, gate/up) share one dropout mask, the same regulariser in "
        "expectation at a fraction of the cost on a CPU; per_module: one mask per adapter (PEFT's way).",
    )
    modules_to_save: list[str] | None = _arg(
        None, "Modules trained in full and saved with the adapter (embed_tokens,lm_head)."
    )
    peft_path: str | None = _arg(None, "Continue training this existing adapter.", path=True)
    use_rslora: bool = _arg(False, "Rank-stabilised LoRA: scale by alpha / sqrt(r) instead of alpha / r.")
    use_dora: bool = _arg(False, "DoRA: weight-decomposed LoRA (magnitude and direction trained separately).")
    qlora: bool = _arg(False, "QLoRA: LoRA on a 4-bit NF4 base model (same as --load_in_4bit with LoRA).")
    embedding_learning_rate: float | None = _arg(
        None, "Learning rate for --modules_to_save (embed_tokens, lm_head); default: --learning_rate.", gt=0
    )

    def __post_init__(self) -> None:
        self.target_modules = _comma_list(self.target_modules) or []
        self.modules_to_save = _comma_list(self.modules_to_save) or None
        _check_ranges(self)
        if not self.target_modules:
            raise MedptError("--target_modules is empty: use all, or names such as q_proj,v_proj")
        if "all" in self.target_modules and len(self.target_modules) > 1:
            raise MedptError(f"--target_modules: 'all' already means every linear layer; got {self.target_modules}")
        if self.qlora and not self.use_peft:
            raise MedptError("--qlora trains a LoRA adapter on a 4-bit model: it needs --use_peft true")
        if self.embedding_learning_rate is not None and not self.modules_to_save:
            raise MedptError("--embedding_learning_rate applies to --modules_to_save (e.g. embed_tokens,lm_head)")

    def to_peft_config(self) -> Any:
        """The peft.LoraConfig of these flags ("all" is PEFT's own all-linear: every Linear but the output head)."""
        from peft import LoraConfig

        return LoraConfig(
            task_type="CAUSAL_LM",
            r=self.lora_rank,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules="all-linear" if self.target_modules == ["all"] else list(self.target_modules),
            modules_to_save=list(self.modules_to_save) if self.modules_to_save else None,
            use_rslora=self.use_rslora,
            use_dora=self.use_dora,
        )


@dataclass
class RunArguments:
    output_dir: str = _arg("outputs/medpt-run", "Where results, checkpoints and the resolved config go.", path=True)
    overwrite_output_dir: bool = _arg(
        False, "Replace medpt's earlier output in --output_dir (only the files medpt wrote there are removed)."
    )
    seed: int = _arg(42, "Seed for sampling, initialisation and data order.", ge=0, lt=2**32)
    group_by_length: bool = _arg(
        False,
        "Accepted for MedicalGPT compatibility; batches rows of similar length (only matters for --packing none).",
        only=_TRAIN,
    )
    resume_from_checkpoint: str = _arg(
        "",
        "auto: continue from the latest complete checkpoint in --output_dir; a path: from that one; no (or none): "
        "start over. Default: auto, unless --overwrite_output_dir.",
        only=("train",),  # each trial of `medpt tune` starts fresh in its own folder
    )
    bf16: bool | None = _arg(
        None, "bf16 mixed precision; default: on wherever the device supports it (CPUs too).", only=_TRAIN
    )
    fp16: bool | None = _arg(None, "fp16 mixed precision; default: on for GPUs without bf16.", only=_TRAIN)
    report_to: list[str] = _arg(
        help="Loggers for transformers (tensorboard, wandb, none).", factory=lambda: ["tensorboard"], only=_TRAIN
    )
    plot: bool = _arg(True, "Draw the train/eval loss curves to loss_curve.png when training ends.", only=_TRAIN)

    def __post_init__(self) -> None:
        _check_ranges(self)


_EVAL = ("eval",)


@dataclass
class EvalArguments:
    adapter: str | None = _arg(
        None,
        "A medpt run (or any PEFT adapter folder): its saved config supplies the base model and data settings.",
        path=True,
    )
    allow_base_mismatch: bool = _arg(
        False,
        "Apply the adapter to a base other than the one it was trained on. Its numbers then describe neither "
        "model: use only to compare on purpose.",
    )
    mcq_file: list[str] | None = _arg(
        None,
        'Multiple-choice questions (jsonl: {"question", "choices": {"A": ...}, "answer", "subject"}).',
        path=True,
        only=_EVAL,
    )
    fewshot_file: str | None = _arg(
        None, "Solved questions (same shape) to show before each question.", path=True, only=_EVAL
    )
    num_fewshot: int = _arg(0, "How many solved questions to show (same subject first).", ge=0, le=64, only=_EVAL)
    mcq_scoring: Literal["letter", "text", "both"] = _arg(
        "both",
        "letter: log-likelihood of the answer letter; text: of the choice text, per character; both.",
        only=_EVAL,
    )
    max_mcq_questions: int | None = _arg(None, "Score a seeded random sample of this many questions.", ge=1, only=_EVAL)

    def __post_init__(self) -> None:
        _check_ranges(self)
        if self.num_fewshot and not self.fewshot_file:
            raise MedptError("--num_fewshot needs --fewshot_file (solved questions to show)")


@dataclass
class GenerationArguments:
    question: list[str] | None = _arg(None, "Questions to answer (compare, generate).", only=("compare", "generate"))
    questions: str | None = _arg(
        None,
        'A file of questions: jsonl {"question": ...} or one per line (.txt).',
        path=True,
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
}


# --- which command takes which flags ---------------------------------------------------------------------------
@dataclass(frozen=True)
class CommandFlags:
    sections: tuple[str, ...]
    extra: tuple[str, ...] = ()  # single flags from sections the command does not take whole
    trainer: bool | tuple[str, ...] = ()  # True: every TrainingArguments flag; else the ones listed

    def takes_section(self, section: str) -> bool:
        return section in self.sections


_TEMPLATE = ("template", "template_format")
COMMAND_FLAGS: dict[str, CommandFlags] = {
    "prepare": CommandFlags(("model", "data", "run")),
    "train": CommandFlags(("model", "data", "lora", "run"), trainer=True),
    "tune": CommandFlags(("model", "data", "lora", "run", "tune"), trainer=True),
    "eval": CommandFlags(("model", "data", "eval", "run"), trainer=("per_device_eval_batch_size",)),
    "verify": CommandFlags(("model", "eval")),
    "compare": CommandFlags(("model", "eval", "generate", "run"), extra=_TEMPLATE),
    "generate": CommandFlags(("model", "eval", "generate"), extra=(*_TEMPLATE, "seed")),
    "chat": CommandFlags(("model", "eval", "generate"), extra=(*_TEMPLATE, "seed")),
    "merge": CommandFlags(("model", "eval", "run")),
    "serve": CommandFlags(("model", "eval", "generate", "serve"), extra=_TEMPLATE),
    # The template (inherited from the run) shapes the Ollama Modelfile of --target gguf.
    "export": CommandFlags(("model", "eval", "export"), extra=("output_dir", "overwrite_output_dir", *_TEMPLATE)),
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
    output_dir: str = _arg("outputs/tiny-model", "Where the model and tokenizer go.")
    size: Literal["5m", "25m", "100m"] = _arg("5m", "Nominal size: 5m, 25m or 100m parameters.")
    corpus: list[str] = _arg(
        help="Files, folders or globs the tokenizer is trained on (default: the bundled sample).",
        factory=lambda: [str(SAMPLE_QA)],
    )
    seed: int = _arg(42, "Seed of the random initialisation.", ge=0, lt=2**32)
    overwrite: bool = _arg(False, "Replace a tiny model medpt wrote there earlier.")

    def __post_init__(self) -> None:
        _check_ranges(self)


@dataclass
class DemoArguments:
    output_dir: str = _arg("outputs/demo", "Where every artifact of the demo goes.")
    size: Literal["5m", "25m", "100m"] = _arg("5m", "Tiny model size: 5m, 25m or 100m.")


@dataclass
class DownloadArguments:
    repo_id: str = _arg("", "Repository to fetch, e.g. deepseek-ai/deepseek-coder-7b-base-v1.5.")
    repo_type: Literal["model", "dataset"] = _arg("model", "model or dataset.")
    revision: str | None = _arg(None, "Branch, tag or commit.")
    cache_dir: str | None = _arg(None, "Hub cache folder (default $HF_HOME/hub).")
    local_dir: str | None = _arg(None, "Also place the files in this folder.")
    include: list[str] | None = _arg(None, "Only files matching these globs.")


@dataclass
class ReportArguments:
    run_dir: str = _arg("", "The medpt run to report on.")
    output_dir: str | None = _arg(None, "Where report.html/.md go (default: the run).")
