"""Folding a LoRA adapter into its base model and saving the result as a standalone model (safetensors, sharded
when large), with the tokenizer and generation config: the library of `medpt merge` (export.merge) and of
`medpt export --target merged|gguf`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medpt.model.files import CONFIG
from medpt.strictjson import dumps

_SMALL_FILES = 1 << 20  # config.json, generation_config.json, the shard index, medpt_merge.json, the manifest


@dataclass
class Merged:
    model: Any  # the merged transformers model (no PEFT layers left)
    tokenizer: Any
    tokenizer_dir: Path  # where the run's tokenizer files are (GGUF export reads tokenizer.json from there)
    base_name: str
    adapter: Path
    dtype: Any
    scale: float = 1.0  # --adapter_scale: the multiple of the adapter's update that was merged


def merge_dtype(torch_dtype: str | None, base_dir: Path) -> Any:
    """--torch_dtype, else the dtype the base model was saved in, else fp32."""
    import torch

    if torch_dtype and torch_dtype != "auto":
        return getattr(torch, torch_dtype)
    saved = json.loads((base_dir / CONFIG).read_text()) if (base_dir / CONFIG).is_file() else {}
    name = saved.get("dtype") or saved.get("torch_dtype") or "float32"
    return getattr(torch, name, torch.float32)


def merge_adapter(config: Any, adapter: Path, out: Path, log: Any = print, dtype: Any = None) -> Merged:
    """Check the adapter and its base (weights finite, the base it was trained on, room on disk), then load both
    and fold the adapter in. `dtype` overrides --torch_dtype / the base's saved dtype."""
    from peft import PeftModel

    from medpt.atomic import check_free_space
    from medpt.model.adapter import check_variants, run_tokenizer_dir
    from medpt.model.adapter_scale import set_adapter_scale, single_scale
    from medpt.model.loading import TOKENIZER_FILES, load_model

    m = config.model
    scale = single_scale(config, config.command or "merge")  # refused before anything is checked or loaded
    checked = check_variants(config, log)  # the adapter (config.eval.adapter) and its base, before loading either
    base_name, local = checked.base_name, checked.facts.local
    dtype = dtype or merge_dtype(m.torch_dtype, local)
    tokenizer_dir = run_tokenizer_dir(m, adapter, base_name)
    weights = sum(f.stat().st_size for f in local.glob("*.safetensors"))
    # The tokenizer's files too: a large vocabulary's tokenizer.json is tens of MB, and a tiny model's weights are less.
    tokenizer_bytes = sum(f.stat().st_size for name in TOKENIZER_FILES if (f := tokenizer_dir / name).is_file())
    needed = weights * _bytes(dtype) // _bytes(merge_dtype(None, local)) + tokenizer_bytes + _SMALL_FILES
    check_free_space(out, needed, "the merged model")  # out, or the nearest folder above it that exists
    log(f"merging {adapter} into {base_name} ({dtype})")
    base = load_model(m, dtype, name=base_name)
    model = PeftModel.from_pretrained(base, str(adapter))
    if scale != 1:  # merging reads the same per-layer scale: W + scale·ΔW is folded in
        set_adapter_scale(model, scale)
        log(f"adapter scale {scale:g}: the adapter's update × {scale:g} is merged")
    model = model.merge_and_unload()
    return Merged(model, checked.tokenizer, tokenizer_dir, base_name, adapter, dtype, scale)


def save_merged(merged: Merged, directory: Path, command: str) -> None:
    """The merged model, its tokenizer and a note of what was merged, into `directory` (recorded as `command`'s)."""
    from medpt.atomic import atomic_write_text
    from medpt.rundir import MERGE_INFO, RunDir

    # 5 GB shards: the usual size on the hub, and small enough for filesystems with a per-file limit.
    merged.model.save_pretrained(directory, safe_serialization=True, max_shard_size="5GB")
    merged.tokenizer.save_pretrained(directory)
    note = {
        "base_model": merged.base_name,
        "adapter": str(merged.adapter.resolve()),
        "dtype": str(merged.dtype).replace("torch.", ""),
        "adapter_scale": merged.scale,
    }
    atomic_write_text(Path(directory) / MERGE_INFO, dumps(note, indent=2))
    RunDir(Path(directory)).record([p.name for p in Path(directory).iterdir()], command)


def _bytes(dtype: Any) -> int:
    return dtype.itemsize
