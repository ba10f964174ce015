"""Language-model metrics: loss, token accuracy, perplexity.

All three come from running sums, so memory stays O(batch) however large the eval set: no logits or predictions
are kept between batches, only the three sums of each block (O(blocks)), from which `medpt eval` bootstraps the
confidence interval of Δ loss over blocks (medpt.eval.stats).

    loss            = Σ token cross-entropy / N     over the N tokens with a label (padding and -100 excluded),
                                                    the label of position t being the token at t+1
    perplexity      = exp(loss)                     token-weighted, i.e. exp of the mean over all tokens,
                                                    not the mean of per-batch perplexities
    token accuracy  = #(argmax logits_t == label_{t+1}) / N
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medpt.data.batches import IGNORE_INDEX


@dataclass
class TokenStats:
    """Running sums over scored tokens. Every language-model metric is derived from these in `METRICS`: adding a
    metric is one line there (and a sum here if it needs a new one); training, `medpt eval`, the tables and the report
    all read them from that table."""

    loss_sum: float = 0.0  # Σ cross-entropy (nats)
    correct: int = 0  # tokens whose argmax is the label
    tokens: int = 0  # tokens with a label

    def add(self, other: TokenStats) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    @classmethod
    def from_tensor(cls, sums: torch.Tensor) -> TokenStats:
        values = sums.tolist()
        return cls(*(type(f.default)(v) for f, v in zip(fields(cls), values)))

    def metrics(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}{m.name}": (m.value(self) if self.tokens else float("nan")) for m in METRICS}


@dataclass(frozen=True)
class Metric:
    name: str
    value: Callable[[TokenStats], float]
    fmt: str  # how tables print it
    change: str | None  # how tables print adapted vs base: "diff", "ratio" (relative change) or None
    label: str


METRICS = (
    Metric("loss", lambda s: s.loss_sum / s.tokens, ".4f", "diff", "loss"),
    # exp(>709) overflows a float: a random-init model's loss is ~10, so the cap only guards against garbage.
    Metric("perplexity", lambda s: math.exp(min(s.loss_sum / s.tokens, 700.0)), ".2f", "ratio", "ppl"),
    Metric("token_accuracy", lambda s: s.correct / s.tokens, ".2%", None, "acc"),
)


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each position's next-token cross-entropy, (rows, positions − 1), and the mask of those with a label.

    The shift happens here, once: logits at position t are scored against the label at t+1."""
    targets = labels[:, 1:].to(logits.device)
    flat_logits = logits[:, :-1, :].reshape(-1, logits.shape[-1]).float()  # fp32: bf16 loses ~2 digits of the loss
    loss = F.cross_entropy(flat_logits, targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none")
    return loss.view(targets.shape), targets != IGNORE_INDEX


def row_sums(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The TokenStats sums of each row (block) of a batch, (rows, 3) float64 on the logits' device."""
    loss, mask = token_losses(logits, labels)
    correct = (logits[:, :-1, :].argmax(-1) == labels[:, 1:].to(logits.device)) & mask
    # in TokenStats field order; per-token losses summed in float64, so the sum does not depend on the batch size
    return torch.stack([loss.double().sum(1), correct.sum(1).double(), mask.sum(1).double()], 1)


def token_sums(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The TokenStats sums of one batch, as one float64 tensor (cheap to all-reduce)."""
    return row_sums(logits, labels).sum(0)


def stats_from_sums(sums: torch.Tensor) -> TokenStats:
    return TokenStats.from_tensor(sums)


def block_sums(model: Any, packed: Any, mode: str, batch_size: int, pad_id: int) -> np.ndarray:
    """(blocks, 3): the TokenStats sums of every block of a prepared split (loss sum, correct, tokens), batch by
    batch; O(blocks) memory, so the uncertainty of a difference can be estimated by resampling blocks."""
    from medpt.data.batches import REAL_TOKENS, Collator, PackedDataset

    dataset = PackedDataset(packed)
    collate = Collator(pad_id, mode, None if mode == "none" else packed.block_size)
    device = next(model.parameters()).device
    rows = []
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            batch.pop(REAL_TOKENS)
            labels = batch.pop("labels")
            # use_cache=False: no KV cache, so isolated packing gets its per-document mask (see data/batches.py)
            logits = model(**{k: v.to(device) for k, v in batch.items()}, use_cache=False).logits
            rows.append(row_sums(logits, labels).cpu())
    return torch.cat(rows).numpy() if rows else np.zeros((0, len(fields(TokenStats))))


def lm_stats(model: Any, packed: Any, mode: str, batch_size: int, pad_id: int) -> TokenStats:
    """Loss / accuracy / perplexity sums over every block of a prepared split."""
    return stats_from_sums(torch.from_numpy(block_sums(model, packed, mode, batch_size, pad_id).sum(0)))


def format_eval(results: dict[str, Any]) -> str:
    """The LM table (each eval set, base and adapted, the change and its CI; columns from METRICS), then the
    multiple-choice and generated-answer tables."""
    lines = []
    if results["sets"]:
        ci = any("delta_loss_ci" in r for r in results["sets"].values())
        head, rule = ["eval set", "tokens"], ["---", "---:"]
        for m in METRICS:
            head += [f"{m.label} base", f"{m.label} adapted"] + ([f"Δ {m.label}"] if m.change else [])
            rule += ["---:", "---:"] + (["---:"] if m.change else [])
            if ci and m.change:
                head.append(f"95% CI Δ {m.label}")
                rule.append("---")
        lines += ["| " + " | ".join(head) + " |", "| " + " | ".join(rule) + " |"]
        for name, r in results["sets"].items():
            lines.append("| " + " | ".join(_set_cells(name, r, ci)) + " |")
        if ci:
            lines += ["", "95% CI of the paired difference: bootstrap over blocks (rows of the prepared split), "
                      "token-weighted; Δ ppl is exp(Δ loss) − 1."]  # fmt: skip
    if results.get("frontier"):
        from medpt.model.adapter_scale import format_frontier

        lines += ["", format_frontier(results["frontier"])]
    if results.get("mcq") and "benchmarks" not in results["mcq"]:
        lines += ["", "(multiple-choice results of an older medpt version: run `medpt eval` again to see them)"]
    elif results.get("mcq"):
        from medpt.eval.mcq_suite import format_suite

        lines += ["", format_suite(results["mcq"])]
    if results.get("generated"):
        from medpt.eval.answers import format_answers

        lines += ["", format_answers(results["generated"])]
    return "\n".join(lines).strip("\n")


def _set_cells(name: str, r: dict[str, Any], ci: bool) -> list[str]:
    b, a = r["base"], r.get("adapted")
    cells = [name, f"{b['tokens']:,}"]
    intervals = {"loss": r.get("delta_loss_ci"), "perplexity": r.get("perplexity_change_ci")}
    for m in METRICS:
        cells += [_value(b[m.name], m.fmt), _value(a[m.name], m.fmt) if a else ""]
        if m.change:
            cells.append(_change(b[m.name], a[m.name], m.change) if a else "")
            if ci:
                cells.append(_interval(intervals.get(m.name), m.change))
    return cells


def _value(x: float | None, fmt: str) -> str:
    """A metric, or n/a where it has no finite value (null in eval_results.json, NaN in memory: medpt.strictjson)."""
    return format(x, fmt) if x is not None and math.isfinite(x) else "n/a"


def _change(base: float | None, adapted: float | None, kind: str) -> str:
    if base is None or adapted is None or not math.isfinite(adapted - base) or (kind == "ratio" and not base):
        return "n/a"
    return f"{adapted - base:+.4f}" if kind == "diff" else f"{adapted / base - 1:+.1%}"


def _interval(ci: list[float | None] | None, kind: str) -> str:
    if not ci or None in ci:
        return ""
    return f"[{ci[0]:+.4f}, {ci[1]:+.4f}]" if kind == "diff" else f"[{ci[0]:+.1%}, {ci[1]:+.1%}]"
