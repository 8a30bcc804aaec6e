"""LoRA fine-tuning of a DetailFlow generator on a new labelled image set (peft).

    python examples/finetune_lora.py --model PIPELINE --train_data_dir my_images/ --output_dir lora/ \
        --max_train_steps 2000 --rank 16 --learning_rate 1e-4
    accelerate launch --num_processes 4 --mixed_precision bf16 examples/finetune_lora.py ...

`my_images/` is an imagefolder (`train/<class name>/*.png`) or parquet files with image/label
columns; its class names become the pipeline's labels. The images are encoded on the fly by the
frozen tokenizer; LoRA goes on every attention and MLP projection of the generator
(`q_proj k_proj v_proj o_proj gate_proj up_proj down_proj`) and the class embedding, resized to
the new label set (the CFG null class kept last), is trained in full. For the released 256 px
models (e.g. a converted DetailFlow-16), rank 8-32 and a few thousand steps at batch 32 suit a
few hundred images per class.

Writes `output_dir/adapter` (`pipe.save_adapter`: the peft adapter, the class embedding with the new
rows, `id2label.json` and a card naming the base), then reloads it on a fresh base
(`pipe.load_adapter`, merged) and saves `output_dir/merged`, a pipeline that loads with
`load_pipeline` and takes the new class names, plus `output_dir/samples.png`. Upload the adapter
with `detailflow_hf.hub.push_folder(output_dir / "adapter", "me/my-lora")`; anyone then adapts the
base with `load_pipeline(BASE).load_adapter("me/my-lora")`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from detailflow_hf import flags
from detailflow_hf.evaluation.arguments import add_sampling_args, sampling_arguments
from detailflow_hf.hub import is_hub_repo_id
from detailflow_hf.image_datasets import ImageFolderDataset
from detailflow_hf.loading import load_pipeline
from detailflow_hf.pipelines.adapters import add_generator_lora, set_classes
from detailflow_hf.pipelines.image_processing import image_grid
from detailflow_hf.training.finetuning import add_finetune_args, encode_images, generator_loss, run_training


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_finetune_args(
        parser, "base pipeline folder or Hub repo id", "imagefolder or parquet folder with labels", learning_rate=1e-4
    )
    parser.add_argument("--rank", type=flags.positive_int, default=8)
    parser.add_argument("--lora_alpha", type=flags.positive_float, default=None, help="default: the rank")
    add_sampling_args(parser, default="the base model's")  # for the sample grid
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    torch.manual_seed(args.seed)
    pipe = load_pipeline(args.model, accelerator.device)
    data = ImageFolderDataset(args.train_data_dir, pipe.vqvae.config.image_size)
    set_classes(pipe.transformer, data.class_names, keep_existing=False)
    model = add_generator_lora(pipe.transformer, rank=args.rank, alpha=args.lora_alpha)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=args.learning_rate, weight_decay=0.0
    )
    loader = torch.utils.data.DataLoader(data, batch_size=args.train_batch_size, shuffle=True, drop_last=False)
    group_size = pipe.transformer.config.group_size
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)

    run_training(
        accelerator,
        model,
        optimizer,
        loader,
        args.max_train_steps,
        lambda batch: generator_loss(
            model, encode_images(pipe.vqvae, batch["pixel_values"]), batch["label"], group_size
        ),
        lr_scheduler=args.lr_scheduler,
        lr_warmup_steps=args.lr_warmup_steps,
    )
    if accelerator.is_main_process:
        output = Path(args.output_dir)
        pipe.transformer = accelerator.unwrap_model(model)  # the peft model: the pipeline saves its adapter
        base_model = args.model if args.model and is_hub_repo_id(args.model) else None  # a card names Hub repos
        adapter = pipe.save_adapter(output / "adapter", base_model=base_model)
        merged = load_pipeline(args.model).load_adapter(adapter)  # the base pipeline, adapted and merged
        merged.save_pretrained(output / "merged")
        merged.set_progress_bar_config(disable=True)
        generators = [torch.Generator().manual_seed(args.seed + i) for i in range(len(data.class_names))]
        images = merged(class_labels=data.class_names, generator=generators, **sampling_arguments(args)).images
        image_grid(images, columns=len(images)).save(output / "samples.png")
        print(f"wrote {adapter} and {output / 'merged'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
