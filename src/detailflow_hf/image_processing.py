"""Image files in: opened with a size check before decoding, and made RGB the same way everywhere.

Transparent images (RGBA, LA, palette images with a transparent colour) are composited onto
white, the background DetailFlow-style datasets are rendered on, instead of having their alpha
dropped (which shows whatever colour the transparent pixels happen to store, often black).
"""

from __future__ import annotations

import io
import os

from PIL import Image

# Refuse to decode images larger than this many pixels (8192 x 8192): a decompression bomb must fail
# fast with a message, not exhaust memory. PIL reads the size from the header without decoding.
MAX_IMAGE_PIXELS = 8192 * 8192
BACKGROUND = (255, 255, 255)


def to_rgb(image: Image.Image) -> Image.Image:
    """An RGB copy of `image`; transparency is composited onto white."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def open_image(value, name: str | None = None) -> Image.Image:
    """A path, raw bytes, a `datasets` undecoded image (`{"bytes", "path"}`) or a PIL image -> a
    loaded RGB PIL image (see `to_rgb`).

    Raises `ValueError` naming the image (`name`, else its path) when it is larger than
    `MAX_IMAGE_PIXELS`, and PIL's `OSError`/`UnidentifiedImageError` when it cannot be decoded.
    """
    if isinstance(value, Image.Image):
        return to_rgb(value)
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
    elif isinstance(value, (bytes, bytearray)):
        data, path = value, None
    else:
        data, path = None, os.fspath(value)
    name = name or (repr(path) if path else "the image")
    image = Image.open(io.BytesIO(data) if data is not None else path)
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise ValueError(
            f"{name} is {width} x {height} px, more than the {MAX_IMAGE_PIXELS:,} pixels this package decodes; "
            "downscale it first."
        )
    image.load()
    return to_rgb(image)


__all__ = ["MAX_IMAGE_PIXELS", "open_image", "to_rgb"]
