"""`medpt train`: continued pretraining with LoRA (or QLoRA, or full fine-tuning) on transformers.Trainer.

Reads top to bottom: training arguments → checks that need nothing loaded (paths, block size, target modules) → hold
the output folder → where to start (fresh or resume) → the run's description (config, base, arguments: a run stopped
at any later point is still a run) → data → model → trainer → train → evaluate → save the adapter and results, with
all_results.json last: it marks the run finished.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

from medpt.args.commands import COMMANDS
from medpt.args.resolve import RESUME_WORDS, Config, inputs_of
from medpt.atomic import atomic_write_text, cut_log, make_dir, read_log, replace, writing_into
from medpt.errors import MedptError
from medpt.model.files import ModelFacts, check_adapter_fits, check_checkpoint, check_tokenizer_fits
from medpt.model.hub import resolve_local
from medpt.model.loading import (
    check_block_size,
    check_target_modules,
    device_kind,
    load_model,
    load_tokenizer,
    model_facts,
    resolve_precision,
    tokenizer_source,
    trainable_summary,
    weight_dtype,
)
from medpt.report.curves import plot_losses
from medpt.rundir import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    ALL_RESULTS,
    BASE_RECORD,
    EVAL_SETS_DIR,
    LOSS_CURVE,
    METRICS,
    STAGING,
    TRAINER_STATE,
    TRAINING_ARGS,
    RunDir,
    checkpoint_step,
    checkpoints,
    claim_dir,
    holding,
)
from medpt.strictjson import dumps
from medpt.train.lora import add_lora, speed_up


class DivergedError(MedptError):
    """The training loss became NaN or inf (the message names the step and the last good checkpoint)."""


def train(config: Config, log: Any = print, callbacks: tuple[Any, ...] = ()) -> int:
    """`medpt train`; `callbacks` (transformers TrainerCallbacks) are added to the trainer, e.g. `medpt tune`'s
    pruning callback."""
    args = training_arguments(config)
    if args.process_index != 0:  # one voice: only the main process prints progress notes
        log = _silent
    out = Path(args.output_dir)
    # 1. What needs nothing loaded: the model's limits (from its config.json), then the paths.
    check_before_loading(config)
    if config.plan.auto_batch:  # the micro-batch the memory plan says fits, the global batch kept
        from medpt.plan.auto import pick_batch

        config = pick_batch(config, log)
        args = training_arguments(config)
    # 2. One process trains into a folder at a time (the main process of a distributed run holds it for all).
    main = args.process_index == 0
    with holding(out, COMMANDS["train"], inputs=inputs_of(config)) if main else contextlib.nullcontext():
        return _train(config, args, out, log, callbacks)


def _train(config: Config, args: Any, out: Path, log: Any, callbacks: tuple[Any, ...]) -> int:
    with args.main_process_first(desc="check the output directory"):  # only the main process writes the manifest
        resume = starting_point(config, out, log, claim=args.process_index == 0)
        if args.process_index == 0:
            describe_run(config, args, out)

    # 3. Data: the main process prepares (or finds the cache) first; the others then read the same cache.
    with args.main_process_first(desc="prepare data"):
        data, eval_sets = prepare_all(config, out, log)
    if data.train is None:
        raise MedptError("no training blocks were prepared; see data_report.json")

    # 4. Model and trainer.
    model, tokenizer = build_model(config, args, log)

    def make_trainer(config: Config) -> Any:
        trainer = build_trainer(config, training_arguments(config), model, tokenizer, data, eval_sets)
        for callback in callbacks:
            trainer.add_callback(callback)
        return trainer

    trainer = make_trainer(config)
    if "tensorboard" in (args.report_to or []) and args.process_index == 0:
        make_dir(out / "runs")  # TensorBoard's folder (transformers' default_logdir): recorded before it is written

    log(
        f"training: {len(data.train):,} blocks of {config.data.block_size} tokens, "
        f"{args.world_size} process(es) × {args.per_device_train_batch_size} × {args.gradient_accumulation_steps} "
        f"accumulation; bf16={args.bf16} fp16={args.fp16}" + (f"; resuming from {resume}" if resume else "")
    )
    from medpt.train.trainer import InterruptCallback, NonFiniteLossError

    try:
        if config.plan.auto_batch:  # an out-of-memory first step is retried once at half the micro-batch
            from medpt.plan.auto import train_halving_once

            config, trainer, result = train_halving_once(config, trainer, make_trainer, resume, log)
            if args.process_index == 0:  # the saved configuration is the one that trained (halved or not)
                describe_run(config, trainer.args, out)
        else:
            result = trainer.train(resume_from_checkpoint=resume)
    except NonFiniteLossError as e:
        last = _last_checkpoint(out)
        raise DivergedError(
            f"{e}. Last good checkpoint: {last or 'none yet'}. Try a lower --learning_rate or --max_grad_norm, or "
            "--bf16 false; rerunning the same command resumes from that checkpoint"
        ) from None
    interrupt = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, InterruptCallback))
    if interrupt.interrupted:
        log(
            f"stopped at step {trainer.state.global_step}; checkpoint saved in {_last_checkpoint(out)}. "
            "Run the same command again to resume."
        )
        return 130

    finish(config, trainer, result, out, resume, log)
    return 0


def _silent(*_: Any) -> None:
    pass


def check_before_loading(config: Config) -> ModelFacts:
    """What needs no weight loaded: the model's files (medpt.model.files), its tokenizer, --peft_path, and the flags
    that must fit the model. Returns the model's facts, for checking more values against it (`medpt tune`)."""
    m = config.model
    if not m.model_name_or_path:
        raise MedptError("training needs a base model: pass --model_name_or_path (a hub id or a local directory)")
    facts = model_facts(m)
    tokenizer_dir = tokenizer_source(m).local_dir()
    check_tokenizer_fits(load_tokenizer(str(tokenizer_dir), m.trust_remote_code), tokenizer_dir, facts)
    if config.lora.use_peft and config.lora.peft_path:
        check_adapter_fits(resolve_local(config.lora.peft_path, [ADAPTER_CONFIG, "*.safetensors"]), facts)
    resume = config.run.resume_from_checkpoint.strip()
    if resume.lower() not in ("", *RESUME_WORDS) and Path(resume).is_dir():  # it may be another run's
        check_checkpoint(Path(resume), config.lora, facts)
    check_fits_model(config, facts)
    from medpt.train.replay_kl import kl_sources

    kl_sources(config)  # --replay_kl_sources against the training sources
    return facts


def check_fits_model(config: Config, facts: ModelFacts) -> None:
    """The flags that must fit the model: the block size (its positions) and the LoRA targets (its modules)."""
    check_block_size(config.data.block_size, facts.positions, facts.name)
    if config.lora.use_peft and not config.lora.peft_path:
        check_target_modules(config.lora.target_modules, facts)


# ---------------------------------------------------------------------------------------------------------------
def training_arguments(config: Config) -> Any:
    """transformers.TrainingArguments from the explicit trainer flags plus the fields medpt owns."""
    from transformers import TrainingArguments

    run = config.run
    bf16, fp16 = resolve_precision(run.bf16, run.fp16)
    kwargs: dict[str, Any] = dict(config.trainer)
    kwargs.update(
        output_dir=run.output_dir,
        seed=run.seed,
        bf16=bf16,
        fp16=fp16,
        report_to="none" if run.report_to in (["none"], []) else run.report_to,
        remove_unused_columns=False,  # the collator's fields are exactly what the model takes
        include_num_input_tokens_seen="no",  # medpt counts real tokens itself (see trainer.py)
    )
    # --torch_compile is medpt's regional compilation (medpt.train.compiling), applied in build_model; transformers' own
    # whole-model compile is left off.
    kwargs["torch_compile"] = False
    if device_kind() == "cpu":
        # transformers refuses mixed precision on a CPU unless told it is one, and (5.2x) detects torchrun's
        # several CPU processes as DDP only with use_cpu: without it each process trains alone.
        kwargs["use_cpu"] = True
    # MedicalGPT's --gradient_checkpointing is a deprecated alias in transformers >= 5.x (activation_checkpointing);
    # pass the new name where it exists, so the user's flag does not earn them a FutureWarning.
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    ckpt = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    for suffix in ("", "_kwargs"):
        if ckpt != "gradient_checkpointing" and f"gradient_checkpointing{suffix}" in kwargs:
            kwargs.setdefault(ckpt + suffix, kwargs.pop(f"gradient_checkpointing{suffix}"))
    if kwargs.get(ckpt):
        # Non-reentrant checkpointing works with frozen base weights (LoRA) without extra hooks.
        kwargs.setdefault(f"{ckpt}_kwargs", {"use_reentrant": False})
    if config.lora.use_peft:
        kwargs.setdefault("ddp_find_unused_parameters", False)  # every LoRA parameter gets a gradient each step
    if run.group_by_length and config.data.packing == "none":
        kwargs.setdefault("train_sampling_strategy", "group_by_length")
    try:
        return TrainingArguments(**kwargs)
    except (ValueError, TypeError) as e:
        raise MedptError(f"invalid training arguments: {e}") from None


def starting_point(config: Config, out: Path, log: Any, claim: bool = True) -> str | None:
    """Resume, start fresh, or refuse to clobber a finished run (one with all_results.json, the last file a run
    writes). Claims the output folder (medpt.rundir): nothing medpt did not write there is touched, and only
    checkpoints medpt wrote are resumed from. A run stopped before it finished (a kill, Ctrl-C, a full disk) resumes
    from its last checkpoint, or starts over without one: the same command continues it."""
    choice = (config.run.resume_from_checkpoint or "").strip()
    if choice.lower() in ("no", "false", "none", "null"):
        choice = "no"
    overwrite = config.run.overwrite_output_dir
    run = RunDir.open(out)
    mine = [p for p in checkpoints(out) if p.name in run.entries]
    last = str(max(mine, key=checkpoint_step)) if mine else None
    resume_last = last is not None and (choice == "auto" or (choice == "" and not overwrite))
    if claim:
        claim_dir(out, COMMANDS["train"], inputs=inputs_of(config), overwrite=overwrite and not resume_last)
        shutil.rmtree(out / STAGING, ignore_errors=True)  # what a stopped save left half-written (held: no writer)
    if choice not in ("", "auto", "no"):
        if not Path(choice).is_dir():
            raise MedptError(f"--resume_from_checkpoint {choice}: no such checkpoint directory")
        return _resume(out, choice, log)
    if resume_last:
        return _resume(out, last, log)
    finished = ALL_RESULTS in RunDir.open(out).owned()
    if finished or checkpoints(out):
        raise MedptError(
            f"{out} already holds a run ({'finished' if finished else 'checkpoints'}); pass --overwrite_output_dir to "
            "replace it, --resume_from_checkpoint auto to continue it, or another --output_dir"
        )
    cut_log(out / METRICS, 0)  # a stopped run without a checkpoint starts over: so does its log
    return None


def _last_checkpoint(out: Path) -> str | None:
    found = checkpoints(out) if out.is_dir() else []
    return str(max(found, key=checkpoint_step)) if found else None


def _resume(out: Path, checkpoint: str, log: Any) -> str:
    """Resuming replays what came after the checkpoint: drop the log lines written after it was saved, so
    metrics.jsonl holds each log event once (the resumed run logs them again). The checkpoint's trainer state counts
    the log events before it (one metrics.jsonl line each); a step number would not tell the evaluation and summary
    lines logged at the checkpoint's own step after it was saved."""
    state = Path(checkpoint) / TRAINER_STATE
    try:
        keep = len(json.loads(state.read_text(encoding="utf-8"))["log_history"])
    except (OSError, ValueError, KeyError, TypeError):  # not a checkpoint medpt wrote: keep the steps up to it
        keep = sum(1 for row in read_log(out / METRICS) if row.get("step", 0) <= checkpoint_step(checkpoint))
    dropped = cut_log(out / METRICS, keep)
    if dropped:
        log(f"resuming from {checkpoint}: {dropped} log line(s) written after it are redone")
    return checkpoint


def describe_run(config: Config, args: Any, out: Path) -> None:
    """The resolved configuration, the base model's fingerprint and the training arguments (rundir.RUN_DESCRIPTION),
    written before any work, so a run stopped at any point describes itself (eval, merge, report and the same command
    read them); the trainer copies them into each checkpoint."""
    config.save(out)
    _record_base(config, out)
    atomic_write_text(out / TRAINING_ARGS, dumps(args.to_dict(), indent=2))  # to_json_string, but strict JSON


def prepare_all(config: Config, out: Path, log: Any) -> tuple[Any, dict[str, Any]]:
    """The main data (train + validation) and each named --eval_sets entry, all through the same pipeline."""
    from medpt.data.pipeline import prepare_data, prepare_eval_sets

    source = tokenizer_source(config.model)
    data = prepare_data(config.data, source, config.run.seed, out, log=log, hub_cache_dir=config.model.cache_dir)
    return data, prepare_eval_sets(config.data, source, config.run.seed, out / EVAL_SETS_DIR, log=log)


def build_model(config: Config, args: Any, log: Any) -> tuple[Any, Any]:
    from transformers import set_seed

    set_seed(args.seed)  # LoRA's A matrices are random: the same seed must give the same adapter, on every rank
    m, lora = config.model, config.lora
    if not m.model_name_or_path:
        raise MedptError("training needs a base model: pass --model_name_or_path (a hub id or a local directory)")
    four_bit = m.load_in_4bit or lora.qlora
    if four_bit and not lora.use_peft:
        raise MedptError("a 4-bit model cannot be fine-tuned in full: use --use_peft true (QLoRA)")
    import torch

    if device_kind() == "cpu":
        from medpt.train.allocator import keep_freed_memory

        keep_freed_memory()  # a CPU step re-allocates the same activations: keep them mapped (train.allocator)
    compute = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32
    dtype = weight_dtype(m.torch_dtype, args.bf16, args.fp16, full_finetune=not lora.use_peft)
    model = load_model(m, dtype, four_bit=four_bit, compute_dtype=compute)
    model.config.use_cache = False  # the KV cache is for generation; with checkpointing it is wrong and wasteful
    tokenizer = load_tokenizer(str(tokenizer_source(m).local_dir()), m.trust_remote_code)
    model.config.pad_token_id = tokenizer.pad_token_id  # (EOS when the tokenizer has no pad; see load_tokenizer)
    if lora.use_peft:
        model = add_lora(model, lora, gradient_checkpointing=bool(args.gradient_checkpointing))
        speed_up(model, autocast=bool(args.bf16 or args.fp16), compiled=False, dropout_mode=lora.lora_dropout_mode)
        targets = sorted(model.peft_config["default"].target_modules)
        log(f"LoRA r={lora.lora_rank} alpha={lora.lora_alpha} on {len(targets)} module types: {', '.join(targets)}")
        _check_modules_to_save(model, lora.modules_to_save)
    if config.trainer.get("torch_compile"):
        from medpt.train.compiling import compile_layers

        compile_layers(model, log)
    trainable, total = trainable_summary(model)
    log(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%), weights {dtype}")
    return model, tokenizer


def _check_modules_to_save(model: Any, modules_to_save: list[str] | None) -> None:
    for name in modules_to_save or []:
        if not any(name in n and "modules_to_save" in n and p.requires_grad for n, p in model.named_parameters()):
            raise MedptError(f"--modules_to_save {name}: no such trainable module in this model")


def build_trainer(config: Config, args: Any, model: Any, tokenizer: Any, data: Any, eval_sets: dict) -> Any:
    from transformers.trainer_callback import ProgressCallback

    from medpt.data.batches import Collator, PackedDataset
    from medpt.train.trainer import InterruptCallback, MedptTrainer, MetricsFileCallback, TokenProgressCallback

    # One unnamed source: its held-out blocks are `eval_loss`. Named sources: each its own set (eval_medical_loss,
    # eval_general_loss: the domain gain and the forgetting, side by side), as are the --eval_sets.
    eval_dataset: Any = PackedDataset(data.validation) if data.validation is not None else None
    named = {k: PackedDataset(v) for k, v in {**data.validation_sets, **eval_sets}.items()}
    if named:
        unnamed = {"valid": eval_dataset} if eval_dataset is not None and not data.validation_sets else {}
        eval_dataset = {**unnamed, **named}
    pad_to = None if config.data.packing == "none" else config.data.block_size
    objective = None
    if len(data.train.sources) > 1:  # named sources: the loss per source, and --replay_kl on the replayed ones
        from medpt.train.replay_kl import SourceObjective, kl_sources

        objective = SourceObjective(data.train.sources, config.lora.replay_kl, kl_sources(config), model)
    trainer = MedptTrainer(
        model=model,
        args=args,
        train_dataset=PackedDataset(data.train, sources=objective is not None),
        eval_dataset=eval_dataset,
        data_collator=Collator(tokenizer.pad_token_id, config.data.packing, pad_to),
        processing_class=tokenizer,
        callbacks=[MetricsFileCallback(str(Path(args.output_dir) / METRICS)), InterruptCallback()],
        embedding_learning_rate=config.lora.embedding_learning_rate,
        objective=objective,
    )
    if not args.disable_tqdm:
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(TokenProgressCallback)
    return trainer


def finish(config: Config, trainer: Any, result: Any, out: Path, resumed: str | None, log: Any) -> None:
    """Save the adapter (or model), tokenizer, metrics and curves: everything eval/merge/chat need. all_results.json
    comes last: it marks the run finished (starting_point), so a run stopped before it is continued, not refused."""
    metrics = dict(result.metrics)
    if resumed:
        at = checkpoint_step(resumed)
        metrics.update(whole_run_train_loss(out / METRICS, at, metrics["train_loss"], trainer.state))
    save_final(trainer, out)
    trainer.save_metrics("train", metrics, combined=False)
    results = dict(metrics)
    if trainer.eval_dataset is not None and trainer.args.do_eval:
        # With named eval sets (a dict) Trainer.evaluate scores each one under eval_<name>_ itself.
        evaluation = trainer.evaluate()
        trainer.save_metrics("eval", evaluation, combined=False)
        results.update(evaluation)
    trainer.save_state()
    if not trainer.is_world_process_zero():
        return
    if config.lora.use_peft and config.lora.modules_to_save:
        _check_saved(out / ADAPTER_WEIGHTS, config.lora.modules_to_save)
    if config.run.plot and plot_losses(out / METRICS, out / LOSS_CURVE, title=out.name):
        log(f"loss curves: {out / LOSS_CURVE}")
    from medpt.report.card import write_card

    write_card(out, log=log)  # README.md: what was done (replaces PEFT's empty template)
    trainer.save_metrics("all", results, combined=False)
    summary = {k: v for k, v in results.items() if "loss" in k or "perp" in k}
    log(f"done: {out}  {dumps(summary)}")


def save_final(trainer: Any, out: Path) -> None:
    """The adapter (or model) and the tokenizer, written to the staging folder, then each entry renamed into place
    (and recorded in the manifest right before): the names Trainer, PEFT and the tokenizer choose are known before
    they land, and a save stopped half-way (a full disk) leaves the earlier files as they were."""
    staging = out / STAGING / "final"
    if trainer.is_world_process_zero():
        shutil.rmtree(staging, ignore_errors=True)
        make_dir(staging)
    trainer.accelerator.wait_for_everyone()
    try:
        with writing_into(out):
            trainer.save_model(str(staging))
            trainer.accelerator.wait_for_everyone()
            if trainer.is_world_process_zero():
                trainer.processing_class.save_pretrained(str(staging))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if not trainer.is_world_process_zero():
        return
    run = RunDir.open(out)
    names = sorted(p.name for p in staging.iterdir())
    clashes = [n for n in names if (out / n).exists() and n not in run.entries]
    if clashes:
        raise MedptError(
            f"{out}: {', '.join(clashes)} exist and medpt did not write them; the trained files are in {staging}. "
            "Move those files away and copy the trained ones from there"
        )
    for name in names:
        replace(staging / name, out / name)
    staging.rmdir()


def whole_run_train_loss(metrics_file: Path, resumed_at: int, session_loss: float, state: Any) -> dict[str, Any]:
    """Trainer's train_loss covers only the steps run since the resume; weigh it with the logged losses of the steps
    before it (metrics.jsonl holds each logged interval once, see _resume). Steps between the last log and the
    checkpoint of the first session were never logged and are left out (and counted)."""
    session_steps = state.global_step - resumed_at
    total, known, previous = 0.0, 0, 0
    for row in read_log(metrics_file):
        if "loss" in row and row["step"] <= resumed_at:
            total += row["loss"] * (row["step"] - previous)
            known += row["step"] - previous
            previous = row["step"]
    total += session_loss * session_steps
    known += session_steps
    return {
        "train_loss": total / max(known, 1),
        "train_loss_since_resume": session_loss,
        "train_loss_steps": known,
        "train_loss_unlogged_steps": resumed_at - previous,
    }


def _record_base(config: Config, out: Path) -> None:
    """Which weights this adapter was trained on, so eval, merge and verify catch it being applied to another base."""
    from medpt.model.files import weights_fingerprint
    from medpt.model.loading import MODEL_FILES

    m = config.model
    local = resolve_local(m.model_name_or_path, MODEL_FILES, m.revision, m.cache_dir)
    record = {"name": m.model_name_or_path, "revision": m.revision, "fingerprint": weights_fingerprint(local)}
    atomic_write_text(out / BASE_RECORD, dumps(record, indent=2))


def _check_saved(adapter_file: Path, modules_to_save: list[str]) -> None:
    """--modules_to_save only helps if those weights are really in the saved adapter: check the file itself."""
    from safetensors import safe_open

    with safe_open(str(adapter_file), "pt") as f:
        keys = list(f.keys())
    for name in modules_to_save:
        if not any(name in k for k in keys):
            raise MedptError(f"--modules_to_save {name}: not found in the saved adapter {adapter_file}")
