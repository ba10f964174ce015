"""`medpt prepare`: files or a hub dataset → rendered text → tokens → packed blocks (cached), and a data report in
--output_dir. The work is medpt.data.pipeline's; this command checks the paths and writes the run's files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medpt.args.commands import COMMANDS
from medpt.args.resolve import inputs_of
from medpt.data.pipeline import prepare_data
from medpt.model.loading import check_block_size, model_positions, tokenizer_source
from medpt.rundir import claim_dir, claim_file, holding


def run_prepare(config: Any) -> int:
    source = tokenizer_source(config.model)
    inputs = inputs_of(config)
    if config.model.model_name_or_path:
        check_block_size(config.data.block_size, model_positions(config.model), config.model.model_name_or_path)
    out = Path(config.run.output_dir)
    with holding(out, COMMANDS["prepare"], inputs=inputs):
        claim_dir(out, COMMANDS["prepare"], inputs=inputs, overwrite=config.run.overwrite_output_dir)
        if config.data.dump_text:
            claim_file(config.data.dump_text, COMMANDS["prepare"], flag="dump_text", inputs=inputs)
        print(f"configuration: {config.save(out)}")  # first: a stopped run still says how it was made
        prepare_data(config.data, source, config.run.seed, out, hub_cache_dir=config.model.cache_dir)
    return 0
