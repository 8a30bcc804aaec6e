"""Resolution degradation of the tokenizer training (docs/algorithm.md §6.2).

With probability `degradation_prob` a step trains the first `t` tokens only: the decoder rebuilds a
degraded target (the image shrunk to `token2res[t]`, then resized to `token2dec_out_res[t]`) at
that small resolution. Otherwise all `N` tokens rebuild the full image. The encoder always sees the
clean full image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..models.schedule import ResolutionSchedule


@dataclass
class DegradedTarget:
    """What the decoder must rebuild this step.

    Args:
        target: `(batch, 3, resolution, resolution)` image in [-1, 1] (not clamped after bicubic).
        num_tokens: `t`, how many leading tokens are decoded.
        resolution: the decoder output side, `token2dec_out_res[t]` (the image size when `t = N`).
    """

    target: torch.Tensor
    num_tokens: int
    resolution: int


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize `(B,C,H,W)` to `(B,C,size,size)`: `area` when shrinking, bicubic when enlarging.

    Compares heights only, as the original; identity when the height already equals `size`.
    """
    height = images.shape[-2]
    if size == height:
        return images
    if size < height:
        return F.interpolate(images, size=(size, size), mode="area")
    return F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False)


def sample_degraded_token_count(schedule: ResolutionSchedule, generator: torch.Generator | None = None) -> int:
    """`t ~ U{1..N-g}`, rounded up to a whole group once past the causal prefix `c`."""
    n, g, c = schedule.num_tokens, schedule.group_size, schedule.causal_num
    if n - g < 1:
        raise ValueError(f"degradation needs num_tokens ({n}) > group_size ({g}).")
    t = int(torch.randint(1, n - g + 1, (), generator=generator))
    if t > c:
        t = -(-t // g) * g
    return t


def degrade(
    images: torch.Tensor,
    schedule: ResolutionSchedule,
    degradation_prob: float = 0.2,
    generator: torch.Generator | None = None,
) -> DegradedTarget:
    """Draw this step's token count and build the matching target from clean images `(B,3,M,M)`."""
    if not 0.0 <= degradation_prob <= 1.0:
        raise ValueError(f"degradation_prob={degradation_prob} must lie in [0, 1].")
    if torch.rand((), generator=generator).item() >= degradation_prob:
        return DegradedTarget(images, schedule.num_tokens, images.shape[-1])
    t = sample_degraded_token_count(schedule, generator)
    return degraded_target(images, schedule, t)


def degraded_target(images: torch.Tensor, schedule: ResolutionSchedule, num_tokens: int) -> DegradedTarget:
    """The target for exactly `num_tokens` tokens: resize to `token2res[t]`, then to `token2dec_out_res[t]`."""
    resolution = schedule.decoder_resolution(num_tokens)
    small = resize_images(images, schedule.resolution(num_tokens))
    return DegradedTarget(resize_images(small, resolution), num_tokens, resolution)
