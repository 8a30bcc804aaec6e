"""Feature statistics, Frechet distance, Inception Score, precision/recall, ADM-style `.npz`
batches and the injectable feature extractors."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn


# -- statistics -------------------------------------------------------------------------------------
@dataclass
class FeatureStatistics:
    """Mean `(D,)` and covariance `(D, D)` (float64) of `count` feature vectors."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int

    @classmethod
    def from_features(cls, features: np.ndarray | torch.Tensor) -> FeatureStatistics:
        """Statistics of `(N, D)` features (unbiased covariance, as numpy's `cov(rowvar=False)`)."""
        accumulator = StatisticsAccumulator()
        accumulator.update(torch.as_tensor(np.asarray(features)))
        return accumulator.compute()


class StatisticsAccumulator:
    """Running float64 sums of features and their outer products; memory `O(D^2)`, any `N`."""

    def __init__(self):
        self.count, self.total, self.outer = 0, None, None

    def update(self, features: torch.Tensor):
        """Add a `(batch, D)` block of features."""
        if features.ndim != 2:
            raise ValueError(f"features must be (batch, dim), got shape {tuple(features.shape)}.")
        x = features.detach().double()
        if self.total is None:
            self.total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
            self.outer = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
        elif x.shape[1] != self.total.shape[0]:
            raise ValueError(f"features of dim {x.shape[1]} added to statistics of dim {self.total.shape[0]}.")
        self.count += x.shape[0]
        self.total += x.sum(dim=0).to(self.total.device)
        self.outer += (x.T @ x).to(self.outer.device)

    def compute(self) -> FeatureStatistics:
        if self.count < 2:
            raise ValueError(f"statistics need at least 2 feature vectors, got {self.count}.")
        mu = self.total / self.count
        sigma = (self.outer - self.count * torch.outer(mu, mu)) / (self.count - 1)
        return FeatureStatistics(mu.cpu().numpy(), sigma.cpu().numpy(), self.count)


def frechet_distance(a: FeatureStatistics, b: FeatureStatistics, eps: float = 1e-6) -> float:
    """`|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))`, the matrix root by `scipy.linalg.sqrtm`.

    A singular product (fewer samples than dimensions) is retried with `eps` added to both
    diagonals, as ADM's and pytorch-fid's evaluators do."""
    from scipy import linalg

    if a.mu.shape != b.mu.shape:
        raise ValueError(f"statistics of different dimensions: {a.mu.shape} vs {b.mu.shape}.")
    diff = a.mu - b.mu
    covmean = linalg.sqrtm(a.sigma @ b.sigma)
    if not np.isfinite(covmean).all():
        offset = np.eye(a.sigma.shape[0]) * eps
        covmean = linalg.sqrtm((a.sigma + offset) @ (b.sigma + offset))
    if np.iscomplexobj(covmean):
        imaginary = np.abs(np.diagonal(covmean).imag).max()
        if imaginary > 1e-3:
            raise ValueError(f"the covariance product's square root has an imaginary part of {imaginary:.3g}.")
        covmean = covmean.real
    return float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2 * np.trace(covmean))


def inception_score(logits: np.ndarray | torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """Inception Score from classifier logits `(N, C)`: `exp(E_x KL(p(y|x) || p(y)))` on each of
    `splits` consecutive chunks (ADM: 5000 images each for 50k); returns (mean, std) over chunks."""
    logits = torch.as_tensor(np.asarray(logits)).double()
    if logits.ndim != 2 or logits.shape[0] < splits:
        raise ValueError(f"logits must be (N, classes) with N >= splits={splits}, got {tuple(logits.shape)}.")
    scores = []
    for chunk in logits.chunk(splits):
        log_p = chunk.log_softmax(dim=1)
        log_marginal = log_p.exp().mean(dim=0).log()
        kl = (log_p.exp() * (log_p - log_marginal)).sum(dim=1).mean()
        scores.append(kl.exp().item())
    return float(np.mean(scores)), float(np.std(scores))


def _kth_neighbour_radii(features: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Distance from each row to its k-th nearest other row `(N,)`."""
    radii = []
    for block in features.split(chunk):
        distances = torch.cdist(block, features)
        radii.append(distances.kthvalue(k + 1, dim=1).values)  # the row itself is at distance 0
    return torch.cat(radii)


def _fraction_inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int) -> float:
    inside = [(torch.cdist(block, centres) <= radii[None]).any(dim=1) for block in points.split(chunk)]
    return torch.cat(inside).float().mean().item()


def precision_recall(
    real: np.ndarray | torch.Tensor,
    fake: np.ndarray | torch.Tensor,
    k: int = 3,
    chunk: int = 1024,
    device: str | torch.device = "cpu",
) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) of `(N, D)` / `(M, D)` features:
    precision = share of fake samples inside some real sample's k-NN ball, recall the reverse."""
    real = torch.as_tensor(np.asarray(real), dtype=torch.float32, device=device)
    fake = torch.as_tensor(np.asarray(fake), dtype=torch.float32, device=device)
    if min(real.shape[0], fake.shape[0]) <= k:
        raise ValueError(
            f"precision/recall with k={k} need more than {k} samples per set, got {real.shape[0]} and {fake.shape[0]}."
        )
    precision = _fraction_inside(fake, real, _kth_neighbour_radii(real, k, chunk), chunk)
    recall = _fraction_inside(real, fake, _kth_neighbour_radii(fake, k, chunk), chunk)
    return precision, recall


# -- ADM-style .npz ---------------------------------------------------------------------------------
def save_samples_npz(path: str | os.PathLike, images: np.ndarray, labels: np.ndarray | None = None) -> Path:
    """Write `arr_0` = images `(N, H, W, 3)` uint8 and, when given, `arr_1` = labels `(N,)` int64."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (N, H, W, 3) uint8, got {images.shape} {images.dtype}.")
    arrays = {"arr_0": images}
    if labels is not None:
        labels = np.asarray(labels, dtype=np.int64)
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must be ({images.shape[0]},), got {labels.shape}.")
        arrays["arr_1"] = labels
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


@dataclass
class ReferenceBatch:
    """An ADM reference batch: images `(N, H, W, 3)` uint8 (`arr_0`) and/or precomputed Inception
    statistics (`mu`, `sigma`; ADM's `mu_s`/`sigma_s` are spatial ones for sFID)."""

    images: np.ndarray | None = None
    labels: np.ndarray | None = None
    statistics: FeatureStatistics | None = None
    spatial_statistics: FeatureStatistics | None = None


def load_npz(path: str | os.PathLike) -> ReferenceBatch:
    """Read a sample or reference `.npz` (`arr_0`, optional `arr_1`, `mu`/`sigma`, `mu_s`/`sigma_s`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no .npz file at {path}.")
    with np.load(path) as data:
        keys = set(data.files)
        if not keys & {"arr_0", "mu"}:
            raise ValueError(f"{path} holds {sorted(keys)}; expected arr_0 (images) and/or mu/sigma (statistics).")
        images = data["arr_0"] if "arr_0" in keys else None
        if images is not None and (images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3):
            raise ValueError(f"{path}: arr_0 must be (N, H, W, 3) uint8 images, got {images.shape} {images.dtype}.")
        labels = data["arr_1"] if "arr_1" in keys else None
        stats = FeatureStatistics(data["mu"], data["sigma"], 0) if "mu" in keys else None
        spatial = FeatureStatistics(data["mu_s"], data["sigma_s"], 0) if "mu_s" in keys else None
    return ReferenceBatch(images, labels, stats, spatial)


# -- feature extractors -----------------------------------------------------------------------------
FeatureExtractor = Callable[[torch.Tensor], dict[str, torch.Tensor]]
"""`(batch, 3, H, W)` uint8 -> `{"pool": (batch, D), "logits": (batch, C) (optional, for IS)}`."""


class PoolFeatures(nn.Module):
    """Adapt any module taking uint8 `(batch, 3, H, W)` to a `FeatureExtractor`: a tensor output
    (a torchmetrics-style custom FID network) becomes `{"pool": (batch, D)}`; a dict passes through."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.module(images)
        return out if isinstance(out, dict) else {"pool": out.flatten(1)}


def torch_fidelity_available() -> bool:
    """torch-fidelity and torchvision both importable (the Inception path needs both)."""
    return all(importlib.util.find_spec(name) is not None for name in ("torch_fidelity", "torchvision"))


class InceptionFeatureExtractor(nn.Module):
    """torch-fidelity's `inception-v3-compat` (the TF FID graph in PyTorch): 2048-d pool_3 features
    and unbiased logits, from uint8 `(batch, 3, H, W)` resized inside to 299.

    Args:
        weights_path: a local copy of torch-fidelity's Inception weights; default: torch-fidelity downloads them.
    """

    def __init__(self, weights_path: str | None = None):
        super().__init__()
        if not torch_fidelity_available():
            raise ImportError(
                "Inception features need torch-fidelity and torchvision (pip install 'detailflow-hf[eval-full]'); "
                "or pass your own feature extractor."
            )
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        self.model = FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=weights_path
        )

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        pool, logits = self.model(images)
        return {"pool": pool, "logits": logits}


def as_feature_extractor(module: nn.Module) -> nn.Module:
    """A module returning a dict is used as is; one returning a tensor is wrapped in `PoolFeatures`."""
    return module if isinstance(module, (InceptionFeatureExtractor, PoolFeatures)) else PoolFeatures(module)


def load_feature_extractor(spec: str | None = None, weights_path: str | None = None) -> nn.Module:
    """`None`: torch-fidelity's Inception (`weights_path` optional); `"package.module:factory"`: the
    module that `factory()` returns (a dict-returning extractor, or any uint8 -> `(batch, D)` network)."""
    if spec is None:
        return InceptionFeatureExtractor(weights_path)
    module_name, _, factory = spec.partition(":")
    if not module_name or not factory:
        raise ValueError(f"feature extractor {spec!r} must look like 'package.module:factory'.")
    built = getattr(importlib.import_module(module_name), factory)()
    if not isinstance(built, nn.Module):
        raise ValueError(f"{spec} returned a {type(built).__name__}; expected a torch.nn.Module.")
    return as_feature_extractor(built)


@torch.no_grad()
def extract_features(
    extractor: FeatureExtractor,
    images: np.ndarray | Iterable[np.ndarray],
    batch_size: int = 100,
    device: str | torch.device = "cpu",
) -> dict[str, np.ndarray]:
    """Run `extractor` over `(N, H, W, 3)` uint8 images, or an iterable of such chunks (read one at
    a time), in batches; returns each output concatenated, e.g. `{"pool": (N, D) float64, "logits": (N, C)}`."""
    outputs: dict[str, list[np.ndarray]] = {}
    for chunk in [images] if isinstance(images, np.ndarray) else images:
        for start in range(0, len(chunk), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(chunk[start : start + batch_size])).permute(0, 3, 1, 2)
            for name, value in extractor(batch.to(device)).items():
                outputs.setdefault(name, []).append(value.double().cpu().numpy())
    if not outputs:
        raise ValueError("no images to extract features from.")
    return {name: np.concatenate(parts) for name, parts in outputs.items()}
