"""The 50k-sample protocol: balanced classes, one seed per image, batches split round robin over
processes (the same batches for any number of processes), assembled in index order, scored."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..models.sampling import SAMPLING_ARGUMENTS
from ..pipelines.image_processing import to_uint8
from .fid import (
    FeatureExtractor,
    FeatureStatistics,
    InceptionFeatureExtractor,
    ReferenceBatch,
    as_feature_extractor,
    extract_features,
    frechet_distance,
    inception_score,
    load_npz,
    precision_recall,
    save_samples_npz,
)


# -- the sampling protocol --------------------------------------------------------------------------
def balanced_class_labels(num_samples: int, num_classes: int) -> np.ndarray:
    """Image `i` gets class `i % num_classes`: 50 per class for 50 000 ImageNet samples, and every
    prefix of the list is balanced to within one image. `(num_samples,)` int64."""
    if num_samples < 1 or num_classes < 1:
        raise ValueError(f"need num_samples >= 1 and num_classes >= 1, got {num_samples} and {num_classes}.")
    return np.arange(num_samples, dtype=np.int64) % num_classes


def image_seeds(num_samples: int, base_seed: int) -> np.ndarray:
    """Image `i` draws from `torch.Generator().manual_seed(base_seed + i)`. `(num_samples,)` int64."""
    return base_seed + np.arange(num_samples, dtype=np.int64)


def batch_ranges(num_samples: int, batch_size: int) -> list[range]:
    """Consecutive global index ranges of `batch_size` (the last may be shorter)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    return [range(start, min(start + batch_size, num_samples)) for start in range(0, num_samples, batch_size)]


def batches_of_process(num_batches: int, process_index: int, num_processes: int) -> list[int]:
    """Batch numbers process `process_index` of `num_processes` makes (round robin)."""
    if not 0 <= process_index < num_processes:
        raise ValueError(f"process_index {process_index} is outside [0, {num_processes}).")
    return list(range(process_index, num_batches, num_processes))


@dataclass
class SamplingConfig:
    """Everything that decides the sample set (written beside it and checked on resume)."""

    num_samples: int
    num_classes: int
    seed: int
    batch_size: int
    # Sampling; `None` takes the model's generation config (`run_generation_eval` records the values).
    guidance_scale: float | None = None
    gradual_guidance: bool | None = None
    do_sample: bool | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    num_tokens: int | None = None
    model: str = ""
    dtype: str = "torch.float32"


def _check_manifest(folder: Path, config: SamplingConfig):
    """Reuse finished batches only if they were made with the same settings."""
    manifest = folder / "sampling.json"
    wanted = asdict(config)
    if manifest.is_file():
        found = json.loads(manifest.read_text())
        if found != wanted:
            changed = sorted(k for k in wanted if found.get(k) != wanted[k])
            raise ValueError(
                f"{folder} holds samples made with other settings ({changed}); use another output folder."
            )
    return manifest, wanted


def generate_batches(
    pipe,
    config: SamplingConfig,
    folder: str | os.PathLike,
    process_index: int = 0,
    num_processes: int = 1,
    compile: bool = False,
) -> list[Path]:
    """Make this process's share of the sample set, one `folder/batches/<b>.npz` per batch; batches
    already on disk (an interrupted run) are kept. Returns the files this process wrote or found."""
    folder = Path(folder)
    labels = balanced_class_labels(config.num_samples, config.num_classes)
    seeds = image_seeds(config.num_samples, config.seed)
    ranges = batch_ranges(config.num_samples, config.batch_size)
    written = []
    for b in batches_of_process(len(ranges), process_index, num_processes):
        path = folder / "batches" / f"{b:06d}.npz"
        if not path.is_file():
            index = ranges[b]
            device = pipe.transformer.device
            generators = [torch.Generator(device).manual_seed(int(seeds[i])) for i in index]
            images = pipe(
                class_labels=labels[index].tolist(),
                num_tokens=config.num_tokens,
                generator=generators,
                output_type="pt",
                compile=compile,
                **{name: getattr(config, name) for name in SAMPLING_ARGUMENTS},
            ).images
            tmp = path.with_suffix(".tmp.npz")
            save_samples_npz(tmp, to_uint8(images), labels[index])
            tmp.replace(path)  # a batch file is complete or absent
        written.append(path)
    return written


def assemble_samples(
    folder: str | os.PathLike, config: SamplingConfig, output: str | os.PathLike | None = None
) -> Path:
    """Concatenate `folder/batches/*.npz` in index order into one ADM `.npz` (default
    `folder/samples.npz`), streaming through a memory-mapped array (50k x 256^2 x 3 = 9.8 GB)."""
    folder = Path(folder)
    ranges = batch_ranges(config.num_samples, config.batch_size)
    missing = [b for b in range(len(ranges)) if not (folder / "batches" / f"{b:06d}.npz").is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(ranges)} sample batches are missing in {folder / 'batches'} (first: "
            f"{missing[0]})."
        )
    first = load_npz(folder / "batches" / "000000.npz").images
    staging = folder / "samples.staging.npy"
    images = np.lib.format.open_memmap(
        staging, mode="w+", dtype=np.uint8, shape=(config.num_samples, *first.shape[1:])
    )
    labels = np.empty(config.num_samples, dtype=np.int64)
    for b, index in enumerate(ranges):
        batch = load_npz(folder / "batches" / f"{b:06d}.npz")
        images[index.start : index.stop], labels[index.start : index.stop] = batch.images, batch.labels
    path = save_samples_npz(output or folder / "samples.npz", images, labels)
    del images
    staging.unlink()
    return path


def iter_sample_batches(folder: str | os.PathLike, config: SamplingConfig) -> Iterator[np.ndarray]:
    """The images of `folder/batches/*.npz` in index order, one `(batch, H, W, 3)` array at a time."""
    for b in range(len(batch_ranges(config.num_samples, config.batch_size))):
        yield load_npz(Path(folder) / "batches" / f"{b:06d}.npz").images


def generate_samples(
    pipe, config: SamplingConfig, folder: str | os.PathLike, accelerator=None, compile: bool = False
) -> Path | None:
    """The whole protocol across the processes of `accelerator` (or one process without it): each
    makes its batches; the main process assembles `folder/samples.npz` and returns its path (other
    processes return None). The result does not depend on the number of processes."""
    folder = Path(folder)
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    if rank == 0:
        manifest, wanted = _check_manifest(folder, config)
        folder.mkdir(parents=True, exist_ok=True)
        manifest.write_text(json.dumps(wanted, indent=1))
    if accelerator is not None:
        accelerator.wait_for_everyone()  # a mismatch stops rank 0 before anyone writes a batch
    generate_batches(pipe, config, folder, rank, world, compile=compile)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return assemble_samples(folder, config) if rank == 0 else None


# -- metrics of a sample set ------------------------------------------------------------------------
@dataclass
class GenerationMetrics:
    """FID against the reference, Inception Score (when the extractor gives logits), precision and
    recall (when the reference has images)."""

    num_samples: int
    fid: float
    inception_score: float | None = None
    inception_score_std: float | None = None
    precision: float | None = None
    recall: float | None = None


def reference_statistics(
    reference: ReferenceBatch, real_pool: np.ndarray | None, recompute: bool = False
) -> FeatureStatistics:
    """The reference's stored `mu`/`sigma` (ADM's, from the TF graph) unless `recompute` or absent,
    else the statistics of its images' features `real_pool` `(N, D)`."""
    if reference.statistics is not None and not recompute:
        return reference.statistics
    if real_pool is None:
        raise ValueError("the reference has neither images (arr_0) nor statistics (mu, sigma) to compare with.")
    return FeatureStatistics.from_features(real_pool)


def evaluate_samples(
    samples: np.ndarray | Iterable[np.ndarray],
    reference: ReferenceBatch,
    extractor: FeatureExtractor,
    batch_size: int = 100,
    device: str | torch.device = "cpu",
    recompute_reference: bool = False,
    is_splits: int = 10,
    with_precision_recall: bool = True,
) -> GenerationMetrics:
    """Metrics of `(N, H, W, 3)` uint8 samples (or an iterable of chunks) against an ADM reference batch."""
    extractor = as_feature_extractor(extractor).to(device).eval()
    fake = extract_features(extractor, samples, batch_size, device)
    need_real = with_precision_recall or recompute_reference or reference.statistics is None
    real_pool = None
    if reference.images is not None and need_real:
        real_pool = extract_features(extractor, reference.images, batch_size, device)["pool"]
    reference_stats = reference_statistics(reference, real_pool, recompute_reference)
    count = len(fake["pool"])
    metrics = GenerationMetrics(
        count, frechet_distance(FeatureStatistics.from_features(fake["pool"]), reference_stats)
    )
    if "logits" in fake:
        metrics.inception_score, metrics.inception_score_std = inception_score(fake["logits"], min(is_splits, count))
    if with_precision_recall and real_pool is not None:
        metrics.precision, metrics.recall = precision_recall(real_pool, fake["pool"], device=device)
    return metrics


def evaluate_generation(
    pipe,
    config: SamplingConfig,
    folder: str | os.PathLike,
    *,
    accelerator=None,
    reference: str | os.PathLike | None = None,
    extractor: nn.Module | None = None,
    batch_size: int = 100,
    recompute_reference: bool = False,
    compile: bool = False,
) -> dict | None:
    """Generate the sample set (all processes), then on the main process score it against the
    `reference` `.npz` (if given) with `extractor` (default: torch-fidelity's Inception) and write
    `folder/metrics.json`. Returns that report on the main
    process, None elsewhere."""
    samples = generate_samples(pipe, config, folder, accelerator=accelerator, compile=compile)
    if samples is None:
        return None
    report = {"samples": str(samples), "sampling": asdict(config)}
    if reference is not None:
        extractor = extractor if extractor is not None else InceptionFeatureExtractor()
        device = accelerator.device if accelerator is not None else pipe.transformer.device
        metrics = evaluate_samples(
            iter_sample_batches(folder, config),
            load_npz(reference),
            extractor,
            batch_size,
            device,
            recompute_reference,
        )
        report.update(reference=str(reference), metrics=asdict(metrics))
    (Path(folder) / "metrics.json").write_text(json.dumps(report, indent=1))
    return report
