"""LoRA on top of PEFT: the adapter itself, and two fixes for slow paths PEFT takes on a CPU.

1. Input casting. PEFT casts each LoRA input to the adapter's dtype (fp32) before lora_A. Under bf16/fp16
   autocast the matmul casts it straight back, so for 7 modules × layers the cast is a full extra copy of the
   activations each way for nothing; medpt switches it off when autocast is on (the math is identical).
2. Dropout. PEFT's per-layer dropout costs a large share of a CPU training step; medpt.train.dropout replaces it with
   bulk masks and cheap multiplies, one mask per shared input (see there). Under torch.compile the stock dropout is
   kept (inductor generates its own).
"""

from __future__ import annotations

from typing import Any

from medpt.errors import MedptError
from medpt.model.hub import resolve_local


def add_lora(model: Any, lora: Any, gradient_checkpointing: bool = False) -> Any:
    """Wrap the model with a trainable LoRA adapter: a new one from `lora` (LoraArguments builds the
    peft.LoraConfig), or --peft_path to continue an existing one."""
    from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "is_loaded_in_4bit", False):
        # Casts norms to fp32 and enables input gradients, which 4-bit training with checkpointing needs.
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    if lora.peft_path:
        return PeftModel.from_pretrained(model, resolve_local(lora.peft_path, None), is_trainable=True)
    try:
        return get_peft_model(model, lora.to_peft_config())
    except ValueError as e:  # PEFT's message for target modules that match nothing
        raise MedptError(f"--target_modules {','.join(lora.target_modules)}: {e}") from None


def speed_up(model: Any, autocast: bool, compiled: bool, dropout_mode: str = "shared") -> None:
    """Apply the two fixes above to every LoRA layer of a PEFT model (in place)."""
    from medpt.train.dropout import install

    for module in model.modules():
        if autocast and hasattr(module, "cast_input_dtype_enabled"):
            module.cast_input_dtype_enabled = False
    if not compiled:
        install(model, dropout_mode)
