"""`medpt download REPO_ID`: fetch a model or dataset repository through huggingface_hub (mirrors with
HF_ENDPOINT, resumable), safetensors only unless --include says otherwise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medpt.errors import MedptError
from medpt.model.hub import SKIP_BY_DEFAULT, snapshot


def run_download(args: Any) -> int:
    """`medpt download REPO_ID`: fetch a model or dataset repository."""
    if not args.repo_id:
        raise MedptError("usage: medpt download REPO_ID [--repo_type dataset] [--revision REV] [--local_dir DIR]")
    path = download(args.repo_id, args.repo_type, args.revision, args.cache_dir, args.local_dir, args.include)
    print(f"{args.repo_id}: {path}")
    return 0


def download(
    repo_id: str,
    repo_type: str = "model",
    revision: str | None = None,
    cache_dir: str | None = None,
    local_dir: str | None = None,
    include: list[str] | None = None,
) -> Path:
    """Fetch a model or dataset repository (interrupted downloads resume where they stopped)."""
    return snapshot(
        repo_id,
        repo_type,
        revision=revision,
        cache_dir=cache_dir,
        local_dir=local_dir,
        allow_patterns=include,
        ignore_patterns=None if include or repo_type != "model" else SKIP_BY_DEFAULT,
    )
