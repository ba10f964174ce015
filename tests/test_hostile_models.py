"""Hand medpt a broken model: every file of a model, tokenizer, adapter or checkpoint folder, damaged in each way,
for each command that loads it.

Each row copies the tiny model (or the trained run) into tmp_path, damages one file, runs the real command and
expects exactly one `medpt: error:` line naming the file, no traceback, no data prepared, and the damaged folder
byte-identical afterwards. The checks run before any weight is loaded (medpt.model.files), so a row costs a fraction
of a second. A few rows are harmless changes (unknown keys): those commands succeed.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from medpt.cli import main
from medpt.samples import SAMPLE_QA
from tests.test_safety import FAST, one_line_error, snapshot

Damage = Callable[[Path], None]


# --- ways to damage a file ------------------------------------------------------------------------------------------
def gone(name: str) -> Damage:
    return lambda d: (d / name).unlink()


def empty(name: str) -> Damage:
    return lambda d: (d / name).write_bytes(b"")


def cut(name: str, keep: float = 0.5) -> Damage:
    """The file cut short, as an interrupted copy or download leaves it."""
    return lambda d: (d / name).write_bytes((d / name).read_bytes()[: int((d / name).stat().st_size * keep)])


def garbage(name: str, text: str | bytes = "{not json") -> Damage:
    data = text.encode() if isinstance(text, str) else text
    return lambda d: (d / name).write_bytes(data)


def edit(name: str, **changes: object) -> Damage:
    def apply(d: Path) -> None:
        data = json.loads((d / name).read_text())
        data.update(changes)
        (d / name).write_text(json.dumps(data))

    return apply


def drop_key(name: str, key: str) -> Damage:
    def apply(d: Path) -> None:
        data = json.loads((d / name).read_text())
        del data[key]
        (d / name).write_text(json.dumps(data))

    return apply


def tensors(transform: Callable[[dict], dict], name: str = "adapter_model.safetensors") -> Damage:
    """Rewrite a safetensors file's tensors (renamed, reshaped, dropped): a well-formed file of the wrong content."""

    def apply(d: Path) -> None:
        from safetensors.torch import load_file, save_file

        save_file({k: v.contiguous() for k, v in transform(load_file(d / name)).items()}, d / name)

    return apply


def shard_index(d: Path) -> None:
    """An index naming a second shard that is not there (a download that stopped after the first file)."""
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}})
    )


def bigger_tokenizer(d: Path) -> None:
    """Another model's tokenizer in the folder: 100 more tokens than the tiny model's 6,208 embeddings."""
    from medpt.model.loading import load_tokenizer

    tokenizer = load_tokenizer(str(d))
    tokenizer.add_tokens([f"<其他模型{i}>" for i in range(6300 - len(tokenizer))])
    tokenizer.save_pretrained(d)


# --- 1. the base model's folder, with `medpt train` ----------------------------------------------------------------
MODEL_DAMAGE = [
    ("config.json missing", gone("config.json"), "config.json: missing"),
    ("config.json empty", empty("config.json"), "config.json: empty file"),
    ("config.json cut short", cut("config.json"), "config.json: not valid JSON"),
    ("config.json not JSON", garbage("config.json"), "config.json: not valid JSON"),
    ("config.json a list", garbage("config.json", "[1, 2]"), "config.json: expected a JSON object"),
    ("config.json not UTF-8", garbage("config.json", '{"model_type": "中"}'.encode("gbk")), "not UTF-8"),
    ("unknown model_type", edit("config.json", model_type="llama-from-the-future"), "'llama-from-the-future'"),
    ("no model_type", drop_key("config.json", "model_type"), "config.json: no model_type"),
    ("hidden_size of the wrong type", edit("config.json", hidden_size="big"), "hidden_size"),
    ("max_position_embeddings a string", edit("config.json", max_position_embeddings="4096"), "max_position"),
    ("heads that do not divide the width", edit("config.json", num_attention_heads=5), "config.json"),
    ("negative vocab_size", edit("config.json", vocab_size=-3), "config.json"),
    ("vocab_size that disagrees with the weights", edit("config.json", vocab_size=100), "model.embed_tokens.weight"),
    ("hidden_size of another model", edit("config.json", hidden_size=256, head_dim=64), "config.json implies"),
    ("more layers than the weights hold", edit("config.json", num_hidden_layers=6), "no tensor for 18 parameter"),
    ("weights missing", gone("model.safetensors"), "no .safetensors weights"),
    ("weights empty", empty("model.safetensors"), "model.safetensors: not a readable safetensors file"),
    ("weights cut short", cut("model.safetensors"), "model.safetensors: not a readable safetensors file"),
    ("weights header only", cut("model.safetensors", 0.001), "model.safetensors: not a readable safetensors file"),
    ("shard index naming a missing shard", shard_index, "model-00002-of-00002.safetensors"),
    ("shard index not JSON", garbage("model.safetensors.index.json"), "model.safetensors.index.json"),
    ("tokenizer.json missing", gone("tokenizer.json"), "cannot load the tokenizer"),
    ("tokenizer.json empty", empty("tokenizer.json"), "tokenizer.json: empty file"),
    ("tokenizer.json cut short", cut("tokenizer.json"), "tokenizer.json: not valid JSON"),
    ("tokenizer_config.json not JSON", garbage("tokenizer_config.json"), "tokenizer_config.json: not valid JSON"),
    ("tokenizer_config.json missing", gone("tokenizer_config.json"), "no EOS token"),
    ("generation_config.json not JSON", garbage("generation_config.json"), "generation_config.json"),
    ("a tokenizer with more tokens than the embeddings", bigger_tokenizer, "6,300 tokens, but"),
]


@pytest.mark.parametrize("damage, needle", [c[1:] for c in MODEL_DAMAGE], ids=[c[0] for c in MODEL_DAMAGE])
def test_a_damaged_base_model_is_one_line_before_any_data_work(damage, needle, tiny_model_dir, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    damage(model)
    before = snapshot(model)
    argv = ["train", "--model_name_or_path", str(model), "--train_file_dir", str(SAMPLE_QA),
            "--output_dir", str(tmp_path / "run"), *FAST]  # fmt: skip
    assert main(argv) == 2
    one_line_error(capsys, needle)
    assert snapshot(model) == before
    assert not (tmp_path / "run").exists() and not (tmp_path / "medpt-cache").exists()  # nothing prepared


TOKENIZER_DAMAGE = [c for c in MODEL_DAMAGE if "token" in c[0] and "embeddings" not in c[0]]


@pytest.mark.parametrize("damage, needle", [c[1:] for c in TOKENIZER_DAMAGE], ids=[c[0] for c in TOKENIZER_DAMAGE])
def test_prepare_refuses_a_damaged_tokenizer_in_one_line(damage, needle, tiny_model_dir, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    damage(model)
    argv = ["prepare", "--model_name_or_path", str(model), "--train_file_dir", str(SAMPLE_QA),
            "--output_dir", str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 2
    one_line_error(capsys, needle)
    assert not (tmp_path / "out" / "data_report.json").exists()


def test_unknown_keys_in_the_model_config_are_ignored_as_transformers_does(tiny_model_dir, trained_run, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    edit("config.json", medpt_test_unknown_key={"nested": [1, 2]})(model)
    argv = ["generate", "--adapter", str(trained_run), "--model_name_or_path", str(model), "--question", "头痛",
            "--max_new_tokens", "2", "--answers_file", str(tmp_path / "a.jsonl"), "--allow_base_mismatch"]  # fmt: skip
    assert main(argv) == 0
    assert len((tmp_path / "a.jsonl").read_text().splitlines()) == 1


# --- 2. the adapter's run folder, with `medpt eval` ----------------------------------------------------------------
def _rank(r: int) -> Callable[[dict], dict]:
    return lambda t: {k: v[:r] if "lora_A" in k else v[:, :r] for k, v in t.items()}


RUN_DAMAGE = [
    ("adapter_config.json empty", empty("adapter_config.json"), "adapter_config.json: empty file"),
    ("adapter_config.json cut short", cut("adapter_config.json"), "adapter_config.json: not valid JSON"),
    ("adapter_config.json a list", garbage("adapter_config.json", "[]"), "adapter_config.json: expected a JSON"),
    ("adapter_config.json missing", gone("adapter_config.json"), "adapter_config.json: missing"),
    ("r a string", edit("adapter_config.json", r="eight"), "r must be int"),
    ("r zero", edit("adapter_config.json", r=0), "r (the LoRA rank) must be"),
    ("lora_alpha a string", edit("adapter_config.json", lora_alpha="x"), "lora_alpha must be"),
    ("use_dora a string", edit("adapter_config.json", use_dora="yes"), "use_dora must be bool"),
    ("unknown peft_type", edit("adapter_config.json", peft_type="NOPE"), "peft_type 'NOPE'"),
    ("rank that disagrees with the weights", edit("adapter_config.json", r=4), "says r=4"),
    (
        "a target module the base lacks",
        edit("adapter_config.json", target_modules=["q_proj", "nonexistent_proj"]),
        "nonexistent_proj match no module",
    ),
    ("targets that leave weights unused", edit("adapter_config.json", target_modules=["q_proj"]), "not selected"),
    ("no base named", drop_key("adapter_config.json", "base_model_name_or_path"), None),  # the run's config names it
    ("weights missing", gone("adapter_model.safetensors"), "no adapter_model.safetensors"),
    ("weights empty", empty("adapter_model.safetensors"), "adapter_model.safetensors: not a readable"),
    ("weights cut short", cut("adapter_model.safetensors"), "adapter_model.safetensors: not a readable"),
    ("weights of another rank", tensors(_rank(4)), "has rank 4"),
    (
        "weights for a layer the base lacks",
        tensors(lambda t: {k.replace("layers.0.", "layers.9."): v for k, v in t.items()}),
        "layers.9",
    ),
    (
        "weights missing a module",
        tensors(lambda t: {k: v for k, v in t.items() if "layers.0.self_attn.q_" not in k}),
        "no LoRA matrices for 1 module",
    ),
    (
        "weights of another width",
        tensors(lambda t: {k: v[:, :100] if "lora_A" in k else v for k, v in t.items()}),
        "does not fit",
    ),
    ("base_model.json not JSON", garbage("base_model.json"), "base_model.json: not valid JSON"),
    ("base_model.json empty", empty("base_model.json"), "base_model.json: empty file"),
    ("medpt_config.yaml empty", empty("medpt_config.yaml"), "medpt_config.yaml is empty"),
    ("medpt_config.yaml not YAML", garbage("medpt_config.yaml", "a: [b"), "medpt_config.yaml: invalid YAML"),
    ("medpt_config.yaml of the wrong type", garbage("medpt_config.yaml", "block_size: many\n"), "medpt_config.yaml"),
    ("the run's tokenizer.json cut short", cut("tokenizer.json"), "tokenizer.json: not valid JSON"),
    ("the run's tokenizer_config.json not JSON", garbage("tokenizer_config.json"), "tokenizer_config.json"),
    ("another model's tokenizer in the run", bigger_tokenizer, "6,300 tokens, but"),
]


def _run_copy(trained_run: Path, tmp: Path, damage: Damage) -> Path:
    run = tmp / "run"
    shutil.copytree(trained_run, run)
    damage(run)
    return run


@pytest.mark.parametrize("damage, needle", [c[1:] for c in RUN_DAMAGE], ids=[c[0] for c in RUN_DAMAGE])
def test_a_damaged_run_is_one_line_before_eval_prepares_anything(damage, needle, trained_run, tmp_path, capsys):
    run = _run_copy(trained_run, tmp_path, damage)
    before = snapshot(run)
    code = main(["eval", "--adapter", str(run), "--output_dir", str(tmp_path / "eval")])
    if needle is None:  # harmless: the command works
        assert code == 0, capsys.readouterr().err
        return
    assert code == 2
    one_line_error(capsys, needle)
    assert snapshot(run) == before
    assert not (tmp_path / "eval").exists() and not (tmp_path / "medpt-cache").exists()


# --- 3. every command that loads a run, with a representative damage of each kind ----------------------------------
COMMANDS: dict[str, Callable[[Path, Path], list[str]]] = {
    "eval": lambda run, tmp: ["eval", "--adapter", str(run), "--output_dir", str(tmp / "out")],
    "verify": lambda run, tmp: ["verify", "--adapter", str(run)],
    "merge": lambda run, tmp: ["merge", "--adapter", str(run), "--output_dir", str(tmp / "out")],
    "export": lambda run, tmp: ["export", "--adapter", str(run), "--target", "vllm", "--output_dir", str(tmp / "out")],
    "generate": lambda run, tmp: [
        "generate",
        "--adapter",
        str(run),
        "--question",
        "头痛",
        "--answers_file",
        str(tmp / "out" / "a.jsonl"),
    ],
    "compare": lambda run, tmp: [
        "compare",
        "--adapter",
        str(run),
        "--question",
        "头痛",
        "--output_dir",
        str(tmp / "out"),
    ],
    "chat": lambda run, tmp: ["chat", "--adapter", str(run)],
    "serve": lambda run, tmp: ["serve", "--adapter", str(run), "--port", "0"],
}
REPRESENTATIVE = [
    ("adapter_config.json not JSON", garbage("adapter_config.json"), "adapter_config.json: not valid JSON"),
    ("rank that disagrees with the weights", tensors(_rank(4)), "has rank 4"),
    ("base config.json cut short", None, "config.json: not valid JSON"),
    ("another model's tokenizer", bigger_tokenizer, "6,300 tokens, but"),
]


@pytest.mark.parametrize("damage, needle", [c[1:] for c in REPRESENTATIVE], ids=[c[0] for c in REPRESENTATIVE])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_that_loads_a_run_refuses_it_in_one_line(command, damage, needle, trained_run, tiny_model_dir,
                                                                tmp_path, capsys, monkeypatch):  # fmt: skip
    import uvicorn

    run = _run_copy(trained_run, tmp_path, damage or (lambda d: None))
    argv = COMMANDS[command](run, tmp_path)
    if damage is None:  # the base model is the damaged folder
        base = tmp_path / "base"
        shutil.copytree(tiny_model_dir, base)
        cut("config.json")(base)
        argv += ["--model_name_or_path", str(base), "--allow_base_mismatch"]
    monkeypatch.setattr("sys.stdin", io.StringIO("头痛\n/quit\n"))
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: pytest.fail("the server started"))
    before = snapshot(tmp_path)
    assert main(argv) == 2
    one_line_error(capsys, needle)
    assert snapshot(tmp_path) == before and not (tmp_path / "out").exists()


# --- 4. a checkpoint to resume from, with `medpt train` ----------------------------------------------------------
@pytest.fixture
def checkpoint(trained_run: Path, tmp_path: Path) -> Path:
    """Another run's complete checkpoint, as Trainer writes one: its adapter, trainer state, optimizer, scheduler."""
    import torch

    ckpt = tmp_path / "other-run" / "checkpoint-5"
    ckpt.mkdir(parents=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(trained_run / name, ckpt / name)
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": 5, "log_history": []}))
    torch.save({"state": {}, "param_groups": []}, ckpt / "optimizer.pt")
    torch.save({"last_epoch": 5}, ckpt / "scheduler.pt")
    return ckpt


def _other_base(d: Path) -> None:
    (d.parent / "base_model.json").write_text(json.dumps({"name": "elsewhere", "fingerprint": "0" * 64}))


CHECKPOINT_DAMAGE = [
    ("trained with another rank", None, ["--lora_rank", "4"], "r=8"),
    ("trained with other alpha", None, ["--lora_alpha", "32"], "lora_alpha=16.0"),
    ("trained on other modules", None, ["--target_modules", "q_proj,v_proj"], "it adapts"),
    ("trained on another base", _other_base, [], "another base model"),
    ("full fine-tuning checkpoint for a LoRA run", gone("adapter_config.json"), [], "no adapter_config.json"),
    ("trainer_state.json missing", gone("trainer_state.json"), [], "trainer_state.json: missing"),
    ("trainer_state.json not JSON", garbage("trainer_state.json"), [], "trainer_state.json: not valid JSON"),
    ("trainer_state.json without a step", garbage("trainer_state.json", "{}"), [], "no global_step"),
    ("optimizer.pt missing", gone("optimizer.pt"), [], "no optimizer.pt"),
    ("optimizer.pt cut short", cut("optimizer.pt"), [], "optimizer.pt: damaged"),
    ("scheduler.pt not a torch file", garbage("scheduler.pt", "x"), [], "scheduler.pt: damaged"),
    ("adapter weights cut short", cut("adapter_model.safetensors"), [], "adapter_model.safetensors: not a readable"),
    ("adapter_config.json of another rank", edit("adapter_config.json", r=4), [], "says r=4"),
]


@pytest.mark.parametrize("damage, flags, needle", [c[1:] for c in CHECKPOINT_DAMAGE],
                         ids=[c[0] for c in CHECKPOINT_DAMAGE])  # fmt: skip
def test_resuming_from_a_checkpoint_that_does_not_fit_the_run(damage, flags, needle, checkpoint, tiny_model_dir,
                                                              tmp_path, capsys):  # fmt: skip
    if damage is not None:
        damage(checkpoint)
    before = snapshot(checkpoint.parent)
    argv = ["train", "--model_name_or_path", str(tiny_model_dir), "--train_file_dir", str(SAMPLE_QA), "--lora_rank",
            "8", "--output_dir", str(tmp_path / "run"), "--resume_from_checkpoint", str(checkpoint), *FAST,
            *flags]  # fmt: skip
    assert main(argv) == 2
    one_line_error(capsys, needle)
    assert snapshot(checkpoint.parent) == before
    assert not (tmp_path / "run").exists() and not (tmp_path / "medpt-cache").exists()


def test_a_checkpoint_path_with_a_tilde_is_found(checkpoint, tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    argv = ["train", "--model_name_or_path", str(tiny_model_dir), "--train_file_dir", str(SAMPLE_QA), "--output_dir",
            str(tmp_path / "run"), "--resume_from_checkpoint", "~/other-run/checkpoint-5", "--lora_rank", "4",
            *FAST]  # fmt: skip
    assert main(argv) == 2
    one_line_error(capsys, f"{checkpoint}: it was trained with r=8")  # found, and checked


# --- 5. `medpt tune`: the search space against the model -----------------------------------------------------------
@pytest.mark.parametrize(
    "space, needle",
    [
        ("{block_size: {int: [64, 8192]}}", "block_size: 8192: --block_size 8192 is longer than the 4,096 positions"),
        ("{block_size: {choice: [64, 100000]}}", "--block_size 100000"),
        (
            "{target_modules: {choice: ['q_proj,v_proj', 'q_proj,nonexistent_proj']}}",
            "--target_modules nonexistent_proj: no such module",
        ),
    ],
    ids=["block_size range", "block_size choice", "target_modules choice"],
)
def test_tune_checks_every_value_of_the_space_against_the_model(space, needle, tiny_model_dir, tmp_path, capsys):
    pytest.importorskip("optuna")
    argv = ["tune", "--model_name_or_path", str(tiny_model_dir), "--train_file_dir", str(SAMPLE_QA), "--max_steps",
            "2", "--output_dir", str(tmp_path / "tune"), "--search_space", space]  # fmt: skip
    assert main(argv) == 2
    one_line_error(capsys, "--search_space", needle)
    assert not (tmp_path / "tune").exists() and not (tmp_path / "medpt-cache").exists()


def test_tune_refuses_a_damaged_base_model_before_preparing_data(tiny_model_dir, tmp_path, capsys):
    pytest.importorskip("optuna")
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    edit("config.json", num_hidden_layers=6)(model)
    argv = ["tune", "--model_name_or_path", str(model), "--train_file_dir", str(SAMPLE_QA), "--max_steps", "2",
            "--output_dir", str(tmp_path / "tune")]  # fmt: skip
    assert main(argv) == 2
    one_line_error(capsys, "no tensor for 18 parameter")
    assert not (tmp_path / "tune").exists()
