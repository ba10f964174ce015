"""The sections of `prepare` and `train`: the model, the data, LoRA, the run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from medpt.args.fields import (
    _PREPARING,
    _TRAIN,
    MAX_BLOCK_SIZE,
    MAX_RECORD_MB,
    TEMPLATES,
    _arg,
    _check_named,
    _check_ranges,
    _comma_list,
)
from medpt.args.flags import closest
from medpt.errors import MedptError


@dataclass
class ModelArguments:
    model_name_or_path: str | None = _arg(
        None, "Base model: a hub id (deepseek-ai/deepseek-coder-7b-base-v1.5) or a local directory.", path="base model"
    )
    tokenizer_name_or_path: str | None = _arg(None, "Tokenizer, when it is not the model's own.", path="tokenizer")
    cache_dir: str | None = _arg(
        None, "Cache for hub downloads (models and datasets); default $HF_HOME/hub.", path="hub cache"
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
        None,
        "Hub dataset ids (or local dataset folders) read with datasets; NAME=ID names a source.",
        path="dataset folder",
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
        path="training data",
    )
    validation_file_dir: list[str] | None = _arg(
        None,
        "Validation files, folders or globs (NAME=PATH for a named source); without them a stable hash split of "
        "each source's training data is used.",
        path="validation data",
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
        path="benchmark (--check_contamination)",
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
    shard_mb: float = _arg(
        8.0,
        "Input per shard, in MiB: preparation holds a few shards in memory at a time (memory does not grow with the "
        "corpus) and a killed run resumes from its completed shards.",
        gt=0,
        le=4096,
    )
    max_record_mb: float = _arg(
        MAX_RECORD_MB,
        "Largest record (a JSON line, CSV row, .txt document, parquet or hub row), in MiB of UTF-8 text; a larger "
        "one is a bad record (with --on_bad_record skip: skipped, counted as too_large). Tokenizing a record takes "
        "about 60x its size in memory at once.",
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
        None, "Where prepared blocks are cached; default $MEDPT_CACHE or ~/.cache/medpt.", path="data cache"
    )
    overwrite_cache: bool = _arg(False, "Prepare again even when a cached result exists.")
    eval_sets: list[str] | None = _arg(
        None,
        "Extra named eval sets, NAME=PATH (files, folders or globs): each reported as eval_NAME_loss etc.",
        path="eval set {name!r}",
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
        _check_named("eval_sets", self.eval_sets, "medical=data/valid.jsonl")
        for item in self.eval_sets or []:
            name = item.partition("=")[0]
            if name in self.source_names():
                raise MedptError(f"--eval_sets {item}: {name!r} already names a training source (its held-out "
                                 "documents are evaluated as that name); choose another name")  # fmt: skip
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
    peft_path: str | None = _arg(
        None, "Continue training this existing adapter.", path="adapter to continue (--peft_path)"
    )
    use_rslora: bool = _arg(False, "Rank-stabilised LoRA: scale by alpha / sqrt(r) instead of alpha / r.")
    use_dora: bool = _arg(False, "DoRA: weight-decomposed LoRA (magnitude and direction trained separately).")
    qlora: bool = _arg(False, "QLoRA: LoRA on a 4-bit NF4 base model (same as --load_in_4bit with LoRA).")
    embedding_learning_rate: float | None = _arg(
        None, "Learning rate for --modules_to_save (embed_tokens, lm_head); default: --learning_rate.", gt=0
    )
    replay_kl: float = _arg(
        0.0,
        "Add W × KL(base ‖ adapted) of the next-token distributions on the replayed sources' tokens (nats per token; "
        "the base: the adapter switched off, or for --use_peft false a frozen copy of the weights). 0: off.",
        ge=0,
        only=_TRAIN,
    )
    replay_kl_sources: list[str] | None = _arg(
        None, "The sources --replay_kl applies to; default: every --mix source but the first.", only=_TRAIN
    )

    def __post_init__(self) -> None:
        self.target_modules = _comma_list(self.target_modules) or []
        self.modules_to_save = _comma_list(self.modules_to_save) or None
        self.replay_kl_sources = _comma_list(self.replay_kl_sources) or None
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


RESUME_WORDS = ("auto", "no", "none", "false", "null")  # --resume_from_checkpoint words that are not paths


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
        path="checkpoint to resume from",
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
