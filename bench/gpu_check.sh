#!/usr/bin/env bash
# The device check for a lent GPU machine (its python3 has torch, transformers, peft and accelerate; medpt runs
# from the source tree). One call, well under 8 minutes; results also land in $OUT/gpu_check.json.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, transformers, peft, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
python3 bench/gpu_check.py --shape 7b --steps 12 --out "${OUT:-/tmp}/gpu_check.json"
