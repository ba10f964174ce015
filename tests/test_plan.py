"""The memory plan: the 7B shape from its config.json, every part against a hand count or torch's own bookkeeping,
the largest micro-batch keeping the global batch, `medpt plan` / --json / train --dry_run, and no weights loaded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medpt.cli import main
from medpt.errors import MedptError
from medpt.plan.memory import NF4_BYTES, Setup, estimate, keeping_global, largest_fit, layer_activations, with_batch
from medpt.plan.shape import ModelShape

FIXTURES = Path(__file__).parent / "fixtures"
# deepseek-ai/deepseek-coder-7b-base-v1.5's config.json (a LlamaForCausalLM: hidden 4096, 30 layers, 32 heads,
# intermediate 11008, vocabulary 102400, 4096 positions), the shape of the reference run.
SEVEN_B = FIXTURES / "deepseek-coder-7b-base-v1.5"
GiB = 1 << 30


def seven_b() -> ModelShape:
    return ModelShape.from_config(json.loads((SEVEN_B / "config.json").read_text()))


def lora_7b(**kw) -> Setup:
    """The reference run: LoRA r16 on every linear layer, bf16, block 512, 1 × 8, gradient checkpointing."""
    defaults = dict(device="gpu", method="lora", weight_bytes=2, autocast=True, micro_batch=1, block=512,
                    accumulation=8, checkpointing=True, rank=16)  # fmt: skip
    return Setup(**{**defaults, **kw})


def test_the_7b_shape_and_its_parameter_count_come_from_config_json():
    shape = seven_b()
    assert (shape.hidden, shape.layers, shape.heads, shape.kv_heads, shape.intermediate, shape.vocab) == (
        4096, 30, 32, 32, 11008, 102400)  # fmt: skip
    # 30 × (4·4096² + 3·4096·11008) + 2·102400·4096 + 61·4096: the 6.91B deepseek-coder-7b-base-v1.5 reports
    assert shape.parameters() == 6_910_365_696
    # LoRA r16 on all 7 linear layers: r × (in + out) per module
    assert shape.lora_params(("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), 16) == (
        30 * 16 * (4 * 8192 + 3 * (4096 + 11008)))  # fmt: skip


@pytest.mark.parametrize(
    "config, message",
    [
        ({"model_type": "mixtral", "num_local_experts": 8, "hidden_size": 8}, "mixture-of-experts"),
        ({"model_type": "gpt2", "n_embd": 768, "n_layer": 12}, "no hidden_size"),
    ],
)
def test_shapes_medpt_cannot_plan_are_refused_by_name(config, message):
    with pytest.raises(MedptError, match=message):
        ModelShape.from_config(config)


def test_static_parts_by_hand_for_lora_qlora_and_full_fine_tuning():
    shape = seven_b()
    lora = estimate(shape, lora_7b()).parts
    trained = shape.lora_params(lora_7b().targets, 16)
    assert lora["frozen weights"] == shape.parameters() * 2  # bf16
    assert lora["trainable parameters"] == lora["gradients"] == trained * 4  # PEFT keeps adapters in fp32
    assert lora["optimizer states"] == trained * 8  # AdamW: two fp32 states
    assert lora["autocast weight copies"] == trained * 2  # autocast's bf16 copy of each fp32 adapter weight
    qlora = estimate(shape, lora_7b(method="qlora")).parts
    linear = 30 * shape.layer_linear_params()
    assert qlora["frozen weights"] == round(linear * NF4_BYTES) + (shape.parameters() - linear) * 4
    assert NF4_BYTES == pytest.approx(0.5 + 1 / 64 + 4 / 16384)  # 4 bits + 8-bit absmax / 64 + fp32 / (64·256)
    full = estimate(shape, lora_7b(method="full", checkpointing=False)).parts
    assert full["frozen weights"] == 0 and full["optimizer states"] == shape.parameters() * 2 * 2  # bf16 states
    eight_bit = estimate(shape, lora_7b(optim="paged_adamw_8bit")).parts
    assert eight_bit["optimizer states"] == trained * 2
    assert estimate(shape, lora_7b(optim="sgd")).parts["optimizer states"] == 0


def test_checkpointing_keeps_one_input_per_layer_and_the_logits_grow_with_the_vocabulary():
    shape = seven_b()
    on, off = estimate(shape, lora_7b(micro_batch=4)), estimate(shape, lora_7b(micro_batch=4, checkpointing=False))
    tokens = 4 * 512
    assert on.checkpoint_bytes == tokens * 4096 * 2  # the bf16 residual stream entering each layer
    assert off.parts["activations"] == 30 * off.layer_bytes
    assert on.parts["activations"] == 30 * on.checkpoint_bytes
    assert off.parts["logits and loss"] == tokens * (12 * 102400 + 4 * 4096 + 4)
    assert on.peak < off.peak


# --- activations against torch's own bookkeeping ----------------------------------------------------------------
CASES = [  # (name, how the probe model is built, the Setup that describes it)
    ("LoRA fp32, shared dropout", {}, {}),
    ("LoRA bf16 autocast", {"bf16": True}, {"weight_bytes": 2, "autocast": True}),
    ("LoRA per-module dropout", {"mode": "per_module"}, {"dropout_mode": "per_module"}),
    ("LoRA q,v only, no dropout", {"targets": ["q_proj", "v_proj"], "dropout": 0.0},
     {"targets": ("q_proj", "v_proj"), "dropout": 0.0}),
    ("full fine-tuning fp32", {"lora": False}, {"method": "full"}),
    ("QLoRA, NF4 base", {"qlora": True}, {"method": "qlora", "weight_bytes": 2, "autocast": True}),
]  # fmt: skip


@pytest.mark.parametrize("name, build, setup", CASES, ids=[c[0] for c in CASES])
def test_planned_activations_per_layer_equal_what_autograd_saves(name, build, setup):
    """One decoder layer's bytes per token: the tensors autograd saves (each storage once), as 3 layers minus 2."""
    h, i, heads, b, s = 96, 320, 4, 2, 48
    if build.get("qlora"):
        pytest.importorskip("bitsandbytes")
    saved = [_saved_bytes(layers, h, i, heads, b, s, **build) for layers in (2, 3)]
    measured = (saved[1] - saved[0]) / (b * s)
    shape = ModelShape(h, 2, heads, heads, h // heads, i, 1000)
    spec = Setup(**{"device": "cpu", "method": "lora", "weight_bytes": 4, "autocast": False, "micro_batch": b,
                    "block": s, **setup})  # fmt: skip
    planned = sum(layer_activations(shape, spec).values())
    if spec.autocast and spec.method != "full":  # autocast's weight copies: counted once by the plan, per layer here
        planned += 2 * shape.lora_params(spec.targets, spec.rank) / shape.layers / (b * s)
    assert planned == pytest.approx(measured, rel=1e-9)


def _saved_bytes(layers, h, i, heads, b, s, bf16=False, lora=True, mode="shared", targets=("all",), dropout=0.05,
                 qlora=False):  # fmt: skip
    import contextlib
    import tempfile

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from medpt.args import LoraArguments
    from medpt.train.lora import add_lora, speed_up

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=h, intermediate_size=i, num_hidden_layers=layers, num_attention_heads=heads,
                         vocab_size=1000, tie_word_embeddings=False, use_cache=False)  # fmt: skip
    dtype = torch.bfloat16 if bf16 or qlora else torch.float32
    model = LlamaForCausalLM._from_config(config, dtype=dtype, attn_implementation="sdpa")
    if qlora:  # loaded as medpt loads it (medpt.model.loading.load_model): NF4 with double quantisation
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                     bnb_4bit_compute_dtype=torch.bfloat16)  # fmt: skip
            model = AutoModelForCausalLM.from_pretrained(tmp, dtype=dtype, quantization_config=nf4,
                                                         device_map={"": "cpu"})  # fmt: skip
        bf16 = True
    if lora:
        args = LoraArguments(lora_rank=8, lora_dropout=dropout, target_modules=list(targets), lora_dropout_mode=mode)
        model = add_lora(model, args)
        speed_up(model, autocast=bf16, compiled=False, dropout_mode=mode)
    sizes: dict[int, int] = {}

    def pack(t):
        sizes[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    ids = torch.randint(3, 1000, (b, s))
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), cast:
        model.train()(input_ids=ids, labels=ids)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(n for ptr, n in sizes.items() if ptr not in params)


# --- the largest micro-batch ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("micro, accumulation, fits, expected", [
    (1, 8, 64, (8, 1)),  # the reference run: 1 × 8 becomes 8 × 1
    (1, 8, 4, (4, 2)),
    (2, 6, 64, (4, 3)),  # global 12: the largest power of two dividing it
    (8, 1, 2, (2, 4)),  # too large a micro-batch is made smaller, the global batch kept
    (1, 1, 64, (1, 1)),  # a global batch of 1 stays 1
    (1, 8, 0, (0, 0)),  # nothing fits
])  # fmt: skip
def test_the_micro_batch_always_keeps_the_global_batch(micro, accumulation, fits, expected):
    setup = lora_7b(micro_batch=micro, accumulation=accumulation)
    assert keeping_global(setup, fits) == expected
    if expected[0]:
        assert expected[0] * expected[1] == micro * accumulation


def test_largest_fit_is_the_last_power_of_two_under_the_memory():
    shape, setup = seven_b(), lora_7b()
    b = largest_fit(shape, setup, 24 * GiB, checkpointing=True)
    assert b >= 1
    assert (
        estimate(shape, with_batch(setup, b, True)).peak
        <= 24 * GiB
        < estimate(shape, with_batch(setup, 2 * b, True)).peak
    )
    assert largest_fit(shape, setup, 24 * GiB, checkpointing=False) < b  # checkpointing buys micro-batch
    assert largest_fit(shape, lora_7b(method="full"), 24 * GiB, checkpointing=True) == 0


# --- the command ----------------------------------------------------------------------------------------------------
def test_plan_json_gives_bytes_per_part_the_peak_and_the_largest_batch_per_memory(capsys):
    argv = ["plan", "--model_name_or_path", str(SEVEN_B), "--block_size", "512", "--lora_rank", "16",
            "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "8", "--gradient_checkpointing",
            "true", "--device_memory", "24GB", "80GB", "--json"]  # fmt: skip
    assert main(argv) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["peak_bytes"] == sum(plan["parts"].values())
    assert plan["shape"]["vocab"] == 102400 and plan["setup"]["checkpointing"] is True
    assert {"frozen weights", "activations", "logits and loss", "fixed overhead"} <= set(plan["parts"])
    assert [m["memory_bytes"] for m in plan["largest_batch"]] == [24 * GiB, 80 * GiB]
    small, large = plan["largest_batch"]
    for fit in (small["checkpointing_on"], large["checkpointing_on"], large["checkpointing_off"]):
        assert fit["micro_batch"] * fit["gradient_accumulation_steps"] == 8 and 0 < fit["peak_bytes"]
    assert large["checkpointing_on"]["largest_micro_batch"] > small["checkpointing_on"]["largest_micro_batch"]
    assert plan["activations_per_layer_bytes"]["with_checkpointing"] == 512 * 4096 * 2


@pytest.mark.parametrize("peft, copy", [("false", True), ("true", False)])
def test_replay_kl_costs_a_frozen_copy_of_the_weights_under_full_fine_tuning_only(peft, copy, capsys):
    argv = ["plan", "--model_name_or_path", str(SEVEN_B), "--use_peft", peft, "--bf16", "true", "--json"]
    assert main(argv) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main([*argv, "--replay_kl", "1"]) == 0
    kl = json.loads(capsys.readouterr().out)
    extra = kl["parts"].pop("frozen copy for --replay_kl", 0)
    # the weights once more, as trained (full fine-tuning keeps fp32 master weights under bf16 autocast)
    assert extra == (seven_b().parameters() * kl["setup"]["weight_bytes"] if copy else 0)
    assert not copy or kl["setup"]["weight_bytes"] == 4
    assert kl["parts"] == plain["parts"] and kl["peak_bytes"] == plain["peak_bytes"] + extra


def test_plan_table_names_every_part_and_each_memory_size(capsys):
    assert main(["plan", "--model_name_or_path", str(SEVEN_B), "--device_memory", "24GB,48GB", "--qlora"]) == 0
    out = capsys.readouterr().out
    assert "QLoRA" in out and "frozen weights" in out and "logits and loss" in out
    assert "24GB" in out and "48GB" in out and "checkpointing on" in out


def test_plan_reads_config_json_only_never_weights_nor_builds_a_model(tmp_path):
    """A model folder whose weights file is garbage: the plan never opens it and imports neither torch nor
    transformers (so no model can have been built); measured by a Python audit hook in a fresh process."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text((SEVEN_B / "config.json").read_text())
    (model / "model.safetensors").write_bytes(b"not weights")
    code = (
        "import sys\n"
        "opened = []\n"
        "sys.addaudithook(lambda e, a: opened.append(str(a[0])) if e == 'open' else None)\n"
        "from medpt.cli import main\n"
        f"rc = main(['plan', '--model_name_or_path', {str(model)!r}, '--json'])\n"
        "assert rc == 0, rc\n"
        "assert not [p for p in opened if p.endswith('.safetensors')], opened\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
        "assert any(p.endswith('config.json') for p in opened)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout)["peak_bytes"] > 0


def test_train_dry_run_adds_the_plan_as_comments_and_stays_valid_yaml(capsys, tmp_path):
    out = tmp_path / "never-created"
    argv = ["train", "--model_name_or_path", str(SEVEN_B), "--output_dir", str(out), "--gradient_checkpointing",
            "true", "--dry_run"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "# memory plan:" in printed and "# largest micro-batch that fits" in printed
    assert yaml.safe_load(printed)["gradient_checkpointing"] is True
    assert not out.exists()


@pytest.mark.parametrize("argv, message", [
    (["--device_memory", "lots"], "--device_memory takes sizes such as 24GB"),
    (["--device_memory", "-3GB"], "--device_memory takes sizes such as 24GB"),
    (["--target_modules", "qproj"], "--target_modules qproj: medpt plan knows the linear layers"),
    (["--train_file_dir", "x.jsonl"], "--train_file_dir is a prepare/train/eval flag, not a plan flag"),
])  # fmt: skip
def test_plan_mistakes_are_one_line_errors(argv, message, capsys):
    assert main(["plan", "--model_name_or_path", str(SEVEN_B), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("medpt: error: ") and message in err and err.count("\n") == 1


def test_plan_without_a_model_says_which_flag(capsys):
    assert main(["plan"]) == 2
    assert "--model_name_or_path" in capsys.readouterr().err


# --- the plan against a real run's peak resident memory ---------------------------------------------------------
_PEAK_RSS = (
    "import sys\n"
    "from medpt.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "peak = [int(x.split()[1]) * 1024 for x in open('/proc/self/status') if x.startswith('VmHWM')][0]\n"
    "print('PEAK', peak, rc)\n"
)


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="VmHWM is Linux's")
@pytest.mark.parametrize("checkpointing", ["false", "true"])
def test_the_plan_is_within_20_percent_of_the_peak_resident_memory_of_a_cpu_run(tiny_model_dir, tmp_path,
                                                                                 checkpointing):  # fmt: skip
    """`medpt plan` and `medpt train` with the same flags, each in a fresh process, glibc told to return freed large
    blocks (MALLOC_MMAP_THRESHOLD_) so that the resident memory follows the tensors alive (the plan then counts no
    heap reserve). The 5m model at block 256 × 8: activations and logits are a third of the peak, the runtime the
    rest. bench/memory.py measures more configurations (docs/memory.md)."""
    import os

    from medpt.samples import SAMPLE_QA

    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": "1"}
    flags = ["--model_name_or_path", str(tiny_model_dir), "--block_size", "256", "--per_device_train_batch_size",
             "8", "--gradient_checkpointing", checkpointing, "--bf16", "false"]  # fmt: skip
    plan = subprocess.run([sys.executable, "-m", "medpt", "plan", *flags, "--json"], capture_output=True, text=True,
                          env=env, timeout=300)  # fmt: skip
    assert plan.returncode == 0, plan.stderr[-2000:]
    train = ["train", *flags, "--train_file_dir", str(SAMPLE_QA), "--max_steps", "2", "--output_dir",
             str(tmp_path / "run"), "--report_to", "none", "--disable_tqdm", "true", "--plot", "false",
             "--save_strategy", "no"]  # fmt: skip
    run = subprocess.run([sys.executable, "-c", _PEAK_RSS, *train], capture_output=True, text=True, env=env,
                         timeout=900)  # fmt: skip
    line = next((x for x in run.stdout.splitlines() if x.startswith("PEAK ")), "")
    assert line.endswith(" 0"), run.stderr[-3000:]
    planned, measured = json.loads(plan.stdout)["peak_bytes"], int(line.split()[1])
    assert planned == pytest.approx(measured, rel=0.20), (planned / 2**20, measured / 2**20)


# --- medpt train --auto_batch ---------------------------------------------------------------------------------------
def _train(model_dir: Path, out: Path, *extra: str) -> int:
    from medpt.samples import SAMPLE_QA

    argv = ["train", "--model_name_or_path", str(model_dir), "--train_file_dir", str(SAMPLE_QA), "--block_size", "64",
            "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "8", "--max_steps", "2",
            "--logging_steps", "1", "--output_dir", str(out), "--report_to", "none", "--disable_tqdm", "true",
            "--plot", "false", "--save_strategy", "no", "--auto_batch", *extra]  # fmt: skip
    return main(argv)


def _batch(out: Path) -> tuple[int, int]:
    args = json.loads((out / "training_args.json").read_text())
    return args["per_device_train_batch_size"], args["gradient_accumulation_steps"]


def test_auto_batch_picks_a_larger_micro_batch_and_keeps_the_global_batch(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(tiny_model_dir, out) == 0
    assert _batch(out) == (8, 1)  # the 5m model at block 64 fits 8 at once: 1 × 8 becomes 8 × 1
    assert "--auto_batch: micro-batch 8 × accumulation 1 (was 1 × 8; global batch 8 per device kept)" in (
        capsys.readouterr().out)  # fmt: skip
    saved = yaml.safe_load((out / "medpt_config.yaml").read_text())
    assert (saved["per_device_train_batch_size"], saved["gradient_accumulation_steps"]) == (8, 1)


def test_an_out_of_memory_first_step_halves_the_micro_batch_once_and_says_so(tiny_model_dir, tmp_path, monkeypatch,
                                                                             capsys):  # fmt: skip
    import torch

    from medpt.train.trainer import MedptTrainer

    original = MedptTrainer.training_step

    def out_of_memory_at_8(self, *a, **k):
        if self.args.per_device_train_batch_size == 8:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return original(self, *a, **k)

    monkeypatch.setattr(MedptTrainer, "training_step", out_of_memory_at_8)
    out = tmp_path / "run"
    assert _train(tiny_model_dir, out) == 0
    printed = capsys.readouterr().out
    assert ("--auto_batch: out of memory at the first step with micro-batch 8; retrying once with 4 × accumulation "
            "2 (global batch kept)") in printed  # fmt: skip
    assert _batch(out) == (4, 2)
    assert yaml.safe_load((out / "medpt_config.yaml").read_text())["per_device_train_batch_size"] == 4
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]


def test_a_second_out_of_memory_is_one_line_and_not_retried_again(tiny_model_dir, tmp_path, monkeypatch, capsys):
    import torch

    from medpt.train.trainer import MedptTrainer

    calls = []

    def always_out_of_memory(self, *a, **k):
        calls.append(self.args.per_device_train_batch_size)
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(MedptTrainer, "training_step", always_out_of_memory)
    assert _train(tiny_model_dir, tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "out of memory at the first step again with micro-batch 4" in err
    assert calls == [8, 4]
