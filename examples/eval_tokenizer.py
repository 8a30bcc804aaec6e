"""Reconstruction quality of a DetailFlow tokenizer per detail level (token prefix): PSNR, SSIM
and rFID, each prefix decoded at its own resolution and resized (bicubic) to the input size.

    # a quick look on a local folder, no feature network
    python examples/eval_tokenizer.py --model PIPELINE --data_dir images/ --split train --num_samples 200 --no_rfid
    # rFID on ImageNet val (50 000 images, ADM centre crops) with torch-fidelity's Inception
    python examples/eval_tokenizer.py --model detailflow-16 --dataset_name ILSVRC/imagenet-1k --split validation \
        --inception_weights weights-inception-2015-12-05-6726825d.pth --prefixes 16 32 64 128 --output rec16.json

`--model` is a pipeline folder (its `vqvae`) or a tokenizer folder. rFID compares the statistics of
the reconstructions with those of the same input images. Same as `detailflow-hf eval-tokenizer`.
"""

from __future__ import annotations

import argparse
import sys

from detailflow_hf.evaluation.arguments import add_tokenizer_eval_args, format_levels, run_tokenizer_eval


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    report = run_tokenizer_eval(add_tokenizer_eval_args(parser).parse_args(argv))
    print(format_levels(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
