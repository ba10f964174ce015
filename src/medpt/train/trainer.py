"""transformers.Trainer, with what it does not do for this job:

1. evaluation computes loss, token accuracy and perplexity from running sums (no logits kept across batches);
2. a checkpoint becomes visible only once complete (written to a staging folder, then renamed), so a kill during
   saving never leaves one that resuming would pick up; a save that fails (a full disk) leaves the earlier ones as
   they were; results and state are written through medpt.atomic, never in place (Trainer's save_metrics and
   save_state rewrite the file, changing a hard-linked backup of the run); each checkpoint holds the run's
   description (rundir.RUN_DESCRIPTION), so eval and report can use it when the run stops before it finishes;
3. a NaN/inf loss stops the run at that step, before the optimizer writes NaN into the weights;
4. tokens/s counts real tokens (not padding), and the learning rate of --modules_to_save can differ;
5. callbacks: metrics.jsonl per log step, a progress bar with tokens/s, Ctrl-C = save a checkpoint and stop;
6. with named sources, the training loss per source and `--replay_kl` (medpt.train.replay_kl);
7. the JSON it writes (metrics.jsonl, *_results.json, the log history in trainer_state.json) is strict JSON: a
   non-finite value (an fp16 step's inf gradient norm, an eval loss that overflowed) is null (medpt.strictjson).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from medpt.atomic import append_line, atomic_write_text, atomic_writer, make_dir, replace, write_json, writing_into
from medpt.data.batches import REAL_TOKENS, SOURCE_IDS
from medpt.errors import MedptError
from medpt.eval.metrics import TokenStats, token_sums
from medpt.faults import fault_point
from medpt.rundir import ALL_RESULTS, RUN_DESCRIPTION, STAGING, TRAINER_STATE
from medpt.strictjson import dumps, finite


class NonFiniteLossError(MedptError):
    def __init__(self, step: int, value: float):
        self.step = step
        super().__init__(f"the training loss became {value} at step {step}; the run was stopped before it was applied")


class MedptTrainer(Trainer):
    def __init__(self, *args: Any, embedding_learning_rate: float | None = None, objective: Any = None,
                 **kwargs: Any):  # fmt: skip
        super().__init__(*args, **kwargs)
        self.embedding_learning_rate = embedding_learning_rate
        self.objective = objective  # medpt.train.replay_kl.SourceObjective, for a training split of named sources
        self._staging: str | None = None
        self._eval_sums: torch.Tensor | None = None
        self._local_tokens = 0  # real tokens seen by this process since the last log
        self._last_log = (time.perf_counter(), 0)

    # --- 3 & 4: every micro-batch ------------------------------------------------------------------------------
    def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: Any) -> tuple[list, Any]:
        # Resumed from a checkpoint saved at max_steps (a run stopped while saving its results), transformers (5.x)
        # takes one step more before it checks the limit: an adapter and a log unlike the uninterrupted run's.
        # No batch, and the loop stops before that step.
        if self.state.global_step >= self.state.max_steps > 0:
            self.control.should_training_stop = True
            return [], None
        return super().get_batch_samples(epoch_iterator, num_batches, device)

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        real = inputs.pop(REAL_TOKENS, None)
        loss = super().training_step(model, inputs, num_items_in_batch)
        # One device sync per micro-batch: cheap next to a forward/backward, and the only way to stop before the
        # optimizer step turns one bad batch into NaN weights (and a NaN checkpoint).
        if not torch.isfinite(loss).all():
            raise NonFiniteLossError(self.state.global_step + 1, float(loss.detach().float().mean()))
        if real is not None:
            self._local_tokens += int(real)
        return loss

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:  # fmt: skip
        source_ids = inputs.pop(SOURCE_IDS, None)
        if self.objective is None or source_ids is None or return_outputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss = self.objective.loss(model, inputs, source_ids, num_items_in_batch)
        # The same scaling transformers applies to a loss normalised by the global token count (Trainer.compute_loss).
        args = self.args
        if args.average_tokens_across_devices and self.model_accepts_loss_kwargs and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self.objective is not None:
            logs.update(self.objective.logs(lambda t: self.accelerator.reduce(t, reduction="sum")))
        if "loss" in logs:  # a training log: add real tokens seen and tokens/s since the previous one
            count = torch.tensor(self._local_tokens, device=self.args.device, dtype=torch.int64)
            self._local_tokens = 0
            self.state.num_input_tokens_seen += int(self.accelerator.reduce(count, reduction="sum"))
            now, seen = time.perf_counter(), self.state.num_input_tokens_seen
            logs["num_input_tokens_seen"] = seen
            logs["tokens_per_second"] = round((seen - self._last_log[1]) / max(now - self._last_log[0], 1e-9), 1)
            self._last_log = (now, seen)
        super().log(logs, start_time)
        # Trainer writes its log history into trainer_state.json (the run's and each checkpoint's) with Python's
        # json, as bare NaN / Infinity (an fp16 run's skipped steps log grad_norm inf): keep the saved history
        # strict JSON. The callbacks above got the values themselves.
        self.state.log_history[-1] = finite(self.state.log_history[-1])

    # --- 1: evaluation ------------------------------------------------------------------------------------------
    def evaluation_loop(
        self,
        dataloader: Any,
        description: str,
        prediction_loss_only: bool | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> Any:
        self._eval_sums = None
        output = super().evaluation_loop(
            dataloader,
            description,
            prediction_loss_only=True,
            ignore_keys=ignore_keys,
            metric_key_prefix=metric_key_prefix,
        )
        sums = self._eval_sums if self._eval_sums is not None else torch.zeros(3, dtype=torch.float64)
        sums = self.accelerator.reduce(sums.to(self.args.device), reduction="sum")
        output.metrics.update(TokenStats.from_tensor(sums).metrics(prefix=f"{metric_key_prefix}_"))
        return output

    def prediction_step(self, model: Any, inputs: dict[str, Any], prediction_loss_only: bool, ignore_keys: Any = None):
        inputs = self._prepare_inputs(inputs)
        inputs.pop(REAL_TOKENS, None)
        labels = inputs.pop("labels")
        with torch.no_grad(), self.compute_loss_context_manager():
            logits = model(**inputs).logits  # no labels: the model would compute a second, unused loss
        sums = token_sums(logits, labels)
        self._eval_sums = sums if self._eval_sums is None else self._eval_sums + sums
        return (sums[0] / sums[2].clamp(min=1)).float().detach(), None, None

    # --- 2: checkpoints -----------------------------------------------------------------------------------------
    def _get_output_dir(self, trial: Any) -> str:
        return self._staging or super()._get_output_dir(trial)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        run_dir = super()._get_output_dir(trial)
        staging = os.path.join(run_dir, STAGING)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save:
            make_dir(staging)
            shutil.rmtree(os.path.join(staging, name), ignore_errors=True)  # what a stopped save of it left
            fault_point("save", os.path.join(staging, name))
        self.accelerator.wait_for_everyone()
        self._staging = staging
        try:
            with writing_into(run_dir):
                super()._save_checkpoint(model, trial)  # every process writes its part under the staging folder
                if self.args.should_save:
                    _describe_checkpoint(Path(run_dir), Path(staging, name))
        except BaseException:
            if self.args.should_save:  # a full disk or Ctrl-C half-way: the earlier checkpoints stay as they were
                shutil.rmtree(os.path.join(staging, name), ignore_errors=True)
            raise
        finally:
            self._staging = None
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            # Recorded in the manifest right before it lands; replaces the same step saved again after a resume.
            replace(os.path.join(staging, name), os.path.join(run_dir, name))
            if self.state.best_model_checkpoint and self.state.best_model_checkpoint.startswith(staging):
                self.state.best_model_checkpoint = os.path.join(
                    run_dir, os.path.basename(self.state.best_model_checkpoint)
                )
            rotate_checkpoints(run_dir, self.args.save_total_limit, self.state.best_model_checkpoint)
        self.accelerator.wait_for_everyone()

    def save_metrics(self, split: str, metrics: dict[str, Any], combined: bool = True) -> None:
        """Trainer.save_metrics, written atomically (see 2); the same JSON."""
        if not self.is_world_process_zero():
            return
        out = Path(self.args.output_dir)
        write_json(out / f"{split}_results.json", metrics, indent=4, sort_keys=True)
        if combined:
            merged = json.loads((out / ALL_RESULTS).read_text()) if (out / ALL_RESULTS).is_file() else {}
            write_json(out / ALL_RESULTS, {**merged, **metrics}, indent=4, sort_keys=True)

    def save_state(self) -> None:
        """Trainer.save_state, written atomically (see 2); the same JSON."""
        if self.is_world_process_zero():
            state = dumps(dataclasses.asdict(self.state), indent=2, sort_keys=True) + "\n"
            atomic_write_text(Path(self.args.output_dir) / TRAINER_STATE, state)

    # --- 4: a separate learning rate for embed_tokens / lm_head ------------------------------------------------
    def create_optimizer(self, model: Any = None) -> torch.optim.Optimizer:
        if self.embedding_learning_rate is None or self.optimizer is not None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        groups: dict[tuple[bool, bool], list] = {}
        for name, p in opt_model.named_parameters():
            if p.requires_grad:
                groups.setdefault((name in decay, "modules_to_save" in name), []).append(p)
        cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = cls(
            [
                {
                    "params": params,
                    "weight_decay": self.args.weight_decay if with_decay else 0.0,
                    **({"lr": self.embedding_learning_rate} if embedding else {}),
                }
                for (with_decay, embedding), params in groups.items()
            ],
            **kwargs,
        )
        return self.optimizer


def _describe_checkpoint(run_dir: Path, checkpoint: Path) -> None:
    """The run's description, as the run saved it, into the checkpoint being staged: the rename that makes the
    checkpoint visible makes these visible with it."""
    for name in RUN_DESCRIPTION:
        if (run_dir / name).is_file():
            with atomic_writer(checkpoint / name, "wb") as f:
                f.write((run_dir / name).read_bytes())


class MetricsFileCallback(TrainerCallback):
    """metrics.jsonl: one line per log event (train or eval), appended at once (medpt.atomic.append_line), so a crash
    loses nothing logged; every reader (medpt.atomic.read_log) drops the cut last line a kill can leave."""

    def __init__(self, path: str):
        self.path = path

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if state.is_world_process_zero and logs:
            append_line(self.path, dumps({"step": state.global_step, **logs}))


class TokenProgressCallback(ProgressCallback):
    """The usual progress bar (steps, ETA), plus loss and tokens/s as of the last log."""

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if state.is_world_process_zero and self.training_bar is not None and logs and "loss" in logs:
            self.training_bar.set_postfix(loss=f"{logs['loss']:.4f}", tok_s=f"{logs.get('tokens_per_second', 0):,.0f}")
        elif state.is_world_process_zero and logs and "loss" not in logs and self.training_bar is not None:
            shown = {k: round(v, 4) for k, v in logs.items() if isinstance(v, float) and k.startswith("eval_")}
            if shown:
                self.training_bar.write(str(shown))


class InterruptCallback(TrainerCallback):
    """First Ctrl-C: finish the current step, save a checkpoint, stop. A second Ctrl-C stops at once."""

    def __init__(self) -> None:
        self.interrupted = False
        self._previous: Any = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.interrupted:
            raise KeyboardInterrupt
        self.interrupted = True
        print("\nmedpt: interrupted; saving a checkpoint at the end of this step (Ctrl-C again to stop now)")

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.interrupted:
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
