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

from ..pipelines.image_processing import DetailFlowImageProcessor


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
def thumbnail_prefix_codes(
    tokenizer, image: Image.Image, clean_ids: torch.LongTensor, sides: list[int]
) -> torch.LongTensor:
    """One thumbnail-prefix triple per side: `(len(sides), T, 3)` (see the module docstring).

    Args:
        tokenizer: a `DetailFlowTokenizer`.
        image: the full image, an RGB PIL image at the tokenizer's resolution (e.g. a centre crop).
        clean_ids: `(T,)` its token ids, as already encoded for its own codes.
        sides: thumbnail sides in px (e.g. `draw_thumbnail_sides`); each keeps `tokens_shown(side)` ids.
    """
    schedule, size = tokenizer.schedule, tokenizer.config.image_size
    if image.size != (size, size):
        raise ValueError(f"the full image is {image.size[0]} x {image.size[1]} px; expected {size} x {size}.")
    shown = []
    for side in sides:
        k = schedule.tokens_shown(side)
        if not 0 < k < schedule.num_tokens:
            raise ValueError(
                f"a {side} px thumbnail shows {k} of {schedule.num_tokens} tokens; a thumbnail-prefix code needs "
                f"1 to {schedule.num_tokens - 1} (sides {thumbnail_sides(schedule)[0]}-{size - 1} px)."
            )
        shown.append(k)
    # a thumbnail enters the tokenizer as the pipeline feeds any image
    pixels, _ = DetailFlowImageProcessor(size).preprocess([image.resize((s, s), Image.BICUBIC) for s in sides])
    ids = tokenizer.encode(pixels.to(tokenizer.device, tokenizer.dtype)).token_ids
    clean = clean_ids.to(ids.device)
    inputs = [torch.cat([row[:k], clean[k:]]) for row, k in zip(ids, shown)]
    return torch.stack([torch.stack([clean, row, clean], dim=-1) for row in inputs])


__all__ = ["draw_thumbnail_sides", "thumbnail_prefix_codes", "thumbnail_sides"]
