"""Make the README's image-conditioned figure from the embedded model (docs/images/vary.png).

    python scripts/readme_figures.py

One row per input emoji (held-out: the model never saw them): the input, the coarse image its kept
tokens decode to, four variations under its own class, and one class transfer.
"""

from __future__ import annotations

from pathlib import Path

import torch

import detailflow_hf
from detailflow_hf import DetailFlowPipeline
from detailflow_hf.image_processing import image_grid, open_image, upscale

ROOT = Path(__file__).resolve().parents[1]
INPUTS = [  # (held-out emoji, its class, the class it is transferred to)
    ("animals_nature_1f422.png", "Animals & Nature", "Food & Drink"),
    ("food_drink_1f363.png", "Food & Drink", "Smileys & Emotion"),
    ("animals_nature_1f339.png", "Animals & Nature", "Flags"),
]
KEEP, SIDE = 32, 96


def main():
    pipe = DetailFlowPipeline.from_pretrained(detailflow_hf.DEFAULT_MODEL)
    pipe.set_progress_bar_config(disable=True)
    cells = []
    for row, (name, own, other) in enumerate(INPUTS):
        image = open_image(ROOT / "tests" / "fixtures" / "emoji_heldout" / name)
        kept = pipe.decode(pipe.encode_prefix(image, KEEP))[0]
        gens = [torch.Generator().manual_seed(10 * row + i) for i in range(5)]
        variations = pipe(
            class_labels=[own], image=image, keep_tokens=KEEP, num_images_per_prompt=4, generator=gens[:4]
        ).images
        transfer = pipe(class_labels=[other], image=image, keep_tokens=KEEP, generator=gens[4:]).images
        cells += [upscale(im, SIDE) for im in (image, kept, *variations, *transfer)]
    target = ROOT / "docs" / "images" / "vary.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    image_grid(cells, columns=7).save(target)
    print(target)


if __name__ == "__main__":
    main()
