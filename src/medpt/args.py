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
) -> Any:
    """A field with its help, range (ge/gt/le/lt), the commands that use it (`only`) and whether it holds paths."""
    meta = {"help": help, "range": (ge, gt, le, lt), "only": only, "path": path}
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


def _check_named(flag: str, items: list[str] | None, example: str) -> None:
    """NAME=PATH items: NAME an identifier (it becomes a key and a file name), PATH not empty, names unique."""
    names = []
    for item in items or []:
        name, eq, path = item.partition("=")
        if not eq or not name.isidentifier() or not path:
            raise MedptError(f"--{flag} takes NAME=PATH items (e.g. {example}), got {item!r}")
        if name in names:
            raise MedptError(f"--{flag}: the name {name!r} is given twice")
        names.append(name)


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
        False, "Load the base model in 4-bit NF4 with double quantisation (QLoRA; bitsandbytes).", only=("train",)
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention"] | None = (
        _arg(None, "Attention kernel; default sdpa.")
    )

    def __post_init__(self) -> None:
        _check_ranges(self)


_PREPARING = ("prepare", "train")


@dataclass
class DataArguments:
    dataset_name: str | None = _arg(None, "Hub dataset id (or a local dataset folder) read with datasets.", path=True)
    dataset_config_name: str | None = _arg(None, "Configuration (subset) name of --dataset_name.")
    train_file_dir: list[str] | None = _arg(
        None, "Training files, folders or globs: .jsonl .json .parquet .csv .txt, each optionally .gz.", path=True
    )
    validation_file_dir: list[str] | None = _arg(
        None,
        "Validation files, folders or globs; without them a stable hash split of the training data is used.",
        path=True,
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
    dedup: Literal["none", "exact", "near"] | bool = _arg(
        "exact",
        "Drop duplicate documents (after rendering), every drop counted: exact (same text), near (also texts whose "
        "character 5-gram sets have Jaccard similarity ≥ --near_dup_threshold: MinHash LSH, every pair verified; "
        "the first of each cluster is kept, the dropped ones listed beside the data report) or none. true/false "
        "mean exact/none.",
    )
    near_dup_threshold: float = _arg(
        0.8, "Jaccard similarity (of character 5-gram sets) from which --dedup near drops a document.", gt=0, le=1
    )
    check_contamination: list[str] | None = _arg(
        None,
        "Benchmarks to check the training documents against (multiple-choice files, eval sets, or folders laid out "
        "as for --mcq_dir); the eval sets are always checked. Items sharing a --contamination_ngram with a training "
        "document are listed in contamination.jsonl.",
        path=True,
        only=_PREPARING,
    )
    contamination_ngram: int = _arg(
        13,
        "n-gram length of the contamination check, in units: a CJK character or a word (13, as GPT-3 and "
        "lm-evaluation-harness use).",
        ge=5,
        le=200,
        only=(*_PREPARING, "eval"),
    )
    decontaminate: bool = _arg(
        False,
        "Drop the training documents that share an n-gram with a checked benchmark item (counted in the data "
        "report as contaminated_documents).",
        only=_PREPARING,
    )
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
        for name in ("train_file_dir", "validation_file_dir"):
            value = getattr(self, name)
            if isinstance(value, str):
                setattr(self, name, [value])
        _check_ranges(self)
        if self.template not in TEMPLATES:
            hint = closest(self.template, TEMPLATES)
            raise MedptError(
                f"--template must be one of {', '.join(TEMPLATES)}; got {self.template!r}"
                + (f" (did you mean {hint!r}?)" if hint else "")
            )
        if (self.template == "custom") != (self.template_format is not None):
            raise MedptError("--template custom and --template_format go together: give both or neither")
        _check_named("eval_sets", self.eval_sets, "medical=data/valid.jsonl")
        if isinstance(self.dedup, bool):  # the flag was a bool before --dedup near existed
            self.dedup = "exact" if self.dedup else "none"
        if self.near_dup_threshold != 0.8 and self.dedup != "near":
            raise MedptError(f"--near_dup_threshold applies to --dedup near (got --dedup {self.dedup})")
        if self.decontaminate and not (self.check_contamination or self.eval_sets):
            raise MedptError("--decontaminate needs benchmarks to check against: --check_contamination FILE|DIR ...")
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
    target_modules: list[str] = _arg(
        help="Modules that get LoRA: all (every linear layer but the output head) or names (q_proj,v_proj).",
        factory=lambda: ["all"],
    )
    lora_rank: int = _arg(8, "LoRA rank r.", ge=1)
    lora_alpha: float = _arg(16.0, "LoRA scaling alpha (the update is scaled by alpha / r).", gt=0)
    lora_dropout: float = _arg(0.05, "Dropout on the LoRA input.", ge=0, lt=1)
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


_TRAIN = ("train",)


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
        only=_TRAIN,
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
    mcq: list[str] | None = _arg(
        None,
        'Multiple-choice benchmarks, NAME=FILE (file, folder or glob of jsonl: {"question", "choices": '
        '{"A": ...}, "answer", "subject"}); few-shot examples from a dev.jsonl beside FILE when present.',
        path=True,
        only=_EVAL,
    )
    mcq_dir: str | None = _arg(
        None,
        "A folder of benchmarks: every DIR/medical_mcq_*/ and DIR/general_mcq_*/ holding a test.jsonl is one, named "
        "after its folder, with few-shot examples from its dev.jsonl when present.",
        path=True,
        only=_EVAL,
    )
    mcq_file: list[str] | None = _arg(
        None,
        "Multiple-choice questions as one benchmark (named after the file, or its folder for test.jsonl).",
        path=True,
        only=_EVAL,
    )
    fewshot_file: str | None = _arg(
        None, "Solved questions (same shape) to show before each question, for every benchmark.", path=True, only=_EVAL
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
        path=True,
        only=_EVAL,
    )

    def __post_init__(self) -> None:
        _check_ranges(self)
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


SECTIONS: dict[str, type] = {
    "model": ModelArguments,
    "data": DataArguments,
    "lora": LoraArguments,
    "run": RunArguments,
    "eval": EvalArguments,
    "generate": GenerationArguments,
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
    "eval": CommandFlags(
        ("model", "data", "eval", "run"), extra=("max_new_tokens",), trainer=("per_device_eval_batch_size",)
    ),
    "verify": CommandFlags(("model", "eval")),
    "compare": CommandFlags(("model", "eval", "generate", "run"), extra=_TEMPLATE),
    "generate": CommandFlags(("model", "eval", "generate"), extra=(*_TEMPLATE, "seed")),
    "chat": CommandFlags(("model", "eval", "generate"), extra=(*_TEMPLATE, "seed")),
    "merge": CommandFlags(("model", "eval", "run")),
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
