#!/usr/bin/env bash
# Reproduce the embedded default model (src/detailflow_hf/default_model) with this package's own training
# scripts, offline and seeded, on a 2-core CPU (about 100 minutes). A maintainer script: it overwrites the
# embedded model. Needs: apt-get install fonts-noto-color-emoji unicode-data
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-data/emoji32}
OUT=${OUT:-outputs/default_model}

# One class per emoji (Unicode names); every 10th emoji of each group held out of all training.
python scripts/build_emoji_dataset.py --output_dir "$DATA" --size 32 --framings 4 --seed 0
# The tokenizer learns each training emoji in four framings (train_framed/), so it does not depend on one.
python examples/train_tokenizer.py --config scripts/configs/emoji_tokenizer.yaml --train_data_dir "$DATA/train_framed" \
    --output_dir "$OUT/tokenizer_stage1" --max_train_steps 21000 --seed 0 --report_to none
# The decoder alone, its lr annealed to 0: the encoder and codebook stay frozen, so the codes keep their meaning.
python examples/finetune_tokenizer_decoder.py --model "$OUT/tokenizer_stage1" --train_data_dir "$DATA/train_framed" \
    --output_dir "$OUT/tokenizer" --max_train_steps 1000 --train_batch_size 16 --learning_rate 2e-4 --lr_scheduler cosine
# The generator's codes: each emoji as drawn (no mirror images: flags and text do not mirror).
python examples/extract_codes.py --tokenizer "$OUT/tokenizer" --train_data_dir "$DATA/train" --output_dir "$OUT/codes" \
    --no_mirror --seed 0
python examples/train_generator.py --config scripts/configs/emoji_generator.yaml --tokenizer "$OUT/tokenizer" \
    --codes_dir "$OUT/codes" --output_dir "$OUT/pipeline_stage1" --seed 0 --report_to none --guidance_scale 1.0
# Detail completion: the same generator continued on codes that also start from thumbnails' prefixes.
python examples/extract_codes.py --tokenizer "$OUT/tokenizer" --train_data_dir "$DATA/train" \
    --output_dir "$OUT/codes_thumbnails" --no_mirror --thumbnail_prefixes 8 --seed 0
python examples/train_generator.py --config scripts/configs/emoji_generator_detail.yaml --tokenizer "$OUT/tokenizer" \
    --codes_dir "$OUT/codes_thumbnails" --init_from "$OUT/pipeline_stage1" --output_dir "$OUT/pipeline" --seed 0 \
    --report_to none --guidance_scale 1.0
python scripts/eval_default_model.py --model "$OUT/pipeline" --data_dir "$DATA" --output "$OUT/results.json" \
    --reframed_dir "$OUT/heldout_reframed"
python scripts/embed_default_model.py --pipeline "$OUT/pipeline" --results "$OUT/results.json" --data_dir "$DATA"
