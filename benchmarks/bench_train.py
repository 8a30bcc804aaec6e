"""Training throughput (images/s) of the generator and tokenizer trainers' steps, in one process.

The `tiny` preset (or `--config GPT-B` etc.) on random codes shaped like DetailFlow-16 (128 tokens,
groups of 8, 8192 codes, 1000 classes, `[clean, noisy, label]` triples), through the same
`train_step` the script runs (Accelerator, clip, AdamW, LambdaLR, EMA). Prints the median step
time and images/s over `--steps` timed steps after `--warmup` untimed ones. Then the tokenizer
trainer's `train_step` (`--tokenizer_config tiny`) on random images, before and after the GAN start.

    python benchmarks/bench_train.py                                  # CPU, tiny, batch 8
    python benchmarks/bench_train.py --config GPT-L --batch_size 32 --mixed_precision bf16   # on a GPU
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from accelerate import Accelerator

from detailflow_hf.training.checkpointing import EMA
from detailflow_hf.training.generator_training import (
    PRESETS,
    GeneratorTrainState,
    build_generator,
    make_optimizer,
    make_scheduler,
    preset_from_dict,
    train_step,
)
from detailflow_hf.training.tokenizer_training import build_train_state
from detailflow_hf.training.tokenizer_training import load_config as load_tokenizer_config
from detailflow_hf.training.tokenizer_training import train_step as tokenizer_train_step

CODES = {"vocab_size": 8192, "num_tokens": 128, "group_size": 8, "causal_num": 8, "num_classes": 1000}


def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_generator(config: str, batch_size: int, steps: int, warmup: int, mixed_precision: str) -> float:
    """Median images/s of one generator training step; prints the details."""
    torch.manual_seed(0)
    preset = preset_from_dict(PRESETS[config])
    accelerator = Accelerator(mixed_precision=mixed_precision)
    model = build_generator(preset, CODES, None)
    optimizer = make_optimizer(model, preset, preset.learning_rate)
    scheduler = make_scheduler(optimizer, steps + warmup, preset.warmup_fraction)
    model, optimizer = accelerator.prepare(model, optimizer)
    ema = EMA(accelerator.unwrap_model(model).parameters(), preset.ema_decay)
    batch = {
        "codes": torch.randint(
            0, CODES["vocab_size"], (batch_size, CODES["num_tokens"], 3), device=accelerator.device
        ),
        "label": torch.randint(0, CODES["num_classes"], (batch_size,), device=accelerator.device),
    }
    state = GeneratorTrainState(model, optimizer, scheduler, preset, ema)
    times = []
    for i in range(warmup + steps):
        synchronize(accelerator.device)
        start = time.perf_counter()
        train_step(state, batch, i + 1, accelerator)
        synchronize(accelerator.device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(
        f"generator {config} ({params:.1f}M params) on {accelerator.device}, batch {batch_size}, "
        f"{mixed_precision}: {median * 1e3:.1f} ms/step, {batch_size / median:.1f} images/s"
    )
    return batch_size / median


def bench_tokenizer(config: str, batch_size: int, steps: int, warmup: int, mixed_precision: str, gan: bool) -> float:
    """Median images/s of one tokenizer training step (generator update then discriminator update),
    before the GAN starts or (`gan=True`) with it; prints the details."""
    torch.manual_seed(0)
    preset = load_tokenizer_config(config)
    accelerator = Accelerator(mixed_precision=mixed_precision)
    state = build_train_state(preset, accelerator, batch_size, steps + warmup)
    size = preset.tokenizer["image_size"]
    images = torch.rand(batch_size, 3, size, size, device=accelerator.device) * 2 - 1
    first_step = preset.losses.disc_start if gan else 0
    times = []
    for i in range(warmup + steps):
        synchronize(accelerator.device)
        start = time.perf_counter()
        tokenizer_train_step(state, {"pixel_values": images}, first_step + i, accelerator)
        synchronize(accelerator.device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(
        f"tokenizer {config} on {accelerator.device}, batch {batch_size}, {mixed_precision}, "
        f"{'with' if gan else 'before'} the GAN: {median * 1e3:.1f} ms/step, {batch_size / median:.1f} images/s"
    )
    return batch_size / median


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny", choices=sorted(PRESETS), help="generator preset")
    parser.add_argument("--tokenizer_config", default="tiny", help="tokenizer preset or YAML")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), default="no")
    args = parser.parse_args(argv)
    bench_generator(args.config, args.batch_size, args.steps, args.warmup, args.mixed_precision)
    for gan in (False, True):
        bench_tokenizer(args.tokenizer_config, args.batch_size, args.steps, args.warmup, args.mixed_precision, gan)


if __name__ == "__main__":
    main()
