"""Which files (or hub datasets) make up each named data source and split.

`--train_file_dir medical=data/qa general=wiki/` gives two sources, each read with its own format detection;
plain paths make one unnamed source (""), as before sources had names. Validation files belong to the source they
name; a hub dataset's own validation split belongs to its source unless validation files for it are given.
"""

from __future__ import annotations

from dataclasses import dataclass

from medpt.args import DataArguments, split_named
from medpt.data.paths import resolve_files
from medpt.data.records import FileSource, HubSource, HubStream, load_hub_splits
from medpt.errors import MedptError


@dataclass
class SourceFile:
    name: str  # the data source ("" when unnamed)
    split: str  # train or validation
    source: FileSource | HubSource | HubStream


def data_sources(args: DataArguments, hub_cache_dir: str | None) -> list[SourceFile]:
    """Every input, in the order given: hub datasets first, then files, training before validation."""
    files: list[SourceFile] = []
    validated = {split_named(item)[0] for item in args.validation_file_dir or []}
    for item in args.dataset_name or []:
        name, dataset = split_named(item)
        hub_train, hub_val = load_hub_splits(dataset, args.dataset_config_name, hub_cache_dir, args.streaming,
                                             args.max_record_mb)  # fmt: skip
        files.append(SourceFile(name, "train", hub_train))
        if hub_val is not None and name not in validated:
            files.append(SourceFile(name, "validation", hub_val))
    for split, items, flag in (
        ("train", args.train_file_dir, "train_file_dir"),
        ("validation", args.validation_file_dir, "validation_file_dir"),
    ):
        for item in items or []:
            name, pattern = split_named(item)
            for path in resolve_files([pattern], flag):
                source = FileSource(path, args.encoding, args.txt_split, args.max_record_mb)
                files.append(SourceFile(name, split, source))
    if not any(f.split == "train" for f in files):
        raise MedptError("no training data: pass --train_file_dir (files, folders or globs) or --dataset_name")
    return files


def file_bytes(files: list[SourceFile]) -> int:
    return sum(f.source.path.stat().st_size for f in files if isinstance(f.source, FileSource))
