"""`detailflow-hf`: generate, vary an image, convert, reconstruct, publish a release, write model cards,
build a Space, evaluate.

Thin: parse, call, report."""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

from . import flags
from .evaluation.arguments import add_sampling_args, sampling_arguments


class UsageError(ValueError):
    """A mistake in the command line, reported in one line."""


def _user_errors() -> tuple[type[BaseException], ...]:
    """What a bad input can raise below us: ours (ValueError), files (OSError), malformed YAML,
    configs with wrong types (huggingface_hub's strict dataclasses), truncated safetensors files."""
    import yaml
    from huggingface_hub.errors import StrictDataclassError
    from safetensors import SafetensorError

    return (ValueError, OSError, TypeError, yaml.YAMLError, StrictDataclassError, SafetensorError)


USER_ERRORS = _user_errors()


def _load_pipeline(model: str | None, device: str):
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from .loading import load_pipeline

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        return load_pipeline(model, device)
    except USER_ERRORS as error:
        where = "" if str(model) in str(error) else f" {model}"
        raise UsageError(f"cannot load the pipeline{where}: {_first_line(error)}") from error


# -- generate ---------------------------------------------------------------------------------------
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
MAX_OUTPUT_PIXELS = 10_000 * 10_000  # one grid or strip file
BATCH_SIZE = 32  # images generated at a time: memory stays bounded for any --num-images


def _add_generation_args(p, what: str, num_images: int):
    """The flags `generate` and `vary` share; `what` names one generated image in the help."""
    p.add_argument("--model", help="pipeline folder or Hub repo id (default: the embedded model)")
    p.add_argument(
        "--class", dest="classes", action="append", required=True, metavar="NAME_OR_ID", help="class name or id"
    )
    p.add_argument("--num-images", type=flags.positive_int, default=num_images, help=f"{what}s per class")
    p.add_argument("--seed", type=flags.seed, default=0, help=f"{what} i uses seed + i")
    add_sampling_args(p)
    p.add_argument("--device", default="cpu")
    p.add_argument("--progressive", action="store_true", help=f"also save the coarse-to-fine strip of every {what}")
    p.add_argument(
        "--display-size",
        type=flags.int_range(1, 4096, "a size in pixels"),
        help="enlarge grid cells and strip frames to N px (nearest), for small models",
    )


def _add_generate(subparsers):
    p = subparsers.add_parser("generate", help="generate images for class names or ids")
    _add_generation_args(p, "image", num_images=1)
    p.add_argument(
        "--num-tokens", type=flags.positive_int, help="detail level: a trained prefix length (default: all tokens)"
    )
    p.add_argument(
        "--output",
        required=True,
        help="FILE.png/.jpg/.webp (one grid) or a folder without a suffix (one file per image)",
    )
    p.set_defaults(func=_generate)


def _labels_and_seeds(pipe, args) -> list[int]:
    """Each image's class id (`--num-images` per `--class`), checking that its seed `--seed + i` fits."""
    labels = [c for c in pipe.get_label_ids(args.classes) for _ in range(args.num_images)]
    if args.seed + len(labels) - 1 > flags.MAX_SEED:
        raise UsageError(
            f"--seed {args.seed}: the {len(labels)} images use seeds up to {args.seed + len(labels) - 1}, "
            f"above {flags.MAX_SEED}."
        )
    return labels


def _in_batches(pipe, labels: list[int], args, **kwargs):
    """Generate image i with seed `--seed + i`, `BATCH_SIZE` images at a time: yields (indices, output)."""
    import torch

    for start in range(0, len(labels), BATCH_SIZE):
        batch = range(start, min(start + BATCH_SIZE, len(labels)))
        yield (
            batch,
            pipe(
                class_labels=[labels[i] for i in batch],
                generator=[torch.Generator(args.device).manual_seed(args.seed + i) for i in batch],
                return_intermediates=args.progressive,
                **sampling_arguments(args),
                **kwargs,
            ),
        )


def _read_image(path_arg: str):
    from .pipelines.image_processing import open_image

    path = Path(path_arg)
    if not path.is_file():
        raise UsageError(f"image {path} does not exist.")
    try:
        return open_image(path)
    except OSError as error:
        raise UsageError(f"cannot read image {path}: {error}") from error


def _check_output(output: Path, count: int, side: int, steps: int, progressive: bool) -> bool:
    """Whether `--output` names one grid file (else a folder); sizes checked before any work."""
    is_file = output.suffix.lower() in IMAGE_SUFFIXES
    if output.suffix and not is_file:
        raise UsageError(
            f"--output {output}: expected a grid file ending in {'/'.join(IMAGE_SUFFIXES)} or a folder "
            "without a suffix."
        )
    if is_file and output.is_dir():
        raise UsageError(
            f"--output {output} is an existing folder; a grid file was meant (its suffix is {output.suffix})."
        )
    if not is_file and output.exists() and not output.is_dir():
        raise UsageError(f"--output {output} is an existing file; expected a folder for one file per image.")
    if is_file:
        columns = math.ceil(math.sqrt(count))
        sizes = {"the grid": columns * side * math.ceil(count / columns) * side}
        if progressive:
            sizes["the coarse-to-fine strip"] = steps * side * count * side
        for what, pixels in sizes.items():
            if pixels > MAX_OUTPUT_PIXELS:
                raise UsageError(
                    f"{what} of {count} images at {side} px would have {pixels:,} pixels, more than "
                    f"{MAX_OUTPUT_PIXELS:,}; "
                    "use fewer images, a smaller --display-size, or a folder as --output."
                )
    return is_file


def _generate(args) -> int:
    from .pipelines.image_processing import image_grid, progressive_strip, upscale

    pipe = _load_pipeline(args.model, args.device)
    pipe.set_progress_bar_config(disable=True)
    labels = _labels_and_seeds(pipe, args)
    pipe.check_inputs(labels, args.num_tokens, 1, None, "pil", None, **sampling_arguments(args))
    steps = pipe.prefix_lengths(args.num_tokens)
    side = args.display_size or pipe.vqvae.schedule.decoder_resolution(steps[-1])
    output = Path(args.output)
    to_file = _check_output(output, len(labels), side, len(steps), args.progressive)
    (output.parent if to_file else output).mkdir(parents=True, exist_ok=True)

    # file names: letters, digits, '-' and '_' only ("flag: United States" -> "flag_United_States")
    names = [re.sub(r"[^\w-]+", "_", pipe.labels.name(c)).strip("_") for c in labels]
    cells, strips, written = [], [], []
    for batch, out in _in_batches(pipe, labels, args, num_tokens=args.num_tokens):
        for j, i in enumerate(batch):
            image = upscale(out.images[j], args.display_size) if args.display_size else out.images[j]
            strip = progressive_strip(out.intermediates, j, args.display_size) if args.progressive else None
            if to_file:
                cells.append(image)
                strips.append(strip)
                continue
            written.append(output / f"{i:03d}_{names[i]}.png")
            out.images[j].save(written[-1])
            if strip is not None:
                written.append(output / f"{i:03d}_{names[i]}_progressive.png")
                strip.save(written[-1])
    if to_file:
        image_grid(cells).save(output)
        written.append(output)
        if args.progressive:
            written.append(output.with_name(output.stem + "_progressive" + output.suffix))
            image_grid(strips, columns=1).save(written[-1])
    for path in written:
        print(path)
    return 0


# -- vary -------------------------------------------------------------------------------------------
def _add_vary(subparsers):
    p = subparsers.add_parser(
        "vary",
        help="keep an image's first tokens (its coarse structure) and regrow the detail under a class",
        description="Variations (the image's own class), class transfer (another class) or detail completion "
        "(a small input: by default the tokens its resolution shows are kept).",
    )
    _add_generation_args(p, "variation", num_images=4)
    p.add_argument("--image", required=True, help="an image file (resized and centre-cropped to the model's size)")
    p.add_argument(
        "--keep-tokens",
        type=flags.non_negative_int,
        help="tokens of the image to keep: 0 or a trained prefix length (default: what the image's resolution shows)",
    )
    p.add_argument(
        "--num-candidates",
        type=flags.positive_int,
        default=1,
        help="keep closer to the input, at a higher cost: every step draws N continuations and keeps the one "
        "nearest the input at the kept resolution, mixing their ids where that comes nearer (default 1: plain "
        "sampling)",
    )
    p.add_argument("--output", required=True, help="FILE.png: the kept coarse image first, then the variations")
    p.set_defaults(func=_vary)


def _vary(args) -> int:
    from PIL import Image

    from .pipelines.image_processing import image_grid, progressive_strip, upscale

    output = Path(args.output)
    if output.suffix.lower() not in IMAGE_SUFFIXES or output.is_dir():
        raise UsageError(f"--output {output}: expected a grid file ending in {'/'.join(IMAGE_SUFFIXES)}.")
    image = _read_image(args.image)
    pipe = _load_pipeline(args.model, args.device)
    pipe.set_progress_bar_config(disable=True)
    labels = _labels_and_seeds(pipe, args)
    prefix = pipe.encode_prefix(image, args.keep_tokens)
    kept = prefix.shape[1]
    pipe.check_inputs(labels, None, 1, None, "pil", None, args.num_candidates, kept, **sampling_arguments(args))
    steps = pipe.prefix_lengths()
    side = args.display_size or pipe.vqvae.schedule.decoder_resolution(steps[-1])
    _check_output(output, len(labels) + 1, side, len(steps), args.progressive)
    output.parent.mkdir(parents=True, exist_ok=True)

    cells = [pipe.decode(prefix, output_type="pil")[0] if kept else Image.new("RGB", (side, side), "white")]
    strips = []
    batches = _in_batches(pipe, labels, args, image=image, keep_tokens=kept, num_candidates=args.num_candidates)
    for batch, out in batches:
        cells += list(out.images)
        if args.progressive:
            strips += [progressive_strip(out.intermediates, j, args.display_size) for j in range(len(batch))]
    cells = [upscale(cell, side) for cell in cells]  # the kept image is at its own (low) resolution
    image_grid(cells, columns=min(len(cells), args.num_images + 1)).save(output)
    print(f"kept {kept} tokens ({pipe.vqvae.schedule.decoder_resolution(kept) if kept else 0} px) of {args.image}")
    print(output)
    if args.progressive:
        strip = output.with_name(output.stem + "_progressive" + output.suffix)
        image_grid(strips, columns=1).save(strip)
        print(strip)
    return 0


# -- convert / publish --------------------------------------------------------------------------------
def _add_release_args(p):
    """The release to convert: what `convert` and `publish` share."""
    p.add_argument(
        "--tokenizer", required=True, help="tokenizer release folder or Hub repo id (e.g. ByteFlow-AI/DetailFlow-16)"
    )
    p.add_argument(
        "--generator",
        required=True,
        help="generator release folder or Hub repo id (e.g. ByteFlow-AI/DetailFlow-16-GPT-L)",
    )
    p.add_argument(
        "--tokenizer-architecture", help="JSON file with the encoder/decoder shapes (default: the release's)"
    )
    p.add_argument("--tokenizer-checkpoint", help="checkpoint file name under checkpoints/ (default: newest)")
    p.add_argument("--generator-checkpoint", help="checkpoint file name under checkpoints/ (default: newest)")
    p.add_argument(
        "--use-ema", action=argparse.BooleanOptionalAction, default=True, help="generator EMA weights (default)"
    )
    add_sampling_args(p, default="the release's evaluation setting for its token count")


def _conversion_arguments(args) -> dict:
    """`convert_release`'s keyword arguments from `_add_release_args`' flags."""
    architecture = None
    if args.tokenizer_architecture:
        architecture = json.loads(Path(args.tokenizer_architecture).read_text())
    return dict(
        tokenizer_architecture=architecture,
        use_ema=args.use_ema,
        tokenizer_checkpoint=args.tokenizer_checkpoint,
        generator_checkpoint=args.generator_checkpoint,
        sampling=sampling_arguments(args),
    )


def _add_convert(subparsers):
    p = subparsers.add_parser("convert", help="convert an original DetailFlow release to a pipeline folder")
    _add_release_args(p)
    p.add_argument("--output", required=True, help="pipeline folder to write")
    p.add_argument("--with-code", action="store_true", help="also write the code, so stock diffusers can load it")
    p.set_defaults(func=_convert)


def _convert(args) -> int:
    """The converted pipeline folder, with a card naming its sources (`release_card`)."""
    from .conversion.original import convert_release
    from .hub import release_card, write_pipeline_folder

    pipe = convert_release(args.tokenizer, args.generator, **_conversion_arguments(args))
    card = release_card(
        pipe,
        Path(args.output).name,
        args.tokenizer,
        args.generator,
        use_ema=args.use_ema,
        remote_code=args.with_code,
        load_from=json.dumps(str(args.output)),
    )
    write_pipeline_folder(pipe, args.output, card, include_code=args.with_code)
    print(f"wrote {args.output}")
    return 0


def _add_publish(subparsers):
    p = subparsers.add_parser(
        "publish", help="convert an original release and upload it as a ready-to-load Hub repo with a full card"
    )
    _add_release_args(p)
    p.add_argument("--repo-id", required=True, help="the repo to create or update (OWNER/NAME)")
    p.add_argument("--results", help="JSON file of measured numbers for the card ({metric: value})")
    p.add_argument("--num-samples", type=flags.int_range(0, 64, "a sample count"), default=8, help="0: no grid")
    p.add_argument("--device", default="cpu", help="where the sample grid is generated")
    p.add_argument("--private", action="store_true")
    p.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    p.add_argument("--no-code", action="store_true", help="weights and card only (loading then needs this package)")
    p.set_defaults(func=_publish)


def _publish(args) -> int:
    from .hub import publish_release

    results = None
    if args.results:
        results = json.loads(Path(args.results).read_text())
        if not isinstance(results, dict):
            raise UsageError(f"--results {args.results}: expected a JSON object of metric: value.")
    result = publish_release(
        args.tokenizer,
        args.generator,
        args.repo_id,
        results=results,
        num_samples=args.num_samples,
        device=args.device,
        include_code=not args.no_code,
        private=args.private or None,
        create_pr=args.create_pr,
        **_conversion_arguments(args),
    )
    print(f"published {args.repo_id}: {result}")
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
    from .evaluation.metrics import prefix_reconstructions, psnr
    from .pipelines.image_processing import image_grid

    pipe = _load_pipeline(args.model, args.device)
    image = _read_image(args.image)
    pixels = pipe.image_processor.preprocess(image)[0].to(args.device)
    levels = prefix_reconstructions(pipe.vqvae, pixels)
    print("tokens  PSNR (dB)")
    for k, reconstruction in levels.items():
        print(f"{k:6d}  {psnr(reconstruction, pixels).item():8.2f}")
    if args.output:
        frames = [pipe.image_processor.postprocess(rec[:1], "pil")[0] for rec in levels.values()]
        image_grid(frames, columns=len(levels)).save(args.output)
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


# -- space ------------------------------------------------------------------------------------------
def _add_space(subparsers):
    from .space import HARDWARE

    p = subparsers.add_parser("space", help="write a deployable Hugging Face Space folder (app, code, requirements)")
    p.add_argument("output", help="a new (or empty) folder")
    p.add_argument(
        "--model",
        help="pipeline folder, Hub repo id or original:TOKENIZER,GENERATOR (default: the embedded model)",
    )
    p.add_argument("--hardware", default="cpu-basic", choices=HARDWARE, help="the README's suggested hardware")
    p.set_defaults(func=_space)


def _space(args) -> int:
    from .space import build_space

    folder = build_space(args.output, model=args.model, hardware=args.hardware)
    print(f"wrote {folder}: push it to a Space repo (e.g. `hf upload --repo-type space OWNER/NAME {folder}`)")
    return 0


# -- eval-generation / eval-tokenizer ---------------------------------------------------------------
def _add_eval_generation(subparsers):
    from .evaluation.arguments import add_generation_eval_args

    p = subparsers.add_parser(
        "eval-generation",
        help="class-balanced sample set (any number of processes) and its FID/IS/precision/recall",
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
        "eval-tokenizer",
        help="PSNR, SSIM and rFID of the tokenizer per detail level",
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
    for add in (
        _add_generate,
        _add_vary,
        _add_convert,
        _add_publish,
        _add_reconstruct,
        _add_card,
        _add_space,
        _add_eval_generation,
        _add_eval_tokenizer,
    ):
        add(subparsers)
    return parser


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as error:
        # User mistakes (bad paths, names, values, configs, checkpoints): one line, no traceback.
        print(f"detailflow-hf {args.command}: error: {_first_line(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
