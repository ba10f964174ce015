"""`--target gguf`: the merged model as one GGUF file (gguf_writer), verified against transformers through
llama-cpp-python when it is installed, with an Ollama Modelfile in the run's 问/答 template and its stop strings.

Takes every adapter, as `merged` does: the adapter is folded in (in float32, so f16/q8_0 round the merged weights
once) before anything is written, so llama.cpp never sees a LoRA, DoRA or modules_to_save tensor.
"""

from __future__ import annotations

from typing import Any

from medpt.export.plan import MERGED, Handling, Job
from medpt.strictjson import dumps

ACCEPTS: dict[str, Handling] = {feature: MERGED for feature in ("lora", "rslora", "dora", "modules_to_save")}
MODELFILE = "Modelfile"


def write(job: Job) -> list[str]:
    import torch

    from medpt.export.gguf_writer import check_convertible, gguf_name, write_gguf
    from medpt.export.merging import merge_adapter
    from medpt.export.probe import verify
    from medpt.model.adapter import run_tokenizer_dir
    from medpt.model.loading import model_config

    check_convertible(
        model_config(job.config.model, job.base_name), run_tokenizer_dir(job.config.model, job.adapter, job.base_name)
    )
    merged = merge_adapter(job.config, job.adapter, job.out, job.log, dtype=torch.float32)
    path = job.tmp / gguf_name(job.quant)
    write_gguf(merged.model.eval(), merged.tokenizer, merged.tokenizer_dir, path, job.quant, job.base_name)
    job.report.update(verify(job, merged.model, merged.tokenizer, path))
    (job.tmp / MODELFILE).write_text(modelfile(path.name, job.config.data), encoding="utf-8")
    return [
        f"llama-server -m {job.out / path.name} --host 127.0.0.1 --port 8080",
        f"cd {job.out} && ollama create medpt -f {MODELFILE} && ollama run medpt",
    ]


def modelfile(gguf_file: str, data: Any) -> str:
    """An Ollama Modelfile that asks questions the way the run was trained (问:{q}\\n答:) and stops where the model
    starts the next turn, as `medpt generate` does."""
    from medpt.generate.prompting import role_format, stop_strings

    fmt = role_format(data.template, data.template_format)
    (h0, h1), (g0, _) = fmt.wrap["human"], fmt.wrap["gpt"]
    template = f"{h0}{{{{ .Prompt }}}}{h1}{g0}"
    lines = [f"FROM ./{gguf_file}", f'TEMPLATE """{template}"""']
    lines += [f"PARAMETER stop {dumps(stop, ensure_ascii=False)}" for stop in stop_strings(data)]
    lines += ["PARAMETER temperature 0.7", "PARAMETER top_p 0.9"]
    return "\n".join(lines) + "\n"
