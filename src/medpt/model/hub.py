"""The hub, behind filtered networks: mirrors (HF_ENDPOINT), cache folders (HF_HOME, --cache_dir), offline mode
(HF_HUB_OFFLINE, --offline) and resumable downloads, all through huggingface_hub, which reads those variables.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from medpt.errors import MedptError

# Weights are fetched as safetensors only; pickle-based formats are never downloaded by default.
SKIP_BY_DEFAULT = ["*.bin", "*.pth", "*.pt", "*.ckpt", "*.h5", "*.msgpack", "*.onnx", "*.gguf", "*.ot"]


def apply_offline(offline: bool) -> None:
    """--offline: the same switch as HF_HUB_OFFLINE=1, for hub files and datasets alike."""
    if not offline:
        return
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    # huggingface_hub and datasets read those variables once, when imported, and parsing the flags has usually
    # imported them already (transformers.TrainingArguments is the schema of the trainer flags): set their copies.
    if "huggingface_hub.constants" in sys.modules:
        sys.modules["huggingface_hub.constants"].HF_HUB_OFFLINE = True
    if "datasets.config" in sys.modules:
        sys.modules["datasets.config"].HF_HUB_OFFLINE = True


@dataclass(frozen=True)
class ResolvedModel:
    """A model name as given, the local directory it resolved to, and the allow_patterns its snapshot was fetched
    with (None: every file, as for a local folder)."""

    name: str
    directory: Path
    allow_patterns: tuple[str, ...] | None

    def covers(self, patterns: tuple[str, ...] | None) -> bool:
        """Every file `patterns` selects was selected by this resolution's patterns. Conservative: a requested glob
        counts only when the same glob was fetched (a glob within another one resolves again)."""
        if self.allow_patterns is None:
            return True
        if patterns is None:
            return False
        # huggingface_hub matches a pattern ending in "/" as a folder prefix (pattern + "*"), with fnmatch
        fetched = [p + "*" if p.endswith("/") else p for p in self.allow_patterns]
        return all(p in self.allow_patterns or (_literal(p) and any(fnmatch(p, f) for f in fetched)) for p in patterns)


def _literal(pattern: str) -> bool:
    return not pattern.endswith("/") and not any(c in pattern for c in "*?[")


# Every hub id a command resolves, per process. Each snapshot_download of a hub id asks the hub (a network round trip,
# seconds behind a slow filtered network) to revalidate the revision; offline it stays local but still walks the
# cache. One `medpt train` asks for the same model's files many times (its facts, tokenizer, config and weights, the
# base record): the first answer that covers a request serves the later ones.
_RESOLVED: dict[tuple[Any, ...], list[ResolvedModel]] = {}
# The variables that change where huggingface_hub looks or what it may fetch (cache folders, mirror, offline mode).
_HUB_ENV = ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME", "HF_ENDPOINT", "HF_HUB_OFFLINE")


def resolve_local(
    name_or_path: str, allow_patterns: list[str] | None, revision: str | None = None, cache_dir: str | None = None
) -> Path:
    """A local directory for a model or tokenizer: the path itself, or a hub snapshot (downloaded, resumable),
    fetched at most once per process for files an earlier resolution already fetched."""
    if os.path.isdir(name_or_path):
        return Path(name_or_path)
    if looks_like_path(name_or_path):
        what = "a file, not a model folder" if os.path.exists(name_or_path) else "no such local folder"
        raise MedptError(f"{name_or_path}: {what} (it is a path, so the hub was not asked)")
    key = (name_or_path, revision, cache_dir, _offline(), *map(os.environ.get, _HUB_ENV))
    patterns = None if allow_patterns is None else tuple(allow_patterns)
    earlier = [r for r in _RESOLVED.get(key, []) if r.directory.is_dir()]  # a deleted snapshot is fetched again
    for resolved in earlier:
        if resolved.covers(patterns):
            return resolved.directory
    local = snapshot(name_or_path, "model", revision=revision, cache_dir=cache_dir, allow_patterns=allow_patterns)
    _RESOLVED[key] = [*earlier, ResolvedModel(name_or_path, local, patterns)]
    return local


def _offline() -> bool:
    """huggingface_hub's own switch: read once at its import, and set directly by apply_offline."""
    constants = sys.modules.get("huggingface_hub.constants")
    return bool(constants.HF_HUB_OFFLINE) if constants is not None else False


def looks_like_path(name: str) -> bool:
    """A hub id is `name` or `org/name`; anything absolute, relative (./, ../, ~) or deeper is a local path, so a
    deleted model folder is reported as missing instead of as an unreachable hub."""
    return name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1


def snapshot(repo_id: str, repo_type: str, **kwargs: Any) -> Path:
    """huggingface_hub's snapshot_download, its failures turned into advice for a user behind a slow network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    mirror = "set HF_ENDPOINT to a mirror (e.g. HF_ENDPOINT=https://hf-mirror.com)"
    try:
        return Path(snapshot_download(repo_id, repo_type=repo_type, **kwargs))
    except HFValidationError:
        raise MedptError(f"{repo_id}: no local folder of that name, and not a hub id (org/name)") from None
    except RepositoryNotFoundError:
        raise MedptError(
            f"{repo_id}: no such {repo_type} repository at {endpoint}, and no such local directory"
        ) from None
    except LocalEntryNotFoundError:
        raise MedptError(
            f"{repo_id}: no local folder of that name, not in the hub cache, and {endpoint} is unreachable or "
            "HF_HUB_OFFLINE is set. "
            f"Download it while online with `medpt download {repo_id}`, {mirror}, or pass a local path"
        ) from None
    except (HfHubHTTPError, OSError) as e:
        raise MedptError(
            f"{repo_id}: download from {endpoint} failed: {e}. Behind a filtered network, {mirror}; rerunning "
            "resumes the download"
        ) from None
