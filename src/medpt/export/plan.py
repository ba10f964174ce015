"""What an adapter uses (read from its adapter_config.json), what each target does with each feature, and the job a
target's writer gets. Each target module states its own row of the table (`ACCEPTS`) with the engine's reasons."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from medpt.errors import MedptError
from medpt.rundir import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from medpt.strictjson import dumps

# The features an engine may refuse or mis-serve. "lora" is every adapter's low-rank update itself.
FEATURES = ("lora", "rslora", "dora", "modules_to_save")
Action = Literal["as_is", "rescale_alpha", "merge", "refuse"]


@dataclass(frozen=True)
class Handling:
    action: Action
    why: str = ""  # the engine's behaviour, with its file and version
    instead: str = ""  # for "refuse": the target that works


AS_IS = Handling("as_is")
MERGED = Handling("merge", "folded into the weights: the engine never sees an adapter")


@dataclass(frozen=True)
class AdapterFacts:
    rank: int
    alpha: float
    use_rslora: bool
    use_dora: bool
    modules_to_save: tuple[str, ...]

    @classmethod
    def read(cls, adapter_dir: Path) -> AdapterFacts:
        from medpt.model.files import read_adapter_config

        path = adapter_dir / ADAPTER_CONFIG
        raw = read_adapter_config(adapter_dir)
        if raw.get("peft_type", "LORA") != "LORA":
            raise MedptError(f"{path}: peft_type {raw.get('peft_type')!r}; medpt export handles LoRA adapters")
        if raw.get("rank_pattern") or raw.get("alpha_pattern"):
            raise MedptError(f"{path}: per-module rank_pattern/alpha_pattern is not exported; use --target merged")
        return cls(
            rank=raw["r"],
            alpha=float(raw.get("lora_alpha", 8)),  # PEFT's default
            use_rslora=bool(raw.get("use_rslora")),
            use_dora=bool(raw.get("use_dora")),
            modules_to_save=tuple(raw.get("modules_to_save") or ()),
        )

    def features(self) -> list[str]:
        present = {
            "lora": True,
            "rslora": self.use_rslora,
            "dora": self.use_dora,
            "modules_to_save": bool(self.modules_to_save),
        }
        return [f for f in FEATURES if present[f]]

    def describe(self, feature: str) -> str:
        return {
            "lora": f"LoRA r={self.rank}, alpha={self.alpha:g}",
            "rslora": f"rsLoRA (scale alpha/sqrt(r) = {self.alpha / math.sqrt(self.rank):g})",
            "dora": "DoRA (lora_magnitude_vector tensors)",
            "modules_to_save": f"modules_to_save ({', '.join(self.modules_to_save)} trained in full)",
        }[feature]

    def alpha_for_alpha_over_r(self) -> float:
        """The alpha that gives an engine scaling by alpha/r the update PEFT trained: alpha·√r for rsLoRA
        (alpha'/r = alpha/√r), alpha itself otherwise."""
        return self.alpha * math.sqrt(self.rank) if self.use_rslora else self.alpha


@dataclass
class Job:
    """Everything a target's writer needs. It writes into `tmp`, which becomes `out` when it returns."""

    config: Any
    adapter: Path
    facts: AdapterFacts
    base_name: str  # the base as loaded here
    named_base: str  # the base an exported adapter names: --base_model, else base_name made absolute (or a hub id)
    tmp: Path
    out: Path
    quant: str
    log: Any = print
    scale: float = 1.0  # --adapter_scale: the multiple of the adapter's update the target gets
    notes: list[str] = field(default_factory=list)  # conversions made, for the report
    report: dict[str, Any] = field(default_factory=dict)  # verification numbers


def plan(target: str, accepts: dict[str, Handling], facts: AdapterFacts) -> dict[str, Handling]:
    """The handling of each feature the adapter uses, or a MedptError naming the first refused one, the engine's
    reason and the target that works."""
    chosen = {f: accepts[f] for f in facts.features()}
    for feature, handling in chosen.items():
        if handling.action == "refuse":
            raise MedptError(
                f"--target {target} cannot take this adapter: it uses {facts.describe(feature)}, and {handling.why}. "
                f"Use --target {handling.instead} instead"
            )
    return chosen


def write_peft_adapter(job: Job, alpha: float | None = None) -> Path:
    """The adapter as PEFT saved it (config and weights), into job.tmp/adapter; with `alpha`, its config says that
    alpha and use_rslora false, so an engine that scales by alpha/r applies the update PEFT trained. Its
    base_model_name_or_path is job.named_base: PEFT records the base as it was typed at training time (a relative
    `work/M`), which AutoPeftModelForCausalLM.from_pretrained(EXPORT) run from another folder looks for on the hub."""
    target = job.tmp / "adapter"
    target.mkdir()
    shutil.copyfile(job.adapter / ADAPTER_WEIGHTS, target / ADAPTER_WEIGHTS)
    config = json.loads((job.adapter / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    if alpha is not None and alpha != config["lora_alpha"]:
        job.notes.append(
            f"lora_alpha {config['lora_alpha']:g} → {alpha:g} with use_rslora false: alpha'/r = alpha/√r, the scale "
            "rsLoRA trained with"
        )
        config.update(lora_alpha=alpha, use_rslora=False)
    if job.scale != 1:  # every engine scales the update by alpha/r (or alpha/√r): linear in alpha
        job.notes.append(f"lora_alpha {config['lora_alpha']:g} → {config['lora_alpha'] * job.scale:g}: "
                         f"--adapter_scale {job.scale:g}")  # fmt: skip
        config["lora_alpha"] = config["lora_alpha"] * job.scale
    config["base_model_name_or_path"] = job.named_base
    (target / ADAPTER_CONFIG).write_text(dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return target
