"""The 512-token training blocks every benchmark trains or scores on, prepared by medpt itself (concat packing,
no validation split), so the baselines and medpt read exactly the same tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def prepared_blocks(model_dir: str | Path, files: str | Path, seed: int = 42, block_size: int = 512) -> Any:
    """medpt.data.packing.Packed blocks of `files`, tokenized with the tokenizer in `model_dir` (cached by medpt)."""
    from medpt.args.resolve import DataArguments
    from medpt.data.pipeline import prepare_data
    from medpt.model.loading import TokenizerSource

    args = DataArguments(train_file_dir=[str(files)], validation_split_percentage=0.0, block_size=block_size)
    return prepare_data(args, TokenizerSource(str(model_dir)), seed=seed, log=lambda *_: None).train
