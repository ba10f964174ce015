"""`medpt eval`: base vs adapted on one or more eval sets (and multiple-choice questions), in one process.

The metrics and their tables are `metrics`; multiple choice `mcq_suite`; generated answers `answers`."""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from medpt.args.commands import COMMANDS
from medpt.errors import MedptError
from medpt.eval.metrics import block_sums, format_eval, stats_from_sums
from medpt.rundir import CONTAMINATION, EVAL_MD, EVAL_RESULTS
from medpt.strictjson import dumps


def run_eval(config: Any) -> int:
    """`medpt eval`."""
    evaluate_run(config)
    return 0


def evaluate_run(config: Any, log: Any = print) -> dict[str, Any]:
    """Base vs adapted on the run's held-out split, each --eval_sets entry, the multiple-choice benchmarks and
    generated answers; results (JSON and Markdown) in RUN/eval."""
    from medpt.args.resolve import inputs_of
    from medpt.model.adapter import check_variants
    from medpt.rundir import claim_dir, holding

    checked = check_variants(config, log)  # the model's, adapter's and tokenizer's files, before any data work
    out = config.beside_adapter("eval")
    with holding(out, COMMANDS["eval"], inputs=inputs_of(config)):
        claim_dir(out, COMMANDS["eval"], inputs=inputs_of(config), overwrite=config.run.overwrite_output_dir)
        return _evaluate(config, out, checked, log)


def _evaluate(config: Any, out: Any, checked: Any, log: Any) -> dict[str, Any]:
    from medpt.atomic import atomic_write_text
    from medpt.eval.mcq_suite import load_benchmarks
    from medpt.model.adapter import load_variants

    sets, train = _prepared_sets(config)
    # every question file is read (and checked) before the model is loaded
    benchmarks = load_benchmarks(config, log) if _has_mcq(config.eval) else []
    qas = None
    if config.eval.generate_eval:
        from medpt.eval.answers import held_out_questions

        qas = held_out_questions(config)
    if not sets and not benchmarks and not qas:
        raise MedptError("nothing to evaluate: pass --eval_sets NAME=PATH, --validation_file_dir, --mcq NAME=FILE, "
                         "--mcq_dir or --mcq_file")  # fmt: skip
    variants = load_variants(config, log, checked)
    results: dict[str, Any] = {"base_model": variants.base_name, "adapter": config.eval.adapter}
    if checked.stopped_at is not None:  # a stopped run: its latest checkpoint was evaluated (results in RUN/eval)
        results.update(adapter=str(checked.adapter_dir), stopped_at_step=checked.stopped_at)
    blocks: dict[str, dict] = {name: {} for name in sets}  # per set, the base's and the adapted model's block sums
    results["sets"] = {n: _lm_set(config, variants, n, packed, log, blocks[n]) for n, packed in sets.items()}
    if len(config.eval.adapter_scale or []) > 1 and variants.adapted is not None and sets:
        from medpt.model.adapter_scale import frontier

        batch_size, pad_id = config.eval_batch_size, variants.tokenizer.pad_token_id
        score = lambda model, packed: block_sums(model, packed, packed.mode, batch_size, pad_id)  # noqa: E731
        results["frontier"] = frontier(config, variants, sets, blocks, score, log)
    if benchmarks:
        results["mcq"] = _mcq(config, benchmarks, variants, train, out, log)
    if qas:
        from medpt.eval.answers import evaluate_answers

        results["generated"] = evaluate_answers(config, variants, qas, out, log)
    atomic_write_text(out / EVAL_RESULTS, dumps(results, ensure_ascii=False, indent=2))
    table = format_eval(results)
    atomic_write_text(out / EVAL_MD, table + "\n")
    log(table)
    log(f"\nresults: {out / EVAL_RESULTS}, {out / EVAL_MD}")
    # A medpt run's card gets the results (other adapter folders are left alone); a stopped run has no card: it
    # describes the run's final adapter, which such a run does not have.
    if config.eval.adapter and checked.stopped_at is None:
        from medpt.report.card import write_card

        if card := write_card(config.eval.adapter, results, table, log):
            log(f"model card with these results: {card}")
    return results


def _has_mcq(e: Any) -> bool:
    return bool(e.mcq or e.mcq_dir or e.mcq_file)


def _prepared_sets(config: Any) -> tuple[dict[str, Any], Any]:
    """The LM eval sets (the run's held-out split first, then --eval_sets) and the run's prepared training split."""
    from medpt.data.pipeline import prepare_data, prepare_eval_sets
    from medpt.model.loading import tokenizer_source

    source = tokenizer_source(config.model)
    quiet = lambda *_: None  # noqa: E731 - the data reports are written to disk; the terminal gets the table
    sets: dict[str, Any] = {}
    train = None
    if config.data.train_file_dir or config.data.dataset_name or config.data.validation_file_dir:
        prepared = prepare_data(config.data, source, config.run.seed, log=quiet)  # the run's own held-out split
        train = prepared.train
        if prepared.validation_sets:  # named sources: each one's held-out documents
            sets.update(prepared.validation_sets)
        elif prepared.validation is not None:
            sets["validation"] = prepared.validation
    sets.update(prepare_eval_sets(config.data, source, config.run.seed, log=quiet))
    return sets, train


def _lm_set(config: Any, variants: Any, name: str, packed: Any, log: Any, blocks: dict) -> dict[str, Any]:
    """Loss, accuracy and perplexity of each model on one set; with an adapter, the 95% CI of Δ loss (paired
    bootstrap over blocks) and of the relative change of perplexity, exp(Δ loss) − 1. Each model's block sums are
    left in `blocks` (the adapter-scale frontier reuses them)."""
    from medpt.eval.stats import ratio_difference_ci

    batch_size = config.eval_batch_size
    result: dict[str, Any] = {}
    for which in variants.names:
        t = time.perf_counter()
        with variants.use(which) as model:
            blocks[which] = block_sums(model, packed, packed.mode, batch_size, variants.tokenizer.pad_token_id)
        stats = stats_from_sums(torch.from_numpy(blocks[which].sum(0)))
        result[which] = {**stats.metrics(), "tokens": stats.tokens, "seconds": round(time.perf_counter() - t, 2)}
        log(f"  {name} / {which}: loss {result[which]['loss']:.4f} on {stats.tokens:,} tokens")
    if "adapted" in blocks:
        base, adapted = blocks["base"], blocks["adapted"]
        ci = ratio_difference_ci(base[:, 0], adapted[:, 0], base[:, 2], config.eval.bootstrap_resamples,
                                 config.run.seed)  # fmt: skip
        result["delta_loss_ci"] = ci.to_list()
        result["perplexity_change_ci"] = [None if x is None else math.expm1(x) for x in ci.to_list()]
        result["blocks"] = len(base)
    return result


def _mcq(config: Any, benchmarks: list, variants: Any, train: Any, out: Any, log: Any) -> dict[str, Any]:
    """The benchmarks' table, and which of their questions the run's training documents contain."""
    from medpt.eval.mcq_suite import check_contamination, run_suite, write_contamination

    results = run_suite(config, benchmarks, variants, out, log)
    if train is None:
        results["contamination_checked"] = False
        return results
    n = config.data.contamination_ngram
    t = time.perf_counter()
    found = check_contamination(benchmarks, train, variants.tokenizer, n)
    write_contamination(out / CONTAMINATION, found)
    for name, count in found.by_benchmark.items():
        results["benchmarks"][name]["contaminated"] = count
    results["contamination_checked"], results["contamination_ngram"] = True, n
    log(f"  contamination: {len(found.hits)} question(s) share a {n}-gram with the training documents "
        f"({time.perf_counter() - t:.1f} s)")  # fmt: skip
    return results
