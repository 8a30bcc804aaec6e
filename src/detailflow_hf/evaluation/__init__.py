"""Generation and reconstruction evaluation: FID / IS / precision-recall, ADM-style `.npz` sample
batches, and the 50k-sample protocol (balanced classes, one seed per image) generated across
processes so that the sample set does not depend on how many processes made it.

    labels, seeds (global image index i: class i % num_classes, seed base + i)
      -> batches of consecutive indices, batch b made by process b % world (same batches for any world)
      -> `<out>/batches/<b>.npz`, assembled in index order into `<out>/samples.npz` (arr_0, arr_1)
      -> features (an injected extractor: uint8 (N,3,H,W) -> {"pool", "logits"?})
      -> FID against a reference (ADM `mu`/`sigma`, or its images), IS, precision/recall

The published numbers use ADM's TensorFlow Inception graph (openai/guided-diffusion
`evaluations/evaluator.py`): the `samples.npz` written here is its input format. In PyTorch,
torch-fidelity's `inception-v3-compat` mirrors that graph (`InceptionFeatureExtractor`, optional:
it needs torchvision). Tests inject a small random network instead.
"""

from .fid import (
    FeatureExtractor,
    FeatureStatistics,
    InceptionFeatureExtractor,
    PoolFeatures,
    ReferenceBatch,
    StatisticsAccumulator,
    as_feature_extractor,
    extract_features,
    frechet_distance,
    inception_score,
    load_feature_extractor,
    load_npz,
    precision_recall,
    save_samples_npz,
    torch_fidelity_available,
)
from .sampling import (
    GenerationMetrics,
    SamplingConfig,
    assemble_samples,
    balanced_class_labels,
    batch_ranges,
    batches_of_process,
    evaluate_generation,
    evaluate_samples,
    generate_batches,
    generate_samples,
    image_seeds,
    iter_sample_batches,
    to_uint8,
)

ADM_REFERENCE_256 = "VIRTUAL_imagenet256_labeled.npz"

__all__ = [
    "ADM_REFERENCE_256",
    "FeatureExtractor",
    "FeatureStatistics",
    "GenerationMetrics",
    "InceptionFeatureExtractor",
    "PoolFeatures",
    "ReferenceBatch",
    "SamplingConfig",
    "StatisticsAccumulator",
    "as_feature_extractor",
    "assemble_samples",
    "balanced_class_labels",
    "batch_ranges",
    "batches_of_process",
    "evaluate_generation",
    "evaluate_samples",
    "extract_features",
    "frechet_distance",
    "generate_batches",
    "generate_samples",
    "image_seeds",
    "inception_score",
    "iter_sample_batches",
    "load_feature_extractor",
    "load_npz",
    "precision_recall",
    "save_samples_npz",
    "to_uint8",
    "torch_fidelity_available",
]
