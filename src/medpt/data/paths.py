"""Which files a data flag names: files, folders (walked) and globs, by the rules below.

A file named directly is read. A folder's walk follows symbolic links (each folder visited once, so a link loop
ends) and skips entries whose name starts with "." *below* the folder (the folder itself may be `.`, reached with
`..` or inside a hidden folder such as ~/.cache/corpus). A walk or a glob never reads inside a folder medpt wrote (one
holding its manifest: a run, an eval, the data cache), so earlier outputs are never read back as data, and naming such
a folder as the data is an error. A file reached twice (a symbolic or hard link, a `**` glob through a link loop,
overlapping patterns) is read once. A broken or looping link given directly is one line. `~` is expanded before any
of this, when the flag is read (medpt.args.flags.value_of).
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

from medpt.errors import MedptError
from medpt.rundir import MANIFEST, fixed_part

SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".txt")
_SPLIT_PREFIXES = ("train", "valid", "validation", "dev", "test", "eval")


def data_suffix(path: Path) -> str:
    """The data extension of a file, looking through a trailing .gz (`a.jsonl.gz` -> `.jsonl`)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def resolve_files(patterns: list[str], flag: str) -> list[Path]:
    """Expand files, folders (recursively) and globs into a sorted, de-duplicated list of data files (the rules are
    the module docstring's)."""
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()
    for pattern in patterns:
        if any(ch in pattern for ch in "*?["):
            matches = [p for p in _glob(pattern) if data_suffix(p) in SUFFIXES]
            if not matches:
                raise MedptError(f"--{flag} {pattern}: the pattern matches no {'/'.join(SUFFIXES)} file")
        elif os.path.isdir(pattern):
            if (Path(pattern) / MANIFEST).is_file():
                raise MedptError(f"--{flag} {pattern}: a folder medpt wrote (it holds {MANIFEST}), not data; name "
                                 "the files to read, or another folder")  # fmt: skip
            matches = [p for p in _walk(Path(pattern), flag) if data_suffix(p) in SUFFIXES]
            if not matches:
                raise MedptError(f"--{flag} {pattern}: the folder holds no {'/'.join(SUFFIXES)} file")
            _warn_mixed_splits(pattern, matches, flag)
        elif os.path.isfile(pattern):
            if data_suffix(Path(pattern)) not in SUFFIXES:
                raise MedptError(
                    f"--{flag} {pattern}: unsupported file type; use {', '.join(SUFFIXES)} (optionally .gz)"
                )
            matches = [Path(pattern)]
        elif os.path.islink(pattern):
            raise MedptError(f"--{flag} {pattern}: a symbolic link that leads nowhere (its target is gone, or the "
                             "links form a loop)")  # fmt: skip
        else:
            raise MedptError(f"--{flag} {pattern}: no such file or folder")
        for path in matches:
            stat = path.stat()
            if (stat.st_dev, stat.st_ino) not in seen:
                seen.add((stat.st_dev, stat.st_ino))
                found.append(path)
    return found


def _walk(root: Path, flag: str) -> list[Path]:
    """The files under `root`, sorted, per resolve_files' rules (links followed once, hidden and medpt's folders
    skipped)."""
    files: list[Path] = []
    visited: set[tuple[int, int]] = set()

    def refuse(error: OSError) -> None:
        raise MedptError(f"--{flag} {root}: cannot read {error.filename}: {error.strerror}")

    for folder, dirs, names in os.walk(root, followlinks=True, onerror=refuse):
        stat = os.stat(folder)
        if (stat.st_dev, stat.st_ino) in visited or (folder != str(root) and MANIFEST in names):
            dirs[:] = []  # a link back to a folder already walked, or a folder medpt wrote
            continue
        visited.add((stat.st_dev, stat.st_ino))
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        files += [Path(folder, n) for n in names if not n.startswith(".") and os.path.isfile(os.path.join(folder, n))]
    return sorted(files)


def _glob(pattern: str) -> list[Path]:
    """Files a glob matches, sorted, none inside a folder medpt wrote below the pattern's fixed part (glob itself
    skips names starting with "." unless the pattern spells the dot, and follows a link loop only ~40 levels deep,
    where the operating system stops it; the repeats it finds are the same file, read once by resolve_files)."""
    fixed = Path(fixed_part(pattern))
    matches = [Path(p) for p in sorted(glob.glob(pattern, recursive=True)) if os.path.isfile(p)]
    return [p for p in matches if not any((d / MANIFEST).is_file() for d in p.parents if fixed in d.parents)]


def _warn_mixed_splits(folder: str, files: list[Path], flag: str) -> None:
    """A folder laid out as train/valid/test files is read whole; say so, since test data in training is a leak."""
    kinds = {p.name.lower().split("-")[0].split(".")[0] for p in files} & set(_SPLIT_PREFIXES)
    if len(kinds) > 1:
        print(
            f"medpt: warning: --{flag} {folder} holds files of several splits ({', '.join(sorted(kinds))}); all of "
            f"them are read. To read one split, pass a glob such as '{folder}/train*.jsonl'."
        )
