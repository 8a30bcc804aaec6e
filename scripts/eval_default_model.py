"""Measure the embedded emoji model (the numbers of its card, the README and `results.json`).

- Tokenizer: PSNR per detail level on the held-out emoji (never seen in training), as rendered for the
  dataset and re-rendered with another framing (the glyph at 90-110% of the frame, moved up to 3 px;
  Lanczos), each prefix's decode upscaled to full size.
- Class fidelity: an independent judge, a small CNN trained only on the *training* emoji re-rendered
  here with other framings (85-110%, up to 3 px) and another reduction filter (bicubic), never on the
  dataset's images or the model's outputs, judges one generated image for each of `--num_samples`
  classes drawn at random (image i seeded `seed + i`): top-1 and top-5 accuracy. The judge's own
  accuracy on fresh renders (and on the dataset's training images) is reported beside it.
- Frechet distance in the judge's 256-d features: generated images vs renders of the same classes,
  next to renders vs other renders of the same classes (real vs real).

    python scripts/eval_default_model.py --model outputs/default_model/pipeline --data_dir data/emoji32 \
        --output outputs/default_model/results.json     # also writes results.png (a sample grid)
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from emoji_font import framed, glyph, load_font, random_framing, read_emoji
from PIL import Image
from torch import nn

from detailflow_hf import flags
from detailflow_hf.evaluation.arguments import add_sampling_args, sampling_arguments
from detailflow_hf.evaluation.fid import FeatureStatistics, frechet_distance
from detailflow_hf.evaluation.metrics import psnr_per_detail_level
from detailflow_hf.loading import load_pipeline
from detailflow_hf.pipelines.image_processing import image_grid, to_tensor

JUDGE_SCALE, JUDGE_SHIFT = (0.85, 1.1), 3.0
REFRAMED_SCALE, REFRAMED_SHIFT = (0.9, 1.1), 3.0
GRID_CLASSES = ["red apple", "rocket", "cat face", "globe showing Americas", "grinning face", "pizza",
                "red heart", "sun", "four leaf clover", "T-Rex", "ghost", "rainbow"]  # fmt: skip


class Judge(nn.Module):
    """Three conv stages (32, 64, 128 channels, 32 -> 4 px), a 256-d feature, a linear head."""

    def __init__(self, num_classes: int):
        super().__init__()
        layers, channels = [], 3
        for width in (32, 64, 128):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2)]
            channels = width
        self.body = nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels * 16, 256), nn.ReLU())
        self.head = nn.Linear(256, num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def render_set(squares: list[Image.Image], size: int, per_class: int, rng, scale, shift, resample) -> torch.Tensor:
    """`(len(squares) * per_class, 3, size, size)` in [-1, 1], class-major, each a random framing."""
    images = [
        to_tensor(framed(square, size, *random_framing(rng, scale, shift), resample=resample))
        for square in squares
        for _ in range(per_class)
    ]
    return torch.stack(images)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """A separable Gaussian blur (5 taps, edges replicated) of `(N, 3, H, W)` images."""
    taps = torch.exp(-(torch.arange(-2, 3, dtype=torch.float32) ** 2) / (2 * sigma**2))
    taps = (taps / taps.sum()).repeat(3, 1, 1)
    padded = F.pad(images, (2, 2, 0, 0), mode="replicate")
    rows = F.conv2d(padded, taps[:, :, None, :], groups=3)
    return F.conv2d(F.pad(rows, (0, 0, 2, 2), mode="replicate"), taps[:, :, :, None], groups=3)


def train_judge(images, labels, num_classes: int, epochs: int, seed: int) -> Judge:
    """AdamW + one-cycle, minibatches of 128, a random 1-px roll per batch and, on half the batches, a
    Gaussian blur (sigma 0.3-1.2 px): a person recognises a slightly soft emoji, and so must the judge."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = Judge(num_classes)
    steps = epochs * ((len(images) + 127) // 128)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 3e-3, total_steps=steps)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), 128):
            index = order[start : start + 128]
            shift = torch.randint(-1, 2, (2,), generator=generator).tolist()
            batch = torch.roll(images[index], shifts=shift, dims=(-2, -1))
            if torch.rand((), generator=generator) < 0.5:
                batch = gaussian_blur(batch, 0.3 + 0.9 * torch.rand((), generator=generator).item())
            loss = F.cross_entropy(model(batch), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


@torch.no_grad()
def judge(model: Judge, images: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
    """Class ranking `(N, 5)` (best first) and features `(N, 256)` of images in [-1, 1]."""
    features = torch.cat([model.features(images[i : i + 256]) for i in range(0, len(images), 256)])
    return model.head(features).topk(5, dim=-1).indices, features.numpy()


def accuracy(ranking: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    return round((ranking[:, :k] == labels[:, None]).any(-1).float().mean().item(), 4)


def load_folder_images(folder: Path, keys: list[str]) -> torch.Tensor:
    return torch.stack([to_tensor(Image.open(folder / key / "canonical.png")) for key in keys])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the pipeline folder to measure")
    parser.add_argument("--data_dir", required=True, help="output of scripts/build_emoji_dataset.py")
    parser.add_argument("--output", required=True, help="results JSON; a sample grid PNG is written beside it")
    parser.add_argument("--num_samples", type=flags.positive_int, default=400, help="classes drawn, one image each")
    parser.add_argument("--judge_renders", type=flags.positive_int, default=16, help="training renders per class")
    parser.add_argument("--judge_epochs", type=flags.positive_int, default=6)
    parser.add_argument("--reframed_dir", default=None, help="also save the re-framed held-out images here")
    add_sampling_args(parser)
    parser.add_argument("--seed", type=flags.int_range(0, 2**32 - 1, "a seed"), default=0)
    args = parser.parse_args(argv)
    started = time.perf_counter()

    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    data_dir = Path(args.data_dir)
    info = json.loads((data_dir / "dataset_info.json").read_text())
    # The generator's classes (folder keys, or the Unicode names once embedded) -> dataset keys.
    key_of = {key: key for key in info["classes"]}
    key_of.update({entry["name"].lower(): key for key, entry in info["classes"].items()})
    keys = [key_of[pipe.labels.name(i).lower()] for i in range(len(pipe.id2label))]
    font, size = load_font(), pipe.vqvae.config.image_size
    by_key = {emoji.key: emoji for emoji in read_emoji()}
    squares = [glyph(by_key[key], font) for key in keys]

    # Tokenizer: held-out emoji, the dataset's framing and another one.
    heldout_keys = sorted(info["heldout"])
    heldout = load_folder_images(data_dir / "heldout", heldout_keys)
    rng = np.random.default_rng(args.seed)
    reframed_images = [
        framed(glyph(by_key[key], font), size, *random_framing(rng, REFRAMED_SCALE, REFRAMED_SHIFT))
        for key in heldout_keys
    ]
    if args.reframed_dir:
        Path(args.reframed_dir).mkdir(parents=True, exist_ok=True)
        for key, image in zip(heldout_keys, reframed_images):
            image.save(Path(args.reframed_dir) / f"{key}.png")
    reframed = torch.stack([to_tensor(image) for image in reframed_images])
    psnr = psnr_per_detail_level(pipe.vqvae, heldout)
    psnr_reframed = psnr_per_detail_level(pipe.vqvae, reframed)

    # The judge: trained on independent renders of the training classes only.
    num_classes = len(keys)
    train_x = render_set(squares, size, args.judge_renders, rng, JUDGE_SCALE, JUDGE_SHIFT, Image.BICUBIC)
    train_y = torch.arange(num_classes).repeat_interleave(args.judge_renders)
    model = train_judge(train_x, train_y, num_classes, args.judge_epochs, args.seed)
    fresh = render_set(squares, size, 1, rng, JUDGE_SCALE, JUDGE_SHIFT, Image.BICUBIC)
    fresh_rank, _ = judge(model, fresh)
    dataset_rank, _ = judge(model, load_folder_images(data_dir / "train", keys))
    all_labels = torch.arange(num_classes)

    # Generated: one image for each of num_samples random classes, image i seeded seed + i.
    classes = torch.from_numpy(rng.choice(num_classes, size=min(args.num_samples, num_classes), replace=False))
    sampling = asdict(pipe.sampling_params(**sampling_arguments(args)))
    generators = [torch.Generator().manual_seed(args.seed + i) for i in range(len(classes))]
    generated = torch.cat(
        [
            pipe(
                class_labels=classes[start : start + 50].tolist(),
                generator=generators[start : start + 50],
                output_type="pt",
                **sampling,
            ).images
            for start in range(0, len(classes), 50)
        ]
    )
    gen_rank, gen_features = judge(model, generated * 2 - 1)
    real_a = render_set([squares[c] for c in classes], size, 1, rng, JUDGE_SCALE, JUDGE_SHIFT, Image.BICUBIC)
    real_b = render_set([squares[c] for c in classes], size, 1, rng, JUDGE_SCALE, JUDGE_SHIFT, Image.BICUBIC)
    stats_a = FeatureStatistics.from_features(judge(model, real_a)[1])
    stats_b = FeatureStatistics.from_features(judge(model, real_b)[1])

    results = {
        "num_classes": num_classes,
        "num_heldout_emoji": len(heldout_keys),
        "tokenizer_psnr_db_per_num_tokens": {str(k): round(v, 2) for k, v in psnr.items()},
        "tokenizer_psnr_db_per_num_tokens_reframed": {str(k): round(v, 2) for k, v in psnr_reframed.items()},
        "judge_top1_on_fresh_renders": accuracy(fresh_rank, all_labels, 1),
        "judge_top5_on_fresh_renders": accuracy(fresh_rank, all_labels, 5),
        "judge_top1_on_dataset_images": accuracy(dataset_rank, all_labels, 1),
        "num_samples": len(classes),
        "generated_top1": accuracy(gen_rank, classes, 1),
        "generated_top5": accuracy(gen_rank, classes, 5),
        "chance": round(1 / num_classes, 5),
        "frechet_distance_generated_vs_real": round(
            frechet_distance(FeatureStatistics.from_features(gen_features), stats_a), 2
        ),
        "frechet_distance_real_vs_real": round(frechet_distance(stats_b, stats_a), 2),
        **sampling,
        "seconds": round(time.perf_counter() - started),
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=1))

    grid_ids = [pipe.labels.to_id(name) for name in GRID_CLASSES if name.lower() in pipe.labels.name_to_id]
    if not grid_ids:  # folder keys before embedding
        grid_ids = [keys.index(key_of[name.lower()]) for name in GRID_CLASSES if name.lower() in key_of]
    rows = [
        pipe(
            class_labels=[c] * 6,
            generator=[torch.Generator().manual_seed(100 + 6 * c + j) for j in range(6)],
            **sampling,
        ).images
        for c in grid_ids
    ]
    grid = image_grid([im.resize((64, 64), Image.NEAREST) for row in rows for im in row], columns=6)
    grid.save(output.with_suffix(".png"))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
