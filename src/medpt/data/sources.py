"""Which files (or hub datasets) make up each named data source and split.

`--train_file_dir medical=data/qa general=wiki/` gives two sources, each read with its own format detection;
plain paths make one unnamed source (""). Validation files belong to the source they
name; a hub dataset's own validation split belongs to its source unless validation files for it are given. A file
reached twice (by two paths, links or copies) is refused (check_distinct).
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


def check_distinct(files: list[SourceFile], fingerprints: list[str]) -> None:
    """Refuse one file given twice (two sources, a glob and a folder that overlap, a symlink or hard link, train and
    validation) and two files with the same bytes (a copy): its documents would silently count twice, or be held out
    and trained on at once. Identity is the device and inode of the resolved file, then the content hash the cache
    key uses anyway; empty files are alike without being copies, and are left alone."""
    seen: dict[object, SourceFile] = {}
    for f, fingerprint in zip(files, fingerprints):
        keys: list[object] = [fingerprint]
        if isinstance(f.source, FileSource):
            stat = f.source.path.stat()
            keys = [(stat.st_dev, stat.st_ino)] + (keys if stat.st_size else [])
        for key in keys:
            if key in seen:
                raise MedptError(_twice(seen[key], f, same_file=isinstance(key, tuple)))
            seen[key] = f


def _twice(a: SourceFile, b: SourceFile, same_file: bool) -> str:
    what = "are the same file" if same_file else "hold the same bytes"
    if {a.split, b.split} == {"train", "validation"}:
        effect = "its documents would be held out and trained on at once"
    elif a.split == "train":
        effect = "its documents would be trained on twice"
    else:
        effect = "its documents would be counted twice"
    return f"{_given(a)} and {_given(b)} {what}: {effect}; give it once"


def _given(f: SourceFile) -> str:
    """How the user named this input: --flag [NAME=]PATH (the file a folder or glob resolved to)."""
    flag = "--dataset_name" if not isinstance(f.source, FileSource) else f"--{f.split}_file_dir"
    path = f.source.path if isinstance(f.source, FileSource) else f.source.name
    return f"{flag} {f.name + '=' if f.name else ''}{path}"


def file_bytes(files: list[SourceFile]) -> int:
    return sum(f.source.path.stat().st_size for f in files if isinstance(f.source, FileSource))
