"""`medpt train`: continued pretraining with LoRA / QLoRA / full fine-tuning. The recipe (check → prepare → build →
fit → finish) is `recipe`, which `medpt tune` and `medpt demo` run as a library."""

from __future__ import annotations

from typing import Any

from medpt.train.recipe import train


def run_train(config: Any) -> int:
    return train(config)
