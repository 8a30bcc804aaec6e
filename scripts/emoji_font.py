"""Emoji from the Noto Color Emoji font: the list (Unicode's `emoji-test.txt`), glyphs and framings.

Shared by the maintainer scripts that build, measure and embed the tiny emoji model. Needs
`apt-get install fonts-noto-color-emoji unicode-data` (Debian).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

EMOJI_TEST = Path("/usr/share/unicode/emoji/emoji-test.txt")
FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
SKIN_TONES = range(0x1F3FB, 0x1F400)
NATIVE_SIZE = 109  # the font's bitmap strike
HELDOUT_EVERY = 10  # every 10th emoji of each group (in file order) is held out of all training


@dataclass(frozen=True)
class Emoji:
    codepoints: tuple[int, ...]
    group: str
    name: str  # the Unicode (CLDR) short name, e.g. "red apple": the class name users type
    heldout: bool

    @property
    def text(self) -> str:
        return "".join(map(chr, self.codepoints))

    @property
    def label(self) -> str:
        """The class name users type: the Unicode name, its commas (which separate synonyms in a model's
        `id2label`) written " & " ("kiss: woman & man")."""
        return self.name.replace(", ", " & ")

    @property
    def key(self) -> str:
        """A file-system-safe unique id: the code points in hex ("1f34e", "1f1fa_1f1f8")."""
        return "_".join(f"{c:04x}" for c in self.codepoints)


def check_sources():
    for path in (EMOJI_TEST, FONT):
        if not path.is_file():
            raise SystemExit(f"{path} is missing: apt-get install fonts-noto-color-emoji unicode-data")


def read_emoji(path: Path = EMOJI_TEST) -> list[Emoji]:
    """Fully-qualified emoji without skin-tone modifiers, in file order, with their group and held-out flag."""
    emoji, group, index_in_group = [], None, 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group, index_in_group = line.split(":", 1)[1].strip(), 0
            continue
        if not line.strip() or line.startswith("#"):
            continue
        codes, rest = line.split(";", 1)
        if rest.split("#", 1)[0].strip() != "fully-qualified":
            continue
        codepoints = tuple(int(c, 16) for c in codes.split())
        if any(c in SKIN_TONES for c in codepoints):
            continue
        name = re.sub(r"^\S+\s+E\d+\.\d+\s+", "", rest.split("#", 1)[1].strip())
        heldout = index_in_group % HELDOUT_EVERY == HELDOUT_EVERY - 1
        index_in_group += 1
        emoji.append(Emoji(codepoints, group, name, heldout))
    return emoji


def load_font() -> ImageFont.FreeTypeFont:
    check_sources()
    return ImageFont.truetype(str(FONT), NATIVE_SIZE)


def glyph(emoji: Emoji, font: ImageFont.FreeTypeFont) -> Image.Image | None:
    """The emoji's tight bounding box centred in a transparent square (RGBA); `None` without a glyph."""
    canvas = Image.new("RGBA", (2 * NATIVE_SIZE, 2 * NATIVE_SIZE), (255, 255, 255, 0))
    ImageDraw.Draw(canvas).text((NATIVE_SIZE // 2, NATIVE_SIZE // 2), emoji.text, font=font, embedded_color=True)
    box = canvas.getbbox()
    if box is None:
        return None
    cropped = canvas.crop(box)
    side = max(cropped.size)
    square = Image.new("RGBA", (side, side), (255, 255, 255, 0))
    square.alpha_composite(cropped, ((side - cropped.size[0]) // 2, (side - cropped.size[1]) // 2))
    return square


def canonical(square: Image.Image, size: int) -> Image.Image:
    """The training framing: the glyph fills the frame, on white, Lanczos-resized to `size`."""
    white = Image.new("RGBA", square.size, (255, 255, 255, 255))
    white.alpha_composite(square)
    return white.convert("RGB").resize((size, size), Image.LANCZOS)


def framed(
    square: Image.Image, size: int, scale: float, shift: tuple[float, float], resample=Image.LANCZOS
) -> Image.Image:
    """The glyph at `scale` times the frame (1.0 fills it; above 1 it is cut off), its centre moved by
    `shift` output pixels, on white; drawn at 4x and reduced with `resample`."""
    big = 4 * size
    side = max(1, round(scale * big))
    glyph_big = square.resize((side, side), Image.LANCZOS)
    canvas = Image.new("RGBA", (big, big), (255, 255, 255, 255))
    x = round((big - side) / 2 + 4 * shift[0])
    y = round((big - side) / 2 + 4 * shift[1])
    canvas.paste(glyph_big, (x, y), glyph_big)  # alpha-blended onto opaque white; may hang over the edges
    return canvas.convert("RGB").resize((size, size), resample)


def random_framing(rng: np.random.Generator, scale: tuple[float, float], max_shift: float):
    """A scale drawn from `scale` and a shift of up to `max_shift` pixels on each axis."""
    drawn_scale = float(rng.uniform(*scale))
    dx, dy = (float(rng.uniform(-max_shift, max_shift)) for _ in range(2))
    return drawn_scale, (dx, dy)
