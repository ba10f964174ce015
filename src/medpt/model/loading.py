"""Models and tokenizers: where they come from (hub or local path), how they are loaded (one `load_model`), and the
checks of a model's limits made before any data or weights are loaded.

Hub access goes through medpt.model.hub (huggingface_hub: HF_ENDPOINT mirrors, HF_HOME / --cache_dir, HF_HUB_OFFLINE).
transformers is imported inside functions: it costs seconds, and a cached `medpt prepare` needs none.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medpt.errors import MedptError
from medpt.model.files import CONFIG, ModelFacts, first_lines, inspect_model, positions_of, read_json, weight_files
from medpt.model.hub import resolve_local

# PEFT (PeftModel.from_pretrained, get_peft_model) still reads a transformers property deprecated in v5, on every
# train/eval/verify/merge; nothing a user can act on. Every path that builds a PeftModel imports this module.
# (also its `gradient_checkpointing_enable` calls, for QLoRA)
warnings.filterwarnings(
    "ignore", message="`(is_)?gradient_checkpointing(_enable)?` is deprecated", category=FutureWarning
)

TOKENIZER_CONFIG = "tokenizer_config.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    TOKENIZER_CONFIG,
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)


@dataclass
class TokenizerSource:
    """A tokenizer identified by the bytes of its files, loaded only when needed (see data.pipeline)."""

    name: str
    revision: str | None = None
    cache_dir: str | None = None
    trust_remote_code: bool = False
    # Kept once resolved, and pickled with the source: a data worker (a spawned process, an empty hub memo) loads
    # the tokenizer from the folder this process fingerprinted, without asking the hub again.
    directory: Path | None = field(default=None, init=False, repr=False, compare=False)

    def local_dir(self) -> Path:
        if self.directory is None or not self.directory.is_dir():
            # config.json is fetched too: AutoTokenizer reads the tokenizer class from it for some models.
            self.directory = resolve_local(self.name, [*TOKENIZER_FILES, CONFIG], self.revision, self.cache_dir)
        return self.directory

    def fingerprint(self) -> str:
        directory = self.local_dir()
        check_tokenizer_files(directory)  # a damaged file is named now, not later by a worker loading it
        h = hashlib.sha256()
        found = False
        for filename in TOKENIZER_FILES:
            path = directory / filename
            if path.is_file():
                found = True
                h.update(filename.encode() + b"\0" + path.read_bytes() + b"\0")
        if not found:
            raise MedptError(f"{self.name}: no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...) found")
        return h.hexdigest()

    def load(self) -> Any:
        return load_tokenizer(str(self.local_dir()), self.trust_remote_code)


def tokenizer_source(model: Any) -> TokenizerSource:
    """The tokenizer of a ModelArguments: --tokenizer_name_or_path, else the model's own."""
    name = model.tokenizer_name_or_path or model.model_name_or_path
    if not name:
        raise MedptError("a tokenizer is needed: pass --model_name_or_path (or --tokenizer_name_or_path)")
    return TokenizerSource(name, model.revision, model.cache_dir, model.trust_remote_code)


def check_tokenizer_files(directory: Path) -> list[str]:
    """The tokenizer files a folder holds, each JSON one parsed: missing, empty or cut short is one line naming it."""
    held = [name for name in TOKENIZER_FILES if (directory / name).is_file()]
    for name in held:
        if name.endswith(".json"):
            read_json(directory / name)
    return held


def load_tokenizer(path: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    held = check_tokenizer_files(Path(path))
    # Whatever AutoTokenizer raises on a folder whose JSON parses (a missing vocabulary file, a slow tokenizer
    # needing sentencepiece, a class it does not know) is about that folder: one line naming it and what it holds.
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - see above
        raise MedptError(f"{path}: transformers cannot load the tokenizer ({first_lines(e)}); the folder holds "
                         f"{', '.join(held) or 'no tokenizer file'}. Copy the tokenizer files again, or pass the "
                         "model's own with --tokenizer_name_or_path") from None  # fmt: skip
    if tokenizer.eos_token_id is None:
        raise MedptError(f"{path}: the tokenizer has no EOS token (is tokenizer_config.json missing?), so documents "
                         "cannot be separated nor answers end; copy the tokenizer files again")  # fmt: skip
    if tokenizer.pad_token is None:
        # LLaMA-family base models (deepseek-coder included) ship no pad token. Padding is masked by position
        # everywhere in medpt, so reusing EOS as the pad id is safe: real EOS tokens keep their loss.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# ----------------------------------------------------------------------------------------------------------------
# Loading a base model for training (or evaluation), with LoRA / QLoRA / full fine-tuning.
MODEL_FILES = ["*.safetensors", "*.json", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


def cpu_has_bf16() -> bool:
    """Native bf16 matmuls (AVX512-BF16 or AMX). Without them bf16 on a CPU is emulated and slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def device_kind() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_precision(bf16: bool | None, fp16: bool | None, kind: str | None = None) -> tuple[bool, bool]:
    """Mixed precision by device unless set: bf16 where it is native (recent GPUs, CPUs with AVX512-BF16/AMX),
    fp16 on older GPUs, fp32 otherwise. `kind` "gpu" is a GPU that is not this machine's (`medpt plan
    --device_memory 24GB` on a laptop): taken to have bf16, as every one since Ampere has."""
    if bf16 is not None or fp16 is not None:
        bf16, fp16 = bool(bf16), bool(fp16)
        if bf16 and fp16:
            raise MedptError("--bf16 and --fp16 are exclusive: pick one")
        return bf16, fp16
    kind = kind or device_kind()
    if kind == "gpu":
        return True, False
    if kind == "cuda":
        import torch

        return (True, False) if torch.cuda.is_bf16_supported() else (False, True)
    return (cpu_has_bf16(), False) if kind == "cpu" else (False, False)


def weight_dtype_name(torch_dtype: str | None, bf16: bool, fp16: bool, full_finetune: bool) -> str:
    """Frozen base weights are stored in the compute dtype (half the memory, no per-step casts); trained weights
    stay fp32 so the optimizer updates are not rounded away. An explicit --torch_dtype wins."""
    if torch_dtype and torch_dtype != "auto":
        return torch_dtype
    if full_finetune:
        return "float32"
    return "bfloat16" if bf16 else "float16" if fp16 else "float32"


def weight_dtype(torch_dtype: str | None, bf16: bool, fp16: bool, full_finetune: bool) -> Any:
    import torch

    return getattr(torch, weight_dtype_name(torch_dtype, bf16, fp16, full_finetune))


def load_model(
    args: Any, dtype: Any, *, name: str | None = None, four_bit: bool = False, compute_dtype: Any = None
) -> Any:
    """The one way medpt loads a model: `args` is a ModelArguments (revision, cache, trust_remote_code, attention
    kernel); `name` overrides its model_name_or_path (the base an adapter records, a fully fine-tuned run).
    Weights are read from safetensors only (pickle-based .bin files can run code when loaded)."""
    from transformers import AutoModelForCausalLM

    name = name or args.model_name_or_path
    if not name:
        raise MedptError("no base model: pass --model_name_or_path (a hub id or a local directory)")
    patterns = MODEL_FILES + (["*.py"] if args.trust_remote_code else [])
    local = resolve_local(name, patterns, args.revision, args.cache_dir)
    kwargs: dict[str, Any] = {}
    if four_bit:
        from transformers import BitsAndBytesConfig

        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise MedptError("--load_in_4bit / --qlora need bitsandbytes: pip install 'medpt[qlora]'") from None
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype or dtype,
        )
        kwargs["device_map"] = {"": local_device()}
    weights = weight_files(local)
    from safetensors import SafetensorError

    try:
        with _quiet_loading(sum(f.stat().st_size for f in weights)):
            return AutoModelForCausalLM.from_pretrained(
                local,
                dtype=dtype,
                trust_remote_code=args.trust_remote_code,
                use_safetensors=True,
                attn_implementation=args.attn_implementation or "sdpa",
                **kwargs,
            )
    except SafetensorError as e:
        raise MedptError(f"{local}: the model weights are damaged ({e}); download or copy the model again") from None


def model_facts(args: Any, name: str | None = None) -> ModelFacts:
    """The model `args` (a ModelArguments) names, or `name`, checked without loading a weight (medpt.model.files)."""
    name = name or args.model_name_or_path
    if not name:
        raise MedptError("no base model: pass --model_name_or_path (a hub id or a local directory)")
    patterns = MODEL_FILES + (["*.py"] if args.trust_remote_code else [])
    return inspect_model(resolve_local(name, patterns, args.revision, args.cache_dir), name, args.trust_remote_code)


def model_positions(args: Any, name: str | None = None) -> int | None:
    """The longest sequence the model takes (max_position_embeddings or its equivalents), from its config.json."""
    return positions_of(model_config(args, name))


def model_config(args: Any, name: str | None = None) -> dict[str, Any]:
    name = name or args.model_name_or_path
    local = resolve_local(name, [CONFIG], args.revision, args.cache_dir)
    path = local / CONFIG
    if not path.is_file():  # a tokenizer-only folder (enough for `medpt prepare`): no limits to check
        return {}
    return read_json(path)


def check_block_size(block_size: int, positions: int | None, name: str) -> None:
    """A block longer than the model's positions trains without an error and learns garbage past them: refuse it."""
    if positions is not None and block_size > positions:
        raise MedptError(
            f"--block_size {block_size} is longer than the {positions:,} positions {name} takes "
            f"(max_position_embeddings); use --block_size {positions} or less"
        )


def check_target_modules(target_modules: list[str], facts: ModelFacts) -> None:
    """Every --target_modules name must match a module of the model (PEFT fails only when none matches, so a typo
    beside a correct name would silently train fewer layers)."""
    if target_modules == ["all"]:
        return
    names = facts.modules | {n.rsplit(".", 1)[-1] for n in facts.modules}
    missing = [t for t in target_modules if t not in names]
    if missing:
        raise MedptError(
            f"--target_modules {','.join(missing)}: no such module in {facts.name}; its linear layers are "
            f"{', '.join(sorted(facts.linear_names()))} (or use all)"
        )


@contextlib.contextmanager
def _quiet_loading(weight_bytes: int) -> Any:
    """transformers' per-tensor "Loading weights" bar helps while a 14 GB model loads; for a small one (the tiny
    models: demo, tests) it is a second of noise on every eval/verify/compare step, so hide it below 1 GiB."""
    from transformers.utils import logging

    if weight_bytes >= 2**30 or not logging.is_progress_bar_enabled():
        yield
        return
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.enable_progress_bar()


def local_device() -> Any:
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def inference_dtype(torch_dtype: str | None) -> Any:
    """Weights for scoring and generation: as asked, else bf16 where the device has native bf16, else fp32."""
    import torch

    if torch_dtype and torch_dtype != "auto":
        return getattr(torch, torch_dtype)
    bf16, _ = resolve_precision(None, None)
    return torch.bfloat16 if bf16 else torch.float32


def cache_name(model: Any) -> str:
    """The KV cache's argument (and output) name: transformers 5.2x renamed `past_key_values` to `cache` (the old
    name warns)."""
    import inspect

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(type(inner).forward).parameters else "past_key_values"


def trainable_summary(model: Any) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
