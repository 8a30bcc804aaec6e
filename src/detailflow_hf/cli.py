"""`detailflow-hf`: generate, convert, reconstruct, write model cards, evaluate. Thin: parse, call, report."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .evaluation.arguments import add_sampling_args, sampling_arguments


class UsageError(ValueError):
    """A mistake in the command line, reported in one line."""


def _load_pipeline(model: str | None, device: str):
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from .pipelines.pipeline_detailflow import DetailFlowPipeline

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()

    if model is None:
        from . import DEFAULT_MODEL

        if DEFAULT_MODEL is None:
            raise UsageError("no --model given and this installation has no embedded default model.")
        model = DEFAULT_MODEL
    return DetailFlowPipeline.from_pretrained(model).to(device)


# -- generate ---------------------------------------------------------------------------------------
def _add_generate(subparsers):
    p = subparsers.add_parser("generate", help="generate images for class names or ids")
    p.add_argument("--model", help="pipeline folder or Hub repo id (default: the embedded model)")
    p.add_argument("--class", dest="classes", action="append", required=True, metavar="NAME_OR_ID", help="class name or id (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-tokens", type=int, help="detail level: a trained prefix length (default: all tokens)")
    p.add_argument("--num-images", type=int, default=1, help="images per class")
    add_sampling_args(p)
    p.add_argument("--device", default="cpu")
    p.add_argument("--output", required=True, help="FILE.png (a grid) or a directory (one file per image)")
    p.add_argument("--progressive", action="store_true", help="also save the coarse-to-fine strip of every image")
    p.add_argument("--display-size", type=int, help="enlarge grid cells and strip frames to N px (nearest), for small models")
    p.set_defaults(func=_generate)


def _generate(args) -> int:
    import torch

    from .pipelines.utils import image_grid, progressive_strip, upscale

    if args.display_size is not None and args.display_size <= 0:
        raise UsageError(f"--display-size {args.display_size} must be a positive number of pixels.")
    pipe = _load_pipeline(args.model, args.device)
    pipe.set_progress_bar_config(disable=True)
    class_ids = pipe.get_label_ids(args.classes)
    count = len(class_ids) * args.num_images
    generators = [torch.Generator(args.device).manual_seed(args.seed + i) for i in range(count)]
    out = pipe(
        class_labels=class_ids,
        num_images_per_prompt=args.num_images,
        num_tokens=args.num_tokens,
        generator=generators,
        return_intermediates=args.progressive,
        **sampling_arguments(args),
    )
    output = Path(args.output)
    names = [pipe.labels.name(c).replace(" ", "_").replace("/", "_") for c in class_ids for _ in range(args.num_images)]
    written = []
    if output.suffix.lower() == ".png":
        output.parent.mkdir(parents=True, exist_ok=True)
        cells = [upscale(im, args.display_size) for im in out.images] if args.display_size else out.images
        image_grid(cells).save(output)
        written.append(output)
        if args.progressive:
            strip = output.with_name(output.stem + "_progressive.png")
            strips = [progressive_strip(out.intermediates, i, args.display_size) for i in range(count)]
            image_grid(strips, columns=1).save(strip)
            written.append(strip)
    else:
        output.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(out.images):
            path = output / f"{i:03d}_{names[i]}.png"
            image.save(path)
            written.append(path)
            if args.progressive:
                strip = output / f"{i:03d}_{names[i]}_progressive.png"
                progressive_strip(out.intermediates, i, args.display_size).save(strip)
                written.append(strip)
    for path in written:
        print(path)
    return 0


# -- convert ----------------------------------------------------------------------------------------
def _add_convert(subparsers):
    p = subparsers.add_parser("convert", help="convert an original DetailFlow release to a pipeline folder")
    p.add_argument("--tokenizer", required=True, help="tokenizer release folder or Hub repo id (e.g. ByteFlow-AI/DetailFlow-16)")
    p.add_argument("--generator", required=True, help="generator release folder or Hub repo id (e.g. ByteFlow-AI/DetailFlow-16-GPT-L)")
    p.add_argument("--output", required=True, help="pipeline folder to write")
    p.add_argument("--tokenizer-architecture", help="JSON file with the encoder/decoder shapes (default: the release's)")
    p.add_argument("--tokenizer-checkpoint", help="checkpoint file name under checkpoints/ (default: newest)")
    p.add_argument("--generator-checkpoint", help="checkpoint file name under checkpoints/ (default: newest)")
    p.add_argument("--use-ema", action=argparse.BooleanOptionalAction, default=True, help="generator EMA weights (default)")
    p.add_argument("--with-code", action="store_true", help="also write the code, so stock diffusers can load it")
    add_sampling_args(p, default="the release's evaluation setting for its token count")
    p.set_defaults(func=_convert)


def _convert(args) -> int:
    from .conversion.original import convert_release

    architecture = None
    if args.tokenizer_architecture:
        architecture = json.loads(Path(args.tokenizer_architecture).read_text())
    pipe = convert_release(
        args.tokenizer,
        args.generator,
        None if args.with_code else args.output,
        tokenizer_architecture=architecture,
        use_ema=args.use_ema,
        tokenizer_checkpoint=args.tokenizer_checkpoint,
        generator_checkpoint=args.generator_checkpoint,
        sampling=sampling_arguments(args),
    )
    if args.with_code:
        from .hub import save_with_code

        save_with_code(pipe, args.output)
    print(f"wrote {args.output}")
    return 0


# -- reconstruct ------------------------------------------------------------------------------------
def _add_reconstruct(subparsers):
    p = subparsers.add_parser("reconstruct", help="encode + decode an image; PSNR per detail level")
    p.add_argument("--model", help="pipeline folder or Hub repo id (default: the embedded model)")
    p.add_argument("--image", required=True, help="an image file (centre-cropped to the model's size)")
    p.add_argument("--output", help="PNG: the reconstructions of every detail level side by side")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_reconstruct)


def _reconstruct(args) -> int:
    from PIL import Image

    from .metrics import prefix_reconstructions, psnr
    from .pipelines.utils import to_pil
    from .training.data import center_crop_arr, to_tensor

    pipe = _load_pipeline(args.model, args.device)
    path = Path(args.image)
    if not path.is_file():
        raise UsageError(f"image {path} does not exist.")
    try:
        image = Image.open(path).convert("RGB")
    except OSError as error:
        raise UsageError(f"cannot read image {path}: {error}") from error
    pixels = to_tensor(center_crop_arr(image, pipe.vqvae.config.image_size))[None].to(args.device)
    levels = prefix_reconstructions(pipe.vqvae, pixels)
    print("tokens  PSNR (dB)")
    for k, reconstruction in levels.items():
        print(f"{k:6d}  {psnr(reconstruction, pixels).item():8.2f}")
    if args.output:
        from .pipelines.utils import image_grid

        image_grid([to_pil(rec[0]) for rec in levels.values()], columns=len(levels)).save(args.output)
        print(f"wrote {args.output}")
    return 0


# -- card -------------------------------------------------------------------------------------------
def _add_card(subparsers):
    p = subparsers.add_parser("card", help="write a model card (README.md) for a pipeline folder")
    p.add_argument("--model", required=True, help="pipeline folder")
    p.add_argument("--repo-id", default=None, help="the repo id the card refers to (default: the folder name)")
    p.add_argument("--license", default="apache-2.0")
    p.add_argument("--sample-grid", help="relative path of a sample grid image to show")
    p.add_argument("--output", help="where to write (default: MODEL/README.md)")
    p.set_defaults(func=_card)


def _card(args) -> int:
    from .hub import pipeline_card

    pipe = _load_pipeline(args.model, "cpu")
    repo_id = args.repo_id or Path(args.model).name
    card = pipeline_card(pipe, repo_id, license=args.license, sample_grid=args.sample_grid)
    output = Path(args.output) if args.output else Path(args.model) / "README.md"
    card.save(output)
    print(f"wrote {output}")
    return 0


# -- eval-generation / eval-tokenizer ---------------------------------------------------------------
def _add_eval_generation(subparsers):
    from .evaluation.arguments import add_generation_eval_args

    p = subparsers.add_parser(
        "eval-generation", help="class-balanced sample set (any number of processes) and its FID/IS/precision/recall",
        description="Same as examples/eval_generation.py; run under `accelerate launch` for several processes.",
    )
    add_generation_eval_args(p)
    p.set_defaults(func=_eval_generation)


def _eval_generation(args) -> int:
    from .evaluation.arguments import run_generation_eval

    report = run_generation_eval(args)
    if report is not None:
        print(json.dumps(report.get("metrics", {"samples": report["samples"]}), indent=1))
    return 0


def _add_eval_tokenizer(subparsers):
    from .evaluation.arguments import add_tokenizer_eval_args

    p = subparsers.add_parser(
        "eval-tokenizer", help="PSNR, SSIM and rFID of the tokenizer per detail level",
        description="Same as examples/eval_tokenizer.py.",
    )
    add_tokenizer_eval_args(p)
    p.set_defaults(func=_eval_tokenizer)


def _eval_tokenizer(args) -> int:
    from .evaluation.arguments import format_levels, run_tokenizer_eval

    print(format_levels(run_tokenizer_eval(args)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detailflow-hf", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in (_add_generate, _add_convert, _add_reconstruct, _add_card, _add_eval_generation, _add_eval_tokenizer):
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, OSError) as error:
        # User mistakes (bad paths, names, values, checkpoints): one line, no traceback.
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"detailflow-hf {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
