"""Named data sources mixed by their share of the training tokens (`--mix medical=0.8,general=0.2`).

Replay of general data is the standard remedy for forgetting in continued pretraining (Meditron mixes 1% RedPajama,
Ibrahim et al. 2024 pair replay with re-warming the learning rate). Mixing happens at document level, after
tokenization (token counts are exact) and before packing, so both packing modes and the per-source validation split
work unchanged. Pure numpy; deterministic from the seed.

The total: the first source named in --mix is used exactly once (whole), and anchors the total number of training
tokens T = its tokens / its share (or --mix_tokens T when given). Each source then contributes share × T tokens:
1. a source with fewer tokens than that is repeated: whole passes, then a seeded sample of documents for the rest;
2. a source with more is sampled: a seeded sample of its documents.
A sample takes documents in a seeded random order until the next one would overshoot the target by more than it
undershoots, so the achieved share is within one document of the requested one. The mixed documents are then put
in a seeded random order, so that blocks (cut from consecutive documents) hold several sources.
Shares that do not sum to 1 (medical=3,general=1) are proportions: rescaled, and said so in one line.

The size: planning holds about BYTES_PER_PICK bytes per document the mix picks (repeats included), and the packed
blocks then take 4 bytes per token in the cache. A total that needs more than half of the memory available now is
refused before anything is allocated, naming the largest --mix_tokens that fits (a typo such as 1e12 would
otherwise end in a MemoryError after minutes); the cache checks its disk space itself before writing.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import asdict, dataclass

import numpy as np

from medpt.errors import MedptError


@dataclass
class SourceMix:
    """How one source enters the training mix (written to data_report.json under sources.NAME.mix)."""

    requested_share: float
    available_tokens: int  # training tokens the source has (after dedup and the validation split)
    target_tokens: int
    full_passes: int  # times every document of the source is used
    sampled_documents: int  # documents used once more, beyond the full passes
    sampled_tokens: int
    selected_tokens: int  # full_passes × available_tokens + sampled_tokens
    achieved_share: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _rng(seed: int, name: str) -> np.random.Generator:
    """One stream per source, independent of the order in which sources are listed."""
    salt = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng([seed, salt])


def plan_mix(
    lengths: dict[str, np.ndarray], shares: dict[str, float], seed: int, total_tokens: int | None = None
) -> tuple[dict[str, np.ndarray], dict[str, SourceMix]]:
    """Which documents of each source (indices into that source, repeats allowed) make up the mix.

    `lengths` are the token lengths of each source's training documents; `shares` sum to 1, in --mix order."""
    anchor = next(iter(shares))
    available = {name: int(lengths[name].sum()) for name in shares}
    for name, tokens in available.items():
        if tokens == 0 and shares[name] > 0:
            raise MedptError(f"--mix {name}={shares[name]:g}: the source has no training tokens left")
    total = total_tokens if total_tokens is not None else available[anchor] / shares[anchor]
    check_mix_size(lengths, shares, available, total, given=total_tokens is not None)
    picks: dict[str, np.ndarray] = {}
    plans: dict[str, SourceMix] = {}
    for name, share in shares.items():
        n_docs, tokens = len(lengths[name]), available[name]
        target = share * total
        passes = int(target // tokens) if tokens else 0
        rest = target - passes * tokens
        order = _rng(seed, name).permutation(n_docs)
        sampled = order[: _closest_prefix(lengths[name][order], rest)]
        picks[name] = np.concatenate([np.tile(np.arange(n_docs), passes), np.sort(sampled)]).astype(np.int64)
        sampled_tokens = int(lengths[name][sampled].sum())
        plans[name] = SourceMix(share, tokens, round(target), passes, len(sampled), sampled_tokens,
                                passes * tokens + sampled_tokens)  # fmt: skip
    grand = sum(p.selected_tokens for p in plans.values())
    for plan in plans.values():
        plan.achieved_share = round(plan.selected_tokens / grand, 6) if grand else 0.0
    return picks, plans


# Per picked document: its index in the picks (int64), in interleave its owner (int32), the shuffled order (int64)
# and the reordered copies (12), then its row of the training DocTable (shard int32, start and length int64).
BYTES_PER_PICK = 60


def check_mix_size(lengths: dict[str, np.ndarray], shares: dict[str, float], available: dict[str, int],
                   total: float, given: bool) -> None:  # fmt: skip
    """Refuse, before allocating, a mix whose plan would not fit in half the memory available (module docstring)."""
    # Each source contributes whole passes plus a sample: at most (passes + 1) × its documents.
    picks = sum((share * total // available[n] + 1) * len(lengths[n]) for n, share in shares.items() if share > 0)
    budget = _available_memory() // 2
    if picks * BYTES_PER_PICK <= budget:
        return
    most = int(total * budget / (picks * BYTES_PER_PICK))
    repeats = max((share * total / available[n], n) for n, share in shares.items() if share > 0)
    asked = f"--mix_tokens {total:,.0f}" if given else f"--mix (a total of {total:,.0f} tokens)"
    raise MedptError(
        f"{asked} would repeat {repeats[1]!r} {repeats[0]:,.0f} times and needs about "
        f"{picks * BYTES_PER_PICK / 2**30:,.1f} GiB of memory to plan, but only {budget * 2 / 2**30:,.1f} GiB are "
        f"available; the sources hold {sum(available.values()):,} training tokens. Use --mix_tokens {most:,} or less"
    )


def _available_memory() -> int:
    try:
        import psutil  # installed with accelerate

        return int(psutil.virtual_memory().available)
    except ImportError:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _closest_prefix(lengths: np.ndarray, target: float) -> int:
    """How many of these documents, taken in order, bring the token count closest to `target`."""
    if target <= 0 or not len(lengths):
        return 0
    cumulative = np.cumsum(lengths)
    k = int(np.searchsorted(cumulative, target))  # first prefix reaching the target
    if k >= len(lengths):
        return len(lengths)
    below = cumulative[k - 1] if k > 0 else 0
    return k + 1 if cumulative[k] - target < target - below else k


def interleave(picks: dict[str, np.ndarray], seed: int) -> list[tuple[str, np.ndarray]]:
    """The mixed documents in a seeded random order, as runs of (source, document indices)."""
    names = list(picks)
    owner = np.concatenate([np.full(len(picks[n]), i, np.int32) for i, n in enumerate(names)])
    index = np.concatenate([picks[n] for n in names]) if names else np.zeros(0, np.int64)
    order = np.random.default_rng([seed, 0x6D6978]).permutation(len(index))  # 0x6D6978: "mix"
    owner, index = owner[order], index[order]
    if not len(index):
        return []
    cuts = np.flatnonzero(np.diff(owner)) + 1
    return [(names[int(o[0])], i) for o, i in zip(np.split(owner, cuts), np.split(index, cuts))]


def gather(tokens: np.ndarray, offsets: np.ndarray, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The tokens of documents `docs` (indices, repeats allowed) laid end to end, and their offsets."""
    starts, ends = offsets[docs], offsets[docs + 1]
    lengths = ends - starts
    new_offsets = np.zeros(len(docs) + 1, np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    src = np.repeat(starts - new_offsets[:-1], lengths) + np.arange(new_offsets[-1])
    return tokens[src], new_offsets


def parse_shares(items: list[str]) -> dict[str, float]:
    """`medical=0.8,general=0.2` (already split at commas) → {name: share}, normalised to sum to 1."""
    shares = given_shares(items)
    total = sum(shares.values())
    return {name: share / total for name, share in shares.items()}


def rescaled_note(items: list[str]) -> str | None:
    """One line when the shares given do not sum to 1, naming them and the shares used. Proportions such as
    medical=3,general=1 are allowed (they are rescaled, not refused), but a typo such as medical=0.8,general=0.3
    would otherwise change the mix without a word."""
    shares = given_shares(items)
    total = sum(shares.values())
    if math.isclose(total, 1.0, rel_tol=1e-9, abs_tol=1e-9):  # 0.7+0.2+0.1 is 0.9999999999999999 in floats
        return None
    used = ",".join(f"{name}={share / total:.4g}" for name, share in shares.items())
    return f"note: --mix {','.join(items)}: the shares sum to {total:g}, not 1; rescaled to {used}"


def given_shares(items: list[str]) -> dict[str, float]:
    """The shares as given, checked (names, numbers, a positive total and first share), not yet normalised."""
    shares: dict[str, float] = {}
    for item in items:
        name, eq, value = item.partition("=")
        name = name.strip()
        if not eq or not name.isidentifier():
            raise MedptError(f"--mix takes NAME=SHARE items (e.g. medical=0.8,general=0.2), got {item!r}")
        if name in shares:
            raise MedptError(f"--mix names {name!r} twice")
        try:
            share = float(value)
        except ValueError:
            raise MedptError(f"--mix {item}: the share must be a number") from None
        if not share >= 0 or share == float("inf"):
            raise MedptError(f"--mix {item}: a share must be a finite number ≥ 0")
        shares[name] = share
    total = sum(shares.values())
    if total <= 0:
        raise MedptError(f"--mix {','.join(items)}: the shares sum to 0; give at least one source a share > 0")
    first = next(iter(shares))
    if shares[first] == 0:
        raise MedptError(f"--mix: the first source ({first}) anchors the total and needs a share > 0")
    return shares
