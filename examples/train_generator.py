"""Train the DetailFlow class-conditional generator on extracted codes (docs/algorithm.md §6.5).

    python examples/train_generator.py --tokenizer PATH --codes_dir codes/ --output_dir out/ --config tiny
    accelerate launch --num_processes 8 examples/train_generator.py --config GPT-L --mixed_precision bf16 ...

The final export in `--output_dir` (EMA weights, class names as `id2label`) loads with
`DetailFlowPipeline.from_pretrained(output_dir)`; checkpoints go to `output_dir/checkpoints`.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from detailflow_hf import DetailFlowPipeline, DetailFlowTokenizer, flags
from detailflow_hf.evaluation.arguments import add_sampling_args, sampling_arguments
from detailflow_hf.hub import SAMPLE_GRID, is_hub_repo_id, pipeline_card, showcase_grid
from detailflow_hf.loading import load_generator
from detailflow_hf.models.sampling import SamplingParams
from detailflow_hf.training.arguments import add_common_args, check_common_args, load_preset, make_accelerator
from detailflow_hf.training.checkpointing import (
    EMA,
    export_with_ema,
    load_checkpoint,
    push_export,
    resolve_resume,
    save_checkpoint,
)
from detailflow_hf.training.codes import build_codes_stream, read_codes_info
from detailflow_hf.training.data import make_loader
from detailflow_hf.training.generator_training import (
    PRESETS,
    GeneratorTrainState,
    build_generator,
    check_codes_match_tokenizer,
    init_generator,
    make_optimizer,
    make_scheduler,
    preset_from_dict,
    sample_grid,
    train_step,
)

logger = logging.getLogger(__name__)


@dataclass
class TrainSummary:
    """What one invocation did: the global step reached, this process's loss at each step it ran."""

    global_step: int
    losses: list[float] = field(default_factory=list)
    images_per_second: float = 0.0


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--tokenizer", required=True, help="the DetailFlowTokenizer the codes came from")
    parser.add_argument("--codes_dir", required=True, help="output of examples/extract_codes.py")
    parser.add_argument(
        "--ema_decay",
        type=flags.float_range(0.0, 1.0, what="decay"),
        default=None,
        help="default: preset (0.9999 for GPT-*)",
    )
    parser.add_argument("--max_grad_norm", type=flags.positive_float, default=None, help="default: preset (1.0)")
    parser.add_argument(
        "--correction_prob",
        type=flags.float_range(0.0, 1.0, what="probability"),
        default=None,
        help="default: preset (0.3)",
    )
    parser.add_argument(
        "--init_from",
        default=None,
        help="start from this trained generator (a pipeline or generator folder, or a Hub repo) instead of fresh"
        " weights;"
        " it must have the preset's architecture and the codes' classes",
    )
    parser.add_argument(
        "--sample_steps", type=flags.positive_int, default=None, help="sample images every N steps (default: preset)"
    )
    # The sampling the exported model's generation_config.json holds (and the sample images use).
    add_sampling_args(parser, default="the original sampler's (guidance 1.5, full distribution)")
    return parser.parse_args(argv)


def resolve_preset(args):
    values = load_preset(args.config, PRESETS)
    overrides = {
        "learning_rate": args.learning_rate,
        "train_batch_size": args.train_batch_size,
        "max_train_steps": args.max_train_steps,
        "ema_decay": args.ema_decay,
        "max_grad_norm": args.max_grad_norm,
        "correction_prob": args.correction_prob,
        "sample_steps": args.sample_steps,
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    return preset_from_dict(values)


def write_export(pipe, args, step: int):
    """The final pipeline folder; for `--push_to_hub` also its card (README.md) and a sample grid."""
    pipe.save_pretrained(args.output_dir)
    if not args.push_to_hub:
        return
    pipe.set_progress_bar_config(disable=True)
    showcase_grid(pipe, num_images=min(8, pipe.transformer.config.num_classes), seed=args.seed).save(
        Path(args.output_dir) / SAMPLE_GRID
    )
    tokenizer_repo = args.tokenizer if is_hub_repo_id(args.tokenizer) else None
    card = pipeline_card(
        pipe,
        args.hub_model_id,
        base_model=tokenizer_repo,
        description=(
            "A DetailFlow class-conditional generator trained with `detailflow_hf` (`examples/train_generator.py`) "
            f"for {step} steps on the codes of the tokenizer `{args.tokenizer}`; EMA weights."
        ),
        sample_grid=SAMPLE_GRID,
        remote_code=False,
    )
    card.save(Path(args.output_dir) / "README.md")


def log_samples(accelerator, tokenizer, model, ema, step: int, args, num_classes: int):
    """A grid of EMA samples (one per class, up to 8) to `output_dir/samples/` and the trackers."""
    pipe = DetailFlowPipeline(vqvae=tokenizer, transformer=model)
    labels = list(range(min(num_classes, 8)))
    generator = torch.Generator(accelerator.device).manual_seed(args.seed)
    images = {}

    def draw():
        model.eval()
        images["pt"] = pipe(labels, generator=generator, output_type="pt").images  # the model's generation config
        model.train()

    export_with_ema(ema, model, draw)
    grid = sample_grid(images["pt"])
    folder = Path(args.output_dir) / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    grid.save(folder / f"step-{step:07d}.png")
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_images("samples", images["pt"], step)


def main(argv=None) -> TrainSummary:
    args = parse_args(argv)
    check_common_args(args)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("__main__", "detailflow_hf"):
        logging.getLogger(name).setLevel(logging.INFO)
    preset = resolve_preset(args)
    accelerator = make_accelerator(args)
    info = read_codes_info(args.codes_dir)
    tokenizer = DetailFlowTokenizer.from_pretrained(args.tokenizer).to(accelerator.device).eval()
    check_codes_match_tokenizer(info, tokenizer)

    if args.init_from:
        model = init_generator(load_generator(args.init_from), preset, vars(info), info.class_names)
    else:
        model = build_generator(preset, vars(info), info.class_names)
    model.generation_config = SamplingParams.resolve(None, **sampling_arguments(args)).to_generation_config()
    optimizer = make_optimizer(model, preset, preset.learning_rate)
    scheduler = make_scheduler(optimizer, preset.max_train_steps, preset.warmup_fraction)
    model, optimizer = accelerator.prepare(model, optimizer)
    ema = EMA(accelerator.unwrap_model(model).parameters(), preset.ema_decay)
    state = GeneratorTrainState(model, optimizer, scheduler, preset, ema)
    stream = build_codes_stream(args.codes_dir, args.seed, accelerator, args.shuffle_buffer_size)
    loader = make_loader(stream, preset.train_batch_size, args.dataloader_num_workers)
    if args.report_to != "none":
        accelerator.init_trackers("detailflow-generator", config={**vars(args), "preset": args.config})

    step = 0
    resume = resolve_resume(args.output_dir, args.resume_from_checkpoint)
    if resume is not None:
        step = load_checkpoint(accelerator, resume, per_process=[loader], shared=[scheduler, ema])
    stop_at = min(args.stop_after_steps or preset.max_train_steps, preset.max_train_steps)
    summary = TrainSummary(global_step=step)
    shards_seen: set[int] = set()
    images_per_step = preset.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    unwrapped = accelerator.unwrap_model(model)

    progress = tqdm(total=preset.max_train_steps, initial=step, disable=not accelerator.is_main_process, desc="steps")
    batches, started = iter(loader), time.perf_counter()
    while step < stop_at:
        batch = next(batches)
        shards_seen.update(batch.pop("shard").tolist())
        result = train_step(state, {k: v.to(accelerator.device) for k, v in batch.items()}, step + 1, accelerator)
        if not result.synced:
            continue
        step += 1
        summary.losses.append(result.loss)
        summary.images_per_second = images_per_step * len(summary.losses) / (time.perf_counter() - started)
        progress.update(1)
        if step % args.logging_steps == 0 or step == stop_at:
            loss = accelerator.reduce(torch.tensor(result.loss, device=accelerator.device), "mean").item()
            logs = {
                "loss": loss,
                "lr": scheduler.get_last_lr()[0],
                "grad_norm": result.logs["grad_norm"],
                "images_per_second": summary.images_per_second,
            }
            progress.set_postfix(loss=f"{loss:.4f}", img_s=f"{summary.images_per_second:.1f}")
            accelerator.log(logs, step=step)
        if step % preset.sample_steps == 0 and accelerator.is_main_process:
            log_samples(accelerator, tokenizer, unwrapped, ema, step, args, info.num_classes)
        if step % args.checkpointing_steps == 0 or step == stop_at:
            save_checkpoint(
                accelerator,
                args.output_dir,
                step,
                args.checkpoints_total_limit,
                per_process=[loader],
                shared=[scheduler, ema],
            )
    progress.close()
    summary.global_step = step

    stats = Path(args.output_dir) / "data_stats" / f"process_{accelerator.process_index}.json"
    stats.parent.mkdir(parents=True, exist_ok=True)
    stats.write_text(json.dumps({"shards": sorted(shards_seen), "skipped": stream.skipped.count}))
    if step == preset.max_train_steps and accelerator.is_main_process:
        pipe = DetailFlowPipeline(vqvae=tokenizer, transformer=unwrapped)
        export_with_ema(ema, unwrapped, lambda: write_export(pipe, args, step))
        logger.info("exported the EMA pipeline to %s", args.output_dir)
        if args.push_to_hub:
            push_export(args.output_dir, args.hub_model_id)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


if __name__ == "__main__":
    main()
