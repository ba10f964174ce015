"""The tiny model: same architecture family as deepseek-coder-7b-base-v1.5 (LlamaForCausalLM, untied head, MHA),
small enough to train on a laptop CPU, with a tokenizer trained locally, so that tests, the demo and the benchmarks run
offline. Sizes are nominal; `medpt init-tiny` prints the real parameter count.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medpt.args.commands import COMMANDS
from medpt.errors import MedptError
from medpt.rundir import TINY_INFO
from medpt.strictjson import dumps

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
    from medpt.rundir import RunDir

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
        (tmp / TINY_INFO).write_text(dumps(info, indent=2), encoding="utf-8")
        # The whole folder is medpt's: record every entry, so --overwrite may replace exactly these later.
        RunDir(tmp).record([p.name for p in tmp.iterdir()], "init-tiny")
    return info


def run_init_tiny(args: Any) -> int:
    """`medpt init-tiny`: a tokenizer trained on --corpus and a random-init model, saved with save_pretrained."""
    from medpt.data.pipeline import read_texts
    from medpt.rundir import Inputs, check_output, check_replaceable

    inputs = Inputs()
    inputs.add_all("corpus", args.corpus)
    out = check_output("output_dir", args.output_dir, inputs)
    check_replaceable(out, COMMANDS["init-tiny"], args.overwrite, "a tiny model")
    info = init_tiny(out, args.size, read_texts(args.corpus), args.seed)
    print(
        f"tiny model ({args.size}): {info['parameters'] / 1e6:.1f}M parameters, vocabulary {info['tokenizer_vocab']:,} "
        f"(trained on {info['corpus_texts']:,} documents) → {out}"
    )
    return 0
