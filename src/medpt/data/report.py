"""The data report: where every record and every token went.

Two identities hold for every split and are checked before the report is written:
    input tokens   = tokens in blocks + dropped tokens        (medpt drops none: tails are kept, long documents split)
    block slots    = tokens in blocks + padding               (blocks × block_size)
and for records:
    records read   = documents kept + every skip, by reason.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from medpt.data.packing import Packed


def split_stats(packed: Packed, doc_offsets: np.ndarray, by_role: dict[str, int], roles_basis: str) -> dict[str, Any]:
    lengths = np.diff(doc_offsets)
    n_tokens = int(doc_offsets[-1])
    in_blocks = packed.n_tokens
    dropped = n_tokens - in_blocks
    assert dropped == 0, "packing lost tokens"  # a bug, not a user error: packing never drops tokens
    assert sum(by_role.values()) == n_tokens, "role counts do not add up to the token count"
    per_block = packed.segments_per_block()
    pct = np.percentile(lengths, [50, 90, 99]).tolist() if len(lengths) else [0, 0, 0]
    return {
        "documents": int(len(lengths)),
        "tokens": n_tokens,
        "tokens_by_role": dict(by_role),
        "tokens_by_role_basis": roles_basis,
        "tokens_in_blocks": in_blocks,
        "dropped_tokens": dropped,
        "padding_tokens": packed.padding(),
        "padding_reason": _padding_reason(packed.mode),
        "blocks": len(packed),
        "block_size": packed.block_size,
        "block_fill": round(in_blocks / (len(packed) * packed.block_size), 4) if len(packed) else 0.0,
        "documents_per_block": round(float(per_block.mean()), 2) if len(per_block) else 0.0,
        "documents_split_across_blocks": int((lengths > packed.block_size).sum())
        if packed.mode != "concat"
        else int(len(packed.segment_doc) - len(np.unique(packed.segment_doc))),
        "document_tokens": {
            "p50": int(pct[0]),
            "p90": int(pct[1]),
            "p99": int(pct[2]),
            "max": int(lengths.max()) if len(lengths) else 0,
            "mean": round(float(lengths.mean()), 1) if len(lengths) else 0.0,
        },
    }


def _padding_reason(mode: str) -> str:
    return {
        "concat": "only the final, partial block is padded",
        "isolated": "free space left in bin-packed blocks",
        "none": "each row padded to block_size (the collator pads a batch only to its longest row)",
    }[mode]


def check_record_accounting(records: dict[str, Any]) -> None:
    skipped = sum(records["skipped"].values()) + sum(records["not_sampled"].values())
    kept = records["documents"]["train"] + records["documents"]["validation"]
    assert records["read"] == skipped + kept, f"record accounting is off: {records}"


def check_sources(report: dict[str, Any]) -> None:
    """Per source: its records add up, and with --mix its contribution is whole passes plus the sampled part; the
    sources' contributions add up to the training split."""
    contributed = 0
    for name, source in report["sources"].items():
        check_record_accounting(source["records"])
        mix = source.get("mix")
        if mix:
            assert mix["selected_tokens"] == mix["full_passes"] * mix["available_tokens"] + mix["sampled_tokens"], name
            contributed += mix["selected_tokens"]
        else:
            contributed += source["train"]["tokens"]
    assert contributed == report["train"]["tokens"], f"sources contribute {contributed:,} tokens, not the split's"


def format_sources(report: dict[str, Any]) -> list[str]:
    """One row per named source: records, documents, tokens, and with --mix the requested and achieved shares."""
    rows = [("source", "records", "train docs", "valid docs", "tokens", "share asked", "share got", "repeats")]
    for name, src in report["sources"].items():
        mix = src.get("mix")
        asked, got, repeats = ("", "", "")
        if mix:
            asked, got = f"{mix['requested_share']:.1%}", f"{mix['achieved_share']:.1%}"
            fraction = mix["sampled_tokens"] / mix["available_tokens"] if mix["available_tokens"] else 0.0
            repeats = f"{mix['full_passes'] + fraction:.2f}×"
        tokens = mix["selected_tokens"] if mix else src["train"]["tokens"]
        docs = src["records"]["documents"]
        rows.append((name, _fmt(src["records"]["read"]), _fmt(docs["train"]), _fmt(docs["validation"]), _fmt(tokens),
                     asked, got, repeats))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) + 2 for i in range(len(rows[0]))]
    lines = ["", "per source (tokens: what each contributes to the training split; repeats: passes over its own)"]
    lines += [r[0].ljust(widths[0]) + "".join(v.rjust(w) for v, w in zip(r[1:], widths[1:])) for r in rows]
    return lines


def format_table(report: dict[str, Any]) -> str:
    """The report as a fixed-width table for the terminal."""
    rec = report["records"]
    splits = [s for s in ("train", "validation") if report.get(s)]
    rows: list[tuple[str, ...]] = [("", *splits)]

    def row(label: str, values: list[Any]) -> None:
        rows.append((label, *(_fmt(v) for v in values)))

    lines = [f"records read: {rec['read']:,} from {len(report['inputs'])} source(s)"]
    for reason, count in rec["skipped"].items():
        if count:
            lines.append(f"  skipped ({reason}): {count:,}")
    for split, count in rec["not_sampled"].items():
        if count:
            lines.append(f"  not sampled ({split}, --max_{'train' if split == 'train' else 'eval'}_samples): {count:,}")
    if rec["ignored_fields"]:
        fields = ", ".join(f"{k} ({v:,})" for k, v in rec["ignored_fields"].items())
        lines.append(f"  record keys not used: {fields}")
    stats = [report[s] for s in splits]
    row("documents", [s["documents"] for s in stats])
    row("tokens", [s["tokens"] for s in stats])
    roles = sorted({r for s in stats for r in s["tokens_by_role"]})
    for role in roles:
        row(f"  {role}", [s["tokens_by_role"].get(role, 0) for s in stats])
    row("tokens in blocks", [s["tokens_in_blocks"] for s in stats])
    row("tokens dropped", [s["dropped_tokens"] for s in stats])
    row("padding", [s["padding_tokens"] for s in stats])
    row("blocks", [s["blocks"] for s in stats])
    row("block fill", [f"{s['block_fill']:.1%}" for s in stats])
    row("documents / block", [s["documents_per_block"] for s in stats])
    row("split across blocks", [s["documents_split_across_blocks"] for s in stats])
    for p in ("p50", "p90", "p99", "max"):
        row(f"document tokens {p}", [s["document_tokens"][p] for s in stats])
    width = max(len(r[0]) for r in rows) + 2
    col = max([12, *(len(v) + 2 for r in rows for v in r[1:])])
    lines.append("")
    lines += [r[0].ljust(width) + "".join(v.rjust(col) for v in r[1:]) for r in rows]
    if stats:
        lines.append(f"\npadding: {stats[0]['padding_reason']}")
        lines += [
            f"tokens per role ({s}): {st['tokens_by_role_basis']}"
            for s, st in zip(splits, stats)
            if st["tokens_by_role_basis"] != "exact"
        ]
    if report.get("sources"):
        lines += format_sources(report)
    cache = report["cache"]
    lines.append(f"cache: {cache['path']} ({'reused' if cache['reused'] else 'new'})")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return str(value)


def merge_counters(*counters: Counter) -> dict[str, int]:
    total: Counter = Counter()
    for c in counters:
        total.update(c)
    return dict(sorted(total.items()))
