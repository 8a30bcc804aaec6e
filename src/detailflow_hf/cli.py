"""`detailflow-hf`: convert the original release and generate images. Thin: parse, call, report."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _add_convert(subparsers):
    parser = subparsers.add_parser("convert", help="convert an original DetailFlow release to a pipeline folder")
    parser.add_argument("--tokenizer", required=True, help="tokenizer release folder or Hub repo id (e.g. ByteFlow-AI/DetailFlow-16)")
    parser.add_argument("--generator", required=True, help="generator release folder or Hub repo id (e.g. ByteFlow-AI/DetailFlow-16-GPT-L)")
    parser.add_argument("--output", required=True, help="pipeline folder to write")
    parser.add_argument("--tokenizer-architecture", help="JSON file with the encoder/decoder shapes (default: the release's)")
    parser.add_argument("--tokenizer-checkpoint", help="checkpoint file name under checkpoints/ (default: newest)")
    parser.add_argument("--generator-checkpoint", help="checkpoint file name under checkpoints/ (default: newest)")
    parser.add_argument("--use-ema", action=argparse.BooleanOptionalAction, default=True, help="generator EMA weights (default)")
    parser.set_defaults(func=_convert)


def _convert(args) -> int:
    from .conversion.original import convert_release

    architecture = None
    if args.tokenizer_architecture:
        architecture = json.loads(Path(args.tokenizer_architecture).read_text())
    convert_release(
        args.tokenizer,
        args.generator,
        args.output,
        tokenizer_architecture=architecture,
        use_ema=args.use_ema,
        tokenizer_checkpoint=args.tokenizer_checkpoint,
        generator_checkpoint=args.generator_checkpoint,
    )
    print(f"wrote {args.output}")
    return 0


def _add_generate(subparsers):
    parser = subparsers.add_parser("generate", help="generate images for class ids")
    parser.add_argument("--model", required=True, help="pipeline folder or Hub repo id")
    parser.add_argument("--class", dest="classes", type=int, action="append", required=True, help="class id (repeatable)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--guidance-scale", type=float, default=1.5)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--output", required=True, help="PNG file (a grid of all images)")
    parser.set_defaults(func=_generate)


def _generate(args) -> int:
    import torch

    from .pipelines.pipeline_detailflow import DetailFlowPipeline
    from .pipelines.utils import image_grid

    pipe = DetailFlowPipeline.from_pretrained(args.model)
    generator = torch.Generator().manual_seed(args.seed)
    images = pipe(class_labels=args.classes, guidance_scale=args.guidance_scale, top_k=args.top_k, generator=generator).images
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images).save(output)
    print(f"wrote {output} ({len(images)} images)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detailflow-hf", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_convert(subparsers)
    _add_generate(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, OSError) as error:
        # User mistakes (bad paths, bad values, bad checkpoints): one line, no traceback.
        print(f"detailflow-hf {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
