"""What `num_candidates` costs: detail completion of one thumbnail with plain sampling and with n
candidates per step, timed in one process on the embedded model.

Per n it prints the median seconds of one call (one 16 px thumbnail, keep_tokens chosen by its size)
and its ratio to plain sampling (n = 1). The n candidates of an image run as one batch; every step
decodes them once, then once more each distinct id they drew at a position besides the one in place (the
mixes tried), so the cost grows slower than n.

    python benchmarks/bench_num_candidates.py                      # n = 1, 8, 32; 9 calls each
    python benchmarks/bench_num_candidates.py --candidates 1 4 16 --side 24 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import detailflow_hf
from detailflow_hf import DetailFlowPipeline
from detailflow_hf.pipelines.image_processing import open_image

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=detailflow_hf.DEFAULT_MODEL)
    parser.add_argument("--image", default=str(ROOT / "tests" / "fixtures" / "emoji_named" / "red_apple.png"))
    parser.add_argument("--class_label", default="red apple")
    parser.add_argument("--side", type=int, default=16, help="thumbnail side in px")
    parser.add_argument("--candidates", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args(argv)

    pipe = DetailFlowPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    thumbnail = open_image(args.image).resize((args.side, args.side))
    kept, last = pipe.auto_keep_tokens(args.side), pipe.prefix_lengths()[-1]
    if not 0 < kept < last:
        parser.error(f"--side {args.side} keeps {kept} of {last} tokens; choose a side that leaves steps to take.")

    def call(n: int, seed: int):
        return pipe(args.class_label, image=thumbnail, num_candidates=n, generator=torch.Generator().manual_seed(seed))

    medians = {}
    for n in args.candidates:
        call(n, 0)  # warm-up: first-use packing and allocation
        times = []
        for seed in range(args.repeats):
            start = time.perf_counter()
            call(n, seed)
            times.append(time.perf_counter() - start)
        medians[n] = statistics.median(times)
    reference = 1 if 1 in medians else args.candidates[0]
    print(f"{args.side} px thumbnail, {kept} of {last} tokens kept, {args.repeats} calls each")
    for n, median in medians.items():
        ratio = median / medians[reference]
        print(f"num_candidates={n:>3}: median {median * 1000:7.1f} ms  ({ratio:.1f}x n={reference})")


if __name__ == "__main__":
    main()
