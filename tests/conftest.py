"""Shared fixtures: tiny tokenizers and models built locally, an isolated cache, and no network, ever."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# Set before huggingface_hub or datasets are imported anywhere: they read these once, at import.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from medpt.samples import SAMPLE_QA  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDPT_CACHE", str(tmp_path / "medpt-cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small BPE tokenizer trained on the bundled sample (adds BOS, has EOS, no pad: like deepseek-coder's)."""
    from medpt.data.pipeline import read_texts
    from medpt.model.init_tiny import train_tokenizer

    directory = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(read_texts([str(SAMPLE_QA)]), 1024).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir: Path):
    from medpt.model.loading import load_tokenizer

    return load_tokenizer(str(tokenizer_dir))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 5m tiny model as `medpt init-tiny` builds it (random weights, saved with save_pretrained)."""
    from medpt.data.pipeline import read_texts
    from medpt.model.init_tiny import init_tiny

    directory = tmp_path_factory.mktemp("tiny") / "model"
    init_tiny(directory, "5m", read_texts([str(SAMPLE_QA)]), seed=0)
    return directory


def write_jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n")
    return path


def conv(*turns: str, roles: tuple[str, str] = ("human", "gpt")) -> dict:
    """A ShareGPT record from alternating question/answer strings."""
    return {"conversations": [{"from": roles[i % 2], "value": t} for i, t in enumerate(turns)]}


@pytest.fixture(scope="session")
def trained_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short LoRA run on the tiny model, shared by the eval / verify / merge / compare / report tests."""
    from medpt.cli import main

    out = tmp_path_factory.mktemp("runs") / "run"
    cache = tmp_path_factory.mktemp("cache")
    argv = ["train", "--model_name_or_path", str(tiny_model_dir), "--train_file_dir", str(SAMPLE_QA),
            "--validation_split_percentage", "10", "--block_size", "64", "--per_device_train_batch_size", "8",
            "--max_steps", "30", "--learning_rate", "5e-3", "--logging_steps", "5", "--lora_rank", "8",
            "--output_dir", str(out), "--data_cache_dir", str(cache), "--report_to", "none", "--disable_tqdm", "true",
            "--save_strategy", "no"]  # fmt: skip
    assert main(argv) == 0
    return out


# --- `medpt serve`: one server for every serve test module ------------------------------------------------------------
@pytest.fixture(scope="session")
def server(trained_run: Path):
    """`medpt serve --adapter RUN` in a thread of this process (tests.servers.running_server), so tests can script
    the model through medpt.generate.prompting.extra_logits_processors."""
    pytest.importorskip("fastapi")
    from tests.servers import running_server

    with running_server(trained_run) as running:
        yield running


@pytest.fixture(scope="session")
def reference(trained_run: Path):
    """The same run loaded by the test itself: what the server answers is compared with what transformers does."""
    from medpt.args.resolve import load_config
    from medpt.model.adapter import load_variants

    config = load_config(["--adapter", str(trained_run)], command="serve")
    return config, load_variants(config, log=lambda *_: None)


@pytest.fixture
def no_eos(monkeypatch: pytest.MonkeyPatch, reference):
    """Every answer runs to max_tokens (the tiny adapted model would end at once): answers have text to compare."""
    from medpt.generate import prompting
    from tests.servers import NoEos

    eos = reference[1].tokenizer.eos_token_id
    monkeypatch.setattr(prompting, "extra_logits_processors", lambda: [NoEos(eos)])


def one_error_line(err: str, *needles: str) -> str:
    """The one `medpt: error:` line of a command's stderr, with no traceback; each needle must be in it."""
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("medpt: error:")]
    assert len(lines) == 1, err[-3000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]
