"""Named sources mixed by token share: the plan (pure), and prepare_data with two real-shaped sources."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from medpt.args.resolve import DataArguments, load_config
from medpt.data.mixing import gather, interleave, parse_shares, plan_mix
from medpt.data.pipeline import prepare_data
from medpt.errors import MedptError
from medpt.model.loading import TokenizerSource
from medpt.samples import SAMPLE_GENERAL, SAMPLE_QA
from tests.conftest import write_jsonl


def _lengths(n: int, seed: int, low: int = 20, high: int = 400) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, high, n)


@pytest.mark.parametrize(
    "sizes, shares, repeated",
    [
        ((3000, 500), {"medical": 0.8, "general": 0.2}, None),  # general sampled down
        ((3000, 100), {"medical": 0.5, "general": 0.5}, "general"),  # general repeated: 5+ whole passes, then sampled
        ((400, 5000), {"medical": 0.95, "general": 0.05}, None),  # replay: a little general text
        ((1000, 300, 2000), {"medical": 0.6, "dialog": 0.3, "general": 0.1}, "dialog"),
    ],
)
def test_achieved_shares_are_within_one_point_up_and_down(sizes, shares, repeated):
    lengths = {name: _lengths(n, i) for i, (name, n) in enumerate(zip(shares, sizes))}
    picks, plans = plan_mix(lengths, shares, seed=7)
    total = sum(int(lengths[n][picks[n]].sum()) for n in shares)
    for name, share in shares.items():
        got = int(lengths[name][picks[name]].sum())
        assert got == plans[name].selected_tokens
        assert abs(got / total - share) < 0.01, (name, got / total, share)
        assert abs(plans[name].achieved_share - got / total) < 1e-6
    first = next(iter(shares))  # the anchor is used exactly once, whole
    assert plans[first].full_passes == 1 and plans[first].sampled_documents == 0
    if repeated:
        plan = plans[repeated]
        assert plan.full_passes >= 1 and plan.selected_tokens > plan.available_tokens
        counts = np.bincount(picks[repeated], minlength=len(lengths[repeated]))
        assert set(np.unique(counts)) <= {plan.full_passes, plan.full_passes + 1}  # whole passes, then a sample


def test_mix_tokens_sets_the_total():
    lengths = {"a": _lengths(2000, 1), "b": _lengths(2000, 2)}
    picks, plans = plan_mix(lengths, {"a": 0.5, "b": 0.5}, seed=0, total_tokens=100_000)
    assert abs(sum(p.selected_tokens for p in plans.values()) - 100_000) < 800  # within a document per source
    assert plans["a"].full_passes == 0 and plans["a"].sampled_documents < 2000


def test_the_plan_is_deterministic_from_the_seed():
    lengths = {"medical": _lengths(800, 3), "general": _lengths(300, 4)}
    shares = {"medical": 0.7, "general": 0.3}
    a, _ = plan_mix(lengths, shares, seed=1)
    b, _ = plan_mix(lengths, shares, seed=1)
    c, _ = plan_mix(lengths, shares, seed=2)
    assert all(np.array_equal(a[n], b[n]) for n in shares)
    assert not np.array_equal(a["general"], c["general"])
    assert [(n, i.tolist()) for n, i in interleave(a, 1)] == [(n, i.tolist()) for n, i in interleave(b, 1)]


def test_interleave_and_gather_keep_every_picked_document_intact():
    tokens = np.arange(10, dtype=np.int32)
    offsets = np.array([0, 3, 4, 10])
    out, new = gather(tokens, offsets, np.array([2, 0, 0]))
    assert out.tolist() == [4, 5, 6, 7, 8, 9, 0, 1, 2, 0, 1, 2] and new.tolist() == [0, 6, 9, 12]
    runs = interleave({"a": np.array([0, 1, 2]), "b": np.array([5, 6])}, seed=0)
    assert sorted(i for n, idx in runs if n == "a" for i in idx) == [0, 1, 2]
    assert sorted(i for n, idx in runs if n == "b" for i in idx) == [5, 6]


@pytest.mark.parametrize(
    "mix, message",
    [
        (["medical=0.8", "genral=0.2"], "--mix genral: no such source (sources: medical, general); did you mean"),
        (["medical=0.8", "general=-0.2"], "a share must be a finite number ≥ 0"),
        (["medical=0", "general=0"], "the shares sum to 0"),
        (["medical=0.8"], "--mix gives no share to general"),
        (["medical"], "--mix takes NAME=SHARE items"),
        (["medical=x", "general=1"], "the share must be a number"),
    ],
)
def test_bad_mix_is_a_clear_error(mix, message):
    with pytest.raises(MedptError, match=re.escape(message)):
        DataArguments(train_file_dir=[f"medical={SAMPLE_QA}", f"general={SAMPLE_GENERAL}"], mix=mix)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"train_file_dir": [f"medical={SAMPLE_QA}", str(SAMPLE_GENERAL)]}, "name every source or none"),
        ({"train_file_dir": [str(SAMPLE_QA)], "mix": ["a=1"]}, "--mix needs named sources"),
        ({"train_file_dir": [f"medical={SAMPLE_QA}"], "validation_file_dir": [str(SAMPLE_QA)]}, "so name its source"),
        ({"train_file_dir": [f"medical={SAMPLE_QA}"], "eval_sets": [f"medical={SAMPLE_QA}"]}, "already names"),
    ],
)
def test_bad_source_names_are_clear_errors(kwargs, message):
    with pytest.raises(MedptError, match=re.escape(message)):
        DataArguments(**kwargs)


def test_named_sources_and_mix_from_yaml_and_from_flags(tmp_path):
    cfg = tmp_path / "mix.yaml"
    cfg.write_text(f"train_file_dir: [medical={SAMPLE_QA}, general={SAMPLE_GENERAL}]\nmix: medical=0.9,general=0.1\n")
    from_yaml = load_config([str(cfg)], command="prepare")
    flags = ["--train_file_dir", f"medical={SAMPLE_QA}", f"general={SAMPLE_GENERAL}", "--mix", "medical=0.9",
             "general=0.1"]  # fmt: skip
    from_flags = load_config(flags, command="prepare")
    assert from_yaml.data.source_names() == from_flags.data.source_names() == ["medical", "general"]
    assert from_yaml.data.shares() == from_flags.data.shares() == pytest.approx({"medical": 0.9, "general": 0.1})
    assert parse_shares(["a=3", "b=1"]) == {"a": 0.75, "b": 0.25}  # shares are normalised


def _prepare(tokenizer_dir, tmp_path, **kw):
    args = DataArguments(**{"validation_split_percentage": 10.0, "block_size": 64, **kw})
    return prepare_data(args, TokenizerSource(str(tokenizer_dir)), seed=0, output_dir=tmp_path / "out", log=lambda _: 0)


def test_a_sharegpt_and_a_text_source_mixed_with_per_source_accounting(tokenizer_dir, tmp_path):
    sources = [f"medical={SAMPLE_QA}", f"general={SAMPLE_GENERAL}"]
    result = _prepare(tokenizer_dir, tmp_path, train_file_dir=sources, mix=["medical=0.7,general=0.3"])
    report = json.loads((tmp_path / "out" / "data_report.json").read_text())
    assert {i["name"]: i["format"] for i in report["inputs"]} == {"medical": "sharegpt", "general": "text"}
    src = report["sources"]
    for name in ("medical", "general"):
        rec = src[name]["records"]
        assert rec["read"] == sum(rec["skipped"].values()) + sum(rec["documents"].values()) + sum(
            rec["not_sampled"].values()
        )
        mix = src[name]["mix"]
        assert mix["selected_tokens"] == mix["full_passes"] * mix["available_tokens"] + mix["sampled_tokens"]
        assert abs(mix["achieved_share"] - mix["requested_share"]) < 0.01
    assert src["general"]["mix"]["full_passes"] >= 1  # the 60 paragraphs are fewer than 30% of the tokens: repeated
    assert report["records"]["read"] == src["medical"]["records"]["read"] + src["general"]["records"]["read"] == 380
    assert sum(s["mix"]["selected_tokens"] for s in src.values()) == report["train"]["tokens"]
    assert report["train"]["tokens"] == report["train"]["tokens_in_blocks"]  # mixing drops nothing either
    assert set(result.validation_sets) == {"medical", "general"}
    held = {n: result.validation_sets[n].n_tokens for n in ("medical", "general")}
    assert held == {n: src[n]["validation"]["tokens"] for n in held}
    assert sum(held.values()) == result.validation.n_tokens


def test_without_mix_named_sources_are_used_whole_in_order(tokenizer_dir, tmp_path):
    medical = write_jsonl(tmp_path / "m.jsonl", [{"text": f"医学段落{i}。" * 3} for i in range(30)])
    general = write_jsonl(tmp_path / "g.jsonl", [{"text": f"一般段落{i}。" * 3} for i in range(30)])
    named = _prepare(tokenizer_dir, tmp_path, train_file_dir=[f"a={medical}", f"b={general}"],
                     validation_split_percentage=0.0)  # fmt: skip
    plain = _prepare(tokenizer_dir, tmp_path / "plain", train_file_dir=[str(medical), str(general)],
                     validation_split_percentage=0.0)  # fmt: skip
    assert np.array_equal(np.asarray(named.train.tokens), np.asarray(plain.train.tokens))  # same blocks as unnamed
    assert "sources" not in plain.report and set(named.report["sources"]) == {"a", "b"}


@pytest.mark.parametrize(
    "mix, note",
    [
        (["a=0.8", "b=0.2"], None),
        (["a=0.7", "b=0.2", "c=0.1"], None),  # 0.9999999999999999 in floats: a sum of 1
        (["a=1", "b=0"], None),
        (["a=0.8", "b=0.3"], "note: --mix a=0.8,b=0.3: the shares sum to 1.1, not 1; rescaled to a=0.7273,b=0.2727"),
        (["a=3", "b=1"], "note: --mix a=3,b=1: the shares sum to 4, not 1; rescaled to a=0.75,b=0.25"),
        (["a=0.5", "b=0.25"], "note: --mix a=0.5,b=0.25: the shares sum to 0.75, not 1; rescaled to a=0.6667,b=0.3333"),
        (
            ["a=0.333", "b=0.333", "c=0.333"],
            "note: --mix a=0.333,b=0.333,c=0.333: the shares sum to 0.999, not 1; rescaled to "
            "a=0.3333,b=0.3333,c=0.3333",
        ),
    ],
)
def test_shares_that_do_not_sum_to_1_are_rescaled_with_a_note(mix, note):
    from medpt.data.mixing import rescaled_note

    assert rescaled_note(mix) == note
    assert sum(parse_shares(mix).values()) == pytest.approx(1)


def test_prepare_says_once_per_run_how_it_rescaled_the_shares(tokenizer_dir, tmp_path, capsys):
    from medpt.cli import main

    argv = ["prepare", "--model_name_or_path", str(tokenizer_dir), "--train_file_dir", f"medical={SAMPLE_QA}",
            f"general={SAMPLE_GENERAL}", "--mix", "medical=0.8,general=0.3",
            "--output_dir", str(tmp_path / "out")]  # fmt: skip
    note = (
        "note: --mix medical=0.8,general=0.3: the shares sum to 1.1, not 1; rescaled to medical=0.7273,general=0.2727"
    )
    for run in ("prepared", "reused from the cache"):
        assert main([*argv, "--overwrite_output_dir"]) == 0, run
        out = capsys.readouterr().out
        assert out.splitlines().count(note) == 1, (run, out)
    report = json.loads((tmp_path / "out" / "data_report.json").read_text())
    assert report["sources"]["medical"]["mix"]["requested_share"] == pytest.approx(0.8 / 1.1)
    argv[argv.index("medical=0.8,general=0.3")] = "medical=0.8,general=0.2"
    assert main([*argv, "--overwrite_output_dir"]) == 0
    assert "--mix" not in capsys.readouterr().out  # shares that sum to 1: nothing to say


@pytest.mark.parametrize("packing", ["concat", "isolated"])
def test_each_tokens_source_survives_mixing_and_the_cache(packing, tokenizer_dir, tokenizer, tmp_path):
    """Two sources written in disjoint characters: every token only one of them has must be labelled with it, and the
    tokens labelled with a source must be exactly what the mix took from it."""
    alphabets = {"medical": "医药病症治疗诊断", "general": "山水风云日月星辰"}
    rng = np.random.default_rng(0)
    files = {}
    for name, chars in alphabets.items():
        texts = ["".join(rng.choice(list(chars), int(rng.integers(5, 60)))) for _ in range(80)]
        files[name] = write_jsonl(tmp_path / f"{name}.jsonl", [{"text": t} for t in texts])
    result = _prepare(tokenizer_dir, tmp_path, train_file_dir=[f"{n}={p}" for n, p in files.items()],
                      mix=["medical=0.7,general=0.3"], packing=packing, validation_split_percentage=0.0)  # fmt: skip
    train = result.train
    assert train.sources == ("medical", "general")
    ids = np.concatenate([train.source_ids(i) for i in range(len(train))])
    tokens = np.concatenate([train.block(i) for i in range(len(train))])
    own = {n: set(tokenizer("".join(c), add_special_tokens=False)["input_ids"]) for n, c in alphabets.items()}
    for k, name in enumerate(train.sources):
        only = np.isin(tokens, list(own[name] - own[train.sources[1 - k]]))
        assert only.sum() > 100 and (ids[only] == k).all(), name
    mix = result.report["sources"]
    assert np.bincount(ids, minlength=2).tolist() == [mix[n]["mix"]["selected_tokens"] for n in train.sources]
