"""Configuration: defaults < YAML < flags, the reference command verbatim, typos caught, configs saved and re-read."""

from pathlib import Path

import pytest
import yaml

from medpt.args.resolve import CONFIG_FILE, load_config, load_saved
from medpt.cli import main
from medpt.errors import MedptError

# The reference run's command line, verbatim (with `medpt train` in place of `python pretraining.py`).
SEED_COMMAND = """--model_name_or_path deepseek-ai/deepseek-coder-7b-base-v1.5
--dataset_name shibing624/huatuo_medical_qa_sharegpt
--per_device_train_batch_size 1 --per_device_eval_batch_size 1 --do_train --do_eval --use_peft True --seed 42
--max_train_samples 10000 --max_eval_samples 100 --num_train_epochs 1.0 --learning_rate 2e-4 --warmup_ratio 0.05
--weight_decay 0.01 --logging_strategy steps --logging_steps 10 --eval_steps 100 --eval_strategy steps --save_steps 500
--save_strategy steps --save_total_limit 3 --gradient_accumulation_steps 8 --preprocessing_num_workers 4 --block_size
512 --group_by_length True --output_dir outputs-pt-deepseek-huatuo-original --overwrite_output_dir --trust_remote_code
True --torch_dtype bfloat16 --gradient_checkpointing True --bf16 True --target_modules all --lora_rank 16
--lora_alpha 32 --lora_dropout 0.05""".split()


def test_seed_command_parses_to_the_intended_values():
    c = load_config(SEED_COMMAND, command="train")
    assert c.model.model_name_or_path == "deepseek-ai/deepseek-coder-7b-base-v1.5"
    assert c.model.trust_remote_code is True and c.model.torch_dtype == "bfloat16"
    assert c.data.dataset_name == ["shibing624/huatuo_medical_qa_sharegpt"]  # a list: sources may be named
    assert (c.data.max_train_samples, c.data.max_eval_samples, c.data.block_size) == (10000, 100, 512)
    assert c.data.preprocessing_num_workers == 4
    assert (c.lora.use_peft, c.lora.target_modules, c.lora.lora_rank) == (True, ["all"], 16)
    assert (c.lora.lora_alpha, c.lora.lora_dropout) == (32.0, 0.05)
    assert c.run.output_dir == "outputs-pt-deepseek-huatuo-original" and c.run.overwrite_output_dir is True
    assert c.run.seed == 42 and c.run.group_by_length is True
    t = c.trainer
    assert t["learning_rate"] == 2e-4 and t["warmup_steps"] == 0.05  # transformers 5: warmup_ratio → warmup_steps < 1
    assert (t["per_device_train_batch_size"], t["gradient_accumulation_steps"]) == (1, 8)
    assert (t["eval_strategy"], t["eval_steps"], t["save_steps"], t["save_total_limit"]) == ("steps", 100, 500, 3)
    assert t["do_train"] is True and t["do_eval"] is True and t["gradient_checkpointing"] is True
    assert c.run.bf16 is True and c.run.fp16 is None  # owned by medpt: None means "by device"


def test_yaml_then_flags_override_defaults(tmp_path: Path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("block_size: 256\npacking: isolated\nlearning_rate: 2e-4\nlora_rank: 4\n")
    c = load_config([str(cfg), "--block_size", "1024"])
    assert c.data.block_size == 1024  # the flag wins
    assert c.data.packing == "isolated" and c.lora.lora_rank == 4
    assert c.trainer["learning_rate"] == 2e-4  # PyYAML reads 2e-4 as a string; the schema makes it a float


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--block_siz", "3"], "unknown flag --block_siz; did you mean --block_size?"),
        (["--lerning_rate", "1"], "did you mean --learning_rate?"),
        (["--packing", "concatenate"], "--packing must be one of concat, isolated, none"),
        (["--block_size", "1"], "--block_size must be at least 8, got 1"),
        (["--validation_split_percentage", "100"], "--validation_split_percentage must be in"),
        (["--lora_dropout", "1.5"], "--lora_dropout must be in"),
        (["--template", "qa_seperator"], "did you mean 'qa_separator'"),
        (["--template", "custom"], "--template custom and --template_format go together"),
    ],
)
def test_bad_flags_fail_with_a_suggestion(argv, message):
    with pytest.raises(MedptError, match=message.replace("?", r"\?").replace("[", r"\[")):
        load_config(argv)


def test_prefix_abbreviations_are_not_silently_accepted():
    # argparse would take --block_s as --block_size; medpt names it as unknown.
    with pytest.raises(MedptError, match="unknown flag --block_s"):
        load_config(["--block_s", "128"])


def test_unknown_yaml_key_names_the_file(tmp_path: Path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("block_size: 128\nlora_rnak: 8\n")
    with pytest.raises(MedptError, match=r"bad\.yaml: unknown flag --lora_rnak; did you mean --lora_rank\?"):
        load_config([str(cfg)])


def test_saved_config_reads_back_and_marks_changes(tmp_path: Path):
    c = load_config(["--block_size", "128", "--learning_rate", "1e-3", "--output_dir", str(tmp_path)])
    path = c.save(tmp_path)
    text = path.read_text()
    assert "block_size: 128  # set" in text and "packing: concat\n" in text
    again = load_saved(tmp_path)
    assert again.data == c.data and again.lora == c.lora and again.trainer["learning_rate"] == 1e-3
    assert yaml.safe_load(text)["block_size"] == 128


def test_load_saved_ignores_keys_from_newer_versions(tmp_path: Path):
    (tmp_path / CONFIG_FILE).write_text("block_size: 64\nsome_future_flag: 3\n")
    assert load_saved(tmp_path).data.block_size == 64


def test_dry_run_prints_the_resolved_config_and_touches_nothing(tmp_path: Path, capsys):
    out = tmp_path / "never-created"
    assert main(["train", *SEED_COMMAND, "--output_dir", str(out), "--dry_run"]) == 0
    printed = capsys.readouterr().out
    assert "lora_rank: 16  # set" in printed and "warmup_steps: 0.05  # set" in printed
    assert not out.exists()


def test_cli_reports_user_errors_in_one_line(capsys):
    assert main(["prepare", "--block_siz", "3"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "medpt: error: unknown flag --block_siz; did you mean --block_size?"
    assert main(["prepair"]) == 2
    assert "did you mean 'prepare'" in capsys.readouterr().err


def test_every_shipped_config_loads():
    configs = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    assert {p.name for p in configs} >= {"deepseek-7b-huatuo.yaml", "tiny-cpu.yaml"}
    for path in configs:
        load_config([str(path)])


def test_reference_config_is_the_reference_command():
    path = Path(__file__).parents[1] / "configs" / "deepseek-7b-huatuo.yaml"
    assert load_config([str(path)]).to_flat() == load_config(SEED_COMMAND).to_flat()
