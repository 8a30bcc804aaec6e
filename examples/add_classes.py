"""Teach a class-conditional DetailFlow generator new classes, keeping the old ones.

    python examples/add_classes.py --model PIPELINE --train_data_dir new_classes/ --output_dir grown/ \
        --max_train_steps 3000 --learning_rate 2e-5

The class embedding grows by one row per class of `new_classes/` (an imagefolder or parquet set);
the new rows start at the mean of the existing class rows, the old rows keep their ids and the CFG
null class moves to the new last row (`num_classes`). The whole generator is then fine-tuned on the
new images (encoded on the fly by the frozen tokenizer) with class dropout as in pre-training, so
guidance keeps working; weight decay is off, so the rows of the old classes, which receive no
gradient, stay exactly as they were. For a released 1000-class model a small learning rate
(1e-5..5e-5) limits drift on the old classes; mix old-class images in to guard them further.
Writes a pipeline to `output_dir` whose labels are the old names followed by the new ones.
"""

from __future__ import annotations

import argparse
import sys

import torch
from accelerate import Accelerator

from detailflow_hf import DetailFlowPipeline
from detailflow_hf.image_datasets import ImageFolderDataset
from detailflow_hf.loading import load_pipeline
from detailflow_hf.pipelines.adapters import set_classes
from detailflow_hf.training.finetuning import add_finetune_args, encode_images, generator_loss, run_training


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_finetune_args(
        parser,
        "base pipeline folder or Hub repo id",
        "images of the new classes (imagefolder or parquet)",
        learning_rate=2e-5,
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    torch.manual_seed(args.seed)
    pipe = load_pipeline(args.model, accelerator.device)
    data = ImageFolderDataset(args.train_data_dir, pipe.vqvae.config.image_size)
    first_new = pipe.transformer.config.num_classes
    if pipe.id2label:  # carry the pipeline's names into the generator before appending
        pipe.transformer.config.id2label = dict(pipe.id2label)
    set_classes(pipe.transformer, data.class_names, keep_existing=True)
    model = pipe.transformer
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.0)
    loader = torch.utils.data.DataLoader(data, batch_size=args.train_batch_size, shuffle=True)
    group_size = model.config.group_size
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)

    run_training(
        accelerator,
        model,
        optimizer,
        loader,
        args.max_train_steps,
        lambda batch: generator_loss(
            model, encode_images(pipe.vqvae, batch["pixel_values"]), batch["label"] + first_new, group_size
        ),
        lr_scheduler=args.lr_scheduler,
        lr_warmup_steps=args.lr_warmup_steps,
    )
    if accelerator.is_main_process:
        transformer = accelerator.unwrap_model(model).eval()
        grown = DetailFlowPipeline(vqvae=pipe.vqvae, transformer=transformer, id2label=transformer.config.id2label)
        grown.save_pretrained(args.output_dir)
        print(
            f"wrote {args.output_dir}: classes {first_new}..{transformer.config.num_classes - 1} are "
            f"{data.class_names}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
