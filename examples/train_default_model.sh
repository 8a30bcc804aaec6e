#!/usr/bin/env bash
# Reproduce the embedded default model (detailflow_hf/default_model) with this package's own training
# scripts, offline, on a 2-core CPU (about an hour). Needs: apt-get install fonts-noto-color-emoji unicode-data
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-data/emoji32}
OUT=${OUT:-outputs/default_model}

python examples/build_emoji_dataset.py --output_dir "$DATA" --size 32
python examples/train_tokenizer.py --config examples/configs/emoji_tokenizer.yaml --train_data_dir "$DATA/train" \
    --output_dir "$OUT/tokenizer_stage1" --max_train_steps 18000 --seed 0 --report_to none
# The decoder alone, its lr annealed to 0: the encoder and codebook stay frozen, so the codes keep their meaning.
python examples/finetune_tokenizer_decoder.py --model "$OUT/tokenizer_stage1" --train_data_dir "$DATA/train" \
    --output_dir "$OUT/tokenizer" --max_train_steps 1000 --train_batch_size 16 --learning_rate 2e-4 --lr_scheduler cosine
python examples/extract_codes.py --tokenizer "$OUT/tokenizer" --train_data_dir "$DATA/train" --output_dir "$OUT/codes" --ten_crop --seed 0
python examples/train_generator.py --config examples/configs/emoji_generator.yaml --tokenizer "$OUT/tokenizer" \
    --codes_dir "$OUT/codes" --output_dir "$OUT/pipeline" --seed 0 --report_to none --guidance_scale 2.0
python examples/eval_default_model.py --model "$OUT/pipeline" --data_dir "$DATA" --output "$OUT/results.json"
python examples/embed_default_model.py --pipeline "$OUT/pipeline" --results "$OUT/results.json" --data_dir "$DATA"
