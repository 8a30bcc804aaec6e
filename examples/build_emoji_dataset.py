"""Build the emoji image set the embedded tiny model is trained on: real images, available offline.

Every fully-qualified emoji of Unicode's `emoji-test.txt` (Debian `unicode-data`) without a skin-tone
modifier is rendered with the Noto Color Emoji font (Debian `fonts-noto-color-emoji`), centred on
white at `--size` px, and labelled by its Unicode emoji group (Smileys & Emotion, Animals & Nature,
Flags, ...). Every `--heldout_every`-th emoji of each group (in file order) goes to the held-out split.

    apt-get install fonts-noto-color-emoji unicode-data
    python examples/build_emoji_dataset.py --output_dir data/emoji     # -> train/<group>/*.png, heldout/<group>/*.png

The folders are `imagefolder` datasets: `--train_data_dir data/emoji/train` in the training scripts.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

EMOJI_TEST = Path("/usr/share/unicode/emoji/emoji-test.txt")
FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
SKIN_TONES = range(0x1F3FB, 0x1F400)
NATIVE_SIZE = 109  # the font's bitmap strike


@dataclass(frozen=True)
class Emoji:
    codepoints: tuple[int, ...]
    group: str
    name: str

    @property
    def text(self) -> str:
        return "".join(map(chr, self.codepoints))

    @property
    def file_name(self) -> str:
        return "_".join(f"{c:04x}" for c in self.codepoints) + ".png"


def read_emoji(path: Path = EMOJI_TEST) -> list[Emoji]:
    """Fully-qualified emoji without skin-tone modifiers, with their group, in file order."""
    emoji, group = [], None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
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
        emoji.append(Emoji(codepoints, group, name))
    return emoji


def render(emoji: Emoji, font: ImageFont.FreeTypeFont, size: int) -> Image.Image | None:
    """The emoji centred on white, `size` x `size`; `None` if the font has no glyph for it."""
    canvas = Image.new("RGBA", (2 * NATIVE_SIZE, 2 * NATIVE_SIZE), (255, 255, 255, 0))
    ImageDraw.Draw(canvas).text((NATIVE_SIZE // 2, NATIVE_SIZE // 2), emoji.text, font=font, embedded_color=True)
    box = canvas.getbbox()
    if box is None:
        return None
    glyph = canvas.crop(box)
    side = max(glyph.size)
    square = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    square.alpha_composite(glyph, ((side - glyph.size[0]) // 2, (side - glyph.size[1]) // 2))
    return square.convert("RGB").resize((size, size), Image.LANCZOS)


def slug(group: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", group.lower()).strip("_")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--heldout_every", type=int, default=10)
    args = parser.parse_args(argv)
    for path in (EMOJI_TEST, FONT):
        if not path.is_file():
            raise SystemExit(f"{path} is missing: apt-get install fonts-noto-color-emoji unicode-data")
    font = ImageFont.truetype(str(FONT), NATIVE_SIZE)
    output = Path(args.output_dir)
    counts: dict[str, dict[str, int]] = {}
    per_group: dict[str, int] = {}
    skipped = 0
    for emoji in read_emoji():
        image = render(emoji, font, args.size)
        if image is None:
            skipped += 1
            continue
        index = per_group.get(emoji.group, 0)
        per_group[emoji.group] = index + 1
        split = "heldout" if index % args.heldout_every == args.heldout_every - 1 else "train"
        folder = output / split / slug(emoji.group)
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / emoji.file_name)
        counts.setdefault(split, {}).setdefault(slug(emoji.group), 0)
        counts[split][slug(emoji.group)] += 1
    info = {
        "source": f"{FONT.name} rendered at {args.size}px; labels: Unicode emoji groups from {EMOJI_TEST}",
        "classes": {slug(g): g for g in per_group},
        "counts": counts,
        "skipped_without_glyph": skipped,
    }
    (output / "dataset_info.json").write_text(json.dumps(info, indent=1, ensure_ascii=False))
    print(json.dumps({split: sum(c.values()) for split, c in counts.items()}), f"skipped {skipped}")


if __name__ == "__main__":
    main()
