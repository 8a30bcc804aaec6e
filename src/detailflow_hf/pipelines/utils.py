"""Small image helpers shared by the pipeline, the CLI and the demo."""

from __future__ import annotations

import math

from PIL import Image


def image_grid(images: list[Image.Image], columns: int | None = None) -> Image.Image:
    """Paste equally sized PIL images into one grid, row-major (`columns` defaults to ~sqrt(n))."""
    if not images:
        raise ValueError("image_grid needs at least one image.")
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    width, height = images[0].size
    grid = Image.new("RGB", (columns * width, rows * height))
    for index, image in enumerate(images):
        grid.paste(image, ((index % columns) * width, (index // columns) * height))
    return grid
