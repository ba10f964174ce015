#!/usr/bin/env bash
# `medpt tune` on real data: a study of the tiny 25m model (LoRA on every linear layer, the default search space:
# learning rate, rank, alpha per rank, dropout, warmup) trained on ../shared/data/medical_qa_zh_mix and scored on its
# validation split, run by WORKERS `medpt tune` processes that share one SQLite study in one folder. Prints the wall
# time, the best trial and the training steps pruning saved; `medpt report` then draws the study.
# Each worker gets nproc / WORKERS torch threads (more threads than cores slows every worker down several times).
# Usage: bash bench/tune.sh [STEPS_PER_TRIAL=60] [TRIALS=12] [WORKERS=2]
#   env: EVAL_SAMPLES (validation documents each evaluation reads; default 100), PYTHON (default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
D=../shared/data
W=bench/results/tune
STEPS=${1:-60}
TRIALS=${2:-12}
WORKERS=${3:-2}
medpt=("${PYTHON:-.venv/bin/python}" -m medpt)
[ -d "$D/medical_qa_zh_mix" ] || { echo "skipped: $D/medical_qa_zh_mix is not available"; exit 0; }
mkdir -p "$W"
[ -f "$W/tiny-25m/medpt_tiny.json" ] || "${medpt[@]}" init-tiny --output_dir "$W/tiny-25m" --size 25m \
  --corpus "$D/medical_qa_zh_mix/train-*.jsonl"
rm -rf "$W/study" "$W"/worker-*.log  # a fresh study each time (this script's own output)
args=(--model_name_or_path "$W/tiny-25m" --train_file_dir "$D/medical_qa_zh_mix/train-*.jsonl"
  --validation_file_dir "$D/medical_qa_zh_mix/valid.jsonl" --max_eval_samples "${EVAL_SAMPLES:-100}" --block_size 256
  --per_device_train_batch_size 4 --per_device_eval_batch_size 16 --target_modules all --logging_steps 10
  --max_steps "$STEPS" --eval_steps $((STEPS / 4 > 0 ? STEPS / 4 : 1)) --report_to none --disable_tqdm true
  --plot false --data_cache_dir "$W/cache" --preprocessing_num_workers 2
  --n_trials "$TRIALS" --pruner_startup_trials 3 --sampler_startup_trials 6 --output_dir "$W/study")
threads=$(( $(nproc) / WORKERS > 0 ? $(nproc) / WORKERS : 1 ))
start=$(date +%s.%N)
pids=()
for i in $(seq "$WORKERS"); do
  OMP_NUM_THREADS=$threads "${medpt[@]}" tune "${args[@]}" > "$W/worker-$i.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
end=$(date +%s.%N)
[ "$status" = 0 ] || { echo "a worker failed (exit $status); see $W/worker-*.log"; tail -5 "$W"/worker-*.log; exit 1; }
echo "wall time: $(echo "$end - $start" | bc) s for $TRIALS trials of $STEPS steps, $WORKERS workers x $threads thread(s)"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs)"
grep '^- ' "$W/study/trials.md"
echo "trials per worker:"
tail -n +2 "$W/study/trials.csv" | awk -F, '{print $(NF-1)}' | sort | uniq -c
"${medpt[@]}" report "$W/study"
