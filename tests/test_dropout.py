"""medpt's LoRA dropout: PEFT's forward when it does nothing, the right keep rate and scale, the gradients of a
reference written out by hand, one mask per shared input, and adapters that stock PEFT loads."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from medpt.args import LoraArguments
from medpt.train.dropout import FastDropout, install
from medpt.train.lora import add_lora


def _model(tiny_model_dir, dropout: float, dtype=torch.float32):
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=dtype)
    model = add_lora(base, LoraArguments(lora_rank=4, lora_alpha=8, lora_dropout=dropout, target_modules=["all"]))
    for module in model.modules():  # non-zero B, so the adapter contributes
        if hasattr(module, "lora_B"):
            torch.nn.init.normal_(module.lora_B["default"].weight, std=0.05)
    return model


@pytest.mark.parametrize("mode", ["shared", "per_module"])
def test_same_forward_as_peft_at_dropout_zero_and_in_eval_mode(tiny_model_dir, mode):
    ids = torch.randint(3, 500, (2, 12))
    for dropout, train in ((0.0, True), (0.1, False)):
        model = _model(tiny_model_dir, dropout)
        model.train(train)
        with torch.no_grad():
            stock = model(ids).logits
            install(model, mode)
            ours = model(ids).logits
        torch.testing.assert_close(ours, stock, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_keep_rate_and_scale(dtype):
    drop = FastDropout(0.05).train()
    x = torch.ones(1000, 1000, dtype=dtype)
    torch.manual_seed(3)
    y = drop(x).float()
    kept = (y != 0).float().mean().item()
    # 1e6 Bernoulli(0.95) draws: the standard error of the rate is 2.2e-4; 5 of them is 1.1e-3
    assert abs(kept - 0.95) < 1.1e-3
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.95), rtol=4e-3)  # bf16 rounds 1/0.95
    assert abs(y.mean().item() - 1.0) < 4e-3  # E[y] = x
    torch.manual_seed(3)
    assert torch.equal(drop(x).float(), y)  # seeded from torch's RNG: reproducible and resumable
    assert torch.equal(drop.eval()(x), x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_values_are_exactly_where_then_scale(dtype):
    """fp32 folds 1/(1-p) into the mask (one multiply); both paths must equal PEFT's where-then-scale bit for bit."""
    drop = FastDropout(0.05).train()
    x = torch.randn(300, 257).to(dtype).requires_grad_()
    torch.manual_seed(5)
    y = drop(x)
    y.backward(torch.ones_like(y))
    torch.manual_seed(5)
    keep = drop.keep_multiplier(x.detach()).bool()
    assert torch.equal(y, torch.where(keep, x.detach(), 0).mul_(drop.scale))
    assert torch.equal(x.grad, torch.where(keep, torch.ones_like(x), 0).mul_(drop.scale))


def test_gradients_match_a_reference_written_out_by_hand():
    torch.manual_seed(0)
    x = torch.randn(3, 7, 16, requires_grad=True)
    a = torch.randn(4, 16, requires_grad=True)
    drop = FastDropout(0.3).train()
    torch.manual_seed(11)
    y = drop(x) @ a.T
    (y * torch.arange(4.0)).sum().backward()
    torch.manual_seed(11)
    keep = drop.keep_multiplier(x.detach()).bool()  # the same mask: same seed draw
    x_ref, a_ref = x.detach().clone().requires_grad_(), a.detach().clone().requires_grad_()
    y_ref = torch.where(keep, x_ref, 0) / (1 - drop.p) @ a_ref.T  # PEFT's dropout, written out
    (y_ref * torch.arange(4.0)).sum().backward()
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.grad, a_ref.grad, rtol=1e-5, atol=1e-6)


def test_adapters_reading_one_tensor_share_its_mask_and_sum_their_gradients():
    drop = FastDropout(0.2, shared=True).train()
    x = torch.randn(5, 32, requires_grad=True)
    q, k, v = (torch.randn(3, 32, requires_grad=True) for _ in range(3))
    torch.manual_seed(1)
    outs = [drop(x) @ w.T for w in (q, k, v)]
    assert outs[0].grad_fn is not None
    dropped = drop(x)  # still the same tensor: x is alive and unchanged
    torch.manual_seed(1)
    expected = FastDropout(0.2).train()(x)  # one mask, drawn once
    torch.testing.assert_close(dropped, expected)
    sum(o.sum() for o in outs).backward()
    mask = (expected != 0).float() / 0.8
    torch.testing.assert_close(x.grad, mask * (q.sum(0) + k.sum(0) + v.sum(0)), rtol=1e-5, atol=1e-4)
    other = torch.randn(5, 32)
    assert not torch.equal(drop(other) != 0, dropped != 0)  # a new input gets a new mask


def test_shared_masks_follow_the_layer_inputs_in_a_real_model(tiny_model_dir):
    model = _model(tiny_model_dir, 0.1).train()
    install(model, "shared")
    layer = model.base_model.model.model.layers[0]
    shared = layer.self_attn.q_proj.lora_dropout["default"]
    assert all(getattr(part, n).lora_dropout["default"] is shared
               for part, n in [(layer.self_attn, "k_proj"), (layer.mlp, "down_proj")])  # fmt: skip
    calls: list[torch.Tensor] = []
    shared.register_forward_hook(lambda module, args, output: calls.append(output))
    model(torch.randint(3, 500, (2, 12)))
    q, k, v, o, gate, up, down = calls  # PEFT calls the layer's dropout once per adapted module, in this order
    assert q is k is v and gate is up  # one dropped copy per shared input ...
    assert o is not q and down is not gate and gate is not o  # ... and a new one for every other input
    assert not torch.equal(q != 0, o[..., : q.shape[-1]] != 0)


def test_a_run_with_shared_dropout_loads_in_stock_peft(tiny_model_dir, tmp_path):
    from peft import PeftModel

    from medpt.cli import main
    from medpt.samples import SAMPLE_QA

    out = tmp_path / "run"
    argv = ["train", "--model_name_or_path", str(tiny_model_dir), "--train_file_dir", str(SAMPLE_QA), "--block_size",
            "64", "--per_device_train_batch_size", "4", "--max_steps", "3", "--learning_rate", "1e-2",
            "--lora_dropout", "0.1", "--lora_dropout_mode", "shared", "--output_dir", str(out), "--report_to", "none",
            "--disable_tqdm", "true", "--plot", "false", "--save_strategy", "no"]  # fmt: skip
    assert main(argv) == 0
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.randint(3, 500, (1, 10))
    with torch.no_grad():
        before = base(ids).logits
        after = PeftModel.from_pretrained(base, out).eval()(ids).logits
    assert (after - before).abs().max() > 1e-4
