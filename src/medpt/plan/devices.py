"""What a device holds and what it costs before the first tensor: its memory, the framework's fixed overhead, and
the share of a step's memory its allocator keeps beyond what tensors use.

1. GPU (CUDA): the memory of each visible card, asked of torch only when an NVIDIA or AMD device node exists (so a
   CPU-only plan never imports torch). Fixed overhead: the CUDA context and kernels, ~0.75 GiB (nvidia-smi shows
   781 MB for a bare PyTorch process: pytorch/pytorch#34323). Reserve: the caching allocator rounds blocks and
   keeps freed ones; 10% of the memory that comes and goes in a step is assumed until bench/gpu_check.py measures
   max_memory_reserved against max_memory_allocated on a card.
2. CPU: this machine's available memory (MemAvailable). Fixed overhead: a `medpt train` process before the model
   is loaded (Python, torch, transformers, peft, datasets, the prepared data) and its first step (thread pools,
   lazily loaded kernels): the smallest measured run less its planned tensors (bench/memory.py).
   Reserve: glibc keeps freed blocks in its heap (medpt.train.allocator asks it to, for speed), and a step's pattern of
   long-lived saved activations between short-lived temporaries strands some: measured (bench/memory.py, glibc
   2.36) as about six layers' worth of saved activations beyond the tensors alive, with or without checkpointing.
   With MALLOC_MMAP_THRESHOLD_ set glibc returns large blocks at once (slower steps) and the reserve is 0.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from medpt.args import parse_size

CUDA_CONTEXT_BYTES = 750 << 20
CUDA_RESERVE = 0.10
CPU_RUNTIME_BYTES = 560 << 20  # bench/memory.py: the smallest run's peak RSS less its planned tensors (torch 2.13)
CPU_HEAP_LAYERS = 6.0


def memories(device_memory: list[str] | None) -> tuple[str, list[tuple[str, int]]]:
    """(device kind, [(label, bytes)]): --device_memory sizes ("gpu": GPUs not necessarily on this machine), else
    the visible GPUs ("cuda"), else this machine ("cpu")."""
    if device_memory:
        return "gpu", [(size, parse_size(size, "device_memory")) for size in device_memory]
    gpus = visible_gpus()
    if gpus:
        return "cuda", gpus
    return "cpu", [("this machine, available", available_memory())]


def visible_gpus() -> list[tuple[str, int]]:
    """Each visible GPU's name and memory; [] without importing torch when the machine has no GPU device node."""
    if not any(Path(p).exists() for p in ("/dev/nvidia0", "/dev/nvidiactl", "/dev/kfd")):
        return []
    import torch

    if not torch.cuda.is_available():
        return []
    cards = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
    return [(f"GPU {i}: {p.name}", int(p.total_memory)) for i, p in enumerate(cards)]


def available_memory() -> int:
    """MemAvailable (what can be used without swapping), else physical memory."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def overheads(kind: str) -> dict[str, Any]:
    """The Setup fields of a device kind's fixed overhead and allocator reserve (see the module docstring)."""
    if kind in ("cuda", "gpu"):
        return {"fixed_bytes": CUDA_CONTEXT_BYTES, "reserve": CUDA_RESERVE}
    returns_blocks = "MALLOC_MMAP_THRESHOLD_" in os.environ
    return {"fixed_bytes": CPU_RUNTIME_BYTES, "heap_layers": 0.0 if returns_blocks else CPU_HEAP_LAYERS}
