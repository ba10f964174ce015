"""The training loss of a run with named sources: next-token cross-entropy logged per source, plus `--replay_kl W`.

1. Per source: each token of a packed block knows its source (medpt.data.packing), so the loss of a logging interval
   is split by source, token-weighted (Σ loss × tokens over the interval): `train_<source>_loss` and
   `train_<source>_tokens` in metrics.jsonl; the sources' losses, weighted by their tokens, add up to the interval's
   token-weighted loss (equal to `loss` when every step scores as many tokens).
2. `--replay_kl W` (learning without forgetting, KL-regularised continued pretraining): on the tokens of
   `--replay_kl_sources` (default: every --mix source but the first), add W × KL(base ‖ adapted) of the next-token
   distributions. The loss of a micro-batch is (Σ cross-entropy + W × Σ KL) / N, N the tokens with a label in the
   accumulated batch (what transformers divides the cross-entropy by), so W is in nats per replayed token.
   The base distribution comes from the same weights with the adapter switched off (PEFT's disable_adapter: no extra
   memory, one extra forward of the rows holding replayed tokens, no backward), or for full fine-tuning from a
   frozen copy of the starting weights (one more copy of the weights in memory).
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import torch
import torch.nn.functional as F

from medpt.errors import MedptError
from medpt.eval.metrics import token_losses


def kl_sources(config: Any) -> list[str]:
    """The sources --replay_kl regularises, checked against the training sources (one line naming the flag)."""
    lora, data = config.lora, config.data
    names = [n for n in data.source_names() if n]
    if not lora.replay_kl:
        if lora.replay_kl_sources:
            raise MedptError("--replay_kl_sources says where --replay_kl W applies: add --replay_kl (e.g. 0.5)")
        return []
    if len(names) < 2:
        raise MedptError("--replay_kl needs named sources (--train_file_dir medical=PATH general=PATH, usually with "
                         "--mix): it regularises the replayed sources' tokens")  # fmt: skip
    order = list(data.shares() or {}) or names
    chosen = lora.replay_kl_sources or order[1:]
    unknown = [n for n in chosen if n not in names]
    if unknown:
        raise MedptError(f"--replay_kl_sources {unknown[0]}: no such source (sources: {', '.join(names)})")
    return list(chosen)


def kl_per_token(adapted_logits: torch.Tensor, base_logits: torch.Tensor) -> torch.Tensor:
    """KL(base ‖ adapted) of each position's next-token distribution, in nats (fp32 log-softmax: bf16 loses the
    small differences this term is about)."""
    log_q = F.log_softmax(adapted_logits.float(), dim=-1)
    log_p = F.log_softmax(base_logits.float(), dim=-1)
    return F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1)


class SourceObjective:
    """Computes a micro-batch's loss (the cross-entropy, and the KL term with --replay_kl) and keeps per-source sums
    until the next training log."""

    def __init__(self, names: tuple[str, ...], kl_weight: float = 0.0, kl_names: list[str] | None = None,
                 model: Any = None):  # fmt: skip
        self.names = names
        self.kl_weight = kl_weight
        self.kl_ids = torch.tensor([names.index(n) for n in kl_names or []], dtype=torch.int64)
        # Full fine-tuning: the starting weights, frozen (LoRA needs none: its base is the model, adapter off).
        self.reference = None
        if kl_weight and model is not None and not hasattr(model, "disable_adapter"):
            self.reference = copy.deepcopy(model).eval().requires_grad_(False)
        self.sums: torch.Tensor | None = None  # per source (Σ loss, tokens), then a row for the KL; on the device

    def loss(self, model: Any, inputs: dict[str, Any], source_ids: torch.Tensor, num_items: Any) -> torch.Tensor:
        labels = inputs.pop("labels")
        logits = model(**inputs).logits  # no labels: the model would compute the cross-entropy a second time
        ce, mask = token_losses(logits, labels)
        sources = source_ids[:, 1:].to(ce.device)  # the source of the token being predicted
        total = ce.sum()
        if self.sums is None:
            self.sums = torch.zeros(len(self.names) + 1, 2, dtype=torch.float64, device=ce.device)
        with torch.no_grad():  # one scatter, no device sync
            ids = sources[mask]
            self.sums[:-1, 0].index_add_(0, ids, ce.detach()[mask].double())
            self.sums[:-1, 1].index_add_(0, ids, torch.ones_like(ids, dtype=torch.float64))
        if self.kl_weight:
            total = total + self.kl_weight * self._kl(model, inputs, logits, mask & torch.isin(sources, self.kl_ids.to(
                sources.device)))  # fmt: skip
        return total / (num_items if num_items is not None else mask.sum().clamp(min=1))

    def _kl(self, model: Any, inputs: dict[str, Any], logits: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        """Σ KL(base ‖ adapted) over the `where` positions; the base forward runs only on the rows that hold any."""
        rows = where.any(1)
        if not rows.any():
            return logits.sum() * 0.0  # keeps the graph (and DDP's gradient hooks) the same shape
        picked = {k: v[rows] if torch.is_tensor(v) and v.dim() and v.shape[0] == len(rows) else v
                  for k, v in inputs.items()}  # fmt: skip
        with torch.no_grad(), self._base(model) as base:
            base_logits = base(**picked).logits
        picked_where = where[rows]  # the vocabulary-wide softmaxes only at the replayed positions
        kl = kl_per_token(logits[rows][:, :-1][picked_where], base_logits[:, :-1][picked_where]).sum()
        self.sums[-1] += torch.stack([kl.detach().double(), where.sum().double()])
        return kl

    @contextlib.contextmanager
    def _base(self, model: Any) -> Any:
        if self.reference is not None:
            yield self.reference
            return
        unwrapped = getattr(model, "module", model)  # DDP wraps the PeftModel
        with unwrapped.disable_adapter():
            yield unwrapped

    def logs(self, reduce: Any) -> dict[str, float]:
        """The interval's per-source losses (and mean KL per replayed token), summed over processes by `reduce`;
        the sums start again."""
        if self.sums is None:
            return {}
        sums = reduce(self.sums.clone()).double().cpu()  # a copy: reduce may hand back its argument
        self.sums.zero_()
        out: dict[str, float] = {}
        for k, name in enumerate(self.names):
            loss, tokens = sums[k].tolist()
            if tokens:
                out[f"train_{name}_loss"] = loss / tokens
                out[f"train_{name}_tokens"] = int(tokens)
        if self.kl_weight and sums[-1, 1]:
            out["train_replay_kl"] = float(sums[-1, 0] / sums[-1, 1])
        return out
