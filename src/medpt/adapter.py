"""A finished run, loaded for evaluation, comparison, chat, generation, serving and merging: the base model, the
adapter on it, and the checks that make a number measured with them trustworthy.

Before an adapter is applied, medpt checks that
1. its weights file is readable safetensors (a truncated or damaged file is an error naming it, not a traceback),
2. every tensor in it is finite (a NaN adapter would merge into a NaN model and print nan losses), and
3. the base is the one the adapter was trained on (the weights fingerprint `medpt train` records); another base of the
   same shape loads without complaint and gives numbers that describe neither model. `--allow_base_mismatch` applies
   it anyway, with a warning, for comparisons made on purpose.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medpt.errors import MedptError
from medpt.hub import resolve_local
from medpt.model import MODEL_FILES, inference_dtype, load_model, load_tokenizer, local_device, tokenizer_source
from medpt.rundir import ADAPTER_CONFIG, ADAPTER_WEIGHTS, BASE_RECORD


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


def base_model_name(given: str | None, adapter_dir: Path | None) -> str:
    """The base to load: --model_name_or_path (or the run's saved one), else what the adapter's config records."""
    if given:
        return given
    config = adapter_dir / ADAPTER_CONFIG if adapter_dir is not None else None
    if config is not None and config.is_file():
        return read_adapter_config(adapter_dir)["base_model_name_or_path"]
    raise MedptError("no base model: pass --model_name_or_path, or --adapter with a medpt run")


def read_adapter_config(adapter_dir: Path) -> dict[str, Any]:
    path = adapter_dir / ADAPTER_CONFIG
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise MedptError(f"{path}: unreadable adapter config ({e})") from None


def lora_run(adapter: str | None, command: str) -> Path:
    """The --adapter folder of a LoRA run, for the commands that need one (verify, merge, export)."""
    if not adapter:
        raise MedptError(f"{command} needs --adapter RUN (a medpt LoRA run)")
    path = Path(adapter)
    if not path.is_dir():
        raise MedptError(f"--adapter {adapter}: no such folder")
    if not (path / ADAPTER_CONFIG).is_file():
        raise MedptError(f"--adapter {adapter}: no {ADAPTER_CONFIG}; {command} needs a LoRA run")
    return path


def run_tokenizer_dir(model: Any, adapter_dir: Path | None, base_name: str | None = None) -> Path:
    """The one rule for which tokenizer a finished run uses: the one saved beside its adapter (the run's own), else
    --tokenizer_name_or_path, else the base model's."""
    if adapter_dir is not None and (adapter_dir / "tokenizer_config.json").is_file():
        return adapter_dir
    if base_name and not model.tokenizer_name_or_path:
        model = type(model)(**{**model.__dict__, "model_name_or_path": base_name})
    return tokenizer_source(model).local_dir()


def check_adapter_weights(adapter_dir: Path) -> None:
    """Readable and finite, or a one-line error naming the file (reads every tensor: adapters are small)."""
    import torch
    from safetensors import SafetensorError, safe_open

    path = adapter_dir / ADAPTER_WEIGHTS
    if not path.is_file():
        raise MedptError(f"{adapter_dir}: no {ADAPTER_WEIGHTS}; was the training run finished?")
    try:
        with safe_open(str(path), "pt") as f:
            for key in f.keys():
                tensor = f.get_tensor(key)
                if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                    bad = int((~torch.isfinite(tensor)).sum())
                    raise MedptError(
                        f"{path}: tensor {key} holds {bad:,} NaN/inf value(s); the adapter is broken (training "
                        "diverged?). Retrain it, or use an earlier checkpoint"
                    )
    except SafetensorError as e:
        raise MedptError(f"{path}: not a readable safetensors file ({e}); copy or train the adapter again") from None


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


def base_matches(model: Any, adapter_dir: Path, base_name: str) -> tuple[bool | None, str]:
    """(True/False, detail) when the run recorded its base; (None, detail) when it did not (trained elsewhere)."""
    record = adapter_dir / BASE_RECORD
    if not record.is_file():
        return None, f"{base_name} (no {BASE_RECORD}: trained outside medpt, not checked)"
    expected = json.loads(record.read_text(encoding="utf-8"))
    local = resolve_local(base_name, MODEL_FILES, model.revision, model.cache_dir)
    same = expected["fingerprint"] == weights_fingerprint(local)
    if same:
        return True, f"{base_name} matches"
    return False, f"{base_name} is not the base the adapter was trained on ({expected['name']})"


def check_base(model: Any, adapter_dir: Path, base_name: str, allow: bool, log: Any = print) -> None:
    same, detail = base_matches(model, adapter_dir, base_name)
    if same is False:
        if not allow:
            raise MedptError(
                f"{detail}. Pass the right --model_name_or_path, or --allow_base_mismatch to apply it anyway (its "
                "numbers then describe neither model)"
            )
        log(f"warning: {detail}; applied anyway (--allow_base_mismatch)")


def load_variants(config: Any, log: Any = print) -> Variants:
    """The base model and, with --adapter, the adapted one, checked as the module docstring says."""
    model, adapter = config.model, config.eval.adapter
    dtype = inference_dtype(model.torch_dtype)
    adapter_dir = Path(adapter) if adapter else None
    if adapter_dir is not None and not adapter_dir.is_dir():
        raise MedptError(f"--adapter {adapter}: no such folder")
    is_lora = adapter_dir is not None and (adapter_dir / ADAPTER_CONFIG).is_file()
    is_full = adapter_dir is not None and not is_lora and any(adapter_dir.glob("*.safetensors"))
    if adapter_dir is not None and not (is_lora or is_full):
        raise MedptError(f"--adapter {adapter}: holds neither {ADAPTER_CONFIG} nor model weights")
    base_name = base_model_name(model.model_name_or_path, adapter_dir if is_lora else None)
    if is_lora:
        check_adapter_weights(adapter_dir)
        check_base(model, adapter_dir, base_name, config.eval.allow_base_mismatch, log)
    base = load_model(model, dtype, name=base_name).eval()
    tokenizer = load_tokenizer(str(run_tokenizer_dir(model, adapter_dir, base_name)), model.trust_remote_code)
    device = local_device()
    base.to(device)
    if is_lora:
        from peft import PeftModel

        tuned = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
        return Variants(tokenizer, tuned, tuned, True, base_name)
    if is_full:
        tuned = load_model(model, dtype, name=str(adapter_dir)).eval().to(device)
        return Variants(tokenizer, base, tuned, False, base_name)
    return Variants(tokenizer, base, None, False, base_name)
