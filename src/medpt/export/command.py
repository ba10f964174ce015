"""`medpt export --adapter RUN --target vllm|sglang|llamacpp|merged|gguf --output_dir OUT [--quant ...]`.

The engines people deploy with refuse, or silently mis-serve, common adapters, and say so only on the serving
machine. medpt knows how the adapter was trained, so it checks it against the target's limits first (each target
module cites the engine's file and version) and then writes what the target loads, converts it, or refuses with
the reason and the target that works:

| target   | LoRA          | rsLoRA                       | DoRA              | modules_to_save   |
| -------- | ------------- | ---------------------------- | ----------------- | ----------------- |
| vllm     | as is         | as is (vLLM scales α/√r)     | refused → merged  | refused → merged  |
| sglang   | as is         | alpha → α·√r (SGLang: α/r)   | refused → merged  | refused → merged  |
| llamacpp | GGUF LoRA     | alpha → α·√r (llama.cpp: α/r)| refused → gguf    | refused → gguf    |
| merged   | merged        | merged                       | merged            | merged            |
| gguf     | merged → GGUF | merged → GGUF                | merged → GGUF     | merged → GGUF     |

The table is `TARGETS[target].ACCEPTS`; tests check every cell. The output folder is written whole, in one rename,
and holds `export.json`: the adapter's features, what was done with each, conversions, the commands, and the
llama.cpp-vs-transformers check for the GGUF targets.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

from medpt.args.commands import COMMANDS
from medpt.errors import MedptError
from medpt.export import gguf, llamacpp, merged, sglang, vllm
from medpt.export.plan import AdapterFacts, Job, plan
from medpt.rundir import EXPORT_INFO
from medpt.strictjson import dumps

TARGETS: dict[str, ModuleType] = {"vllm": vllm, "sglang": sglang, "llamacpp": llamacpp, "merged": merged, "gguf": gguf}
NAME_THE_BASE = ("vllm", "sglang")  # the targets that export the adapter alone, naming the base to load it on


def run_export(config: Any, log: Any = print) -> int:
    from medpt.args.resolve import absolute_paths, inputs_of
    from medpt.atomic import atomic_dir
    from medpt.model.adapter import check_variants, lora_run
    from medpt.model.adapter_scale import single_scale
    from medpt.rundir import check_output, check_replaceable

    target = config.export.target
    if target is None:
        raise MedptError(f"export needs --target ({' | '.join(TARGETS)})")
    if "output_dir" not in config.explicit:
        raise MedptError("export needs --output_dir (a new, empty folder for what the target loads)")
    if config.export.base_model is not None and target not in NAME_THE_BASE:
        raise MedptError(f"--base_model names the base of an exported adapter (--target {' or '.join(NAME_THE_BASE)}); "
                         f"--target {target} writes the base's weights itself")  # fmt: skip
    adapter = lora_run(config.eval.adapter, "export")
    facts = AdapterFacts.read(adapter)
    handling = plan(target, TARGETS[target].ACCEPTS, facts)  # refuses before anything is loaded or written
    out = check_output("output_dir", config.run.output_dir, inputs_of(config))
    check_replaceable(out, COMMANDS["export"], config.run.overwrite_output_dir, "an export")
    base_name = check_variants(config, log).base_name
    named_base = config.export.base_model or absolute_paths(base_name)
    scale = single_scale(config, "export")  # merged targets: merge_adapter folds it in; the others: into alpha
    with atomic_dir(out) as tmp:
        job = Job(config, adapter, facts, base_name, named_base, tmp, out, config.export.quant, log, scale)
        commands = TARGETS[target].write(job)
        _write_report(job, target, handling, commands)
    return _finish(job, target, commands)


def _write_report(job: Job, target: str, handling: dict, commands: list[str]) -> None:
    from medpt.rundir import RunDir

    report = {
        "target": target,
        "adapter": str(job.adapter.resolve()),
        "base_model": job.named_base if target in NAME_THE_BASE else job.base_name,
        "features": {f: {"what": job.facts.describe(f), "done": h.action, "why": h.why} for f, h in handling.items()},
        "adapter_scale": job.scale,
        "conversions": job.notes,
        "commands": commands,
        "llama_cpp_check": job.report or None,
    }
    (job.tmp / EXPORT_INFO).write_text(dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    RunDir(Path(job.tmp)).record([p.name for p in Path(job.tmp).iterdir()], "export")


def _finish(job: Job, target: str, commands: list[str]) -> int:
    for note in job.notes:
        job.log(f"converted: {note}")
    if target in NAME_THE_BASE:
        how = "--base_model" if job.config.export.base_model else "as trained; --base_model names another"
        job.log(f"the adapter's base: {job.named_base} ({how})")
    job.log(f"exported for {target}: {job.out}")
    job.log("serve it with:")
    for command in commands:
        job.log(f"  {command}")
    return 1 if job.report.get("ok") is False else 0
