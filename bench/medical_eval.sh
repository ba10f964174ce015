#!/usr/bin/env bash
# The tiny 25m model, LoRA-trained (reference LoRA config) on ../shared/data/medical_qa_zh_mix for a few hundred steps,
# then `medpt eval` base vs adapted on its test split, on general Chinese text (cmrc2018 wiki) and on CMMLU's medical
# multiple-choice questions. CPU, about 15 minutes on 2 cores. Usage: bash bench/medical_eval.sh [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
D=../shared/data
W=bench/results/medical
STEPS=${1:-300}
medpt=(.venv/bin/python -m medpt)
[ -d "$D/medical_qa_zh_mix" ] || { echo "skipped: $D/medical_qa_zh_mix is not available"; exit 0; }
[ -f "$W/tiny-25m/medpt_tiny.json" ] || "${medpt[@]}" init-tiny --output_dir "$W/tiny-25m" --size 25m \
  --corpus "$D/medical_qa_zh_mix/train-*.jsonl"
"${medpt[@]}" train --model_name_or_path "$W/tiny-25m" --train_file_dir "$D/medical_qa_zh_mix/train-*.jsonl" \
  --validation_file_dir "$D/medical_qa_zh_mix/valid.jsonl" --max_eval_samples 300 --block_size 512 \
  --per_device_train_batch_size 4 --gradient_accumulation_steps 2 --max_steps "$STEPS" --learning_rate 2e-3 \
  --warmup_ratio 0.05 --weight_decay 0.01 --lora_rank 16 --lora_alpha 32 --lora_dropout 0.05 --target_modules all \
  --logging_steps 10 --eval_strategy steps --eval_steps 100 --save_steps 100 --save_total_limit 2 --do_eval \
  --output_dir "$W/run" --overwrite_output_dir --disable_tqdm true
"${medpt[@]}" eval --adapter "$W/run" \
  --eval_sets "medical_test=$D/medical_qa_zh_mix/test.jsonl" "general=$D/general_zh_cmrc2018_wiki/test.jsonl" \
  --mcq_file "$D/medical_mcq_cmmlu/test.jsonl" --max_mcq_questions 300 --fewshot_file "$D/medical_mcq_cmmlu/dev.jsonl" \
  --num_fewshot 3
"${medpt[@]}" verify --adapter "$W/run"
"${medpt[@]}" report "$W/run"
