"""`medpt report RUN_DIR`: one page (HTML, self-contained, opens offline; and Markdown) per run: the configuration,
the data report, the loss curves, base vs adapted on each eval set, multiple choice, verification and the answers
side by side. It reads only what the run's directory holds, so it can be written again at any time. For a `medpt
tune` folder: the trials table and the study's plots.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
from pathlib import Path
from typing import Any

from medpt.args.commands import COMMANDS
from medpt.errors import MedptError
from medpt.rundir import (
    COMPARE_DIR,
    COMPARE_JSONL,
    CONFIG_FILE,
    DATA_REPORT,
    EVAL_DIR,
    EVAL_RESULTS,
    FORGETTING_CHART,
    LOSS_CURVE,
    METRICS,
    REPORT_CURVE,
    REPORT_DELTAS,
    REPORT_FRONTIER,
    REPORT_HTML,
    REPORT_MD,
    TRAIN_RESULTS,
    TRAINER_STATE,
    TRIALS_MD,
    TUNE_HISTORY,
    TUNE_IMPORTANCE,
    VERIFY,
    StoppedRun,
    stopped_run,
)


def _load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def gather(run: Path, out: Path) -> dict[str, Any]:
    from medpt.report.curves import frontier_points, plot_forgetting, plot_frontier, plot_losses, plot_mcq

    if not (run / CONFIG_FILE).is_file():
        raise MedptError(f"{run} is not a medpt run (no {CONFIG_FILE})")
    curve = run / LOSS_CURVE
    if not curve.is_file():  # a run trained with --plot false: the report draws its own copy
        curve = out / REPORT_CURVE
        plot_losses(run / METRICS, curve, title=run.name)
    forgetting = plot_forgetting(run / METRICS, out / FORGETTING_CHART, title=f"{run.name}: held-out perplexity")
    compare = run / COMPARE_DIR / COMPARE_JSONL
    evaluation = _load(run / EVAL_DIR / EVAL_RESULTS)
    mcq = (evaluation or {}).get("mcq")
    deltas = plot_mcq(mcq, out / REPORT_DELTAS, title=run.name) if mcq and "benchmarks" in mcq else None
    frontier = None
    if evaluation and evaluation.get("frontier"):
        names = list(evaluation["frontier"][0]["sets"])
        x, y = ("general", "medical") if {"general", "medical"} <= set(names) else (names[-1], names[0])
        frontier = plot_frontier(frontier_points(evaluation, run.name), out / REPORT_FRONTIER,
                                 title=f"{run.name}: adapter-scale frontier", x=x, y=y)  # fmt: skip
    return {
        "stopped": stopped_run(run),
        "config": [line for line in (run / CONFIG_FILE).read_text(encoding="utf-8").splitlines() if "# set" in line],
        "data": _load(run / DATA_REPORT),
        "train": _load(run / TRAIN_RESULTS),
        "eval_during_training": _load(run / EVAL_RESULTS),
        "evaluation": evaluation,
        "deltas": deltas,
        "verify": _load(run / VERIFY),
        "compare": [json.loads(x) for x in compare.read_text(encoding="utf-8").splitlines()]
        if compare.is_file()
        else [],
        "curve": curve if curve.is_file() else None,
        "forgetting": forgetting,
        "frontier": frontier,
    }


def markdown(run: Path, facts: dict[str, Any]) -> str:
    from medpt.data.report import format_table
    from medpt.eval.metrics import format_eval

    parts = [f"# medpt run: {run.name}\n"]
    if facts["stopped"]:
        parts += [_stopped_note(facts["stopped"]) + "\n"]
    parts += ["## Configuration (values that differ from the defaults)\n", "```yaml"]
    parts += facts["config"] + ["```\n"]
    if facts["data"]:
        parts += ["## Data\n", "```", format_table(facts["data"]), "```\n"]
    if facts["train"]:
        parts += ["## Training\n", _kv_md(facts["train"])]
    if facts["curve"]:
        parts += [f"![loss curves]({facts['curve'].name})\n"]
    if facts["forgetting"]:
        parts += ["## Forgetting chart\n", f"![held-out perplexity per set]({facts['forgetting'].name})\n"]
    if facts["evaluation"]:
        parts += ["## Base vs adapted\n", format_eval(facts["evaluation"]) + "\n"]
        if facts["deltas"]:
            parts += [f"![multiple choice: accuracy and Δ, 95% intervals]({facts['deltas'].name})\n"]
        if facts["frontier"]:
            parts += [f"![adapter-scale frontier]({facts['frontier'].name})\n"]
    elif facts["eval_during_training"]:
        parts += ["## Evaluation at the end of training\n", _kv_md(facts["eval_during_training"])]
    if facts["verify"]:
        v = facts["verify"]
        parts += ["## Adapter verification\n"]
        parts += [f"- {'✅' if c['ok'] else '❌'} {c['check']}: {c['detail']}" for c in v["checks"]]
        parts += [f"- {v['trainable_parameters']:,} parameters, {v['adapter_bytes'] / 2**20:.2f} MiB\n"]
    if facts["compare"]:
        parts += ["## Answers, base vs adapted\n"]
        for i, r in enumerate(facts["compare"], start=1):
            parts += [f"**{i}. {r['question']}**\n", f"- base: {r['base'] or '(empty)'}",
                      f"- adapted: {r['adapted'] or '(empty)'}\n"]  # fmt: skip
    return "\n".join(parts) + "\n"


def _stopped_note(stopped: StoppedRun) -> str:
    """The status line of a run stopped before it finished, with how far it was meant to go."""
    if stopped.checkpoint is None:
        return "This run was stopped before its first checkpoint: it has no adapter yet."
    planned = (_load(stopped.checkpoint / TRAINER_STATE) or {}).get("max_steps")
    of = f" of {planned:,}" if isinstance(planned, int) else ""
    return (f"This run was stopped at step {stopped.step}{of} (no final adapter); its latest checkpoint is "
            f"{stopped.checkpoint.name}. The same train command continues it.")  # fmt: skip


def _kv_md(values: dict[str, Any]) -> str:
    return "\n".join(f"- {k}: {v:.4g}" if isinstance(v, float) else f"- {k}: {v}" for k, v in values.items()) + "\n"


def page(run: Path, facts: dict[str, Any]) -> str:
    """The HTML page: the Markdown's content with real tables, and the curve embedded (no external files)."""
    from medpt.data.report import format_table
    from medpt.eval.metrics import format_eval

    esc = html.escape
    body = [f"<h1>medpt run: {esc(run.name)}</h1>"]
    if facts["stopped"]:
        body += [f"<p><b>{esc(_stopped_note(facts['stopped']))}</b></p>"]
    body += ["<h2>Configuration</h2><p>Values that differ from the defaults.</p><pre>",
             esc("\n".join(facts["config"])), "</pre>"]  # fmt: skip
    if facts["data"]:
        body += ["<h2>Data</h2><pre>", esc(format_table(facts["data"])), "</pre>"]
    if facts["train"]:
        body += ["<h2>Training</h2>", _kv_table(facts["train"])]
    if facts["curve"]:
        body += [_image("loss curves", facts["curve"])]
    if facts["forgetting"]:
        body += ["<h2>Forgetting chart</h2><p>Held-out perplexity of each named set during training (log scale).</p>",
                 _image("held-out perplexity per set", facts["forgetting"])]  # fmt: skip
    evaluation = facts["evaluation"]
    if evaluation:
        body += ["<h2>Base vs adapted</h2>", _markdown_html(format_eval(evaluation))]
        if facts["frontier"]:
            note = "<p>Δ perplexity of each set against the base at each --adapter_scale, with 95% CIs.</p>"
            body += ["<h2>Adapter-scale frontier</h2>", note, _image("adapter-scale frontier", facts["frontier"])]
        if facts["deltas"]:
            body += [_image("multiple choice: accuracy and Δ, 95% intervals", facts["deltas"])]
    elif facts["eval_during_training"]:
        body += ["<h2>Evaluation at the end of training</h2>", _kv_table(facts["eval_during_training"])]
    if facts["verify"]:
        rows = "".join(
            f"<tr><td>{'✅' if c['ok'] else '❌'}</td><td>{esc(c['check'])}</td><td>{esc(c['detail'])}</td></tr>"
            for c in facts["verify"]["checks"]
        )
        body += ["<h2>Adapter verification</h2><table>", rows, "</table>"]
    if facts["compare"]:
        rows = "".join(f"<tr><td>{esc(r['question'])}</td><td>{esc(r['base'])}</td><td>{esc(r['adapted'])}</td></tr>"
                       for r in facts["compare"])  # fmt: skip
        body += ["<h2>Answers, base vs adapted</h2><table><tr><th>question</th><th>base</th><th>adapted</th></tr>",
                 rows, "</table>"]  # fmt: skip
    return _document(run.name, body)


def _document(title: str, body: list[str]) -> str:
    style = ("body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;white-space:pre-wrap}"
             "pre{background:#f6f6f6;padding:1em;overflow:auto}img{max-width:100%}")  # fmt: skip
    return (
        f"<!doctype html><meta charset='utf-8'><title>medpt: {html.escape(title)}</title><style>{style}</style>"
        + "".join(body)
        + "\n"
    )


def _image(alt: str, path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>"


def tune_report(run: Path, out: Path) -> tuple[str, str]:
    """A `medpt tune` folder: the trials table and the plots medpt tune wrote there, as (Markdown, HTML)."""
    if not (run / TRIALS_MD).is_file():
        raise MedptError(f"{run} is a medpt tune folder without {TRIALS_MD} yet: run medpt tune first")
    text = (run / TRIALS_MD).read_text(encoding="utf-8")
    title, _, rest = text.partition("\n")
    names = (("optimisation history", TUNE_HISTORY), ("parameter importances", TUNE_IMPORTANCE))
    plots = [(alt, run / name) for alt, name in names if (run / name).is_file()]
    markdown_text = text + "".join(f"\n![{alt}]({os.path.relpath(path, out)})\n" for alt, path in plots)
    body = [f"<h1>{html.escape(title.lstrip('# '))}</h1>", _markdown_html(rest), *(_image(a, p) for a, p in plots)]
    return markdown_text, _document(run.name, body)


def _kv_table(values: dict[str, Any]) -> str:
    cells = [(k, f"{v:.4g}" if isinstance(v, float) else str(v)) for k, v in values.items()]
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in cells)
    return f"<table>{rows}</table>"


def _markdown_html(text: str) -> str:
    """The eval and multiple-choice tables as `format_eval` writes them for report.md, as HTML: one source for both
    pages. Handles what that Markdown uses: pipe tables (first row the header), paragraphs and **bold**."""
    out: list[str] = []
    rows: list[str] = []

    def inline(cell: str) -> str:
        return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(cell))

    def flush() -> None:
        if rows:
            out.append("<table>" + "".join(rows) + "</table>")
            rows.clear()

    for line in text.splitlines():
        if not line.startswith("|"):
            flush()
            if line.strip():
                out.append(f"<p>{inline(line)}</p>")
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if all(c and set(c) <= set("-:") for c in cells):  # the rule under the header
            continue
        tag = "td" if rows else "th"
        rows.append("<tr>" + "".join(f"<{tag}>{inline(c)}</{tag}>" for c in cells) + "</tr>")
    flush()
    return "".join(out)


def run_report(args: Any) -> int:
    """`medpt report RUN` (args: ReportArguments)."""
    if not args.run_dir:
        raise MedptError("usage: medpt report RUN_DIR [--output_dir DIR]")
    write_report(Path(args.run_dir), Path(args.output_dir) if args.output_dir else None)
    return 0


def write_report(run: Path, out: Path | None = None, log: Any = print) -> tuple[Path, Path]:
    from medpt.atomic import atomic_write_text
    from medpt.rundir import RunDir, claim_dir, holding

    if not run.is_dir():
        raise MedptError(f"{run}: no such run folder")
    out = out or run
    tune = RunDir.open(run).kind == "tune"
    if not tune and not (run / CONFIG_FILE).is_file():  # before anything is written there
        raise MedptError(f"{run} is not a medpt run (no {CONFIG_FILE})")
    with holding(out, COMMANDS["report"]):
        claim_dir(out, COMMANDS["report"])
        if tune:
            markdown_text, html_text = tune_report(run, out)
        else:
            facts = gather(run, out)
            if facts["stopped"]:
                log(facts["stopped"].line("reporting"))
            markdown_text, html_text = markdown(run, facts), page(run, facts)
        html_path, md_path = out / REPORT_HTML, out / REPORT_MD
        atomic_write_text(html_path, html_text)
        atomic_write_text(md_path, markdown_text)
    log(f"report: {html_path} (and {md_path.name})")
    return html_path, md_path
