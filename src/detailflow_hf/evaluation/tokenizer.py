"""Reconstruction quality of the tokenizer per detail level: PSNR, SSIM and rFID for every token
prefix, each decode resized (bicubic) to the input size and compared with the input images."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from ..pipelines.image_processing import center_crop_arr, open_image, to_tensor, to_uint8
from .fid import FeatureExtractor, StatisticsAccumulator, frechet_distance
from .metrics import prefix_reconstructions, psnr, ssim


@dataclass
class LevelMetrics:
    """Means over the images of one prefix length; `rfid` only with a feature extractor."""

    num_tokens: int
    psnr: float
    ssim: float
    rfid: float | None = None


class _LevelAccumulator:
    def __init__(self, with_features: bool):
        self.count, self.psnr, self.ssim = 0, 0.0, 0.0
        self.features = StatisticsAccumulator() if with_features else None

    def update(self, reconstruction: torch.Tensor, target: torch.Tensor, extractor: FeatureExtractor | None):
        self.count += target.shape[0]
        self.psnr += psnr(reconstruction, target).sum().item()
        self.ssim += ssim(reconstruction, target).sum().item()
        if self.features is not None:
            self.features.update(pool_features(extractor, reconstruction))


def pool_features(extractor: FeatureExtractor, images: torch.Tensor) -> torch.Tensor:
    """Extractor `pool` features `(batch, D)` of `(batch, 3, H, W)` images in [-1, 1] (as 8-bit)."""
    uint8 = torch.from_numpy(to_uint8((images.float().clamp(-1, 1) + 1) / 2)).permute(0, 3, 1, 2)
    return extractor(uint8.to(images.device))["pool"]


@torch.no_grad()
def evaluate_reconstruction(
    vqvae,
    batches: Iterable[torch.Tensor],
    prefixes: list[int] | None = None,
    extractor: FeatureExtractor | None = None,
) -> list[LevelMetrics]:
    """Mean PSNR/SSIM (and rFID with `extractor`) of every prefix length over `(batch, 3, H, W)`
    image batches in [-1, 1] on the tokenizer's device. rFID compares the statistics of the
    reconstructions with those of the inputs (the ImageNet-val protocol uses all 50 000 images)."""
    prefixes = list(prefixes or vqvae.schedule.token_list)
    for k in prefixes:
        vqvae.schedule.check_prefix(k)
    levels = {k: _LevelAccumulator(extractor is not None) for k in prefixes}
    real = StatisticsAccumulator() if extractor is not None else None
    for pixels in batches:
        pixels = pixels.to(vqvae.device)
        if real is not None:
            real.update(pool_features(extractor, pixels))
        for k, reconstruction in prefix_reconstructions(vqvae, pixels, prefixes).items():
            levels[k].update(reconstruction, pixels, extractor)
    if not levels[prefixes[0]].count:
        raise ValueError("no images to evaluate the tokenizer on.")
    real_stats = real.compute() if real is not None else None
    return [
        LevelMetrics(
            k,
            acc.psnr / acc.count,
            acc.ssim / acc.count,
            frechet_distance(acc.features.compute(), real_stats) if real_stats is not None else None,
        )
        for k, acc in levels.items()
    ]


def image_batches(
    rows: Iterable[dict], image_size: int, batch_size: int, limit: int | None = None
) -> Iterator[torch.Tensor]:
    """Dataset rows with an `image` (undecoded or PIL) -> `(batch, 3, S, S)` in [-1, 1] batches,
    each image centre-cropped as ADM (`center_crop_arr`); stops after `limit` images."""

    batch = []
    for seen, row in enumerate(rows):
        if limit is not None and seen >= limit:
            break
        batch.append(to_tensor(center_crop_arr(open_image(row["image"]), image_size)))
        if len(batch) == batch_size:
            yield torch.stack(batch)
            batch = []
    if batch:
        yield torch.stack(batch)


__all__ = ["LevelMetrics", "evaluate_reconstruction", "image_batches", "pool_features"]
