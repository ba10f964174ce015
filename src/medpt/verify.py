"""`medpt verify`: prove an adapter is really applied, before trusting any number measured with it.

Checks, each reported, any failure making the exit status 1:
1. the base model is the one the adapter was trained on (weights fingerprint recorded by `medpt train`);
2. every target module of the adapter exists in the base model;
3. every LoRA B matrix is non-zero (B starts at zero: an all-zero B means that layer never learned anything);
4. the adapter changes the logits on a probe prompt (max |Δlogit| reported);
and it reports the adapter's trainable parameters and file size.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from medpt.errors import MedptError

BASE_RECORD = "base_model.json"
PROBE = "问:高血压患者日常饮食需要注意什么？\n答:"


def run_verify(config: Any, log: Any = print) -> int:
    import torch
    from safetensors import safe_open

    from medpt.atomic import atomic_write_text
    from medpt.hub import resolve_local
    from medpt.model import (
        MODEL_FILES,
        base_model_name,
        load_model,
        load_tokenizer,
        lora_run,
        run_tokenizer_dir,
        weights_fingerprint,
    )

    adapter = lora_run(config.eval.adapter, "verify")
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    weights = adapter / "adapter_model.safetensors"
    if not weights.is_file():
        raise MedptError(f"{adapter}: no adapter_model.safetensors")
    base_name = base_model_name(config.model.model_name_or_path, adapter)
    checks: list[dict[str, Any]] = []

    def check(name: str, ok: bool, detail: str) -> None:
        checks.append({"check": name, "ok": bool(ok), "detail": detail})
        log(f"  [{'ok' if ok else 'FAIL'}] {name}: {detail}")

    # 1. the right base
    local = resolve_local(base_name, MODEL_FILES, config.model.revision, config.model.cache_dir)
    record = adapter / BASE_RECORD
    if record.is_file():
        expected = json.loads(record.read_text())
        same = expected["fingerprint"] == weights_fingerprint(local)
        check("base model", same, f"{base_name} " + ("matches" if same else f"is not the base the adapter was trained "
              f"on ({expected['name']})"))  # fmt: skip
    else:
        check("base model", True, f"{base_name} (no {BASE_RECORD}: trained outside medpt, not checked)")
    # 2. target modules exist
    base = load_model(base_name, torch.float32, revision=config.model.revision, cache_dir=config.model.cache_dir,
                      trust_remote_code=config.model.trust_remote_code).eval()  # fmt: skip
    names = [n for n, _ in base.named_modules()]
    targets = adapter_config.get("target_modules") or []
    if isinstance(targets, str):  # a regex in PEFT's config
        missing = [] if any(re.fullmatch(targets, n) for n in names) else [targets]
    else:
        missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    check("target modules", not missing, f"{len(targets)} present" if not missing else f"missing in base: {missing}")
    # 3. B matrices
    with safe_open(str(weights), "pt") as f:
        keys = list(f.keys())
        b_keys = [k for k in keys if "lora_B" in k]
        zero = [k for k in b_keys if f.get_tensor(k).abs().max().item() == 0]
        n_params = sum(math.prod(f.get_slice(k).get_shape()) for k in keys)
    detail = f"{len(b_keys) - len(zero)}/{len(b_keys)} non-zero" + (f"; all-zero: {zero[:3]}..." if zero else "")
    check("LoRA B non-zero", bool(b_keys) and not zero, detail)
    # 4. the adapter changes the logits
    from peft import PeftModel

    tokenizer = load_tokenizer(str(run_tokenizer_dir(adapter) or local))
    ids = tokenizer(PROBE, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        before = base(ids).logits
        try:
            tuned = PeftModel.from_pretrained(base, str(adapter)).eval()
        except RuntimeError as e:  # shape mismatch: an adapter for another architecture or size
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
        "max_abs_logit_change": delta,
        "checks": checks,
        "ok": all(c["ok"] for c in checks),
    }
    log(f"  adapter: {n_params:,} parameters, {weights.stat().st_size / 2**20:.2f} MiB, r={summary['rank']}, "
        f"alpha={summary['alpha']}")  # fmt: skip
    atomic_write_text(adapter / "verify.json", json.dumps(summary, ensure_ascii=False, indent=2))
    if not summary["ok"]:
        failed = "; ".join(f"{c['check']}: {c['detail']}" for c in checks if not c["ok"])
        log(f"verify FAILED: {failed}")
        return 1
    log("verify: all checks passed")
    return 0
