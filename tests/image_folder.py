"""A tiny imagefolder of real PNG files for the training tests (also used by the tokenizer trainer's tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle")
COLOURS = ((220, 40, 40), (40, 180, 60), (50, 80, 220))


def shape_image(class_index: int, variant: int, size: int = 32) -> Image.Image:
    """A coloured shape (the class) on a light background; `variant` moves and resizes it."""
    rng = np.random.default_rng(1000 * class_index + variant)
    image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(200, 256, 3)))
    draw = ImageDraw.Draw(image)
    r = int(rng.integers(size // 5, size // 3))
    cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
    colour = COLOURS[(class_index + variant) % len(COLOURS)]
    box = (cx - r, cy - r, cx + r, cy + r)
    if class_index == 0:
        draw.ellipse(box, fill=colour)
    elif class_index == 1:
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    return image


def write_image_folder(root: Path, per_class: int = 6, size: int = 32, corrupt: bool = True) -> Path:
    """`root/train/<class>/<i>.png` for the 3 classes; with `corrupt`, one extra truncated PNG in
    the first class (`bad.png`) that must be skipped, not crash the stream. Returns `root`."""
    for c, name in enumerate(CLASSES):
        folder = root / "train" / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            # sizes differ a little so the crops have work to do
            shape_image(c, i, size + 4 * (i % 3)).save(folder / f"{i}.png")
    if corrupt:
        good = (root / "train" / CLASSES[0] / "0.png").read_bytes()
        (root / "train" / CLASSES[0] / "bad.png").write_bytes(good[: len(good) // 3])
    return root


TINY_VIT = dict(
    hidden_size=32,
    intermediate_size=64,
    num_attention_heads=2,
    num_hidden_layers=1,
    num_patches=16,
    patch_size=8,
    layer_norm_eps=1e-6,
    hidden_act="gelu_pytorch_tanh",
)


def tiny_tokenizer(seed: int = 0):
    """A random 32 px / 16-token / 64-code DetailFlowTokenizer whose latent query tables are not
    zero (they are zero-initialised, which would make every latent alike)."""
    import torch

    from detailflow_hf import DetailFlowTokenizer

    torch.manual_seed(seed)
    tok = DetailFlowTokenizer(
        image_size=32,
        num_latent_tokens=16,
        group_size=4,
        codebook_size=64,
        codebook_embed_dim=8,
        encoder_config=TINY_VIT,
        decoder_config=TINY_VIT,
    )
    with torch.no_grad():
        for p in (tok.encoder.latent_tokens, tok.encoder.latent_pos_embed, tok.encoder.refined_tokens):
            p.normal_(0, 1)
    return tok.eval()


def load_example(name: str):
    """Import `examples/<name>.py` as a module (to call its `main(argv)` in-process)."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
