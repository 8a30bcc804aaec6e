"""Generate the class-balanced sample set of a DetailFlow pipeline and score it (FID, IS,
precision/recall) against an ADM reference batch.

    # one process (CPU or one GPU)
    python examples/eval_generation.py --model PIPELINE --output_dir eval/ --num_samples 1000
    # the 50k protocol on 8 GPUs (the sample set is the same for any number of processes)
    accelerate launch --num_processes 8 examples/eval_generation.py --model detailflow-16 \
        --output_dir eval16/ --guidance_scale 1.45 --top_k 8192 --batch_size 64 --transformer_dtype bfloat16 \
        --reference VIRTUAL_imagenet256_labeled.npz --inception_weights weights-inception-2015-12-05-6726825d.pth

Image `i` has class `i % num_classes` (50 per class for 50 000 ImageNet samples) and its own
generator seeded `seed + i`. `output_dir/samples.npz` (`arr_0` uint8 NHWC, `arr_1` labels) is also
the input of ADM's TensorFlow evaluator (openai/guided-diffusion `evaluations/evaluator.py`), which
the published numbers use. Batches already in `output_dir/batches` are kept: rerun to resume.
Same as `detailflow-hf eval-generation`.
"""

from __future__ import annotations

import argparse
import json
import sys

from detailflow_hf.evaluation.arguments import add_generation_eval_args, run_generation_eval


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    args = add_generation_eval_args(parser).parse_args(argv)
    report = run_generation_eval(args)
    if report is not None:
        print(json.dumps(report.get("metrics", {"samples": report["samples"]}), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
