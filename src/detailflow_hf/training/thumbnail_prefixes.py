"""Thumbnail-prefix codes: train the generator on what detail completion gives it.

Detail completion (`DetailFlowPipeline(image=thumbnail)`) keeps the first `k` tokens of a small
image upscaled to the tokenizer's resolution, `k` = the tokens its size shows, and lets the
generator continue. Those `k` tokens are not the full image's: downscaling loses what the later
tokens would have encoded, so the prefix the generator continues from is one it never saw in
training, and a small generator then draws neither the picture it knows nor one that keeps the
thumbnail (the decoder takes much of the coarse image from the later tokens too).

A thumbnail-prefix code shows it that case: for an image with clean ids `x` and a thumbnail side `s`
drawn among the sizes that show a proper prefix, `k = tokens_shown(s)`,

    input = [encode(thumbnail_s)[:k], x[k:]],   label = x,

stored as a `[clean, input, label]` triple like the self-correction codes (the trainer feeds the
input with probability `correction_prob`). The generator learns to continue a thumbnail's prefix with
the full image's detail.
"""

from __future__ import annotations

import torch
from PIL import Image

from ..pipelines.image_processing import center_crop_arr, to_tensor


def thumbnail_sides(schedule) -> list[int]:
    """The thumbnail sides (px) that keep a proper prefix (`0 < tokens_shown(side) < num_tokens`): the
    decoder resolutions of the schedule below the full image's."""
    sides = sorted({schedule.decoder_resolution(t) for t in schedule.token_list})
    return [s for s in sides if 0 < schedule.tokens_shown(s) < schedule.num_tokens]


def draw_thumbnail_sides(schedule, count: int, generator: torch.Generator | None = None) -> list[int]:
    """`count` sides drawn uniformly (with `generator`) from `thumbnail_sides(schedule)`."""
    sides = thumbnail_sides(schedule)
    return [sides[i] for i in torch.randint(0, len(sides), (count,), generator=generator).tolist()]


@torch.no_grad()
def thumbnail_prefix_codes(tokenizer, image: Image.Image, sides: list[int]) -> torch.LongTensor:
    """One thumbnail-prefix triple per side: `(len(sides), T, 3)` (see the module docstring).

    Args:
        tokenizer: a `DetailFlowTokenizer`.
        image: an RGB PIL image; its centre crop at the tokenizer's resolution is the full image.
        sides: thumbnail sides in px (e.g. `draw_thumbnail_sides`); each keeps `tokens_shown(side)` ids.
    """
    schedule, size = tokenizer.schedule, tokenizer.config.image_size
    shown = [schedule.tokens_shown(side) for side in sides]
    if not all(0 < k < schedule.num_tokens for k in shown):
        raise ValueError(f"thumbnail sides {sides} must each be one of {thumbnail_sides(schedule)} px.")
    centre = center_crop_arr(image, size)
    # a thumbnail enters the tokenizer as the pipeline feeds any image: resized and centre-cropped to `size`
    thumbnails = [center_crop_arr(centre.resize((side, side), Image.BICUBIC), size) for side in sides]
    pixels = torch.stack([to_tensor(im) for im in [centre, *thumbnails]]).to(tokenizer.device, tokenizer.dtype)
    ids = tokenizer.encode(pixels).token_ids
    clean = ids[0]
    inputs = [torch.cat([row[:k], clean[k:]]) for row, k in zip(ids[1:], shown)]
    return torch.stack([torch.stack([clean, row, clean], dim=-1) for row in inputs])


__all__ = ["draw_thumbnail_sides", "thumbnail_prefix_codes", "thumbnail_sides"]
