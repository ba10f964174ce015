"""Loss curves from metrics.jsonl, drawn with matplotlib (imported here only: it is optional at run time)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path


def read_metrics(path: str | Path) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


def _series(rows: list[dict], keep: Callable[[str], str | None]) -> dict[str, list[tuple[int, float]]]:
    """{label: [(step, value)]} for every key `keep` gives a label to."""
    series: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for key, value in row.items():
            label = keep(key)
            if label and isinstance(value, (int, float)) and not isinstance(value, bool):
                series.setdefault(label, []).append((row["step"], value))
    return series


def plot_losses(metrics_path: str | Path, png_path: str | Path, title: str = "") -> Path | None:
    """Train loss and every eval_*loss series against the step; None when there is nothing to draw."""

    def keep(key: str) -> str | None:
        if key == "loss":
            return "train loss"
        return key if key.startswith("eval_") and key.endswith("loss") else None

    series = _series(read_metrics(metrics_path), keep)
    return _draw(series, png_path, title, "loss (nats / token)") if series else None


def plot_forgetting(metrics_path: str | Path, png_path: str | Path, title: str = "") -> Path | None:
    """The forgetting chart: held-out perplexity of every named eval set (medical, general, ...) against the step,
    on one log-scale plot, so the domain gain and the forgetting of general text are seen together. None unless
    at least two sets were evaluated during training."""

    def keep(key: str) -> str | None:
        if key.startswith("eval_") and key.endswith("_perplexity") and key != "eval_perplexity":
            return key.removeprefix("eval_").removesuffix("_perplexity")
        return None

    series = _series(read_metrics(metrics_path), keep)
    if len(series) < 2:
        return None
    return _draw(series, png_path, title or "held-out perplexity per set", "perplexity (log scale)", log=True)


def _draw(series: dict, png_path: str | Path, title: str, ylabel: str, log: bool = False) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    from medpt.atomic import atomic_writer

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, points in series.items():
        steps, values = zip(*points)
        ax.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3, label=name)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_writer(png_path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return Path(png_path)
