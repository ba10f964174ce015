"""A finished run, loaded for evaluation, comparison, chat, generation, serving and merging: the base model, the
adapter on it, and the checks that make a number measured with them trustworthy.

Before anything is loaded (`check_variants`, called before any data is prepared), medpt checks that
1. the base model's, the adapter's and the tokenizer's files are whole and fit each other (medpt.model.files: every
   damaged or mismatched file is one line naming it, not a traceback from transformers or PEFT),
2. every tensor of the adapter is finite (a NaN adapter would merge into a NaN model and print nan losses), and
3. the base is the one the adapter was trained on (the weights fingerprint `medpt train` records); another base of the
   same shape loads without complaint and gives numbers that describe neither model. `--allow_base_mismatch` applies
   it anyway, with a warning, for comparisons made on purpose.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medpt.errors import MedptError
from medpt.model.files import (
    ModelFacts,
    check_adapter_fits,
    check_tokenizer_fits,
    read_adapter_config,
    read_json,
    weights_fingerprint,
)
from medpt.model.hub import resolve_local
from medpt.model.loading import (
    MODEL_FILES,
    TOKENIZER_CONFIG,
    inference_dtype,
    load_model,
    load_tokenizer,
    local_device,
    model_facts,
    tokenizer_source,
)
from medpt.rundir import ADAPTER_CONFIG, ADAPTER_WEIGHTS, BASE_RECORD, stopped_run


@dataclass
class Variants:
    """The base model and the adapted one. With a LoRA adapter they are one PeftModel, and "base" is that model with
    the adapter switched off (PEFT's disable_adapter), so both are scored in one process on one copy of the weights."""

    tokenizer: Any
    base: Any
    adapted: Any | None  # None when no adapter was given
    peft: bool
    base_name: str
    positions: int | None = None  # the most tokens the model takes, prompt and answer together

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
        name = read_adapter_config(adapter_dir).get("base_model_name_or_path")
        if name:
            return name
        raise MedptError(f"{config} names no base_model_name_or_path: pass --model_name_or_path")
    raise MedptError("no base model: pass --model_name_or_path, or --adapter with a medpt run")


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
    if adapter_dir is not None and (adapter_dir / TOKENIZER_CONFIG).is_file():
        return adapter_dir
    if base_name and not model.tokenizer_name_or_path:
        model = type(model)(**{**model.__dict__, "model_name_or_path": base_name})
    return tokenizer_source(model).local_dir()


def check_adapter(adapter_dir: Path, facts: ModelFacts) -> None:
    """Its files fit each other and the base (medpt.model.files), and its weights are finite."""
    check_adapter_fits(adapter_dir, facts)
    check_adapter_weights(adapter_dir)


def adapter_tensors(path: Path) -> dict[str, Any]:
    """Every tensor of an adapter's safetensors file (adapters are small), or a one-line error naming the file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return {key: f.get_tensor(key) for key in f.keys()}
    except SafetensorError as e:
        raise MedptError(f"{path}: not a readable safetensors file ({e}); copy or train the adapter again") from None


def check_adapter_weights(adapter_dir: Path) -> None:
    """Readable and finite, or a one-line error naming the file."""
    import torch

    path = adapter_dir / ADAPTER_WEIGHTS
    if not path.is_file():
        raise MedptError(f"{adapter_dir}: no {ADAPTER_WEIGHTS}; was the training run finished?")
    for key, tensor in adapter_tensors(path).items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise MedptError(
                f"{path}: tensor {key} holds {bad:,} NaN/inf value(s); the adapter is broken (training diverged?). "
                "Retrain it, or use an earlier checkpoint"
            )


def base_matches(model: Any, adapter_dir: Path, base_name: str) -> tuple[bool | None, str]:
    """(True/False, detail) when the run recorded its base; (None, detail) when it did not (trained elsewhere)."""
    record = adapter_dir / BASE_RECORD
    if not record.is_file():
        return None, f"{base_name} (no {BASE_RECORD}: trained outside medpt, not checked)"
    expected = read_json(record, "delete it to skip this check, or train the adapter again")
    local = resolve_local(base_name, MODEL_FILES, model.revision, model.cache_dir)
    same = expected.get("fingerprint") == weights_fingerprint(local)
    if same:
        return True, f"{base_name} matches"
    return False, f"{base_name} is not the base the adapter was trained on ({expected.get('name')})"


def check_base(model: Any, adapter_dir: Path, base_name: str, allow: bool, log: Any = print) -> None:
    same, detail = base_matches(model, adapter_dir, base_name)
    if same is False:
        if not allow:
            raise MedptError(
                f"{detail}. Pass the right --model_name_or_path, or --allow_base_mismatch to apply it anyway (its "
                "numbers then describe neither model)"
            )
        log(f"warning: {detail}; applied anyway (--allow_base_mismatch)")


@dataclass(frozen=True)
class Checked:
    """What `load_variants` will load, every file checked and nothing loaded but the (small) tokenizer."""

    base_name: str
    adapter_dir: Path | None  # the folder loaded: --adapter, or the latest checkpoint of a stopped run
    kind: str  # "lora", "full" (a fully fine-tuned model) or "" (no adapter)
    facts: ModelFacts  # the base's
    tokenizer: Any
    stopped_at: int | None = None  # the checkpoint's step, when --adapter is a run stopped before it finished


def check_variants(config: Any, log: Any = print) -> Checked:
    """Everything `load_variants` would trip over, checked before any data is prepared or weight loaded: the
    adapter folder, the base's files, the adapter against the base, the tokenizer against the model, and room in
    the model's positions for an answer of --max_new_tokens."""
    model, adapter = config.model, config.eval.adapter
    adapter_dir = Path(adapter) if adapter else None
    if adapter_dir is not None and not adapter_dir.is_dir():
        raise MedptError(f"--adapter {adapter}: no such folder")
    stopped = stopped_run(adapter_dir) if adapter_dir is not None else None
    if stopped is not None:
        if stopped.checkpoint is None:
            raise MedptError(f"{stopped.line('')}: nothing to load; the same train command continues it")
        log(stopped.line("evaluating" if config.command == "eval" else "using"))
        adapter_dir = stopped.checkpoint
    is_lora = adapter_dir is not None and (adapter_dir / ADAPTER_CONFIG).is_file()
    if adapter_dir is not None and not is_lora and (adapter_dir / ADAPTER_WEIGHTS).is_file():
        raise MedptError(f"{adapter_dir / ADAPTER_CONFIG}: missing beside {ADAPTER_WEIGHTS}; copy the adapter again")
    is_full = adapter_dir is not None and not is_lora and any(adapter_dir.glob("*.safetensors"))
    if adapter_dir is not None and not (is_lora or is_full):
        raise MedptError(f"--adapter {adapter}: holds neither {ADAPTER_CONFIG} nor model weights")
    base_name = base_model_name(model.model_name_or_path, adapter_dir if is_lora else None)
    facts = model_facts(model, base_name)
    if is_lora:
        check_adapter(adapter_dir, facts)
        check_base(model, adapter_dir, base_name, config.eval.allow_base_mismatch, log)
    if is_full:
        model_facts(model, str(adapter_dir))
    tokenizer_dir = run_tokenizer_dir(model, adapter_dir, base_name)
    tokenizer = load_tokenizer(str(tokenizer_dir), model.trust_remote_code)
    check_tokenizer_fits(tokenizer, tokenizer_dir, facts)
    generates = config.command != "eval" or config.eval.generate_eval
    if generates and facts.positions is not None and config.generate.max_new_tokens >= facts.positions:
        raise MedptError(f"--max_new_tokens {config.generate.max_new_tokens:,} leaves no room for a question: "
                         f"{base_name} takes {facts.positions:,} positions, question and answer together")  # fmt: skip
    kind = "lora" if is_lora else "full" if is_full else ""
    from medpt.model.adapter_scale import check_scalable

    check_scalable(config, kind, adapter_dir)
    return Checked(base_name, adapter_dir, kind, facts, tokenizer, stopped.step if stopped is not None else None)


def load_variants(config: Any, log: Any = print, checked: Checked | None = None) -> Variants:
    """The base model and, with --adapter, the adapted one, checked as the module docstring says (`checked`: the
    result of an earlier `check_variants`, when the command checked before preparing data)."""
    c = checked or check_variants(config, log)
    model = config.model
    dtype = inference_dtype(model.torch_dtype)
    base = load_model(model, dtype, name=c.base_name).eval()
    device = local_device()
    base.to(device)
    positions = c.facts.positions
    if c.kind == "lora":
        from peft import PeftModel

        tuned = PeftModel.from_pretrained(base, str(c.adapter_dir)).eval()
        scales = config.eval.adapter_scale or []
        if len(scales) == 1 and scales[0] != 1:  # several: `medpt eval` scores each (adapter_scale.frontier)
            from medpt.model.adapter_scale import set_adapter_scale

            set_adapter_scale(tuned, scales[0])
            log(f"adapter scale {scales[0]:g}: the adapter's update × {scales[0]:g}")
        return Variants(c.tokenizer, tuned, tuned, True, c.base_name, positions)
    if c.kind == "full":
        tuned = load_model(model, dtype, name=str(c.adapter_dir)).eval().to(device)
        return Variants(c.tokenizer, base, tuned, False, c.base_name, positions)
    return Variants(c.tokenizer, base, None, False, c.base_name, positions)
