"""`--adapter_scale S`: the adapted model with S times the adapter's update, W + S·(α/r)·BA (for LoRA, WiSE-FT's
interpolation toward the base: 0 is the base, 1 the adapter as trained), without a second copy of the weights.

PEFT keeps each LoRA layer's scale per adapter (`scaling[adapter]`, α/r or α/√r for rsLoRA); `LoraLayer.set_scale`
sets it to S times its initial value, and merging (`get_delta_weight`) reads the same number, so `medpt eval`, `merge`,
`serve` and the merged export targets all see one definition. Targets that export the adapter itself get S folded
into its alpha (the engines' scale is linear in alpha), so the engine applies the same update.

`medpt eval --adapter_scale 0.25,0.5,0.75,1` scores every scale on the same blocks as the base and prints the
frontier: each eval set's Δ perplexity against the base, with the 95% CI of the paired difference (bootstrap over
blocks). DoRA (its magnitude vector is not scaled) and modules_to_save (trained in full) have no such scale: any
S other than 1 is refused for them, as for a fully fine-tuned model.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any

import numpy as np

from medpt.errors import MedptError


def lora_layers(model: Any) -> list[Any]:
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def set_adapter_scale(model: Any, scale: float) -> None:
    """Every LoRA layer's scale: `scale` times its initial α/r (α/√r with rsLoRA), for every adapter it holds."""
    layers = lora_layers(model)
    if not layers:
        raise MedptError("--adapter_scale applies to a LoRA adapter; this model has no LoRA layers")
    for layer in layers:
        for adapter in list(layer.scaling):
            layer.set_scale(adapter, scale)


@contextlib.contextmanager
def scaled(model: Any, scale: float) -> Any:
    set_adapter_scale(model, scale)
    try:
        yield model
    finally:
        set_adapter_scale(model, 1.0)


def scales_of(config: Any) -> list[float]:
    return list(config.eval.adapter_scale or [])


def single_scale(config: Any, command: str) -> float:
    """The one --adapter_scale of merge, export and serve (1: the adapter as trained)."""
    scales = scales_of(config)
    if len(scales) > 1:
        raise MedptError(f"--adapter_scale takes one value for {command} (several are for `medpt eval`: the frontier)")
    return scales[0] if scales else 1.0


def check_scalable(config: Any, kind: str, adapter_dir: Any) -> None:
    """Refuse a scale other than 1 where it has no meaning (before anything is loaded)."""
    if all(s == 1 for s in scales_of(config)):
        return
    if kind != "lora":
        raise MedptError("--adapter_scale scales a LoRA adapter's update; this run has none (a fully fine-tuned model "
                         "has no adapter to scale)")  # fmt: skip
    from medpt.model.files import read_adapter_config

    raw = read_adapter_config(adapter_dir)
    if raw.get("use_dora"):
        raise MedptError("--adapter_scale: a DoRA adapter's magnitude vector is not scaled, so no scale but 1 "
                         "interpolates toward the base; merge it and compare the models instead")  # fmt: skip
    if raw.get("modules_to_save"):
        raise MedptError(f"--adapter_scale: this adapter trains {', '.join(raw['modules_to_save'])} in full "
                         "(--modules_to_save), which a LoRA scale does not reach; only 1 is possible")  # fmt: skip


# --- `medpt eval`: the frontier ------------------------------------------------------------------------------------
def frontier(config: Any, variants: Any, sets: dict[str, Any], blocks: dict[str, dict], score: Any,
             log: Any) -> list[dict]:  # fmt: skip
    """One row per scale: each set's perplexity, its relative change against the base and the 95% CI of that
    change. `blocks[set]["base"]` (and "adapted", the scale-1 sums) are reused from the main table; `score(model,
    packed)` gives a set's block sums (medpt.eval.metrics.block_sums)."""
    rows = []
    for scale in scales_of(config):
        t = time.perf_counter()
        row: dict[str, Any] = {"scale": scale, "sets": {}}
        with scaled(variants.adapted, scale) as model:
            for name, packed in sets.items():
                sums = blocks[name]["adapted"] if scale == 1 else score(model, packed)
                row["sets"][name] = _change(config, blocks[name]["base"], sums)
        row["seconds"] = round(time.perf_counter() - t, 2)
        log(f"  adapter scale {scale:g}: " + ", ".join(
            f"{n} {r['perplexity_change']:+.1%}" for n, r in row["sets"].items()))  # fmt: skip
        rows.append(row)
    return rows


def _change(config: Any, base: np.ndarray, adapted: np.ndarray) -> dict[str, Any]:
    from medpt.eval.stats import ratio_difference_ci

    base_loss, loss = base[:, 0].sum() / base[:, 2].sum(), adapted[:, 0].sum() / adapted[:, 2].sum()
    ci = ratio_difference_ci(base[:, 0], adapted[:, 0], base[:, 2], config.eval.bootstrap_resamples, config.run.seed)
    return {
        "perplexity": math.exp(min(float(loss), 700.0)),
        "perplexity_change": math.expm1(float(loss - base_loss)),
        "perplexity_change_ci": [None if x is None else math.expm1(x) for x in ci.to_list()],
    }


def format_frontier(rows: list[dict]) -> str:
    names = list(rows[0]["sets"]) if rows else []
    head = ["adapter scale", *(f"Δ ppl {n} (95% CI)" for n in names)]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(["---:"] * len(head)) + " |"]
    for row in rows:
        cells = [f"{row['scale']:g}"]
        for n in names:
            r = row["sets"][n]
            low, high = r["perplexity_change_ci"]
            ci = f" ({low:+.1%} … {high:+.1%})" if low is not None and high is not None else ""
            cells.append(f"{r['perplexity_change']:+.1%}{ci}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(["The adapter's frontier: its update scaled by each --adapter_scale (0 = the base).", "", *lines])
