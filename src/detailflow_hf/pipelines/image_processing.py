"""Images in and out, one way everywhere (pipeline, CLI, Space, evaluation, training).

In: files are opened with a size check before decoding and made RGB (transparency composited onto
white, the background DetailFlow-style datasets are rendered on, instead of dropping the alpha);
the short side is resized (BOX halving while at least twice the target, then BICUBIC, as ADM's
`center_crop_arr`) and the centre square cropped; pixels map to [-1, 1].
Out: [-1, 1] or [0, 1] tensors become uint8 with the original release's rule,
`clamp(127.5 x + 128, 0, 255)` truncated (`floor(255 y + 0.5)` for `y` in [0, 1]); grids and
coarse-to-fine strips are pasted from PIL images.

[`DetailFlowImageProcessor`] bundles the two directions the pipeline needs, in the manner of
diffusers' `VaeImageProcessor`.
"""

from __future__ import annotations

import io
import math
import os

import numpy as np
import PIL.Image
import torch
from PIL import Image

# Refuse to decode images larger than this many pixels (8192 x 8192): a decompression bomb must fail
# fast with a message, not exhaust memory. PIL reads the size from the header without decoding.
MAX_IMAGE_PIXELS = 8192 * 8192
BACKGROUND = (255, 255, 255)
OUTPUT_TYPES = ("pil", "np", "pt")


# -- files ------------------------------------------------------------------------------------------
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


# -- resizing and cropping (ADM's, as the original's data pipeline) -------------------------------------
def _halve_while_large(image: Image.Image, short_side: int) -> Image.Image:
    while min(image.size) >= 2 * short_side:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.BOX)
    return image


def _resize_short_side(image: Image.Image, short_side: int) -> Image.Image:
    image = _halve_while_large(image, short_side)
    scale = short_side / min(image.size)
    return image.resize(tuple(round(s * scale) for s in image.size), resample=Image.BICUBIC)


def center_crop_arr(image: Image.Image, size: int) -> Image.Image:
    """Short side to `size` (BOX halving, then BICUBIC), centre `size x size` crop."""
    arr = np.asarray(_resize_short_side(image, size))
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return Image.fromarray(arr[top : top + size, left : left + size])


def random_crop_arr(
    image: Image.Image, size: int, rng: np.random.Generator, min_scale: float = 1.0, max_scale: float = 1.25
) -> Image.Image:
    """Short side to a random integer in `[ceil(size*min_scale), ceil(size*max_scale)]` (256..320 for
    256, as the original's crop fractions 0.8..1), then a random `size x size` crop."""
    low, high = math.ceil(size * min_scale), math.ceil(size * max_scale)
    if low < size or high < low:
        raise ValueError(f"need size <= ceil(size*min_scale) <= ceil(size*max_scale), got {size}, {low}, {high}.")
    arr = np.asarray(_resize_short_side(image, int(rng.integers(low, high + 1))))
    top = int(rng.integers(0, arr.shape[0] - size + 1))
    left = int(rng.integers(0, arr.shape[1] - size + 1))
    return Image.fromarray(arr[top : top + size, left : left + size])


def ten_crop(image: Image.Image, size: int) -> list[Image.Image]:
    """Four corners and the centre of `image`, then the same five of its mirror image (10 crops)."""
    crops = []
    for view in (image, image.transpose(Image.FLIP_LEFT_RIGHT)):
        w, h = view.size
        corners = [(0, 0), (w - size, 0), (0, h - size), (w - size, h - size)]
        corners.append(((w - size) // 2, (h - size) // 2))
        crops += [view.crop((x, y, x + size, y + size)) for x, y in corners]
    return crops


# -- pixels <-> tensors ------------------------------------------------------------------------------
def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL -> (3, H, W) float32 in [-1, 1], as `ToTensor` + `Normalize(0.5, 0.5)`."""
    arr = torch.from_numpy(np.array(image.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1)
    return (arr.float() / 255 - 0.5) / 0.5


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """`(batch, 3, H, W)` in [0, 1] -> `(batch, H, W, 3)` uint8, the original's rounding
    (`clamp(127.5 x + 128, 0, 255)` cast, x in [-1, 1]: `floor(255 y + 0.5)`)."""
    return (images.float() * 255 + 0.5).floor().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """`(batch, 3, H, W)` in [0, 1] -> PIL images (the `to_uint8` rounding)."""
    return [Image.fromarray(array) for array in to_uint8(images)]


# -- grids ------------------------------------------------------------------------------------------
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


def upscale(image: np.ndarray | Image.Image, size: int) -> Image.Image:
    """A preview frame upscaled (nearest, so coarse pixels stay visible) to `size` for display."""
    if isinstance(image, np.ndarray):  # (H, W, 3) in [0, 1], the pipeline's "np" output
        image = to_pil(torch.from_numpy(image).permute(2, 0, 1)[None])[0]
    return image.resize((size, size), Image.NEAREST)


def progressive_strip(intermediates: list, index: int, size: int | None = None) -> Image.Image:
    """One image's coarse-to-fine sequence (pipeline `intermediates`, PIL) side by side, each
    upscaled (nearest) to the final size."""
    frames = [step[index] for step in intermediates]
    size = size or frames[-1].size[0]
    return image_grid([upscale(frame, size) for frame in frames], columns=len(frames))


# -- the pipeline's processor -------------------------------------------------------------------------
class DetailFlowImageProcessor:
    """Images for and from a DetailFlow tokenizer of side `size`.

    `preprocess` takes what diffusers pipelines take: a PIL image or a list of them, a
    `(batch, H, W, 3)` array or a `(batch, 3, H, W)` tensor with values in [0, 1] (or one image
    without the batch axis); it resizes the short side and centre-crops to `size` (see
    `center_crop_arr`) and returns `(batch, 3, size, size)` float32 in [-1, 1].
    `postprocess` turns decoded `(batch, 3, H, W)` samples in [-1, 1] into `"pil"`, `"np"`
    (`(batch, H, W, 3)` in [0, 1]) or `"pt"` (`(batch, 3, H, W)` in [0, 1]).
    """

    def __init__(self, size: int):
        self.size = size

    @staticmethod
    def as_pil_list(image) -> list[Image.Image]:
        """The accepted image inputs as a list of RGB PIL images (values checked to lie in [0, 1])."""
        if isinstance(image, PIL.Image.Image):
            return [to_rgb(image)]
        if isinstance(image, (list, tuple)) and image and all(isinstance(i, PIL.Image.Image) for i in image):
            return [to_rgb(i) for i in image]
        if isinstance(image, np.ndarray):
            array = image[None] if image.ndim == 3 else image
            if array.ndim != 4 or array.shape[-1] != 3:
                raise ValueError(f"an image array must be (batch, H, W, 3) or (H, W, 3), got {image.shape}.")
            tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2)
        elif isinstance(image, torch.Tensor):
            tensor = image[None] if image.ndim == 3 else image
            if tensor.ndim != 4 or tensor.shape[1] != 3:
                raise ValueError(f"an image tensor must be (batch, 3, H, W) or (3, H, W), got {tuple(image.shape)}.")
        else:
            raise ValueError(
                f"image must be a PIL image, a list of them, a (batch, H, W, 3) array or a (batch, 3, H, W) tensor; "
                f"got {type(image).__name__}."
            )
        if tensor.numel() == 0:
            raise ValueError("image is empty.")
        tensor = tensor.detach().float().cpu()
        if not torch.isfinite(tensor).all():
            raise ValueError("image contains NaN or infinite values; expected values in [0, 1].")
        low, high = tensor.min().item(), tensor.max().item()
        if low < 0 or high > 1:
            raise ValueError(
                f"image values span [{low:.3g}, {high:.3g}]; expected [0, 1] (divide uint8 pixels by 255)."
            )
        return to_pil(tensor)

    def preprocess(self, image) -> tuple[torch.Tensor, list[int]]:
        """-> `(batch, 3, size, size)` in [-1, 1], and each input's shorter side (before resizing)."""
        images = self.as_pil_list(image)
        for i, im in enumerate(images):
            if im.size[0] * im.size[1] > MAX_IMAGE_PIXELS:
                raise ValueError(
                    f"image {i} is {im.size[0]} x {im.size[1]} px, more than {MAX_IMAGE_PIXELS:,} pixels."
                )
        pixels = torch.stack([to_tensor(center_crop_arr(im, self.size)) for im in images])
        return pixels, [min(im.size) for im in images]

    @staticmethod
    def resize(pixels: torch.Tensor, side: int) -> torch.Tensor:
        """`(batch, 3, H, W)` pixels -> `(batch, 3, side, side)` float32, bicubic (antialiased when shrinking)."""
        if pixels.shape[-2:] == (side, side):
            return pixels.float()
        return torch.nn.functional.interpolate(pixels.float(), size=(side, side), mode="bicubic", antialias=True)

    @staticmethod
    def postprocess(sample: torch.Tensor, output_type: str = "pil"):
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type={output_type!r} is not supported; expected one of {list(OUTPUT_TYPES)}.")
        images = (sample.float() / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            return images
        if output_type == "pil":
            return to_pil(images)
        return images.permute(0, 2, 3, 1).cpu().numpy()


__all__ = [
    "MAX_IMAGE_PIXELS",
    "DetailFlowImageProcessor",
    "center_crop_arr",
    "image_grid",
    "open_image",
    "progressive_strip",
    "random_crop_arr",
    "ten_crop",
    "to_pil",
    "to_rgb",
    "to_tensor",
    "to_uint8",
    "upscale",
]
