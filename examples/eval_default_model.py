"""Measure the embedded tiny model on the held-out emoji (numbers for its model card).

- Tokenizer: PSNR per detail level on the held-out images (each prefix's decode upscaled to full size).
- Generator: a small CNN classifier trained on the real training images (independent of our models)
  judges `--num_samples` generated images (classes balanced, image i seeded `seed + i`): accuracy
  against chance; Frechet distance in the classifier's feature space between generated and held-out
  images, next to the distance between training and held-out images.

    python examples/eval_default_model.py --model outputs/emoji_pipeline --data_dir data/emoji32 --output results.json
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from detailflow_hf import flags
from detailflow_hf.evaluation.arguments import add_sampling_args, sampling_arguments
from detailflow_hf.evaluation.fid import FeatureStatistics, frechet_distance
from detailflow_hf.evaluation.metrics import psnr_per_detail_level
from detailflow_hf.image_processing import image_grid, to_tensor
from detailflow_hf.loading import load_pipeline


def load_split(folder: Path, class_names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """An imagefolder split -> images `(N, 3, H, W)` in [-1, 1] and labels `(N,)`, classes by `class_names`."""
    images, labels = [], []
    for label, name in enumerate(class_names):
        for path in sorted((folder / name).glob("*.png")):
            images.append(to_tensor(Image.open(path)))
            labels.append(label)
    return torch.stack(images), torch.tensor(labels)


class Classifier(nn.Module):
    """A small CNN: three conv stages, global pooling, a 128-d feature, a linear head."""

    def __init__(self, num_classes: int):
        super().__init__()
        layers, channels = [], 3
        for width in (32, 64, 128):
            layers += [
                nn.Conv2d(channels, width, 3, padding=1),
                nn.BatchNorm2d(width),
                nn.ReLU(),
                nn.Conv2d(width, width, 3, padding=1),
                nn.BatchNorm2d(width),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            channels = width
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(channels, num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def train_classifier(images, labels, num_classes: int, epochs: int, seed: int) -> Classifier:
    """Train on real images with flips and small shifts; full batch epochs of minibatches of 64."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = Classifier(num_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 2e-3, total_steps=epochs * ((len(images) + 63) // 64))
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), 64):
            batch, target = images[order[start : start + 64]], labels[order[start : start + 64]]
            if torch.rand((), generator=generator) < 0.5:
                batch = batch.flip(-1)
            shift = torch.randint(-2, 3, (2,), generator=generator).tolist()
            batch = torch.roll(batch, shifts=shift, dims=(-2, -1))
            loss = F.cross_entropy(model(batch), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


@torch.no_grad()
def classify(model: Classifier, images: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
    features = torch.cat([model.features(images[i : i + 256]) for i in range(0, len(images), 256)])
    return model.head(features).argmax(-1), features.numpy()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the pipeline folder to measure")
    parser.add_argument(
        "--data_dir", required=True, help="output of examples/build_emoji_dataset.py (train/, heldout/)"
    )
    parser.add_argument("--output", required=True, help="results JSON; a sample grid PNG is written beside it")
    parser.add_argument("--num_samples", type=flags.positive_int, default=200)
    add_sampling_args(parser)
    parser.add_argument("--classifier_epochs", type=flags.positive_int, default=30)
    parser.add_argument("--seed", type=flags.int_range(0, 2**32 - 1, "a seed"), default=0)
    args = parser.parse_args(argv)

    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    class_names = [pipe.id2label[i] for i in range(len(pipe.id2label))]
    folder_names = sorted(p.name for p in (Path(args.data_dir) / "train").iterdir() if p.is_dir())
    train_x, train_y = load_split(Path(args.data_dir) / "train", folder_names)
    held_x, held_y = load_split(Path(args.data_dir) / "heldout", folder_names)

    psnr = psnr_per_detail_level(pipe.vqvae, held_x)
    classifier = train_classifier(train_x, train_y, len(folder_names), args.classifier_epochs, args.seed)
    held_pred, held_features = classify(classifier, held_x)
    _, train_features = classify(classifier, train_x)

    labels = [i % len(class_names) for i in range(args.num_samples)]
    generators = [torch.Generator().manual_seed(args.seed + i) for i in range(args.num_samples)]
    sampling = asdict(pipe.sampling_params(**sampling_arguments(args)))  # recorded with the results
    generated = pipe(class_labels=labels, generator=generators, output_type="pt", **sampling).images
    gen_pred, gen_features = classify(classifier, generated * 2 - 1)

    held_stats = FeatureStatistics.from_features(held_features)
    results = {
        "tokenizer_psnr_db_per_num_tokens": {str(k): round(v, 2) for k, v in psnr.items()},
        "classifier_heldout_accuracy": round((held_pred == held_y).float().mean().item(), 4),
        "generated_class_accuracy": round((gen_pred == torch.tensor(labels)).float().mean().item(), 4),
        "chance": round(1 / len(class_names), 4),
        "frechet_distance_generated_vs_heldout": round(
            frechet_distance(FeatureStatistics.from_features(gen_features), held_stats), 3
        ),
        "frechet_distance_train_vs_heldout": round(
            frechet_distance(FeatureStatistics.from_features(train_features), held_stats), 3
        ),
        "num_samples": args.num_samples,
        **sampling,
        "classes": class_names,
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=1))
    per_class = [
        pipe(
            class_labels=[c] * 6,
            generator=[torch.Generator().manual_seed(100 + 6 * c + j) for j in range(6)],
            **sampling,
        ).images
        for c in range(len(class_names))
    ]
    grid = image_grid([im.resize((64, 64), Image.NEAREST) for row in per_class for im in row], columns=6)
    grid.save(output.with_suffix(".png"))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
