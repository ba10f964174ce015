#!/usr/bin/env bash
# Eager training speed, side by side: LoRA dropout 0 vs 0.05, with medpt's allocator setting and without
# (MEDPT_MALLOC=default), in alternating rounds of 14-step runs of the 25m tiny model (block 512, batch 4, LoRA r16 on
# all linear layers, fp32 unless BF16=true). Prints the median steady tokens/s of each run.
# Usage: bash bench/train_ab.sh [ROUNDS]   (needs bench/results/train_throughput/tiny-25m: run train_throughput.py once)
set -euo pipefail
cd "$(dirname "$0")/.."
M=bench/results/train_throughput/tiny-25m
C=../shared/data/medical_qa_zh_mix/train-00000-of-00004.jsonl
[ -f "$C" ] || C=src/medpt/sample_data/medical_qa_zh.jsonl
W=bench/results/train_ab
PY=${PYTHON:-.venv/bin/python}
run() {  # NAME DROPOUT [ENV=VALUE ...]
  local name=$1 drop=$2
  shift 2
  env "$@" "$PY" -m medpt train --model_name_or_path $M --train_file_dir "$C" --validation_split_percentage 0 \
    --block_size 512 --per_device_train_batch_size 4 --max_steps 14 --logging_steps 1 --lora_rank 16 \
    --lora_alpha 32 --lora_dropout "$drop" --target_modules all --bf16 "${BF16:-false}" --torch_compile false \
    --output_dir "$W/$name" --overwrite_output_dir --save_strategy no --report_to none --disable_tqdm true \
    --plot false >/dev/null 2>&1
  "$PY" - "$W/$name/metrics.jsonl" "$name" <<'PY'
import json, statistics, sys
rows = [json.loads(x) for x in open(sys.argv[1]) if "tokens_per_second" in x]
print(f"{sys.argv[2]:<24}{statistics.median(r['tokens_per_second'] for r in rows if r['step'] > 3):>8.0f} tokens/s")
PY
}
for i in $(seq "${1:-2}"); do
  run "drop0-$i" 0.0 MEDPT_AB=1
  run "drop0.05-$i" 0.05 MEDPT_AB=1
  run "drop0-malloc_default-$i" 0.0 MEDPT_MALLOC=default
  run "drop0.05-malloc_default-$i" 0.05 MEDPT_MALLOC=default
done
