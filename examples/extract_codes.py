"""Extract token codes of an image dataset with a trained DetailFlow tokenizer (docs/algorithm.md §6.5).

    python examples/extract_codes.py --tokenizer PATH --output_dir codes/ [--train_data_dir DIR | --dataset_name ID]
    accelerate launch --num_processes 8 examples/extract_codes.py ...   # each process writes its own shards

Per image: a centre crop and its mirror image (or `--ten_crop`: 10 crops of a 1.1x centre crop;
`--no_mirror` drops the mirror images, for data whose meaning changes when flipped: text, flags),
one self-correction noise index shared by the crops, and `[clean, noisy input, label]` codes
(`--no_correction`: clean codes only). `--thumbnail_prefixes N` adds N codes per image (after its crops;
not with `--ten_crop`) whose input starts with the prefix a thumbnail of its centre crop keeps
(`detailflow_hf.training.thumbnail_prefixes`), for generators meant to complete detail.
Output: see `detailflow_hf.training.codes`.
"""

from __future__ import annotations

import argparse
import logging

import torch
from accelerate import Accelerator
from PIL import Image
from tqdm.auto import tqdm

from detailflow_hf import DetailFlowTokenizer, flags
from detailflow_hf.image_datasets import class_names, load_image_stream
from detailflow_hf.pipelines.image_processing import center_crop_arr, open_image, ten_crop, to_tensor
from detailflow_hf.training.arguments import add_dataset_args
from detailflow_hf.training.codes import CodesWriter, codes_info_for, write_codes_info
from detailflow_hf.training.data import DECODE_ERRORS, SkipCounter, image_name, split_for_process
from detailflow_hf.training.self_correction import noise_token_index, noisy_encode
from detailflow_hf.training.thumbnail_prefixes import draw_thumbnail_sides, thumbnail_prefix_codes

logger = logging.getLogger(__name__)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", required=True, help="a DetailFlowTokenizer folder (or a pipeline's vqvae/)")
    parser.add_argument("--output_dir", required=True)
    add_dataset_args(parser)
    parser.add_argument("--split", default="train")
    parser.add_argument("--ten_crop", action="store_true", help="10 crops of a 1.1x centre crop per image")
    parser.add_argument(
        "--no_mirror", dest="mirror", action="store_false", help="no mirror-image crops (1, or 5 with --ten_crop)"
    )
    parser.add_argument("--no_correction", dest="correction", action="store_false", help="clean codes only")
    parser.add_argument(
        "--thumbnail_prefixes",
        type=flags.int_range(0, 64, "a count of thumbnail-prefix codes per image"),
        default=0,
        help="per image, this many more codes continuing a random thumbnail's prefix with the image's tokens",
    )
    parser.add_argument(
        "--num_classes", type=flags.positive_int, default=None, help="needed when labels are not a ClassLabel"
    )
    parser.add_argument("--rows_per_shard", type=flags.positive_int, default=10000)
    parser.add_argument(
        "--max_images", type=flags.positive_int, default=None, help="stop after this many images per process"
    )
    parser.add_argument("--seed", type=flags.int_range(0, 2**32 - 1, "a seed"), default=0)
    parser.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), default="no")
    args = parser.parse_args(argv)
    if args.thumbnail_prefixes and not args.correction:
        parser.error("--thumbnail_prefixes stores [clean, input, label] triples; drop --no_correction.")
    if args.thumbnail_prefixes and args.ten_crop:
        parser.error("--thumbnail_prefixes continues the centre crop's tokens; it cannot be combined with --ten_crop.")
    return args


def image_crops(image: Image.Image, size: int, use_ten_crop: bool, mirror: bool = True) -> torch.Tensor:
    """`(crops, 3, size, size)` in [-1, 1]: ten crops (five without `mirror`), or the centre crop and its
    mirror image (the centre crop alone without `mirror`)."""
    if use_ten_crop:
        crops = ten_crop(center_crop_arr(image, int(size * 1.1)), size)
    else:
        centre = center_crop_arr(image, size)
        crops = [centre, centre.transpose(Image.FLIP_LEFT_RIGHT)]
    if not mirror:
        crops = crops[: len(crops) // 2]
    return torch.stack([to_tensor(crop) for crop in crops])


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("__main__", "detailflow_hf"):
        logging.getLogger(name).setLevel(logging.INFO)
    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    tokenizer = DetailFlowTokenizer.from_pretrained(args.tokenizer).to(accelerator.device).eval()
    schedule, size = tokenizer.schedule, tokenizer.config.image_size

    ds = load_image_stream(args.dataset_name, args.train_data_dir, args.split, args.image_column, args.label_column)
    names = class_names(ds)
    num_classes = len(names) if names else args.num_classes
    if num_classes is None:
        raise ValueError("the label column is not a ClassLabel: pass --num_classes.")
    crops = (10 if args.ten_crop else 2) // (1 if args.mirror else 2) + args.thumbnail_prefixes
    info = codes_info_for(tokenizer, num_classes, names, crops=crops, triples=args.correction)
    writer = CodesWriter(
        args.output_dir, info, accelerator.process_index, accelerator.num_processes, args.rows_per_shard
    )
    generator = torch.Generator().manual_seed(args.seed + accelerator.process_index)
    skipped = SkipCounter()

    progress = tqdm(desc="images", disable=not accelerator.is_local_main_process)
    for index, row in enumerate(split_for_process(ds, accelerator)):
        if args.max_images is not None and index >= args.max_images:
            break
        try:
            image = open_image(row["image"])
            pixels = image_crops(image, size, args.ten_crop, args.mirror).to(accelerator.device)
        except DECODE_ERRORS as error:
            skipped.record(image_name({**row, "_row": index}), error)
            continue
        k = noise_token_index(
            schedule.num_tokens, schedule.group_size, schedule.causal_num, args.correction, generator
        )
        with torch.no_grad(), accelerator.autocast():
            encoded = noisy_encode(tokenizer, pixels, k, generator=generator)
            codes = encoded.code_triples() if args.correction else encoded.clean_ids[..., None]
            if args.thumbnail_prefixes:
                sides = draw_thumbnail_sides(schedule, args.thumbnail_prefixes, generator)
                # crop 0 is the centre crop (no --ten_crop): its thumbnails continue with its clean ids
                centre = center_crop_arr(image, size)
                thumbs = thumbnail_prefix_codes(tokenizer, centre, encoded.clean_ids[0], sides)
                codes = torch.cat([codes, thumbs.to(codes.device)])
        writer.add(codes.cpu().numpy(), int(row["label"]))
        progress.update(1)
    writer.flush()
    progress.close()

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_codes_info(args.output_dir, info)
    logger.info("process %d wrote %d images (%d skipped)", accelerator.process_index, writer.written, skipped.count)
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
