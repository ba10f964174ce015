"""The plots of a run, drawn with matplotlib (imported in each function: only plotting needs it): loss curves and
per-set perplexity from metrics.jsonl, and the multiple-choice accuracies and differences with their intervals."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from medpt.atomic import read_log


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
    """Train loss (and, with named sources, each source's train_<source>_loss), and every eval_*loss series against
    the step; None when there is nothing to draw."""

    def keep(key: str) -> str | None:
        if key == "loss":
            return "train loss"
        if key.startswith("train_") and key.endswith("_loss") and key != "train_loss":
            return f"train {key.removeprefix('train_').removesuffix('_loss')} loss"
        return key if key.startswith("eval_") and key.endswith("loss") else None

    series = _series(read_log(metrics_path), keep)
    return _draw(series, png_path, title, "loss (nats / token)") if series else None


def plot_forgetting(metrics_path: str | Path, png_path: str | Path, title: str = "") -> Path | None:
    """The forgetting chart: held-out perplexity of every named eval set (medical, general, ...) against the step,
    on one log-scale plot, so the domain gain and the forgetting of general text are seen together. None unless
    at least two sets were evaluated during training."""

    def keep(key: str) -> str | None:
        if key.startswith("eval_") and key.endswith("_perplexity") and key != "eval_perplexity":
            return key.removeprefix("eval_").removesuffix("_perplexity")
        return None

    series = _series(read_log(metrics_path), keep)
    if len(series) < 2:
        return None
    return _draw(series, png_path, title or "held-out perplexity per set", "perplexity (log scale)", log=True)


def _draw(series: dict, png_path: str | Path, title: str, ylabel: str, log: bool = False) -> Path:
    fig, ax = _pyplot().subplots(figsize=(7, 4))
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
    return _save(fig, png_path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    return plt


def _save(fig, png_path: str | Path) -> Path:
    """Write the figure as a PNG (atomically) and free it."""
    from medpt.atomic import atomic_writer

    fig.tight_layout()
    with atomic_writer(png_path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    _pyplot().close(fig)
    return Path(png_path)


def plot_mcq(mcq: dict[str, Any], png_path: str | Path, title: str = "") -> Path | None:
    """Multiple choice, every benchmark and overall (micro, macro): each model's accuracy with its 95% interval, and
    with an adapter Δ accuracy (adapted − base) with its 95% CI beside it, as error bars, one marker per scoring mode
    and model. Results of an older medpt (no accuracy intervals) get bare markers there."""
    rows = [*mcq["benchmarks"], "micro", "macro"]
    modes = mcq["scoring"]
    adapted = "adapted" in mcq["overall"][modes[0]]["micro"]["accuracy"]
    stats = {m: [mcq["benchmarks"][r]["modes"][m] if r in mcq["benchmarks"] else mcq["overall"][m][r] for r in rows]
             for m in modes}  # fmt: skip
    fig, axes = _pyplot().subplots(1, 2 if adapted else 1, figsize=(12 if adapted else 7, 1.2 + 0.45 * len(rows)),
                                   sharey=True, squeeze=False)  # fmt: skip
    series = [(m, w) for m in modes for w in (["base", "adapted"] if adapted else ["base"])]
    for k, (mode, which) in enumerate(series):
        acc = [100 * s["accuracy"][which] for s in stats[mode]]
        ci = [(s.get("accuracy_ci") or {}).get(which) for s in stats[mode]]
        axes[0][0].errorbar(acc, _offsets(len(rows), k, len(series)), xerr=_bars(acc, ci), fmt="o", capsize=3,
                            label=f"{which}, {mode} scoring")  # fmt: skip
    _axis(axes[0][0], "accuracy (%), with 95% interval (Wilson)")
    if adapted:
        for k, mode in enumerate(modes):
            delta, ci = [100 * s["delta"] for s in stats[mode]], [s["ci"] for s in stats[mode]]
            axes[0][1].errorbar(delta, _offsets(len(rows), k, len(modes)), xerr=_bars(delta, ci), fmt="o", capsize=3,
                                label=f"{mode} scoring")  # fmt: skip
        axes[0][1].axvline(0, color="grey", linewidth=1)
        _axis(axes[0][1], "Δ accuracy, adapted − base (points), with 95% CI")
    axes[0][0].set_yticks(range(len(rows)), rows)
    axes[0][0].invert_yaxis()
    fig.suptitle(title)
    return _save(fig, png_path)


def _offsets(rows: int, k: int, of: int) -> list[float]:
    """The y of series k of `of` in each row: side by side around the row's tick."""
    return [i + 0.6 / of * (k - (of - 1) / 2) for i in range(rows)]


def _bars(values: list[float], cis: list[list[float | None] | None]) -> list[list[float]]:
    """matplotlib's xerr (distances below and above each value, in points) from [low, high] fractions; 0 where the
    interval is missing or undefined, and never negative (a percentile interval need not contain its estimate)."""
    below = [max(0.0, v - 100 * ci[0]) if ci and ci[0] is not None else 0.0 for v, ci in zip(values, cis)]
    above = [max(0.0, 100 * ci[1] - v) if ci and ci[1] is not None else 0.0 for v, ci in zip(values, cis)]
    return [below, above]


def _axis(ax: Any, xlabel: str) -> None:
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize="small")


def plot_frontier(points: list[dict[str, Any]], png_path: str | Path, title: str = "",
                  x: str = "general", y: str = "medical") -> Path | None:  # fmt: skip
    """The forgetting frontier: Δ perplexity on set `y` (the domain gain, down is better) against Δ perplexity on set
    `x` (the forgetting, left is better), each with its 95% CI as error bars; one point per model (an arm, or an
    adapter scale), and the points of one `group` (an adapter's scales) joined by a line. A point is
    {"label", "group", x: (Δ, low, high), y: (Δ, low, high)}, relative changes (0.1 = +10%). None without points."""
    points = [p for p in points if p.get(x) and p.get(y)]
    if not points:
        return None
    fig, ax = _pyplot().subplots(figsize=(7, 5))
    groups: dict[str, list[dict]] = {}
    for p in points:
        groups.setdefault(p.get("group") or p["label"], []).append(p)
    for name, members in groups.items():
        xs, ys = [100 * p[x][0] for p in members], [100 * p[y][0] for p in members]
        xerr = [[100 * (p[x][0] - p[x][1]) for p in members], [100 * (p[x][2] - p[x][0]) for p in members]]
        yerr = [[100 * (p[y][0] - p[y][1]) for p in members], [100 * (p[y][2] - p[y][0]) for p in members]]
        ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, fmt="o-" if len(members) > 1 else "o", capsize=2, markersize=4,
                    label=name)  # fmt: skip
        for p, px, py in zip(members, xs, ys):
            if p["label"] != name:
                ax.annotate(p["label"], (px, py), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.axvline(0, color="grey", linewidth=1)
    ax.set_xlabel(f"Δ perplexity, {x} held-out (%, 95% CI): forgetting →")
    ax.set_ylabel(f"Δ perplexity, {y} held-out (%, 95% CI): ↓ gain")
    ax.set_title(title or "forgetting frontier")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, png_path)


def frontier_points(evaluation: dict[str, Any], group: str) -> list[dict[str, Any]]:
    """The points of `medpt eval --adapter_scale ...` results (eval_results.json's "frontier"), for plot_frontier."""
    points = []
    for row in evaluation.get("frontier") or []:
        point: dict[str, Any] = {"label": f"×{row['scale']:g}", "group": group}
        for name, r in row["sets"].items():
            low, high = r["perplexity_change_ci"]
            if low is not None and high is not None:
                point[name] = (r["perplexity_change"], low, high)
        points.append(point)
    return points
