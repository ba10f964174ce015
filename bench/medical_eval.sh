#!/usr/bin/env bash
# The tiny 25m model, LoRA-trained (reference LoRA config) on ../shared/data/medical_qa_zh_mix for a few hundred steps,
# then `medpt eval` base vs adapted: perplexity on its held-out split, its test split and general Chinese text
# (cmrc2018 wiki), every multiple-choice benchmark in ../shared/data (300 questions each, 3-shot from their dev.jsonl),
# 100 generated answers scored against the test split's references; then the same benchmarks under --circular.
# CPU, about 15 minutes of training on 2 cores (300 steps). Usage: bash bench/medical_eval.sh [STEPS]
# (PYTHON=/path/to/python picks the interpreter, default .venv/bin/python; QUESTIONS=N questions per benchmark, 300;
# SIZE=5m a smaller model; W=DIR the work folder; TRAIN_EXTRA="--flag value" more training flags; SUITE=0 trains only)
set -euo pipefail
cd "$(dirname "$0")/.."
D=../shared/data
W=${W:-bench/results/medical}
SIZE=${SIZE:-25m}
STEPS=${1:-300}
medpt=("${PYTHON:-.venv/bin/python}" -m medpt)
[ -d "$D/medical_qa_zh_mix" ] || { echo "skipped: $D/medical_qa_zh_mix is not available"; exit 0; }
[ -f "$W/tiny-$SIZE/medpt_tiny.json" ] || "${medpt[@]}" init-tiny --output_dir "$W/tiny-$SIZE" --size "$SIZE" \
  --corpus "$D/medical_qa_zh_mix/train-*.jsonl"
# shellcheck disable=SC2086  # TRAIN_EXTRA is a list of flags
"${medpt[@]}" train --model_name_or_path "$W/tiny-$SIZE" --train_file_dir "$D/medical_qa_zh_mix/train-*.jsonl" \
  --validation_file_dir "$D/medical_qa_zh_mix/valid.jsonl" --max_eval_samples 300 --block_size 512 \
  --per_device_train_batch_size 4 --gradient_accumulation_steps 2 --max_steps "$STEPS" --learning_rate 2e-3 \
  --warmup_ratio 0.05 --weight_decay 0.01 --lora_rank 16 --lora_alpha 32 --lora_dropout 0.05 --target_modules all \
  --logging_steps 10 --eval_strategy steps --eval_steps 100 --save_steps 100 --save_total_limit 2 --do_eval \
  --output_dir "$W/run" --overwrite_output_dir --disable_tqdm true ${TRAIN_EXTRA:-}
[ "${SUITE:-1}" = 0 ] && exit 0
suite=(--mcq_dir "$D" --max_mcq_questions "${QUESTIONS:-300}" --num_fewshot 3 --mcq_scoring letter --per_device_eval_batch_size 16)
"${medpt[@]}" eval --adapter "$W/run" \
  --eval_sets "medical_test=$D/medical_qa_zh_mix/test.jsonl" "general=$D/general_zh_cmrc2018_wiki/test.jsonl" \
  "${suite[@]}" --generate_eval 100 --generate_file "$D/medical_qa_zh_mix/test.jsonl" --max_new_tokens 64
"${medpt[@]}" eval --adapter "$W/run" "${suite[@]}" --circular --output_dir "$W/run/eval-circular"
"${medpt[@]}" verify --adapter "$W/run"
"${medpt[@]}" report "$W/run"
