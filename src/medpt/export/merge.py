"""`medpt merge`: fold a LoRA adapter into its base model and save a standalone model (safetensors, sharded when
large), with the tokenizer and generation config, readable by AutoModelForCausalLM with no PEFT installed. The
library (`merge_adapter`, `save_merged`, also the merge path of `medpt export`) is `merging`."""

from __future__ import annotations

from typing import Any

from medpt.args.commands import COMMANDS
from medpt.errors import MedptError
from medpt.export.merging import merge_adapter, save_merged


def run_merge(config: Any, log: Any = print) -> int:
    from medpt.args.resolve import inputs_of
    from medpt.atomic import atomic_dir
    from medpt.model.adapter import lora_run
    from medpt.rundir import check_output, check_replaceable

    if "output_dir" not in config.explicit:
        raise MedptError("merge needs --output_dir (a new, empty folder for the merged model)")
    adapter = lora_run(config.eval.adapter, "merge")
    out = check_output("output_dir", config.run.output_dir, inputs_of(config))
    # The merged model replaces the folder as a whole (one rename), so it must hold nothing medpt did not write.
    check_replaceable(out, COMMANDS["merge"], config.run.overwrite_output_dir, "a merged model")
    merged = merge_adapter(config, adapter, out, log)
    with atomic_dir(out) as tmp:
        save_merged(merged, tmp, "merge")
    log(f"merged model: {out}")
    return 0
