"""Small image helpers shared by the pipeline's users: the CLI and the demo."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image


def image_grid(images: list[Image.Image], columns: int | None = None) -> Image.Image:
    """Paste PIL images into one grid, row-major, each in a cell of the largest size (`columns`
    defaults to ~sqrt(n))."""
    if not images:
        raise ValueError("image_grid needs at least one image.")
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    width, height = max(im.size[0] for im in images), max(im.size[1] for im in images)
    grid = Image.new("RGB", (columns * width, rows * height))
    for index, image in enumerate(images):
        grid.paste(image, ((index % columns) * width, (index // columns) * height))
    return grid


def to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) tensor in [-1, 1] -> PIL, with the original's 8-bit rounding."""
    array = (image.float().clamp(-1, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    return Image.fromarray(array.permute(1, 2, 0).cpu().numpy())


def progressive_strip(intermediates: list, index: int, size: int | None = None) -> Image.Image:
    """One image's coarse-to-fine sequence (pipeline `intermediates`, PIL) side by side, each
    upscaled (nearest, so the coarse pixels stay visible) to the final size."""
    frames = [step[index] for step in intermediates]
    size = size or frames[-1].size[0]
    return image_grid([frame.resize((size, size), Image.NEAREST) for frame in frames], columns=len(frames))


def upscale(image: np.ndarray | Image.Image, size: int) -> Image.Image:
    """A preview frame upscaled (nearest) to `size` for display."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray((image * 255).round().astype(np.uint8))
    return image.resize((size, size), Image.NEAREST)
