"""Train a DetailFlow tokenizer with accelerate on a streamed image dataset (docs/algorithm.md §6.1-6.4).

    python examples/train_tokenizer.py --config tiny --train_data_dir ./images --output_dir out
    accelerate launch --num_processes 8 examples/train_tokenizer.py --config DetailFlow-16 \\
        --dataset_name ILSVRC/imagenet-1k --output_dir out --mixed_precision bf16

The final tokenizer lands in `--output_dir` (`DetailFlowTokenizer.from_pretrained(output_dir)`);
checkpoints in `output_dir/checkpoints`, reconstruction grids in `output_dir/samples`.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from detailflow_hf import flags
from detailflow_hf.hub import tokenizer_card
from detailflow_hf.training.arguments import add_common_args, check_common_args, make_accelerator
from detailflow_hf.training.checkpointing import load_checkpoint, push_export, resolve_resume, save_checkpoint
from detailflow_hf.training.data import build_train_stream, make_loader
from detailflow_hf.training.tokenizer_training import (
    build_train_state,
    load_config,
    reconstruction_grid,
    train_step,
)

logger = logging.getLogger("train_tokenizer")


def parse_args(argv=None) -> argparse.Namespace:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument(
        "--image_logging_steps", type=flags.positive_int, default=500, help="save a reconstruction grid every N steps"
    )
    args = parser.parse_args(argv)
    check_common_args(args)
    if args.gradient_accumulation_steps != 1:
        raise ValueError(
            f"--gradient_accumulation_steps {args.gradient_accumulation_steps}: the tokenizer trainer alternates "
            "generator and discriminator updates every step and supports only 1."
        )
    return args


def log_images(accelerator, tokenizer, images: torch.Tensor, output_dir: Path, step: int):
    grid = reconstruction_grid(tokenizer, images[:4])
    folder = output_dir / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(folder / f"reconstruction-{step:07d}.png")
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({"reconstructions": grid[None]}, step, dataformats="NHWC")


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    output_dir = Path(args.output_dir)
    config = load_config(args.config)
    accelerator = make_accelerator(args)
    batch_size = args.train_batch_size or config.train_batch_size
    global_batch = batch_size * accelerator.num_processes
    max_steps = args.max_train_steps or config.epochs * config.steps_per_epoch(global_batch)
    state = build_train_state(config, accelerator, global_batch, max_steps, args.learning_rate)

    stream = build_train_stream(
        resolution=config.tokenizer["image_size"],
        seed=args.seed,
        accelerator=accelerator,
        dataset_name=args.dataset_name,
        train_data_dir=args.train_data_dir,
        image_column=args.image_column,
        label_column=args.label_column,
        shuffle_buffer_size=args.shuffle_buffer_size,
    )
    loader = make_loader(stream, batch_size, args.dataloader_num_workers)
    per_process = [loader, *state.per_process_state()]  # this rank's stream position, LeCam EMAs, code usage

    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "training_config.json").write_text(json.dumps(config.to_dict(), indent=2))
        accelerator.init_trackers("train_tokenizer", config={k: v for k, v in vars(args).items() if v is not None})
    step = 0
    resume = resolve_resume(output_dir, args.resume_from_checkpoint)
    if resume is not None:
        step = load_checkpoint(accelerator, resume, per_process, state.shared_state())
    stop = min(max_steps, args.stop_after_steps or max_steps)

    tokenizer = accelerator.unwrap_model(state.model).tokenizer
    progress = tqdm(total=max_steps, initial=step, disable=not accelerator.is_main_process, desc="tokenizer")
    start, images_seen = time.perf_counter(), 0
    batches = iter(loader)
    while step < stop:
        step += 1
        images = next(batches)["pixel_values"].to(accelerator.device, non_blocking=True)
        logs = train_step(state, {"pixel_values": images}, step, accelerator).logs
        images_seen += images.shape[0] * accelerator.num_processes
        rate = images_seen / (time.perf_counter() - start)
        progress.update(1)
        progress.set_postfix(
            loss=f"{logs['g_loss']:.4f}", d_loss=f"{logs.get('d_loss', 0.0):.4f}", img_s=f"{rate:.1f}"
        )
        if step % args.logging_steps == 0:
            accelerator.log({**logs, "images_per_second": rate}, step=step)
        if step % args.checkpointing_steps == 0 or step == stop:
            save_checkpoint(
                accelerator, output_dir, step, args.checkpoints_total_limit, per_process, state.shared_state()
            )
        if accelerator.is_main_process and (step % args.image_logging_steps == 0 or step == stop):
            log_images(accelerator, tokenizer, images, output_dir, step)
    progress.close()

    accelerator.wait_for_everyone()
    if accelerator.is_main_process and step >= max_steps:
        tokenizer.save_pretrained(output_dir)
        if args.push_to_hub:
            tokenizer_card(tokenizer, args.hub_model_id).save(Path(output_dir) / "README.md")
            push_export(output_dir, args.hub_model_id)
        logger.info("exported the tokenizer to %s after %d steps", output_dir, step)
    accelerator.end_training()
    return step


if __name__ == "__main__":
    main()
