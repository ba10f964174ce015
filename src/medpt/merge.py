"""`medpt merge`: fold a LoRA adapter into its base model and save a standalone model (safetensors, sharded when
large), with the tokenizer and generation config, readable by AutoModelForCausalLM with no PEFT installed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medpt.errors import MedptError


def merge_dtype(torch_dtype: str | None, base_dir: Path) -> Any:
    """--torch_dtype, else the dtype the base model was saved in, else fp32."""
    import torch

    if torch_dtype and torch_dtype != "auto":
        return getattr(torch, torch_dtype)
    saved = json.loads((base_dir / "config.json").read_text()) if (base_dir / "config.json").is_file() else {}
    name = saved.get("dtype") or saved.get("torch_dtype") or "float32"
    return getattr(torch, name, torch.float32)


def run_merge(config: Any, out: Path, log: Any = print) -> Path:
    from peft import PeftModel

    from medpt.atomic import atomic_dir, atomic_write_text
    from medpt.hub import resolve_local
    from medpt.model import MODEL_FILES, base_model_name, load_model, load_tokenizer, lora_run, run_tokenizer_dir

    adapter = lora_run(config.eval.adapter, "merge")
    if out.exists() and any(out.iterdir()) and not config.run.overwrite_output_dir:
        raise MedptError(f"{out} is not empty; pass --overwrite to replace it, or another --output_dir")
    if out.resolve() == adapter.resolve():
        raise MedptError("--output_dir must differ from --adapter: the merged model is a new directory")
    m = config.model
    base_name = base_model_name(m.model_name_or_path, adapter)
    local = resolve_local(base_name, MODEL_FILES, m.revision, m.cache_dir)
    dtype = merge_dtype(m.torch_dtype, local)
    log(f"merging {adapter} into {base_name} ({dtype})")
    base = load_model(
        base_name, dtype, revision=m.revision, cache_dir=m.cache_dir, trust_remote_code=m.trust_remote_code
    )
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    tokenizer = load_tokenizer(str(run_tokenizer_dir(adapter) or local), m.trust_remote_code)
    with atomic_dir(out) as tmp:
        # 5 GB shards: the usual size on the hub, and small enough for filesystems with a per-file limit.
        merged.save_pretrained(tmp, safe_serialization=True, max_shard_size="5GB")
        tokenizer.save_pretrained(tmp)
        note = {"base_model": base_name, "adapter": str(adapter), "dtype": str(dtype).replace("torch.", "")}
        atomic_write_text(Path(tmp) / "medpt_merge.json", json.dumps(note, indent=2))
    log(f"merged model: {out}")
    return out
