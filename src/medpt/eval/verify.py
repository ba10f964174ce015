"""`medpt verify`: prove an adapter is really applied, before trusting any number measured with it.

Checks, each reported, any failure making the exit status 1:
1. the base model is the one the adapter was trained on (weights fingerprint recorded by `medpt train`);
2. every tensor of the adapter is finite (no NaN/inf from a diverged run);
3. every target module of the adapter exists in the base model;
4. every LoRA B matrix is non-zero (B starts at zero: an all-zero B means that layer never learned anything);
5. the adapter changes the logits on a probe prompt (max |Δlogit| reported);
and it reports the adapter's trainable parameters and file size.
"""

from __future__ import annotations

import math
from typing import Any

from medpt.args.commands import COMMANDS
from medpt.errors import MedptError
from medpt.rundir import ADAPTER_WEIGHTS, VERIFY
from medpt.strictjson import dumps

PROBE = "问:高血压患者日常饮食需要注意什么？\n答:"


def run_verify(config: Any, log: Any = print) -> int:

    import torch

    from medpt.atomic import atomic_write_text
    from medpt.model.adapter import base_matches, base_model_name, lora_run, run_tokenizer_dir
    from medpt.model.files import check_adapter_fits, check_tokenizer_fits, read_adapter_config
    from medpt.model.loading import load_model, load_tokenizer, model_facts
    from medpt.rundir import claim_file

    adapter = lora_run(config.eval.adapter, "verify")
    adapter_config = read_adapter_config(adapter)
    weights = adapter / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise MedptError(f"{adapter}: no {ADAPTER_WEIGHTS}")
    base_name = base_model_name(config.model.model_name_or_path, adapter)
    # Files that do not fit each other are errors (medpt.model.files); a configured target missing from the base is
    # check 3's failure, reported with the others.
    facts = model_facts(config.model, base_name)
    missing = check_adapter_fits(adapter, facts, targets_must_exist=False)
    tokenizer_dir = run_tokenizer_dir(config.model, adapter, base_name)
    tokenizer = load_tokenizer(str(tokenizer_dir), config.model.trust_remote_code)
    check_tokenizer_fits(tokenizer, tokenizer_dir, facts)
    claim_file(adapter / VERIFY, COMMANDS["verify"], flag="adapter")
    checks: list[dict[str, Any]] = []

    def check(name: str, ok: bool, detail: str) -> None:
        checks.append({"check": name, "ok": bool(ok), "detail": detail})
        log(f"  [{'ok' if ok else 'FAIL'}] {name}: {detail}")

    # 1. the right base
    same, detail = base_matches(config.model, adapter, base_name)
    check("base model", same is not False, detail)
    # 2. the weights file: readable, finite
    nonfinite, b_keys, zero, n_params = _read_weights(weights)
    check("finite weights", not nonfinite, f"NaN/inf in {nonfinite[:3]}" if nonfinite else "all finite")
    # 3. target modules exist
    targets = adapter_config.get("target_modules") or []
    check("target modules", not missing, f"{len(targets)} present" if not missing else f"missing in base: {missing}")
    # 4. B matrices
    detail = f"{len(b_keys) - len(zero)}/{len(b_keys)} non-zero" + (f"; all-zero: {zero[:3]}..." if zero else "")
    check("LoRA B non-zero", bool(b_keys) and not zero, detail)
    # 5. the adapter changes the logits
    from peft import PeftModel

    base = load_model(config.model, torch.float32, name=base_name).eval()
    ids = tokenizer(PROBE, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        before = base(ids).logits
        try:
            tuned = PeftModel.from_pretrained(base, str(adapter)).eval()
        except (RuntimeError, ValueError) as e:  # no configured target in this base (check 3 says which)
            raise MedptError(f"the adapter does not fit {base_name}: {str(e).splitlines()[0]}") from None
        after = tuned(ids).logits
    delta = (after - before).abs().max().item()
    check("changes the logits", delta > 1e-6, f"max |Δlogit| = {delta:.4g} on a {ids.shape[1]}-token probe")
    summary = {
        "adapter": str(adapter),
        "base_model": base_name,
        "rank": adapter_config.get("r"),
        "alpha": adapter_config.get("lora_alpha"),
        "target_modules": targets,
        "trainable_parameters": n_params,
        "adapter_bytes": weights.stat().st_size,
        "max_abs_logit_change": delta if math.isfinite(delta) else None,
        "checks": checks,
        "ok": all(c["ok"] for c in checks),
    }
    log(f"  adapter: {n_params:,} parameters, {weights.stat().st_size / 2**20:.2f} MiB, r={summary['rank']}, "
        f"alpha={summary['alpha']}")  # fmt: skip
    atomic_write_text(adapter / VERIFY, dumps(summary, ensure_ascii=False, indent=2))
    if not summary["ok"]:
        failed = "; ".join(f"{c['check']}: {c['detail']}" for c in checks if not c["ok"])
        log(f"verify FAILED: {failed}")
        return 1
    log("verify: all checks passed")
    return 0


def _read_weights(path: Any) -> tuple[list[str], list[str], list[str], int]:
    """(non-finite tensors, LoRA B tensors, all-zero B tensors, parameter count) of the adapter file."""
    import torch

    from medpt.model.adapter import adapter_tensors

    tensors = adapter_tensors(path)
    keys = list(tensors)
    nonfinite = [k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    b_keys = [k for k in keys if "lora_B" in k]
    zero = [k for k in b_keys if tensors[k].abs().max().item() == 0]
    return nonfinite, b_keys, zero, sum(math.prod(t.shape) for t in tensors.values())
