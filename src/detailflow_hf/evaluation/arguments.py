"""Flags and entry points shared by `examples/eval_*.py` and `detailflow-hf eval-*` (every flag
is accepted as `--snake_case` and `--kebab-case`)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import torch

from .. import flags
from ..models.sampling import SAMPLING_ARGUMENTS

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _flag(parser, name: str, **kwargs):
    spellings = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
    parser.add_argument(*spellings, dest=name, **kwargs)


def _add_extractor_args(parser):
    _flag(
        parser,
        "feature_extractor",
        default=None,
        metavar="MODULE:FACTORY",
        help="a feature network factory (uint8 (N,3,H,W) -> features); default: torch-fidelity's Inception",
    )
    _flag(
        parser,
        "inception_weights",
        default=None,
        help="local torch-fidelity inception-v3-compat weights file (offline use)",
    )
    _flag(
        parser, "feature_batch_size", type=flags.positive_int, default=100, help="images per feature-extraction batch"
    )


def add_sampling_args(parser: argparse.ArgumentParser, default: str = "the model's") -> argparse.ArgumentParser:
    """`--guidance_scale`, `--gradual_guidance`, `--do_sample`, `--temperature`, `--top_k`, `--top_p`,
    each left `None` unless given: `None` means the model's `generation_config.json` (a converted
    release carries the value its authors evaluate with: 1.45 / 1.5 / 1.32 for DetailFlow-16 / -32 / -64).
    `default` names that fallback in the help."""
    _flag(
        parser, "guidance_scale", type=float, default=None, help=f"classifier-free guidance (>= 1); default: {default}"
    )
    _flag(
        parser,
        "gradual_guidance",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"lower the guidance over the groups; default: {default}",
    )
    _flag(
        parser,
        "do_sample",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"--no-do-sample: greedy (arg-max); default: {default}",
    )
    _flag(parser, "temperature", type=float, default=None, help=f"default: {default}")
    _flag(
        parser,
        "top_k",
        type=flags.non_negative_int,
        default=None,
        help=f"0: off (the release's 8192 = V is the same); default: {default}",
    )
    _flag(parser, "top_p", type=float, default=None, help=f"default: {default}")
    return parser


def sampling_arguments(args: argparse.Namespace) -> dict:
    """The sampling flags of `add_sampling_args` as keyword arguments (`None` = the model's)."""
    return {name: getattr(args, name) for name in SAMPLING_ARGUMENTS}


def add_generation_eval_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    _flag(parser, "model", required=True, help="pipeline folder or Hub repo id (a converted release)")
    _flag(parser, "output_dir", required=True, help="batches/, samples.npz, sampling.json, metrics.json")
    _flag(parser, "num_samples", type=flags.positive_int, default=50_000)
    _flag(parser, "seed", type=flags.seed, default=0, help="image i uses seed + i")
    _flag(
        parser,
        "batch_size",
        type=flags.positive_int,
        default=32,
        help="images per generation batch (global unit of work)",
    )
    add_sampling_args(parser)
    _flag(parser, "num_tokens", type=flags.positive_int, default=None, help="detail level (default: all tokens)")
    _flag(
        parser,
        "transformer_dtype",
        choices=sorted(DTYPES),
        default="float32",
        help="generator weights (the release evaluated in bfloat16); the tokenizer stays float32",
    )
    _flag(parser, "compile", action="store_true", help="static cache + torch.compile'd decoding step")
    _flag(
        parser,
        "reference",
        default=None,
        help="ADM reference .npz (e.g. VIRTUAL_imagenet256_labeled.npz); none: generate only",
    )
    _flag(
        parser,
        "recompute_reference_stats",
        action="store_true",
        help="use the reference images' features instead of its stored mu/sigma (needed for non-Inception extractors)",
    )
    _add_extractor_args(parser)
    return parser


def _load_pipeline(model: str, device):
    from ..loading import load_pipeline

    pipe = load_pipeline(model, device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_generation_eval(args: argparse.Namespace) -> dict | None:
    """Generate on every process of the launch, score on the main one; returns its report there."""
    from accelerate import Accelerator

    from .fid import load_feature_extractor
    from .sampling import SamplingConfig, evaluate_generation

    accelerator = Accelerator()
    pipe = _load_pipeline(args.model, accelerator.device)
    pipe.transformer.to(DTYPES[args.transformer_dtype])
    extractor = None
    if args.reference and accelerator.is_main_process:  # fail before hours of sampling, not after
        extractor = load_feature_extractor(args.feature_extractor, args.inception_weights)
    sampling = pipe.sampling_params(**sampling_arguments(args))  # the model's defaults, recorded explicitly
    config = SamplingConfig(
        num_samples=args.num_samples,
        num_classes=pipe.transformer.config.num_classes,
        seed=args.seed,
        batch_size=args.batch_size,
        num_tokens=args.num_tokens,
        model=str(args.model),
        dtype=str(pipe.transformer.dtype),
        **asdict(sampling),
    )
    return evaluate_generation(
        pipe,
        config,
        args.output_dir,
        accelerator=accelerator,
        reference=args.reference,
        extractor=extractor,
        batch_size=args.feature_batch_size,
        recompute_reference=args.recompute_reference_stats,
        compile=args.compile,
    )


def add_tokenizer_eval_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    _flag(parser, "model", required=True, help="pipeline folder (its vqvae) or tokenizer folder, or Hub repo id")
    _flag(parser, "dataset_name", default=None, help="Hub dataset id (default ILSVRC/imagenet-1k)")
    _flag(parser, "data_dir", default=None, help="local imagefolder or parquet folder instead")
    _flag(parser, "split", default="validation")
    _flag(parser, "image_column", default=None)
    _flag(
        parser,
        "num_samples",
        type=flags.positive_int,
        default=50_000,
        help="images read from the split (ImageNet val: 50 000)",
    )
    _flag(parser, "batch_size", type=flags.positive_int, default=32)
    _flag(
        parser,
        "prefixes",
        type=flags.positive_int,
        nargs="+",
        default=None,
        help="token counts to evaluate (default: every level)",
    )
    _flag(parser, "no_rfid", action="store_true", help="PSNR/SSIM only (no feature network)")
    _flag(parser, "output", default=None, help="JSON report path")
    _flag(parser, "device", default="cuda" if torch.cuda.is_available() else "cpu")
    _add_extractor_args(parser)
    return parser


def run_tokenizer_eval(args: argparse.Namespace) -> dict:
    """PSNR, SSIM and rFID per detail level over `--num_samples` images of a split."""
    from ..image_datasets import load_image_stream
    from ..loading import load_tokenizer
    from .fid import load_feature_extractor
    from .tokenizer import evaluate_reconstruction, image_batches

    vqvae = load_tokenizer(args.model, args.device)
    extractor = None
    if not args.no_rfid:
        extractor = load_feature_extractor(args.feature_extractor, args.inception_weights).to(args.device).eval()
    rows = load_image_stream(args.dataset_name, args.data_dir, args.split, args.image_column, streaming=True)
    batches = image_batches(rows, vqvae.config.image_size, args.batch_size, args.num_samples)
    levels = evaluate_reconstruction(vqvae, batches, args.prefixes, extractor)
    report = {"model": str(args.model), "split": args.split, "levels": [asdict(level) for level in levels]}
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=1))
    return report


def format_levels(report: dict) -> str:
    """The per-level table of a tokenizer report."""
    lines = ["tokens  PSNR (dB)   SSIM    rFID"]
    for level in report["levels"]:
        rfid = f"{level['rfid']:8.3f}" if level["rfid"] is not None else "       -"
        lines.append(f"{level['num_tokens']:6d}  {level['psnr']:9.3f}  {level['ssim']:6.4f} {rfid}")
    return "\n".join(lines)


__all__ = [
    "add_generation_eval_args",
    "add_tokenizer_eval_args",
    "format_levels",
    "run_generation_eval",
    "run_tokenizer_eval",
]
