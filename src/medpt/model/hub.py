"""The hub, behind filtered networks: mirrors (HF_ENDPOINT), cache folders (HF_HOME, --cache_dir), offline mode
(HF_HUB_OFFLINE, --offline) and resumable downloads, all through huggingface_hub, which reads those variables.
"""

from __future__ import annotations

import os
import sys
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


def resolve_local(
    name_or_path: str, allow_patterns: list[str] | None, revision: str | None = None, cache_dir: str | None = None
) -> Path:
    """A local directory for a model or tokenizer: the path itself, or a hub snapshot (downloaded, resumable)."""
    if os.path.isdir(name_or_path):
        return Path(name_or_path)
    if looks_like_path(name_or_path):
        what = "a file, not a model folder" if os.path.exists(name_or_path) else "no such local folder"
        raise MedptError(f"{name_or_path}: {what} (it is a path, so the hub was not asked)")
    return snapshot(name_or_path, "model", revision=revision, cache_dir=cache_dir, allow_patterns=allow_patterns)


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
