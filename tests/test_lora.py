"""The two LoRA speed fixes change nothing but speed."""

import torch
from transformers import AutoModelForCausalLM

from medpt.args import LoraArguments
from medpt.train.dropout import FastDropout
from medpt.train.lora import add_lora, speed_up


def test_fast_dropout_is_inverted_dropout_with_the_right_rate_and_gradient():
    drop = FastDropout(0.05).train()
    x = torch.ones(2000, 1000, requires_grad=True)
    torch.manual_seed(1)
    y = drop(x)
    assert abs((y == 0).float().mean().item() - 0.05) < 0.002
    assert abs(y.mean().item() - 1.0) < 0.005  # E[y] = x
    y.sum().backward()
    assert torch.equal(x.grad == 0, y == 0)
    torch.manual_seed(1)
    assert torch.equal(drop(x), y)  # seeded from torch's RNG: reproducible and resumable
    assert torch.equal(drop.eval()(x), x)


def test_speed_up_keeps_the_outputs_identical(tiny_model_dir):
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    model = add_lora(base, LoraArguments(lora_rank=8, lora_alpha=16, lora_dropout=0.0, target_modules=["all"]))
    for module in model.modules():  # give the adapter non-zero B so it contributes
        if hasattr(module, "lora_B"):
            torch.nn.init.normal_(module.lora_B["default"].weight, std=0.02)
    ids = torch.randint(3, 500, (2, 16))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        before = model(ids).logits
        speed_up(model, autocast=True, compiled=False)
        after = model(ids).logits
    assert not any(getattr(m, "cast_input_dtype_enabled", False) for m in model.modules())
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_speed_up_swaps_dropout_only_when_not_compiled(tiny_model_dir):
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = add_lora(base, LoraArguments(lora_rank=4, lora_alpha=8, lora_dropout=0.1, target_modules=["q_proj,v_proj"]))
    speed_up(model, autocast=False, compiled=True)
    assert not any(isinstance(m, FastDropout) for m in model.modules())
    assert all(getattr(m, "cast_input_dtype_enabled", True) for m in model.modules())  # no autocast: PEFT casts
    speed_up(model, autocast=False, compiled=False, dropout_mode="per_module")
    assert sum(isinstance(m, FastDropout) for m in model.modules()) == 2 * 4  # q and v in each of 4 layers
