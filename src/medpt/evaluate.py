"""Language-model metrics: loss, token accuracy, perplexity.

All three come from running sums, so memory stays O(batch) however large the eval set: no logits or predictions
are kept between batches.

    loss            = Σ token cross-entropy / N     over the N tokens with a label (padding and -100 excluded),
                                                    the label of position t being the token at t+1
    perplexity      = exp(loss)                     token-weighted, i.e. exp of the mean over all tokens,
                                                    not the mean of per-batch perplexities
    token accuracy  = #(argmax logits_t == label_{t+1}) / N
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F

from medpt.errors import MedptError

IGNORE_INDEX = -100


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


def token_sums(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The TokenStats sums of one batch, as one float64 tensor on the logits' device (cheap to all-reduce).

    The shift happens here, once: logits at position t are scored against the label at t+1."""
    logits = logits[:, :-1, :]
    targets = labels[:, 1:].to(logits.device)
    mask = targets != IGNORE_INDEX
    flat_logits = logits.reshape(-1, logits.shape[-1]).float()  # fp32 softmax: bf16 loses ~2 digits of the loss
    flat_targets = targets.reshape(-1)
    loss = F.cross_entropy(flat_logits, flat_targets, ignore_index=IGNORE_INDEX, reduction="sum")
    correct = ((logits.argmax(-1) == targets) & mask).sum()
    return torch.stack([loss.double(), correct.double(), mask.sum().double()])  # in TokenStats field order


def stats_from_sums(sums: torch.Tensor) -> TokenStats:
    return TokenStats.from_tensor(sums)


# ----------------------------------------------------------------------------------------------------------------
# `medpt eval`: base vs adapted on one or more eval sets (and multiple-choice questions), in one process.
def lm_stats(model: Any, packed: Any, mode: str, batch_size: int, pad_id: int) -> TokenStats:
    """Loss / accuracy / perplexity sums over every block of a prepared split, batch by batch."""
    from medpt.data.batches import REAL_TOKENS, Collator, PackedDataset

    dataset = PackedDataset(packed)
    collate = Collator(pad_id, mode, None if mode == "none" else packed.block_size)
    device = next(model.parameters()).device
    total = torch.zeros(len(fields(TokenStats)), dtype=torch.float64, device=device)
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            batch.pop(REAL_TOKENS)
            labels = batch.pop("labels")
            # use_cache=False: no KV cache, so isolated packing gets its per-document mask (see data/batches.py)
            logits = model(**{k: v.to(device) for k, v in batch.items()}, use_cache=False).logits
            total += token_sums(logits, labels)
    return stats_from_sums(total)


def run_eval(config: Any) -> int:
    """`medpt eval`."""
    evaluate_run(config)
    return 0


def evaluate_run(config: Any, log: Any = print) -> dict[str, Any]:
    """Base vs adapted on the run's held-out split, each --eval_sets entry and --mcq_file; results in RUN/eval."""
    from medpt.adapter import load_variants
    from medpt.atomic import atomic_write_text
    from medpt.data.pipeline import prepare_data, prepare_eval_sets
    from medpt.model import tokenizer_source
    from medpt.rundir import claim_dir, inputs_of

    out = config.beside_adapter("eval")
    claim_dir(out, "eval", inputs=inputs_of(config), overwrite=config.run.overwrite_output_dir)
    source = tokenizer_source(config.model)
    sets: dict[str, Any] = {}
    quiet = lambda *_: None  # noqa: E731 - the data reports are written to disk; the terminal gets the table
    if config.data.train_file_dir or config.data.dataset_name or config.data.validation_file_dir:
        prepared = prepare_data(config.data, source, config.run.seed, log=quiet)  # the run's own held-out split
        if prepared.validation_sets:  # named sources: each one's held-out documents
            sets.update(prepared.validation_sets)
        elif prepared.validation is not None:
            sets["validation"] = prepared.validation
    sets.update(prepare_eval_sets(config.data, source, config.run.seed, log=quiet))
    if not sets and not config.eval.mcq_file:
        raise MedptError("nothing to evaluate: pass --eval_sets NAME=PATH, --validation_file_dir or --mcq_file")
    if config.eval.mcq_file:  # every question file is read (and checked) before the model is loaded
        from medpt.mcq import read_questions

        read_questions(config.eval.mcq_file)
        if config.eval.fewshot_file:
            read_questions([config.eval.fewshot_file])
    variants = load_variants(config, log)
    batch_size = int(config.trainer.get("per_device_eval_batch_size", 8))
    results: dict[str, Any] = {"base_model": variants.base_name, "adapter": config.eval.adapter, "sets": {}}
    for name, packed in sets.items():
        results["sets"][name] = {}
        for which in variants.names:
            t = time.perf_counter()
            with variants.use(which) as model:
                stats = lm_stats(model, packed, packed.mode, batch_size, variants.tokenizer.pad_token_id)
            results["sets"][name][which] = {
                **stats.metrics(),
                "tokens": stats.tokens,
                "seconds": round(time.perf_counter() - t, 2),
            }
            log(f"  {name} / {which}: loss {stats.metrics()['loss']:.4f} on {stats.tokens:,} tokens")
    if config.eval.mcq_file:
        from medpt.mcq import evaluate_mcq

        results["mcq"] = evaluate_mcq(config, variants, out, log)
    atomic_write_text(out / "eval_results.json", json.dumps(results, ensure_ascii=False, indent=2))
    table = format_eval(results)
    atomic_write_text(out / "eval.md", table + "\n")
    log(table)
    log(f"\nresults: {out / 'eval_results.json'}, {out / 'eval.md'}")
    return results


def format_eval(results: dict[str, Any]) -> str:
    """One Markdown table: each eval set, base and adapted, and the change; its columns come from METRICS."""
    lines = []
    if results["sets"]:
        head, rule = ["eval set", "tokens"], ["---", "---:"]
        for m in METRICS:
            head += [f"{m.label} base", f"{m.label} adapted"] + ([f"Δ {m.label}"] if m.change else [])
            rule += ["---:", "---:"] + (["---:"] if m.change else [])
        lines += ["| " + " | ".join(head) + " |", "| " + " | ".join(rule) + " |"]
        for name, r in results["sets"].items():
            b, a = r["base"], r.get("adapted")
            cells = [name, f"{b['tokens']:,}"]
            for m in METRICS:
                cells += [format(b[m.name], m.fmt), format(a[m.name], m.fmt) if a else ""]
                if m.change:
                    cells.append(_change(b[m.name], a[m.name], m.change) if a else "")
            lines.append("| " + " | ".join(cells) + " |")
    if results.get("mcq"):
        from medpt.mcq import format_mcq

        lines += ["", format_mcq(results["mcq"])]
    return "\n".join(lines)


def _change(base: float, adapted: float, kind: str) -> str:
    return f"{adapted - base:+.4f}" if kind == "diff" else f"{adapted / base - 1:+.1%}"
