"""Fine-tune only the decoder of a DetailFlow tokenizer on new images (reconstruction MSE).

    python examples/finetune_tokenizer_decoder.py --model PIPELINE --train_data_dir images/ \
        --output_dir decoder_ft/ --max_train_steps 5000 --learning_rate 1e-5

The encoder, the quantizer and the codebook are frozen, so every token id keeps its meaning and a
generator trained on the old codes still fits: only `post_quant_conv` and the decoder learn. Each
step reconstructs from the frozen codes; with probability `--degradation_prob` it decodes a random
prefix against the degraded target at that prefix's resolution (as tokenizer training does), so
every detail level keeps working. `--model` is a pipeline folder, a tokenizer folder or a Hub
repo; for the released 256 px tokenizers use a small learning rate (1e-5) and batch 16-32.
Writes the tokenizer to `output_dir` (`DetailFlowTokenizer.from_pretrained(output_dir)`; swap it
into a pipeline with `DetailFlowPipeline(vqvae=..., transformer=pipe.transformer)`).
"""

from __future__ import annotations

import argparse
import sys

import torch
from accelerate import Accelerator

from detailflow_hf import flags
from detailflow_hf.image_datasets import ImageFolderDataset
from detailflow_hf.loading import load_tokenizer
from detailflow_hf.training.finetuning import add_finetune_args, decoder_loss, decoder_parameters, run_training


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_finetune_args(
        parser, "pipeline or tokenizer folder, or Hub repo id", "imagefolder or parquet folder", learning_rate=1e-5
    )
    parser.add_argument("--degradation_prob", type=flags.float_range(0.0, 1.0, what="probability"), default=0.2)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    torch.manual_seed(args.seed)
    vqvae = load_tokenizer(args.model, accelerator.device)
    optimizer = torch.optim.AdamW(decoder_parameters(vqvae), lr=args.learning_rate, weight_decay=0.0)
    data = ImageFolderDataset(args.train_data_dir, vqvae.config.image_size)
    loader = torch.utils.data.DataLoader(data, batch_size=args.train_batch_size, shuffle=True)
    schedule = vqvae.schedule
    vqvae, optimizer, loader = accelerator.prepare(vqvae, optimizer, loader)
    generator = torch.Generator().manual_seed(args.seed)  # the same degradation draws on every process

    run_training(
        accelerator,
        vqvae,
        optimizer,
        loader,
        args.max_train_steps,
        lambda batch: decoder_loss(vqvae, schedule, batch["pixel_values"], args.degradation_prob, generator),
        lr_scheduler=args.lr_scheduler,
        lr_warmup_steps=args.lr_warmup_steps,
    )
    if accelerator.is_main_process:
        accelerator.unwrap_model(vqvae).eval().save_pretrained(args.output_dir)
        print(f"wrote {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
