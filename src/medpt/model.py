"""Models and tokenizers: where they come from (hub or local path), and the tiny offline model for tests and demos.

Hub access goes through medpt.hub (huggingface_hub: HF_ENDPOINT mirrors, HF_HOME / --cache_dir, HF_HUB_OFFLINE).
transformers is imported inside functions: it costs seconds, and a cached `medpt prepare` needs none.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medpt.errors import MedptError
from medpt.hub import resolve_local

# PEFT (PeftModel.from_pretrained, get_peft_model) still reads a transformers property deprecated in v5, on every
# train/eval/verify/merge; nothing a user can act on. Every path that builds a PeftModel imports this module.
# (also its `gradient_checkpointing_enable` calls, for QLoRA)
warnings.filterwarnings(
    "ignore", message="`(is_)?gradient_checkpointing(_enable)?` is deprecated", category=FutureWarning
)

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
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

    def local_dir(self) -> Path:
        # config.json is fetched too: AutoTokenizer reads the tokenizer class from it for some models.
        return resolve_local(self.name, [*TOKENIZER_FILES, "config.json"], self.revision, self.cache_dir)

    def fingerprint(self) -> str:
        directory = self.local_dir()
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


def load_tokenizer(path: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        # LLaMA-family base models (deepseek-coder included) ship no pad token. Padding is masked by position
        # everywhere in medpt, so reusing EOS as the pad id is safe: real EOS tokens keep their loss.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# ----------------------------------------------------------------------------------------------------------------
# The tiny model: same architecture family as deepseek-coder-7b-base-v1.5 (LlamaForCausalLM, untied head, MHA),
# small enough to train on a laptop CPU. Sizes are nominal; init-tiny prints the real parameter count.
TINY_SIZES: dict[str, dict[str, int]] = {
    "5m": {
        "hidden_size": 192,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "intermediate_size": 512,
        "vocab": 8192,
    },
    "25m": {
        "hidden_size": 512,
        "num_hidden_layers": 6,
        "num_attention_heads": 8,
        "intermediate_size": 1408,
        "vocab": 8192,
    },
    "100m": {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 2048,
        "vocab": 16384,
    },
}
BOS, EOS = "<s>", "</s>"
# A plain chat template, so the chat_template rendering path can be exercised offline.
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}\n"
    "{% elif m['role'] == 'user' %}User: {{ m['content'] }}\n{% else %}Assistant: {{ m['content'] }}{{ eos_token }}\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}Assistant: {% endif %}"
)


def train_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """A LLaMA-style BPE tokenizer: Metaspace pre-tokenization (▁ for spaces), byte fallback so any input encodes
    without <unk>, and BOS added to every sequence.

    Why not GPT-2-style byte-level BPE: its pre-tokenizer regex makes a whole run of Chinese characters one
    "word", and encoding such long unique words was about 2.5x slower here, which would dominate `medpt prepare`
    on a 270k-record corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(byte_tokens),
        min_frequency=2,
        special_tokens=[BOS, EOS],
        limit_alphabet=vocab_size // 2,  # characters kept as base symbols; rarer ones fall back to bytes
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    # The 256 byte tokens must be ordinary vocabulary entries (not special tokens, which decoding skips) for
    # byte fallback to round-trip characters the training corpus never showed.
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    for token in byte_tokens:
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in spec["model"]["merges"]]
    tok.model = models.BPE(vocab=vocab, merges=merges, byte_fallback=True)
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tok.token_to_id(BOS))]
    )
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, model_max_length=4096)
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def init_tiny(output_dir: str | Path, size: str, texts: list[str], seed: int = 42) -> dict[str, Any]:
    """Train a tokenizer on `texts`, build a random-init LlamaForCausalLM and save both with save_pretrained."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from medpt.atomic import atomic_dir

    if size not in TINY_SIZES:
        raise MedptError(f"--size must be one of {', '.join(TINY_SIZES)}, got {size!r}")
    shape = dict(TINY_SIZES[size])
    tokenizer = train_tokenizer(texts, shape.pop("vocab"))
    vocab = -(-len(tokenizer) // 64) * 64  # a multiple of 64 keeps the embedding matmuls aligned
    config = LlamaConfig(
        vocab_size=vocab,
        num_key_value_heads=shape["num_attention_heads"],
        max_position_embeddings=4096,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **shape,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    info = {
        "size": size,
        "parameters": n_params,
        "vocab_size": vocab,
        "tokenizer_vocab": len(tokenizer),
        "seed": seed,
        "corpus_texts": len(texts),
    }
    with atomic_dir(output_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        model.generation_config = GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id)
        model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "medpt_tiny.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    return info


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


def resolve_precision(bf16: bool | None, fp16: bool | None) -> tuple[bool, bool]:
    """Mixed precision by device unless set: bf16 where it is native (recent GPUs, CPUs with AVX512-BF16/AMX),
    fp16 on older GPUs, fp32 otherwise."""
    import torch

    if bf16 is not None or fp16 is not None:
        bf16, fp16 = bool(bf16), bool(fp16)
        if bf16 and fp16:
            raise MedptError("--bf16 and --fp16 are exclusive: pick one")
        return bf16, fp16
    kind = device_kind()
    if kind == "cuda":
        return (True, False) if torch.cuda.is_bf16_supported() else (False, True)
    return (cpu_has_bf16(), False) if kind == "cpu" else (False, False)


def weight_dtype(torch_dtype: str | None, bf16: bool, fp16: bool, full_finetune: bool) -> Any:
    """Frozen base weights are stored in the compute dtype (half the memory, no per-step casts); trained weights
    stay fp32 so the optimizer updates are not rounded away. An explicit --torch_dtype wins."""
    import torch

    if torch_dtype and torch_dtype != "auto":
        return getattr(torch, torch_dtype)
    if full_finetune:
        return torch.float32
    return torch.bfloat16 if bf16 else torch.float16 if fp16 else torch.float32


def load_model(
    name_or_path: str,
    dtype: Any,
    *,
    revision: str | None = None,
    cache_dir: str | None = None,
    trust_remote_code: bool = False,
    load_in_4bit: bool = False,
    compute_dtype: Any = None,
    attn_implementation: str | None = None,
) -> Any:
    """The base model, weights read from safetensors only (pickle-based .bin files can run code when loaded)."""
    from transformers import AutoModelForCausalLM

    patterns = MODEL_FILES + (["*.py"] if trust_remote_code else [])
    local = resolve_local(name_or_path, patterns, revision, cache_dir)
    kwargs: dict[str, Any] = {}
    if load_in_4bit:
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
        kwargs["device_map"] = {"": _local_device()}
    if not any(local.glob("*.safetensors")):
        raise MedptError(
            f"{name_or_path}: no .safetensors weights. medpt does not load pickle-based .bin weights (they can run "
            "code); convert them once with safetensors, or use a model that ships safetensors"
        )
    with _quiet_loading(sum(f.stat().st_size for f in local.glob("*.safetensors"))):
        return AutoModelForCausalLM.from_pretrained(
            local,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            use_safetensors=True,
            attn_implementation=attn_implementation or "sdpa",
            **kwargs,
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


def _local_device() -> Any:
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def trainable_summary(model: Any) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------------------------
# Loading a finished run for evaluation, comparison, chat and merging.
@dataclass
class Variants:
    """The base model and the adapted one. With a LoRA adapter they are one PeftModel, and "base" is that model with
    the adapter switched off (PEFT's disable_adapter), so both are scored in one process on one copy of the weights."""

    tokenizer: Any
    base: Any
    adapted: Any | None  # None when no adapter was given
    peft: bool
    base_name: str

    @contextlib.contextmanager
    def use(self, which: str) -> Any:
        if which == "adapted":
            if self.adapted is None:
                raise MedptError("no adapter loaded: pass --adapter RUN_DIR")
            yield self.adapted
        elif self.peft:
            with self.adapted.disable_adapter():
                yield self.adapted
        else:
            yield self.base

    @property
    def names(self) -> list[str]:
        return ["base", "adapted"] if self.adapted is not None else ["base"]


def inference_dtype(torch_dtype: str | None) -> Any:
    """Weights for scoring and generation: as asked, else bf16 where the device has native bf16, else fp32."""
    import torch

    if torch_dtype and torch_dtype != "auto":
        return getattr(torch, torch_dtype)
    bf16, _ = resolve_precision(None, None)
    return torch.bfloat16 if bf16 else torch.float32


def base_model_name(given: str | None, adapter_dir: Path | None) -> str:
    """The base to load: --model_name_or_path (or the run's saved one), else what the adapter's config records."""
    if given:
        return given
    config = adapter_dir / "adapter_config.json" if adapter_dir is not None else None
    if config is not None and config.is_file():
        return json.loads(config.read_text())["base_model_name_or_path"]
    raise MedptError("no base model: pass --model_name_or_path, or --adapter with a medpt run")


def lora_run(adapter: str | None, command: str) -> Path:
    """The --adapter folder of a LoRA run, for the commands that need one (verify, merge)."""
    if not adapter or not (Path(adapter) / "adapter_config.json").is_file():
        raise MedptError(f"{command} needs --adapter DIR holding adapter_config.json (a medpt LoRA run)")
    return Path(adapter)


def run_tokenizer_dir(adapter_dir: Path | None) -> Path | None:
    """A run saves its tokenizer beside the adapter: that folder if it holds one (else use the base model's)."""
    if adapter_dir is not None and (adapter_dir / "tokenizer_config.json").is_file():
        return adapter_dir
    return None


def load_variants(model: Any, adapter: str | None, dtype: Any) -> Variants:
    """`model` is a ModelArguments (the run's own, from its saved config, unless overridden)."""
    adapter_dir = Path(adapter) if adapter else None
    if adapter_dir is not None and not adapter_dir.is_dir():
        raise MedptError(f"--adapter {adapter}: no such directory")
    is_lora = adapter_dir is not None and (adapter_dir / "adapter_config.json").is_file()
    is_full = adapter_dir is not None and not is_lora and any(adapter_dir.glob("*.safetensors"))
    if adapter_dir is not None and not (is_lora or is_full):
        raise MedptError(f"--adapter {adapter}: holds neither adapter_config.json nor model weights")
    base_name = base_model_name(model.model_name_or_path, adapter_dir if is_lora else None)
    common = dict(revision=model.revision, cache_dir=model.cache_dir, trust_remote_code=model.trust_remote_code)
    base = load_model(base_name, dtype, attn_implementation=model.attn_implementation, **common).eval()
    source = (
        run_tokenizer_dir(adapter_dir)
        or TokenizerSource(model.tokenizer_name_or_path or base_name, model.revision, model.cache_dir).local_dir()
    )
    tokenizer = load_tokenizer(str(source), model.trust_remote_code)
    device = _local_device()
    base.to(device)
    if is_lora:
        from peft import PeftModel

        tuned = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
        return Variants(tokenizer, tuned, tuned, True, base_name)
    if is_full:
        tuned = load_model(str(adapter_dir), dtype, **common).eval().to(device)
        return Variants(tokenizer, base, tuned, False, base_name)
    return Variants(tokenizer, base, None, False, base_name)


def weights_fingerprint(local_dir: str | Path) -> str:
    """Identity of a model's weights without reading all of them: config.json, and for every safetensors file its
    name, size, header (tensor names, shapes, dtypes) and first and last MiB of data, which differ between any two
    trainings or random initialisations."""
    directory = Path(local_dir)
    h = hashlib.sha256((directory / "config.json").read_bytes() if (directory / "config.json").is_file() else b"")
    for path in sorted(directory.glob("*.safetensors")):
        size = path.stat().st_size
        with open(path, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            h.update(f"{path.name}:{size}".encode() + f.read(header_len) + f.read(1 << 20))
            f.seek(max(8 + header_len, size - (1 << 20)))
            h.update(f.read())
    return h.hexdigest()
