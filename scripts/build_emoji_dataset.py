"""Build the emoji image set the embedded tiny model is trained on: real images, available offline.

Every fully-qualified emoji of Unicode's `emoji-test.txt` without a skin-tone modifier, drawn with the
Noto Color Emoji font; one class per emoji, named by its Unicode name ("red apple", "rocket"). Every
10th emoji of each Unicode group (in file order) is held out of all training. Folders (`imagefolder`
datasets, class folders named by code points, e.g. `1f34e`):

    train/<key>/canonical.png          the glyph filling the frame, on white (the generator's codes)
    train_framed/<key>/<i>.png         the canonical image and `--framings - 1` re-framed ones (the glyph
                                       at 75-105% of the frame, moved up to 3 px): the tokenizer learns
                                       every framing, not one
    heldout/<key>/canonical.png        held-out emoji, canonical framing
    dataset_info.json                  {"classes": {key: {"name", "unicode_name", "group", "text"}},
                                        "heldout": {...}, "counts": ...}

    apt-get install fonts-noto-color-emoji unicode-data
    python scripts/build_emoji_dataset.py --output_dir data/emoji32 --size 32
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from emoji_font import canonical, framed, glyph, load_font, random_framing, read_emoji

FRAMING_SCALE = (0.75, 1.05)
FRAMING_SHIFT = 3.0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--framings", type=int, default=4, help="images per emoji in train_framed/")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    font = load_font()
    rng = np.random.default_rng(args.seed)
    output = Path(args.output_dir)
    info = {"classes": {}, "heldout": {}}
    skipped = 0
    for emoji in read_emoji():
        square = glyph(emoji, font)
        if square is None:
            skipped += 1
            continue
        entry = {"name": emoji.label, "unicode_name": emoji.name, "group": emoji.group, "text": emoji.text}
        split = "heldout" if emoji.heldout else "train"
        folder = output / split / emoji.key
        folder.mkdir(parents=True, exist_ok=True)
        image = canonical(square, args.size)
        image.save(folder / "canonical.png")
        if emoji.heldout:
            info["heldout"][emoji.key] = entry
            continue
        info["classes"][emoji.key] = entry
        framed_folder = output / "train_framed" / emoji.key
        framed_folder.mkdir(parents=True, exist_ok=True)
        image.save(framed_folder / "0.png")
        for i in range(1, args.framings):
            scale, shift = random_framing(rng, FRAMING_SCALE, FRAMING_SHIFT)
            framed(square, args.size, scale, shift).save(framed_folder / f"{i}.png")
    info["source"] = f"NotoColorEmoji rendered at {args.size}px; one class per emoji (Unicode names)"
    info["counts"] = {"train": len(info["classes"]), "heldout": len(info["heldout"]), "no_glyph": skipped}
    (output / "dataset_info.json").write_text(json.dumps(info, indent=1, ensure_ascii=False))
    print(json.dumps(info["counts"]))


if __name__ == "__main__":
    main()
