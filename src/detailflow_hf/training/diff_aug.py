"""Differentiable augmentation (DiffAugment) for the discriminator inputs (docs/algorithm.md §6.3).

A policy string names augmentation families, comma-separated: ``color`` (brightness, saturation,
contrast), ``translation`` (shift up to 1/8 of the side, zero fill) and ``cutout_<ratio>`` (one
zeroed square of side ``ratio * size``, default 0.5). Each family is applied to the whole batch
with probability ``prob`` (one draw per family and call); its random parameters are drawn per
sample. All randomness comes from torch's global generator (or the one given), so a checkpoint of
the RNG state reproduces it.
"""

from __future__ import annotations

import torch

GENERATOR_POLICY = "color,translation,cutout_0.2"
CONSISTENCY_POLICY = "color,translation,cutout_0.5"


def _rand(shape, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=like.device, dtype=like.dtype)


def color(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Brightness + [-0.5, 0.5), saturation x [0, 2), contrast x [0.5, 1.5); per sample. (B,C,H,W)."""
    b = x.shape[0]
    x = x + (_rand((b, 1, 1, 1), x, generator) - 0.5)
    channel_mean = x.mean(dim=1, keepdim=True)
    x = (x - channel_mean) * (_rand((b, 1, 1, 1), x, generator) * 2) + channel_mean
    image_mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - image_mean) * (_rand((b, 1, 1, 1), x, generator) + 0.5) + image_mean


def translation(x: torch.Tensor, ratio: float = 0.125, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shift each image by up to `ratio` of its side in both axes, filling with zeros. (B,C,H,W)."""
    b, _, h, w = x.shape
    max_dy, max_dx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-max_dy, max_dy + 1, (b, 1, 1), generator=generator, device=x.device)
    dx = torch.randint(-max_dx, max_dx + 1, (b, 1, 1), generator=generator, device=x.device)
    rows = torch.arange(h, device=x.device).view(1, h, 1) + dy  # source row of each output row
    cols = torch.arange(w, device=x.device).view(1, 1, w) + dx
    inside = ((rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)).unsqueeze(1)
    flat = rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1)  # (B,H,W)
    gathered = x.flatten(2).gather(2, flat.flatten(1).unsqueeze(1).expand(-1, x.shape[1], -1))
    return gathered.view_as(x) * inside


def cutout(x: torch.Tensor, ratio: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero one square of side `ratio * size` per image, centred anywhere (clipped at borders)."""
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = torch.randint(0, h + (1 - ch % 2), (b, 1, 1), generator=generator, device=x.device)
    cx = torch.randint(0, w + (1 - cw % 2), (b, 1, 1), generator=generator, device=x.device)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    hole = (rows >= cy - ch // 2) & (rows < cy - ch // 2 + ch) & (cols >= cx - cw // 2) & (cols < cx - cw // 2 + cw)
    return x * (~hole).unsqueeze(1).to(x.dtype)


def parse_policy(policy: str) -> list[tuple[str, float | None]]:
    """`"color,translation,cutout_0.2"` -> `[("color", None), ("translation", None), ("cutout", 0.2)]`."""
    parsed = []
    for item in filter(None, (p.strip() for p in policy.split(","))):
        name, _, arg = item.partition("_")
        if name not in ("color", "translation", "cutout") or (arg and name != "cutout"):
            raise ValueError(
                f"unknown DiffAugment policy {item!r} in {policy!r}; expected color, translation or cutout[_ratio]."
            )
        parsed.append((name, float(arg) if arg else None))
    return parsed


def diff_augment(
    x: torch.Tensor, policy: str = GENERATOR_POLICY, prob: float = 0.5, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Apply each family of `policy` to the batch `(B,C,H,W)` with probability `prob`.

    Differentiable in `x`; `prob=0` returns `x` unchanged, `prob=1` always augments.
    """
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"DiffAugment prob={prob} must lie in [0, 1].")
    for name, ratio in parse_policy(policy):
        if prob == 0.0 or (prob < 1.0 and torch.rand((), generator=generator).item() >= prob):
            continue
        if name == "color":
            x = color(x, generator)
        elif name == "translation":
            x = translation(x, generator=generator)
        else:
            x = cutout(x, 0.5 if ratio is None else ratio, generator)
    return x.contiguous()
