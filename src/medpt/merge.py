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


def run_merge(config: Any, log: Any = print) -> int:
    from peft import PeftModel

    from medpt.adapter import base_model_name, check_adapter_weights, check_base, lora_run, run_tokenizer_dir
    from medpt.atomic import atomic_dir, atomic_write_text, check_free_space
    from medpt.hub import resolve_local
    from medpt.model import MODEL_FILES, load_model, load_tokenizer
    from medpt.rundir import MERGE_INFO, RunDir, check_output, inputs_of

    if "output_dir" not in config.explicit:
        raise MedptError("merge needs --output_dir (a new, empty folder for the merged model)")
    adapter = lora_run(config.eval.adapter, "merge")
    out = check_output("output_dir", config.run.output_dir, inputs_of(config))
    existing = RunDir.open(out)
    if existing.present():
        # The merged model replaces the folder as a whole (one rename), so it must hold nothing medpt did not write.
        if not (config.run.overwrite_output_dir and existing.kind == "merge" and not existing.foreign()):
            raise MedptError(
                f"{out} is not empty; pass --overwrite to replace a merged model medpt wrote there (the folder must "
                "hold nothing else), or choose another --output_dir"
            )
    m = config.model
    base_name = base_model_name(m.model_name_or_path, adapter)
    check_adapter_weights(adapter)
    check_base(m, adapter, base_name, config.eval.allow_base_mismatch, log)
    local = resolve_local(base_name, MODEL_FILES, m.revision, m.cache_dir)
    dtype = merge_dtype(m.torch_dtype, local)
    weights = sum(f.stat().st_size for f in local.glob("*.safetensors"))
    check_free_space(out.parent, weights * _bytes(dtype) // _bytes(merge_dtype(None, local)), "the merged model")
    log(f"merging {adapter} into {base_name} ({dtype})")
    base = load_model(m, dtype, name=base_name)
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    tokenizer = load_tokenizer(str(run_tokenizer_dir(m, adapter, base_name)), m.trust_remote_code)
    with atomic_dir(out) as tmp:
        # 5 GB shards: the usual size on the hub, and small enough for filesystems with a per-file limit.
        merged.save_pretrained(tmp, safe_serialization=True, max_shard_size="5GB")
        tokenizer.save_pretrained(tmp)
        note = {"base_model": base_name, "adapter": str(adapter.resolve()), "dtype": str(dtype).replace("torch.", "")}
        atomic_write_text(Path(tmp) / MERGE_INFO, json.dumps(note, indent=2))
        RunDir(Path(tmp)).record([p.name for p in Path(tmp).iterdir()], "merge")
    log(f"merged model: {out}")
    return 0


def _bytes(dtype: Any) -> int:
    return dtype.itemsize
