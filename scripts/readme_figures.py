"""Make the README's figures from the embedded model.

    python scripts/readme_figures.py

- `docs/images/quickstart.png` and `quickstart_progressive.png`: the README's first command (four named
  emoji, four images each, and every image's coarse-to-fine strip).
- `docs/images/vary.png`: one row per input emoji (the dataset's drawing of a training emoji): the input,
  the coarse image its kept tokens decode to, four variations under its own class, and a class transfer.
"""

from __future__ import annotations

from pathlib import Path

import torch

import detailflow_hf
from detailflow_hf import DetailFlowPipeline, cli
from detailflow_hf.pipelines.image_processing import image_grid, open_image, upscale

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "images"
QUICKSTART = ["red apple", "rocket", "cat face", "globe showing Americas"]
INPUTS = [  # (emoji image, its class, the class it is transferred to)
    ("red_apple.png", "red apple", "tomato"),
    ("cat_face.png", "cat face", "tiger face"),
    ("rocket.png", "rocket", "airplane"),
]
KEEP, SIDE = 24, 96


def quickstart():
    classes = [arg for name in QUICKSTART for arg in ("--class", name)]
    output = IMAGES / "quickstart.png"
    cli.main(["generate", *classes, "--num-images", "4", "--seed", "0", "--output", str(output), "--progressive",
              "--display-size", "96"])  # fmt: skip


def vary():
    pipe = DetailFlowPipeline.from_pretrained(detailflow_hf.DEFAULT_MODEL)
    pipe.set_progress_bar_config(disable=True)
    cells = []
    for row, (name, own, other) in enumerate(INPUTS):
        image = open_image(ROOT / "tests" / "fixtures" / "emoji_named" / name)
        kept = pipe.decode(pipe.encode_prefix(image, KEEP))[0]
        gens = [torch.Generator().manual_seed(10 * row + i) for i in range(5)]
        variations = pipe(
            class_labels=[own], image=image, keep_tokens=KEEP, num_images_per_prompt=4, generator=gens[:4]
        ).images
        transfer = pipe(class_labels=[other], image=image, keep_tokens=KEEP, generator=gens[4:]).images
        cells += [upscale(im, SIDE) for im in (image, kept, *variations, *transfer)]
    image_grid(cells, columns=7).save(IMAGES / "vary.png")
    print(IMAGES / "vary.png")


if __name__ == "__main__":
    IMAGES.mkdir(parents=True, exist_ok=True)
    quickstart()
    vary()
