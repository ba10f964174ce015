"""The run's model card, README.md: what the run did, on which data, how the adapted model compares with its base,
how to load it, and its limits, in Hugging Face's model-card layout (YAML metadata, then Markdown).

The metadata is built with huggingface_hub's ModelCardData and EvalResult, so the hub and `ModelCard.load` read it
back: base_model, library_name, tags, datasets (the hub datasets the data came from), language and license (copied
from the base model's own card when medpt can read it without downloading weights), and, once `medpt eval` has run,
a model-index with each eval set's perplexity (its 95% CI in the metric's name and args) and each benchmark's
accuracy. Everything else comes from the files the run holds; no field is left as a placeholder: what medpt does
not know is said in words.

`medpt train` writes the card last (replacing PEFT's template); `medpt eval` writes it again with the evaluation.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from medpt.atomic import atomic_write_text
from medpt.rundir import (
    ADAPTER_CONFIG,
    BASE_RECORD,
    CONFIG_FILE,
    DATA_REPORT,
    EVAL_DIR,
    EVAL_MD,
    EVAL_RESULTS,
    METRICS,
    TRAIN_RESULTS,
    TRAINER_STATE,
    TRAINING_ARGS,
    RunDir,
)

CARD = "README.md"
GENERAL = ("general", "replay", "wiki", "general_")  # eval sets and benchmarks that measure forgetting


def write_card(run: str | Path, evaluation: dict[str, Any] | None = None, tables: str | None = None,
               log: Any = print) -> Path | None:  # fmt: skip
    """Write RUN/README.md (atomically) and return its path. `evaluation` is `medpt eval`'s results and `tables`
    their Markdown (eval.md); by default RUN/eval's, if any. A folder that is not a medpt run, or a README.md medpt
    did not write, is left alone."""
    run = Path(run)
    if not (run / CONFIG_FILE).is_file():  # not a medpt run: nothing to describe it from
        return None
    manifest = RunDir.open(run)
    if (run / CARD).exists() and CARD not in manifest.entries:
        log(f"model card: {run / CARD} was not written by medpt; left as it is")
        return None
    if evaluation is None:
        evaluation = _load(run / EVAL_DIR / EVAL_RESULTS)
        md = run / EVAL_DIR / EVAL_MD
        tables = md.read_text(encoding="utf-8") if evaluation and md.is_file() else None
    card = build_card(run, evaluation, tables)
    # The card belongs to the run (owner "train"); `medpt eval` rewrites it by design, the one file of a run
    # another command replaces.
    manifest.record([CARD], manifest.entries.get(CARD, "train"))
    atomic_write_text(run / CARD, str(card))
    return run / CARD


def build_card(run: Path, evaluation: dict[str, Any] | None, tables: str | None = None) -> Any:
    """A huggingface_hub.ModelCard for the run (see the module docstring)."""
    from huggingface_hub import ModelCard, ModelCardData

    from medpt.args.resolve import load_saved

    config = load_saved(run)
    facts = _facts(run, config, evaluation)
    base_card = _base_card(config.model)
    data = ModelCardData(
        base_model=facts["base"] if facts["base_on_hub"] else None,
        library_name="peft" if facts["adapter"] else "transformers",
        pipeline_tag="text-generation",
        tags=_tags(facts),
        datasets=_hub_datasets(config) or None,
        language=getattr(base_card, "language", None),
        license=getattr(base_card, "license", None),
        license_name=getattr(base_card, "license_name", None),
        license_link=getattr(base_card, "license_link", None),
        model_name=run.name,
        eval_results=eval_results(evaluation) or None,
    )
    body = "\n".join(_body(run, config, facts, evaluation, tables))
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n")


def _load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _facts(run: Path, config: Any, evaluation: dict[str, Any] | None) -> dict[str, Any]:
    from medpt.model.hub import looks_like_path

    base = (_load(run / BASE_RECORD) or {}).get("name") or config.model.model_name_or_path or "the base model"
    return {
        "base": base,
        "base_on_hub": not looks_like_path(base) and not Path(base).exists(),
        "adapter": _load(run / ADAPTER_CONFIG),
        "args": _load(run / TRAINING_ARGS) or {},
        "train": _load(run / TRAIN_RESULTS) or {},
        "state": _load(run / TRAINER_STATE) or {},
        "data": _load(run / DATA_REPORT),
        "tokens": _tokens_seen(run / METRICS),
        "evaluated": bool(evaluation),
    }


def _tokens_seen(metrics: Path) -> int | None:
    """Real (non-padding) tokens trained on, as the last log line counted them."""
    if not metrics.is_file():
        return None
    rows = [json.loads(x) for x in metrics.read_text(encoding="utf-8").splitlines() if x.strip()]
    seen = [r["num_input_tokens_seen"] for r in rows if r.get("num_input_tokens_seen")]
    return seen[-1] if seen else None


def _tags(facts: dict[str, Any]) -> list[str]:
    tags = ["medpt", "continued-pretraining", "medical", "text-generation"]
    if facts["adapter"]:
        tags += ["lora", "peft"] + ([f"base_model:adapter:{facts['base']}"] if facts["base_on_hub"] else [])
    return tags


def _hub_datasets(config: Any) -> list[str]:
    """The --dataset_name entries that are hub ids (local folders are no hub dataset)."""
    from medpt.args import split_named
    from medpt.model.hub import looks_like_path

    ids = [split_named(d)[1] for d in config.data.dataset_name or []]
    return [d for d in ids if not looks_like_path(d) and not Path(d).exists()]


def _base_card(model: Any) -> Any:
    """The base model's card metadata (its README.md: a local folder's, or the hub's: one small file), or None."""
    from huggingface_hub import ModelCard

    from medpt.errors import MedptError
    from medpt.model.hub import resolve_local

    if not model.model_name_or_path:
        return None
    try:
        readme = resolve_local(model.model_name_or_path, [CARD], model.revision, model.cache_dir) / CARD
        return ModelCard.load(readme).data if readme.is_file() else None
    except (MedptError, OSError, ValueError):
        return None


# --- model-index ---------------------------------------------------------------------------------------------------
def eval_results(evaluation: dict[str, Any] | None) -> list[Any]:
    """huggingface_hub EvalResults of the adapted model: each eval set's perplexity, each benchmark's accuracy per
    scoring mode; the base model's value and the 95% CI of the change in the metric's name and args."""
    from huggingface_hub import EvalResult

    if not evaluation:
        return []
    results = []
    for name, r in evaluation.get("sets", {}).items():
        if "adapted" not in r:
            continue
        base, adapted, ci = r["base"]["perplexity"], r["adapted"]["perplexity"], r.get("perplexity_change_ci")
        if not (math.isfinite(base) and math.isfinite(adapted)):  # an empty set: nothing to report
            continue
        results.append(EvalResult(
            task_type="text-generation", task_name="held-out perplexity", dataset_type=name, dataset_name=name,
            metric_type="perplexity", metric_value=round(adapted, 4),
            metric_name=f"perplexity (base {base:.4g}; change {_pct(adapted / base - 1)}, 95% CI {_ci(ci, _pct)})",
            metric_args={"base": round(base, 4), "change_ci95": ci, "tokens": r["adapted"]["tokens"]},
        ))  # fmt: skip
    for name, b in ((evaluation.get("mcq") or {}).get("benchmarks") or {}).items():
        for mode, m in b["modes"].items():
            if "adapted" not in m["accuracy"]:
                continue
            acc, base = m["accuracy"]["adapted"], m["accuracy"]["base"]
            within = m.get("accuracy_ci") or {}  # each accuracy's 95% Wilson interval (absent in older results)
            share = "{:.1%}".format
            results.append(EvalResult(
                task_type="multiple-choice", task_name="multiple-choice questions", dataset_type=name,
                dataset_name=name, metric_type="accuracy", metric_value=round(acc, 4), metric_config=mode,
                metric_name=f"accuracy, {mode} scoring, 95% interval {_ci(within.get('adapted'), share)} (base "
                            f"{base:.1%}, {_ci(within.get('base'), share)}; Δ {_points(m.get('delta'))}, 95% CI "
                            f"{_ci(m.get('ci'), _points)})",
                metric_args={"ci95": within.get("adapted"), "base": round(base, 4), "base_ci95": within.get("base"),
                             "delta_ci95": m.get("ci"), "questions": b["questions"], "num_fewshot": b["num_fewshot"]},
            ))  # fmt: skip
    return results


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.1%}"


def _points(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f} points"


def _ci(ci: list[float | None] | None, fmt: Any) -> str:
    return "n/a" if not ci or None in ci else f"[{fmt(ci[0])}, {fmt(ci[1])}]"


# --- the Markdown ----------------------------------------------------------------------------------------------------
def _body(run: Path, config: Any, facts: dict[str, Any], evaluation: dict[str, Any] | None,
          tables: str | None) -> list[str]:  # fmt: skip
    method = _method(config, facts)
    lines = [f"# {run.name}", "", f"{method} of **{facts['base']}**, trained with medpt "
             f"(continued pretraining on medical text){_data_phrase(facts)}.", ""]  # fmt: skip
    lines += ["## What the run did", "", "| | |", "|---|---|", *_training_rows(config, facts), ""]
    if facts["data"]:
        lines += ["## Data", "", *_data_rows(facts["data"]), ""]
    lines += ["## Base vs adapted", "", *_results(evaluation, tables), ""]
    lines += ["## How to use", "", *_usage(run, config, facts), ""]
    lines += ["## Limits", "", *_limits(config, facts, evaluation), ""]
    from medpt import __version__

    lines.append(f"*Written by medpt {__version__} from the files of this run ({CONFIG_FILE}, {DATA_REPORT}, "
                 "training_args.json, eval/eval_results.json); `medpt eval` writes it again with new "
                 "results.*")  # fmt: skip
    return lines


def _method(config: Any, facts: dict[str, Any]) -> str:
    if not facts["adapter"]:
        return "A fully fine-tuned model"
    kind = "QLoRA adapter (4-bit NF4 base)" if config.lora.qlora or config.model.load_in_4bit else "LoRA adapter"
    return f"A {kind}"


def _data_phrase(facts: dict[str, Any]) -> str:
    data = facts["data"]
    if not data:
        return ""
    tokens = facts["tokens"] or data["train"]["tokens"]
    return f", on {tokens:,} tokens from {len(data['inputs'])} source(s)"


def _training_rows(config: Any, facts: dict[str, Any]) -> list[str]:
    a, adapter, state, train = facts["args"], facts["adapter"], facts["state"], facts["train"]
    rows = []
    if adapter:
        targets = ", ".join(sorted(adapter.get("target_modules") or []))
        extras = [x for x, on in (("rsLoRA", adapter.get("use_rslora")), ("DoRA", adapter.get("use_dora"))) if on]
        rows.append(("method", f"LoRA r {adapter['r']}, alpha {adapter['lora_alpha']:g}, dropout "
                               f"{adapter['lora_dropout']:g}{', ' + ', '.join(extras) if extras else ''}"))  # fmt: skip
        rows.append(("adapted modules", targets + (f"; trained in full: {', '.join(adapter['modules_to_save'])}"
                                                   if adapter.get("modules_to_save") else "")))  # fmt: skip
    else:
        rows.append(("method", "full fine-tuning (every weight trained)"))
    processes = a.get("world_size") or 1
    rows += [
        ("steps", f"{state.get('global_step', '?')} (epoch {train.get('epoch', 0):.2f})"),
        ("tokens trained on", _tokens_row(config, facts, processes)),
        ("batch", f"{a.get('per_device_train_batch_size')} × {a.get('gradient_accumulation_steps')} accumulation × "
                  f"{processes} process(es) of {config.data.block_size}-token blocks ({config.data.packing} packing)"),
        ("schedule", f"learning rate {a.get('learning_rate')}, {a.get('lr_scheduler_type')}, warmup "
                     f"{a.get('warmup_steps') or a.get('warmup_ratio') or 0}, weight decay {a.get('weight_decay')}, "
                     f"{a.get('optim')}"),
        ("precision", ("bf16" if a.get("bf16") else "fp16" if a.get("fp16") else "fp32")
         + (", gradient checkpointing" if a.get("gradient_checkpointing") else "")),
        ("seed", str(a.get("seed", config.run.seed))),
    ]  # fmt: skip
    if "train_loss" in train:
        rows.append(("final training loss", f"{train['train_loss']:.4f} (mean over the run)"))
    return [f"| {k} | {v} |" for k, v in rows]


def _tokens_row(config: Any, facts: dict[str, Any], processes: int) -> str:
    if facts["tokens"]:
        return f"{facts['tokens']:,} (real tokens, padding excluded, as of the last log step)"
    a = facts["args"]
    slots = (
        (facts["state"].get("global_step") or 0)
        * processes
        * config.data.block_size
        * ((a.get("per_device_train_batch_size") or 0) * (a.get("gradient_accumulation_steps") or 0))
    )
    return f"about {slots:,} (steps × batch × block; no log step counted them)"


def _data_rows(data: dict[str, Any]) -> list[str]:
    rec, train, valid = data["records"], data["train"], data.get("validation") or {}
    skipped = sum(rec["skipped"].values())
    lines = [
        "| | training | validation |", "|---|---:|---:|",
        f"| documents | {train['documents']:,} | {valid.get('documents', 0):,} |",
        f"| tokens | {train['tokens']:,} | {valid.get('tokens', 0):,} |",
        f"| blocks of {train['block_size']} tokens | {train['blocks']:,} | {valid.get('blocks', 0):,} |", "",
        f"{rec['read']:,} records read from {len(data['inputs'])} input(s); {skipped:,} skipped "
        f"({', '.join(f'{k} {v:,}' for k, v in rec['skipped'].items() if v) or 'none'}); nothing dropped by packing "
        f"({train['dropped_tokens']:,} tokens). Full report: {DATA_REPORT}.",
    ]  # fmt: skip
    sources = data.get("sources") or {}
    if sources:
        lines += ["", "| source | records | tokens in training | share asked | share got | passes |",
                  "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
        for name, s in sources.items():
            mix = s.get("mix") or {}
            tokens = mix.get("selected_tokens", s["train"]["tokens"])
            passes = mix["full_passes"] + mix["sampled_tokens"] / max(mix["available_tokens"], 1) if mix else 1.0
            lines.append(f"| {name} | {s['records']['read']:,} | {tokens:,} | "
                         f"{_share(mix.get('requested_share'))} | {_share(mix.get('achieved_share'))} | "
                         f"{passes:.2f} |")  # fmt: skip
    return lines


def _share(x: float | None) -> str:
    return "" if x is None else f"{x:.1%}"


def _results(evaluation: dict[str, Any] | None, tables: str | None) -> list[str]:
    if not evaluation:
        return ["Not evaluated yet: `medpt eval --adapter RUN` compares the adapted model with its base (perplexity "
                "on held-out text with 95% confidence intervals, multiple-choice benchmarks) and writes this card "
                "again with the results."]  # fmt: skip
    return [(tables or "The tables: eval/eval.md.").strip(), "", *_forgetting(evaluation)]


def _forgetting(evaluation: dict[str, Any]) -> list[str]:
    """The row that says what the adaptation cost on general text (forgetting), or that it was not measured."""
    rows = []
    for name, r in evaluation.get("sets", {}).items():
        if "adapted" in r and any(g in name.lower() for g in GENERAL):
            change = r["adapted"]["perplexity"] / r["base"]["perplexity"] - 1
            rows.append(f"- **Forgetting** ({name}: general text): perplexity {_pct(change)}, 95% CI "
                        f"{_ci(r.get('perplexity_change_ci'), _pct)}.")  # fmt: skip
    for name, b in ((evaluation.get("mcq") or {}).get("benchmarks") or {}).items():
        for mode, m in b["modes"].items():
            if "delta" in m and any(g in name.lower() for g in GENERAL):
                rows.append(f"- **Forgetting** ({name}, {mode} scoring): accuracy {_points(m['delta'])}, 95% CI "
                            f"{_ci(m.get('ci'), _points)}.")  # fmt: skip
    return rows or ["- **Forgetting**: not measured (no general-domain eval set or benchmark was evaluated; add "
                    "`--eval_sets general=PATH` or a general_mcq_* benchmark to `medpt eval`)."]  # fmt: skip


def _usage(run: Path, config: Any, facts: dict[str, Any]) -> list[str]:
    base, name = facts["base"], run.name
    if not facts["adapter"]:
        return ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
                f'model = AutoModelForCausalLM.from_pretrained("{name}")',
                f'tokenizer = AutoTokenizer.from_pretrained("{name}")', "```"]  # fmt: skip
    rank = facts["adapter"]["r"]
    return [
        "With PEFT:", "", "```python", "from peft import AutoPeftModelForCausalLM", "from transformers import "
        "AutoTokenizer", "", f'model = AutoPeftModelForCausalLM.from_pretrained("{name}")  # loads {base} too',
        f'tokenizer = AutoTokenizer.from_pretrained("{name}")', "```", "",
        "With vLLM (the adapter served beside its base; `medpt export --adapter RUN --target vllm` checks it first):",
        "", "```bash", f"vllm serve {base} --enable-lora --max-lora-rank {max(rank, 8)} --lora-modules {name}={name}",
        "```", "",
        "With llama.cpp (GGUF base and GGUF adapter, written by `medpt export --adapter RUN --target llamacpp`):", "",
        "```bash", "llama-cli -m base.gguf --lora adapter.gguf -p '问：'", "```", "",
        "As one standalone model: `medpt merge --adapter RUN --output_dir MERGED`.",
    ]  # fmt: skip


def _limits(config: Any, facts: dict[str, Any], evaluation: dict[str, Any] | None) -> list[str]:
    lines = [
        "- Continued pretraining teaches the base model's distribution of the training text; it does not make the "
        "model a source of medical advice. Its answers can be wrong, outdated or harmful: not for diagnosis or "
        "treatment, and not without review by a qualified person.",
        f"- It inherits {facts['base']}'s limits, biases and license terms.",
    ]
    if facts["data"]:
        lines.append(f"- It saw {facts['data']['train']['tokens']:,} tokens of training text: what is not in them "
                     "is what the base model knew.")  # fmt: skip
    if not evaluation:
        lines.append("- Not evaluated: nothing here shows it is better than its base.")
    else:
        mcq = evaluation.get("mcq") or {}
        checked = "checked" if mcq.get("contamination_checked") else "not checked"
        lines.append(f"- The evaluation measures perplexity on held-out text and multiple-choice accuracy, not the "
                     f"quality or safety of free-text answers; benchmark contamination by the training data was "
                     f"{checked} (contamination.jsonl in eval/).")  # fmt: skip
    return lines
