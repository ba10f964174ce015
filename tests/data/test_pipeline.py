"""prepare_data end to end on small files: accounting, caching, bad input, the split, sampling, parallel reading."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medpt.args.resolve import DataArguments
from medpt.data import pipeline
from medpt.data.pipeline import prepare_data
from medpt.errors import MedptError
from medpt.model.loading import TokenizerSource
from medpt.samples import SAMPLE_QA
from tests.conftest import conv, write_jsonl


def _prepare(tokenizer_dir, out=None, log=None, **kw):
    messages = []
    args = DataArguments(**{"validation_split_percentage": 10.0, "block_size": 64, **kw})
    result = prepare_data(args, TokenizerSource(str(tokenizer_dir)), seed=0, output_dir=out, log=log or messages.append)
    return result, messages


def test_sample_is_prepared_and_every_record_and_token_accounted_for(tokenizer_dir, tmp_path):
    result, log = _prepare(tokenizer_dir, tmp_path / "out", train_file_dir=[str(SAMPLE_QA)])
    report = json.loads((tmp_path / "out" / "data_report.json").read_text())
    rec = report["records"]
    assert rec["read"] == 320
    assert rec["read"] == sum(rec["skipped"].values()) + sum(rec["documents"].values()) + sum(
        rec["not_sampled"].values()
    )
    for split in ("train", "validation"):
        s = report[split]
        assert s["tokens"] == s["tokens_in_blocks"] + s["dropped_tokens"] and s["dropped_tokens"] == 0
        assert s["blocks"] * 64 == s["tokens_in_blocks"] + s["padding_tokens"]
        assert sum(s["tokens_by_role"].values()) == s["tokens"]
        assert s["tokens_by_role"]["gpt"] > s["tokens_by_role"]["human"] > 0
    assert 10 < rec["documents"]["validation"] < 60
    assert len(result.train) == report["train"]["blocks"] and result.train.block_size == 64
    assert any("records read: 320" in m for m in log)


def test_concat_blocks_are_the_documents_joined_with_eos(tokenizer_dir, tokenizer, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [conv("问一", "答一"), conv("问二", "答二"), conv("问三", "答三")])
    result, _ = _prepare(tokenizer_dir, train_file_dir=[str(data)], validation_split_percentage=0.0, block_size=8)
    joined = np.concatenate([result.train.block(i) for i in range(len(result.train))]).tolist()
    expected = []
    for q, a in (("问一", "答一"), ("问二", "答二"), ("问三", "答三")):
        expected += tokenizer(f"问:{q}\n答:{a}\n\n{'=' * 50}\n\n")["input_ids"] + [tokenizer.eos_token_id]
    assert joined == expected


def test_cache_is_reused_and_invalidated_by_what_matters(tokenizer_dir, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [conv(f"问题{i}", f"回答{i}" * 3) for i in range(40)])
    first, _ = _prepare(tokenizer_dir, train_file_dir=[str(data)])
    again, log = _prepare(tokenizer_dir, train_file_dir=[str(data)])
    assert not first.reused and again.reused and any("reusing prepared data" in m for m in log)
    assert again.cache_dir == first.cache_dir
    assert np.array_equal(np.asarray(again.train.tokens), np.asarray(first.train.tokens))
    # A renamed copy of the same bytes is the same input; any changed byte, or block size, or packing is not.
    copy = tmp_path / "renamed.jsonl"
    copy.write_bytes(data.read_bytes())
    assert _prepare(tokenizer_dir, train_file_dir=[str(copy)])[0].reused
    assert not _prepare(tokenizer_dir, train_file_dir=[str(data)], block_size=32)[0].reused
    assert not _prepare(tokenizer_dir, train_file_dir=[str(data)], packing="isolated")[0].reused
    data.write_text(data.read_text().replace("问题3", "问题三"))
    assert not _prepare(tokenizer_dir, train_file_dir=[str(data)])[0].reused
    assert not _prepare(tokenizer_dir, train_file_dir=[str(data)], overwrite_cache=True)[0].reused


def test_tokenizer_change_invalidates_the_cache(tokenizer_dir, tmp_path):
    import shutil

    data = write_jsonl(tmp_path / "d.jsonl", [conv("问", "答")] * 3)
    other = tmp_path / "tok2"
    shutil.copytree(tokenizer_dir, other)
    assert not _prepare(tokenizer_dir, train_file_dir=[str(data)])[0].reused
    assert _prepare(other, train_file_dir=[str(data)])[0].reused  # same tokenizer files, other folder
    cfg = json.loads((other / "tokenizer_config.json").read_text())
    cfg["model_max_length"] = 123
    (other / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert not _prepare(other, train_file_dir=[str(data)])[0].reused


def test_interrupted_run_leaves_no_cache_that_a_later_run_trusts(tokenizer_dir, tmp_path, monkeypatch):
    data = write_jsonl(tmp_path / "d.jsonl", [conv(f"问{i}", "答") for i in range(20)])

    def crash(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "split_report", crash)  # dies while writing the splits
    with pytest.raises(KeyboardInterrupt):
        _prepare(tokenizer_dir, train_file_dir=[str(data)])
    root = Path(pipeline.cache.cache_root(None))
    assert [p.name for p in root.iterdir() if not p.name.startswith(".")] == []
    monkeypatch.undo()
    monkeypatch.setenv("MEDPT_CACHE", str(root))
    assert not _prepare(tokenizer_dir, train_file_dir=[str(data)])[0].reused


def test_cached_rerun_does_not_import_transformers(tokenizer_dir, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [conv(f"问{i}", "答") for i in range(20)])
    argv = [
        "prepare",
        "--model_name_or_path",
        str(tokenizer_dir),
        "--train_file_dir",
        str(data),
        "--output_dir",
        str(tmp_path / "out"),
    ]
    code = f"import sys; from medpt.cli import main; main({argv!r}); print('transformers' in sys.modules)"
    env = {"MEDPT_CACHE": str(tmp_path / "c"), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    second = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stderr
    assert "reusing prepared data" in second.stdout and second.stdout.strip().endswith("False")


BAD = [
    ('{"conversations": [{"from": "human", "value": "q"}]}\n{"conversations": [\n', "d.jsonl:2: invalid JSON"),
    (
        '{"conversations": [{"from": "doctor", "value": "q"}]}\n',
        "d.jsonl:1: field 'conversations[0].from': unknown role",
    ),
    (
        '{"conversations": [{"from": "human", "value": 5}]}\n',
        "field 'conversations[0].value': expected a string, got int",
    ),
    ('{"text": "x"}\n{"conversations": [{"from": "human", "value": "q"}]}\n', "d.jsonl:2: field 'text': missing"),
    ('["not", "an", "object"]\n', "d.jsonl:1: expected a JSON object per record"),
    ("", "d.jsonl: empty file: no records"),
]


@pytest.mark.parametrize("content, message", BAD)
def test_bad_input_stops_with_file_line_and_field(tokenizer_dir, tmp_path, content, message):
    (tmp_path / "d.jsonl").write_text(content)
    with pytest.raises(MedptError, match=message.replace("[", r"\[").replace("(", r"\(")) as e:
        _prepare(tokenizer_dir, train_file_dir=[str(tmp_path / "d.jsonl")])
    assert "--on_bad_record skip" in str(e.value)


def test_skip_mode_logs_every_rejected_record_with_its_reason(tokenizer_dir, tmp_path):
    good = [json.dumps(conv(f"问{i}", "答"), ensure_ascii=False) for i in range(5)]
    lines = [
        good[0],
        '{"conversations": [',
        good[1],
        '{"conversations": [{"from": "x", "value": "q"}]}',
        good[2],
        json.dumps(conv("  ", "")),
        good[3],
        good[3],
        good[4],
    ]
    data = write_jsonl(tmp_path / "d.jsonl", lines)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    out = tmp_path / "out"
    _, _ = _prepare(
        tokenizer_dir,
        out,
        train_file_dir=[str(data), str(empty)],
        on_bad_record="skip",
        validation_split_percentage=0.0,
    )
    rejected = [json.loads(x) for x in (out / "rejected.jsonl").read_text().splitlines()]
    assert [(r["source"].split("/")[-1], r["line"], r["field"]) for r in rejected] == [
        ("d.jsonl", 2, None),
        ("d.jsonl", 4, "conversations[0].from"),
        ("empty.jsonl", None, None),
    ]
    assert rejected[0]["record"] == '{"conversations": [' and "unknown role" in rejected[1]["reason"]
    rec = json.loads((out / "data_report.json").read_text())["records"]
    assert rec["read"] == 9
    assert rec["skipped"] == {"bad_record": 2, "too_large": 0, "empty": 1, "duplicate": 1, "in_validation_set": 0,
                              "near_duplicate": 0, "contaminated": 0}  # fmt: skip
    assert rec["empty_files"] == 1 and rec["documents"]["train"] == 5


def test_validation_files_win_and_overlap_with_training_is_removed(tokenizer_dir, tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", [conv(f"问{i}", "答") for i in range(30)])
    val = write_jsonl(tmp_path / "v.jsonl", [conv("问3", "答"), conv("新问题", "答")])
    result, _ = _prepare(tokenizer_dir, tmp_path / "out", train_file_dir=[str(train)], validation_file_dir=[str(val)])
    rec = result.report["records"]
    assert rec["documents"] == {"train": 29, "validation": 2}
    assert rec["skipped"]["in_validation_set"] == 1


def test_hash_split_does_not_depend_on_file_order(tokenizer_dir, tmp_path):
    records = [conv(f"问题{i}", f"回答{i}") for i in range(200)]
    a = write_jsonl(tmp_path / "a.jsonl", records)
    b = write_jsonl(tmp_path / "b.jsonl", records[::-1])
    texts_a = _dump_split(tokenizer_dir, a, tmp_path / "a.txt")
    texts_b = _dump_split(tokenizer_dir, b, tmp_path / "b.txt")
    assert texts_a["validation"] and set(texts_a["validation"]) == set(texts_b["validation"])


def _dump_split(tokenizer_dir, data, dump):
    _prepare(tokenizer_dir, train_file_dir=[str(data)], dump_text=str(dump))
    out = {"train": [], "validation": []}
    for line in dump.read_text(encoding="utf-8").splitlines():
        item = json.loads(line)
        out[item["split"]].append(item["text"])
    return out


def test_max_samples_take_a_seeded_random_sample(tokenizer_dir, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [conv(f"问题{i}", "回答") for i in range(100)])
    dump = tmp_path / "dump.jsonl"
    result, _ = _prepare(
        tokenizer_dir, train_file_dir=[str(data)], max_train_samples=10, max_eval_samples=2, dump_text=str(dump)
    )
    train = [json.loads(x)["text"] for x in dump.read_text().splitlines() if json.loads(x)["split"] == "train"]
    assert len(train) == 10 and train != [f"问:问题{i}\n答:回答\n\n{'=' * 50}\n\n" for i in range(10)]
    rec = result.report["records"]
    held_out = rec["documents"]["validation"] + rec["not_sampled"]["validation"]
    assert rec["documents"]["train"] == 10 and rec["not_sampled"]["train"] == 100 - held_out - 10
    assert rec["documents"]["validation"] == 2


def test_parallel_reading_and_tokenizing_match_one_process(tokenizer_dir, tmp_path, monkeypatch):
    data = write_jsonl(tmp_path / "d.jsonl", [conv(f"问题{i}", "回答" * (i % 9)) for i in range(3000)])
    one, _ = _prepare(
        tokenizer_dir, train_file_dir=[str(data)], preprocessing_num_workers=1, data_cache_dir=str(tmp_path / "c1")
    )
    monkeypatch.setattr(pipeline, "_PARALLEL_MIN_BYTES", 0)
    two, _ = _prepare(  # many shards of one file
        tokenizer_dir,
        train_file_dir=[str(data)],
        preprocessing_num_workers=2,
        data_cache_dir=str(tmp_path / "c2"),
        shard_mb=0.02,
    )
    assert np.array_equal(np.asarray(one.train.tokens), np.asarray(two.train.tokens))
    assert one.report["train"] == two.report["train"] and one.report["records"] == two.report["records"]


def test_other_formats_and_templates(tokenizer_dir, tmp_path):
    alpaca = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "问", "input": "", "output": "答"}])
    txt = tmp_path / "b.txt"
    txt.write_text("第一段。\n\n第二段。\n")
    dump = tmp_path / "dump.jsonl"
    _prepare(
        tokenizer_dir,
        train_file_dir=[str(alpaca), str(txt)],
        template="qa",
        validation_split_percentage=0.0,
        dump_text=str(dump),
    )
    assert [json.loads(x)["text"] for x in dump.read_text().splitlines()] == ["问:问\n答:答\n", "第一段。", "第二段。"]


def test_hub_dataset_path_with_a_local_dataset_folder(tokenizer_dir, tmp_path):
    folder = tmp_path / "hub-like"
    write_jsonl(folder / "train.jsonl", [conv(f"问{i}", "答") for i in range(12)])
    write_jsonl(folder / "validation.jsonl", [conv("验证问题", "答")])
    result, _ = _prepare(tokenizer_dir, dataset_name=str(folder))
    assert result.report["records"]["documents"] == {"train": 12, "validation": 1}
    assert result.report["inputs"][0]["source"].endswith("hub-like[train]")
