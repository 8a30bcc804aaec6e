"""Measure image-conditioned generation on the embedded model's held-out emoji.

    python scripts/measure_image_conditioned.py [--model DIR] [--images tests/fixtures/emoji_heldout] \
        [--output results.json]

The held-out emoji are no class of the model; each is given the class under which the generator finds
its first 8 tokens (its coarse layout) likeliest (`likeliest_classes`): the model's own reading of it.

1. Variations: each held-out emoji is encoded, its first k tokens kept, and 4 variations drawn
   under that class (per-image seeds). Per k: the mean absolute pixel distance (0..1) of a
   variation to the input, and between two variations of one input. Fewer kept tokens, more freedom.
2. Detail completion: each emoji is downscaled (bicubic) to a thumbnail of s px and given to the
   pipeline, which keeps the tokens that resolution shows and generates the rest. Reported per s:
   - consistency with the thumbnail: PSNR of the output, downscaled to s, against the thumbnail;
     next to the tokenizer's own k-token reconstruction of the full image and of the thumbnail (the
     prefix the pipeline keeps), to the kept prefix completed with the full image's own remaining
     tokens (what a perfect continuation would give), and to plain bicubic upscaling of the
     thumbnail, all downscaled the same way;
   - fidelity to the unseen full-size emoji: PSNR of the output, and of bicubic upscaling, against it;
   - the same for the pipeline's `num_candidates` (`--candidates`, e.g. 8 32): every step draws that many
     continuations and keeps the nearest the thumbnail, mixing their ids where that comes nearer.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import detailflow_hf
from detailflow_hf import DetailFlowPipeline
from detailflow_hf.evaluation import metrics
from detailflow_hf.pipelines.image_processing import open_image

ROOT = Path(__file__).resolve().parents[1]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over images of the per-image PSNR (dB, `evaluation.metrics.psnr`) of uint8 arrays `(n, H, W, 3)`."""
    as_tensor = lambda x: torch.from_numpy(x).permute(0, 3, 1, 2).float() / 127.5 - 1  # noqa: E731
    return float(metrics.psnr(as_tensor(a), as_tensor(b)).mean())


def resize_all(images: list[Image.Image], side: int) -> np.ndarray:
    return np.stack([np.asarray(im.resize((side, side), Image.BICUBIC)) for im in images])


@torch.no_grad()
def likeliest_classes(transformer, ids: torch.Tensor, k: int) -> list[int]:
    """Per row of `ids` `(n, N)`: the class maximising the generator's log-likelihood of the first `k` ids."""
    classes = torch.arange(transformer.config.num_classes)
    labels = []
    for row in ids:
        prefix = row[:k].expand(len(classes), -1)
        logits = transformer(input_ids=prefix, class_labels=classes).logits[:, :k]
        log_likelihood = logits.log_softmax(-1).gather(-1, prefix[..., None]).squeeze(-1).sum(-1)
        labels.append(int(log_likelihood.argmax()))
    return labels


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=detailflow_hf.DEFAULT_MODEL)
    parser.add_argument("--images", default=str(ROOT / "tests" / "fixtures" / "emoji_heldout"))
    parser.add_argument("--output", default=None, help="write the figures as JSON here")
    parser.add_argument("--variations", type=int, default=4, help="per image and k (0: skip)")
    parser.add_argument("--every", type=int, default=1, help="use every n-th image (sorted by name)")
    parser.add_argument("--candidates", type=int, nargs="*", default=[], help="num_candidates values to measure too")
    args = parser.parse_args(argv)

    pipe = DetailFlowPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    files = sorted(Path(args.images).glob("*.png"))[:: args.every]
    images = [open_image(f) for f in files]
    size = pipe.vqvae.config.image_size
    originals = np.stack([np.asarray(im.resize((size, size), Image.BICUBIC)) for im in images])
    schedule = pipe.vqvae.schedule
    full = torch.stack([torch.from_numpy(o).permute(2, 0, 1).float() / 127.5 - 1 for o in originals])
    ids = pipe.vqvae.encode(full).token_ids
    labels = likeliest_classes(pipe.transformer, ids, schedule.causal_num)
    report = {"model": str(args.model), "images": len(files), "variations": {}, "detail_completion": {}}

    n = args.variations
    for k in [k for k in schedule.token_list if k in (1, 4, 8, 16, 24, 32, 40, 48, 56) and n > 0]:
        dist_in, dist_between = [], []
        for i, image in enumerate(images):
            gens = [torch.Generator().manual_seed(1000 * i + j) for j in range(n)]
            out = pipe(
                class_labels=[labels[i]],
                image=image,
                keep_tokens=k,
                num_images_per_prompt=n,
                generator=gens,
                output_type="np",
            ).images
            dist_in.append(np.abs(out - originals[i] / 255.0).mean())
            dist_between.append(np.mean([np.abs(out[a] - out[b]).mean() for a in range(n) for b in range(a + 1, n)]))
        report["variations"][k] = {
            "resolution": schedule.decoder_resolution(k),
            "to_input": round(float(np.mean(dist_in)), 4),
            "between": round(float(np.mean(dist_between)), 4),
        }
        print("variations", k, report["variations"][k], flush=True)

    for side in (8, 16, 24):
        thumbs = [Image.fromarray(o).resize((side, side), Image.BICUBIC) for o in originals]
        thumb_arr = np.stack([np.asarray(t) for t in thumbs])
        k = pipe.auto_keep_tokens(side)
        result = pipe(
            class_labels=labels, image=thumbs, generator=[torch.Generator().manual_seed(i) for i in range(len(thumbs))]
        )
        assert result.kept_tokens == k
        outs, kept = result.images, result.token_ids[:, :k]  # the thumbnails' own encoded prefix
        recon = pipe.decode(ids[:, :k])
        thumb_recon = pipe.decode(kept)
        true_rest = pipe.decode(torch.cat([kept, ids[:, k:]], dim=1))
        bicubic = [t.resize((size, size), Image.BICUBIC) for t in thumbs]
        to_thumbnail = lambda images, side=side, thumb_arr=thumb_arr: round(  # noqa: E731
            psnr(resize_all(images, side), thumb_arr), 2
        )
        to_full_size = lambda images: round(psnr(np.stack([np.asarray(im) for im in images]), originals), 2)  # noqa: E731
        with_candidates = {}
        for count in args.candidates:
            picked = pipe(
                class_labels=labels,
                image=thumbs,
                generator=[torch.Generator().manual_seed(i) for i in range(len(thumbs))],
                num_candidates=count,
            ).images
            with_candidates[count] = {
                "psnr_to_thumbnail": to_thumbnail(picked),
                "psnr_to_full_size": to_full_size(picked),
            }
        report["detail_completion"][side] = {
            "kept_tokens": k,
            "psnr_to_thumbnail": {
                "output": to_thumbnail(outs),
                "tokenizer_k_token_reconstruction": to_thumbnail(recon),
                "tokenizer_k_token_reconstruction_of_thumbnail": to_thumbnail(thumb_recon),
                "kept_prefix_with_the_originals_remaining_tokens": to_thumbnail(true_rest),
                "bicubic_upscaling": to_thumbnail(bicubic),
            },
            "psnr_to_full_size": {
                "output": to_full_size(outs),
                "bicubic_upscaling": to_full_size(bicubic),
            },
            "num_candidates": with_candidates,
        }
        print("detail completion", side, report["detail_completion"][side], flush=True)
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
