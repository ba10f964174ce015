"""Optional checks on the real corpora in ../shared/data (see its SOURCES.md): the reader takes them as they are,
with every record and token accounted for. Skipped cleanly where that folder is absent (a fresh clone, CI)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medpt.args.resolve import DataArguments
from medpt.data.pipeline import prepare_data
from medpt.eval.mcq import read_questions
from medpt.model.loading import TokenizerSource

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} is not available")


def _lines(path: Path) -> int:
    return sum(1 for line in path.open(encoding="utf-8") if line.strip())


@pytest.mark.parametrize("corpus", ["medical_qa_zh_mix", "medical_qa_en_pubmedqa"])
def test_real_sharegpt_split_is_read_whole_and_every_token_lands_in_a_block(corpus, tokenizer_dir, tmp_path):
    valid = SHARED / corpus / "valid.jsonl"
    if not valid.is_file():
        pytest.skip(f"{valid} is not available")
    args = DataArguments(train_file_dir=[str(valid)], validation_split_percentage=0.0, block_size=512)
    result = prepare_data(args, TokenizerSource(str(tokenizer_dir)), seed=0, output_dir=tmp_path, log=lambda *_: None)
    report = json.loads((tmp_path / "data_report.json").read_text())
    rec, train = report["records"], report["train"]
    assert rec["read"] == _lines(valid)
    assert rec["skipped"]["bad_record"] == 0 and rec["skipped"]["empty"] == 0
    assert rec["read"] == rec["documents"]["train"] + rec["skipped"]["duplicate"]
    assert train["tokens"] == train["tokens_in_blocks"] and train["dropped_tokens"] == 0
    assert train["tokens_by_role"]["gpt"] > 0 and train["tokens_by_role"]["human"] > 0
    assert len(result.train) == train["blocks"]


@pytest.mark.parametrize("path", sorted(SHARED.glob("*_mcq_*/*.jsonl")) if SHARED.is_dir() else [], ids=str)
def test_every_shipped_multiple_choice_set_reads(path):
    questions = read_questions([str(path)])
    assert len(questions) == _lines(path)
    assert all(q.answer in q.choices and len(q.choices) >= 2 for q in questions)
