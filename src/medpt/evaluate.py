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
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from medpt.errors import MedptError

IGNORE_INDEX = -100


@dataclass
class TokenStats:
    loss_sum: float = 0.0
    correct: int = 0
    tokens: int = 0

    def add(self, other: TokenStats) -> None:
        self.loss_sum += other.loss_sum
        self.correct += other.correct
        self.tokens += other.tokens

    def metrics(self, prefix: str = "") -> dict[str, float]:
        loss = self.loss_sum / self.tokens if self.tokens else float("nan")
        return {
            f"{prefix}loss": loss,
            f"{prefix}token_accuracy": self.correct / self.tokens if self.tokens else float("nan"),
            f"{prefix}perplexity": math.exp(min(loss, 700.0)) if self.tokens else float("nan"),  # exp(>709) overflows
            f"{prefix}tokens": self.tokens,
        }


def token_sums(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[loss sum, correct, tokens] of one batch, as one float64 tensor on the logits' device (cheap to all-reduce).

    The shift happens here, once: logits at position t are scored against the label at t+1."""
    logits = logits[:, :-1, :]
    targets = labels[:, 1:].to(logits.device)
    mask = targets != IGNORE_INDEX
    flat_logits = logits.reshape(-1, logits.shape[-1]).float()  # fp32 softmax: bf16 loses ~2 digits of the loss
    flat_targets = targets.reshape(-1)
    loss = F.cross_entropy(flat_logits, flat_targets, ignore_index=IGNORE_INDEX, reduction="sum")
    correct = ((logits.argmax(-1) == targets) & mask).sum()
    return torch.stack([loss.double(), correct.double(), mask.sum().double()])


def stats_from_sums(sums: torch.Tensor) -> TokenStats:
    loss, correct, tokens = sums.tolist()
    return TokenStats(loss, int(correct), int(tokens))


# ----------------------------------------------------------------------------------------------------------------
# `medpt eval`: base vs adapted on one or more eval sets (and multiple-choice questions), in one process.
def lm_stats(model: Any, packed: Any, mode: str, batch_size: int, pad_id: int) -> TokenStats:
    """Loss / accuracy / perplexity sums over every block of a prepared split, batch by batch."""
    from medpt.data.batches import REAL_TOKENS, Collator, PackedDataset

    dataset = PackedDataset(packed)
    collate = Collator(pad_id, mode, None if mode == "none" else packed.block_size)
    device = next(model.parameters()).device
    total = torch.zeros(3, dtype=torch.float64, device=device)
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            batch.pop(REAL_TOKENS)
            labels = batch.pop("labels")
            # use_cache=False: no KV cache, so isolated packing gets its per-document mask (see data/batches.py)
            logits = model(**{k: v.to(device) for k, v in batch.items()}, use_cache=False).logits
            total += token_sums(logits, labels)
    return stats_from_sums(total)


def run_eval(config: Any, log: Any = print) -> dict[str, Any]:
    from medpt.atomic import atomic_write_text
    from medpt.cli import tokenizer_source
    from medpt.data.pipeline import prepare_data, prepare_eval_sets
    from medpt.model import inference_dtype, load_variants

    out = config.beside_adapter("eval")
    source = tokenizer_source(config.model)
    sets: dict[str, Any] = {}
    quiet = lambda *_: None  # noqa: E731 - the data reports are written to disk; the terminal gets the table
    if config.data.train_file_dir or config.data.dataset_name or config.data.validation_file_dir:
        prepared = prepare_data(config.data, source, config.run.seed, log=quiet)  # the run's own held-out split
        if prepared.validation is not None:
            sets["validation"] = prepared.validation
    sets.update(prepare_eval_sets(config.data, source, config.run.seed, log=quiet))
    if not sets and not config.eval.mcq_file:
        raise MedptError("nothing to evaluate: pass --eval_sets NAME=PATH, --validation_file_dir or --mcq_file")
    variants = load_variants(config.model, config.eval.adapter, inference_dtype(config.model.torch_dtype))
    batch_size = int(config.trainer.get("per_device_eval_batch_size", 8))
    results: dict[str, Any] = {"base_model": variants.base_name, "adapter": config.eval.adapter, "sets": {}}
    for name, packed in sets.items():
        results["sets"][name] = {}
        for which in variants.names:
            t = time.perf_counter()
            with variants.use(which) as model:
                stats = lm_stats(model, packed, packed.mode, batch_size, variants.tokenizer.pad_token_id)
            results["sets"][name][which] = {**stats.metrics(), "seconds": round(time.perf_counter() - t, 2)}
            log(f"  {name} / {which}: loss {stats.metrics()['loss']:.4f} on {stats.tokens:,} tokens")
    if config.eval.mcq_file:
        from medpt.mcq import evaluate_mcq

        results["mcq"] = evaluate_mcq(config, variants, out, log)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "eval_results.json", json.dumps(results, ensure_ascii=False, indent=2))
    table = format_eval(results)
    atomic_write_text(out / "eval.md", table + "\n")
    log(table)
    log(f"\nresults: {out / 'eval_results.json'}, {out / 'eval.md'}")
    return results


def format_eval(results: dict[str, Any]) -> str:
    """One Markdown table: each eval set, base and adapted, and the change."""
    lines = []
    if results["sets"]:
        lines += [
            "| eval set | tokens | loss base | loss adapted | Δ loss | ppl base | ppl adapted | Δ ppl "
            "| acc base | acc adapted |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, r in results["sets"].items():
            b, a = r["base"], r.get("adapted")
            if a is None:
                lines.append(f"| {name} | {b['tokens']:,} | {b['loss']:.4f} | | | {b['perplexity']:.2f} | | "
                             f"| {b['token_accuracy']:.2%} | |")  # fmt: skip
                continue
            change = a["perplexity"] / b["perplexity"] - 1
            lines.append(
                f"| {name} | {b['tokens']:,} | {b['loss']:.4f} | {a['loss']:.4f} | {a['loss'] - b['loss']:+.4f} "
                f"| {b['perplexity']:.2f} | {a['perplexity']:.2f} | {change:+.1%} "
                f"| {b['token_accuracy']:.2%} | {a['token_accuracy']:.2%} |"
            )
    if results.get("mcq"):
        from medpt.mcq import format_mcq

        lines += ["", format_mcq(results["mcq"])]
    return "\n".join(lines)
