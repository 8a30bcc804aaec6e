"""Make the README's figures from the embedded model.

    python scripts/readme_figures.py

- `docs/images/quickstart.png` and `quickstart_progressive.png`: the README's first command (four named
  emoji, four images each, and every image's coarse-to-fine strip).
- `docs/images/vary.png`: one row per input emoji (the dataset's drawing of a training emoji): the input,
  the coarse image its kept 24 tokens decode to, four variations under its own class, and a class transfer
  (from its first 8 tokens).
- `docs/images/detail.png`: detail completion of held-out emoji (no class of the model) from 16 px
  thumbnails, under a related class: the thumbnail, bicubic upscaling, plain sampling, 32 candidates per
  step, and the unseen original.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

import detailflow_hf
from detailflow_hf import DetailFlowPipeline, cli
from detailflow_hf.pipelines.image_processing import image_grid, open_image, upscale

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "images"
QUICKSTART = ["red apple", "rocket", "cat face", "globe showing Americas"]
INPUTS = [  # (emoji image, its class, the class it is transferred to)
    ("red_apple.png", "red apple", "tangerine"),
    ("cat_face.png", "cat face", "lion"),
    ("grinning_face.png", "grinning face", "smiling face with sunglasses"),
]
# Variations keep 24 tokens (16 px); a class transfer keeps 8 (8 px): the new class needs room to draw its own shape.
KEEP, TRANSFER_KEEP, SIDE = 24, 8, 96
HELD_OUT = [  # (held-out emoji image, the related class it is completed under)
    ("food_drink_1f34f.png", "red apple"),  # green apple
    ("smileys_emotion_1f622.png", "loudly crying face"),  # crying face
    ("travel_places_1f550.png", "two o’clock"),  # one o'clock
    ("animals_nature_1f43c.png", "koala"),  # panda
]
THUMBNAIL, CANDIDATES = 16, 32


def quickstart():
    classes = [arg for name in QUICKSTART for arg in ("--class", name)]
    output = IMAGES / "quickstart.png"
    cli.main(["generate", *classes, "--num-images", "4", "--seed", "0", "--output", str(output), "--progressive",
              "--display-size", "96"])  # fmt: skip


def vary(pipe: DetailFlowPipeline):
    cells = []
    for row, (name, own, other) in enumerate(INPUTS):
        image = open_image(ROOT / "tests" / "fixtures" / "emoji_named" / name)
        kept = pipe.decode(pipe.encode_prefix(image, KEEP))[0]
        gens = [torch.Generator().manual_seed(10 * row + i) for i in range(4)]
        variations = pipe(
            class_labels=[own], image=image, keep_tokens=KEEP, num_images_per_prompt=4, generator=gens
        ).images
        # seeds 0, 1, 2: of 12 seeds tried per row, about a quarter of the lions and faces came out blotchy
        transfer = pipe(
            class_labels=[other], image=image, keep_tokens=TRANSFER_KEEP, generator=torch.Generator().manual_seed(row)
        ).images
        cells += [upscale(im, SIDE) for im in (image, kept, *variations, *transfer)]
    image_grid(cells, columns=7).save(IMAGES / "vary.png")
    print(IMAGES / "vary.png")


def detail(pipe: DetailFlowPipeline):
    size = pipe.vqvae.config.image_size
    cells = []
    for row, (name, label) in enumerate(HELD_OUT):
        original = open_image(ROOT / "tests" / "fixtures" / "emoji_heldout" / name).resize((size, size), Image.BICUBIC)
        thumbnail = original.resize((THUMBNAIL, THUMBNAIL), Image.BICUBIC)
        outputs = [
            pipe(label, image=thumbnail, num_candidates=n, generator=torch.Generator().manual_seed(row)).images[0]
            for n in (1, CANDIDATES)
        ]
        bicubic = thumbnail.resize((size, size), Image.BICUBIC)
        cells += [upscale(im, SIDE) for im in (thumbnail, bicubic, *outputs, original)]
    image_grid(cells, columns=5).save(IMAGES / "detail.png")
    print(IMAGES / "detail.png")


if __name__ == "__main__":
    IMAGES.mkdir(parents=True, exist_ok=True)
    quickstart()
    embedded = DetailFlowPipeline.from_pretrained(detailflow_hf.DEFAULT_MODEL)
    embedded.set_progress_bar_config(disable=True)
    vary(embedded)
    detail(embedded)
