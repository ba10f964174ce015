"""Models and tokenizers: where they come from (hub or local path), and the tiny offline model for tests and demos.

Hub access goes through huggingface_hub, which honours HF_ENDPOINT (a mirror), HF_HOME / --cache_dir and
HF_HUB_OFFLINE. transformers is imported inside functions: it costs seconds, and a cached `medpt prepare` needs none.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medpt.errors import MedptError

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


def apply_offline(offline: bool) -> None:
    """--offline: the same switch as HF_HUB_OFFLINE=1, for hub files and datasets alike."""
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["HF_DATASETS_OFFLINE"] = "1"


def resolve_local(
    name_or_path: str, allow_patterns: list[str] | None, revision: str | None = None, cache_dir: str | None = None
) -> Path:
    """A local directory for a model or tokenizer: the path itself, or a hub snapshot (downloaded, resumable)."""
    if os.path.isdir(name_or_path):
        return Path(name_or_path)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(
            snapshot_download(name_or_path, revision=revision, cache_dir=cache_dir, allow_patterns=allow_patterns)
        )
    except LocalEntryNotFoundError:
        raise MedptError(
            f"{name_or_path}: not in the local cache and the hub is unreachable or offline (HF_HUB_OFFLINE). "
            f"Download it first with `medpt download {name_or_path}`, set HF_ENDPOINT to a mirror, or pass a local path"
        ) from None
    except RepositoryNotFoundError:
        raise MedptError(f"{name_or_path}: no such model on the hub, and no such local directory") from None
    except (HfHubHTTPError, OSError) as e:
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        raise MedptError(f"{name_or_path}: download from {endpoint} failed: {e}") from None


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
