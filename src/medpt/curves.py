"""Loss curves from metrics.jsonl, drawn with matplotlib (imported here only: it is optional at run time)."""

from __future__ import annotations

import json
from pathlib import Path


def read_metrics(path: str | Path) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_losses(metrics_path: str | Path, png_path: str | Path, title: str = "") -> Path | None:
    """Train loss and every eval_*loss series against the step; None when there is nothing to draw."""
    rows = read_metrics(metrics_path)
    series: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for key, value in row.items():
            if (key == "loss" or (key.startswith("eval_") and key.endswith("loss"))) and isinstance(
                value, (int, float)
            ):
                series.setdefault("train loss" if key == "loss" else key, []).append((row["step"], value))
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    from medpt.atomic import atomic_writer

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, points in series.items():
        steps, values = zip(*points)
        ax.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3, label=name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_writer(png_path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return Path(png_path)
