"""FID / IS / precision-recall against independent computations, the ADM .npz format, the
balanced 50k protocol, and a sample set that is the same with 1 and 2 processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from detailflow_hf.evaluation import (
    FeatureStatistics,
    ReferenceBatch,
    SamplingConfig,
    StatisticsAccumulator,
    balanced_class_labels,
    batch_ranges,
    batches_of_process,
    evaluate_samples,
    frechet_distance,
    generate_samples,
    image_seeds,
    inception_score,
    load_npz,
    precision_recall,
    save_samples_npz,
)
from tests.feature_nets import TinyConvFeatures, tiny_extractor
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[1]


def independent_fid(x: np.ndarray, y: np.ndarray) -> float:
    """FID from raw features with numpy only: Tr((S1 S2)^1/2) = sum sqrt(eig(S1^1/2 S2 S1^1/2))."""
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = np.linalg.eigvalsh(root1 @ s2 @ root1)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(middle, 0, None)).sum())


def random_features(seed=0, n=(400, 300), dim=12):
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(dim, dim))
    x = rng.normal(size=(n[0], dim)) @ mixing
    y = rng.normal(size=(n[1], dim)) @ (mixing * 1.3) + 0.5
    return x, y


def test_frechet_distance_matches_an_independent_numpy_computation():
    x, y = random_features()
    ours = frechet_distance(FeatureStatistics.from_features(x), FeatureStatistics.from_features(y))
    assert ours == pytest.approx(independent_fid(x, y), rel=1e-8)
    assert ours > 10  # a real gap, not a degenerate zero
    same = FeatureStatistics.from_features(x)
    assert abs(frechet_distance(same, same)) < 1e-8


def test_statistics_accumulate_over_chunks_like_numpy():
    x, _ = random_features(1)
    accumulator = StatisticsAccumulator()
    for chunk in np.array_split(x, 3):
        accumulator.update(torch.from_numpy(chunk))
    stats = accumulator.compute()
    assert stats.count == len(x)
    np.testing.assert_allclose(stats.mu, x.mean(0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(stats.sigma, np.cov(x, rowvar=False), rtol=1e-8, atol=1e-10)
    with pytest.raises(ValueError, match="dim 5 added to statistics of dim 12"):
        accumulator.update(torch.zeros(2, 5))


def test_inception_score_on_known_logits():
    confident = torch.eye(10).repeat(20, 1) * 100  # each class predicted with certainty, all classes equally often
    mean, std = inception_score(confident, splits=4)
    assert mean == pytest.approx(10.0, rel=1e-6) and std == pytest.approx(0.0, abs=1e-6)
    assert inception_score(torch.randn(1, 7).repeat(50, 1), splits=5)[0] == pytest.approx(1.0)
    two = torch.tensor([[100.0, 0, 0, 0], [0, 100.0, 0, 0]]).repeat(10, 1)  # only 2 of 4 classes used
    assert inception_score(two, splits=1)[0] == pytest.approx(2.0, rel=1e-6)


def test_precision_recall_on_known_geometry():
    x, _ = random_features(2, n=(200, 1))
    assert precision_recall(x, x) == (1.0, 1.0)
    assert precision_recall(x, x + 1e3) == (0.0, 0.0)
    # fakes cover only the real set's first half: all fakes are realistic, half the reals are missed
    rng = np.random.default_rng(0)
    real = np.concatenate([rng.normal(size=(100, 2)), rng.normal(size=(100, 2)) + 100])
    precision, recall = precision_recall(real, real[:100] + 0.01)
    assert precision == 1.0 and recall == pytest.approx(0.5)


def test_tiny_conv_extractor_fid_matches_torchmetrics():
    tm = pytest.importorskip("torchmetrics.image.fid")
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    fake = np.clip(rng.normal(100, 40, (30, 32, 32, 3)), 0, 255).astype(np.uint8)
    ours = evaluate_samples(
        fake, ReferenceBatch(images=real), TinyConvFeatures(), batch_size=16, with_precision_recall=False
    )
    metric = tm.FrechetInceptionDistance(feature=TinyConvFeatures())
    metric.update(torch.from_numpy(real).permute(0, 3, 1, 2), real=True)
    metric.update(torch.from_numpy(fake).permute(0, 3, 1, 2), real=False)
    expected = metric.compute().item()
    assert ours.num_samples == 30 and ours.inception_score is None
    assert expected > 1e-3
    assert ours.fid == pytest.approx(expected, rel=1e-4)


def test_npz_round_trip_and_reference_statistics(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5])
    batch = load_npz(save_samples_npz(tmp_path / "s.npz", images, labels))
    assert np.array_equal(batch.images, images) and np.array_equal(batch.labels, labels) and batch.statistics is None
    with np.load(tmp_path / "s.npz") as raw:
        assert raw["arr_0"].dtype == np.uint8 and raw["arr_0"].shape == (5, 8, 8, 3)  # ADM layout: NHWC uint8
    mu, sigma = np.arange(3.0), np.eye(3)
    np.savez(tmp_path / "ref.npz", mu=mu, sigma=sigma, mu_s=mu[:2], sigma_s=np.eye(2))
    ref = load_npz(tmp_path / "ref.npz")
    assert (
        ref.images is None and np.array_equal(ref.statistics.mu, mu) and ref.spatial_statistics.sigma.shape == (2, 2)
    )
    with pytest.raises(ValueError, match=r"must be \(N, H, W, 3\) uint8"):
        save_samples_npz(tmp_path / "bad.npz", images.astype(np.float32))
    np.savez(tmp_path / "other.npz", x=np.zeros(2))
    with pytest.raises(ValueError, match="expected arr_0"):
        load_npz(tmp_path / "other.npz")


def test_stored_reference_statistics_are_used_unless_recomputed(tmp_path):
    rng = np.random.default_rng(1)
    real = rng.integers(0, 256, (24, 16, 16, 3), dtype=np.uint8)
    fake = rng.integers(0, 128, (24, 16, 16, 3), dtype=np.uint8)
    extractor = tiny_extractor()
    recomputed = evaluate_samples(fake, ReferenceBatch(images=real), extractor, with_precision_recall=False)
    pool = lambda a: extractor(torch.from_numpy(a).permute(0, 3, 1, 2))["pool"].double().detach().numpy()  # noqa: E731
    stored = FeatureStatistics.from_features(pool(real))
    only_stats = evaluate_samples(fake, ReferenceBatch(statistics=stored), extractor)
    assert only_stats.fid == pytest.approx(recomputed.fid, rel=1e-9)
    assert only_stats.fid == pytest.approx(independent_fid(pool(fake), pool(real)), rel=1e-6)
    assert only_stats.precision is None and 1.0 < only_stats.inception_score < 10.0


def test_balanced_labels_seeds_and_process_split():
    labels = balanced_class_labels(50_000, 1000)
    assert np.bincount(labels).tolist() == [50] * 1000
    assert np.bincount(labels[:2500], minlength=1000).min() == 2  # prefixes stay balanced
    assert image_seeds(4, 10).tolist() == [10, 11, 12, 13]
    ranges = batch_ranges(10, 4)
    assert [list(r) for r in ranges] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    for world in (1, 2, 3):
        shares = [batches_of_process(len(ranges), rank, world) for rank in range(world)]
        assert sorted(sum(shares, [])) == [0, 1, 2]
    with pytest.raises(ValueError, match="num_samples >= 1"):
        balanced_class_labels(0, 10)


def test_resumed_run_keeps_batches_and_refuses_other_settings(pipe, tmp_path):
    pipe.set_progress_bar_config(disable=True)
    config = SamplingConfig(num_samples=5, num_classes=10, seed=1, batch_size=2, guidance_scale=1.5)
    first = load_npz(generate_samples(pipe, config, tmp_path))
    assert first.labels.tolist() == [0, 1, 2, 3, 4] and first.images.shape == (5, 64, 64, 3)
    (tmp_path / "batches" / "000001.npz").unlink()  # an interrupted run: batch 1 missing
    again = load_npz(generate_samples(pipe, config, tmp_path))
    assert np.array_equal(first.images, again.images)
    changed = SamplingConfig(num_samples=5, num_classes=10, seed=1, batch_size=2, guidance_scale=2.0)
    with pytest.raises(ValueError, match=r"other settings \(\['guidance_scale'\]\)"):
        generate_samples(pipe, changed, tmp_path)


EVAL_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}


def eval_args(model, out, *extra):
    return [
        "--model",
        str(model),
        "--output_dir",
        str(out),
        "--num_samples",
        "11",
        "--batch_size",
        "3",
        "--seed",
        "7",
        *map(str, extra),
    ]


@pytest.mark.slow
def test_sample_set_is_the_same_with_one_and_two_processes(converted_dir, tmp_path):
    script = str(ROOT / "examples" / "eval_generation.py")
    one = subprocess.run(
        [sys.executable, script, *eval_args(converted_dir, tmp_path / "one")],
        env=EVAL_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    # accelerate 1.15 runs --cpu launches in one process: two CPU ranks need --multi_gpu + ACCELERATE_USE_CPU
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            str(free_port()),
            script,
            *eval_args(
                converted_dir,
                tmp_path / "two",
                "--reference",
                tmp_path / "one" / "samples.npz",
                "--feature_extractor",
                "tests.feature_nets:tiny_extractor",
                "--recompute_reference_stats",
            ),
        ],
        env={**EVAL_ENV, "ACCELERATE_USE_CPU": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = load_npz(tmp_path / "one" / "samples.npz"), load_npz(tmp_path / "two" / "samples.npz")
    assert a.images.shape == (11, 64, 64, 3) and a.labels.tolist() == [i % 10 for i in range(11)]
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert len({img.tobytes() for img in a.images}) == 11  # distinct seeds, distinct images
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())["metrics"]
    assert metrics["num_samples"] == 11
    assert (
        abs(metrics["fid"]) < 1e-6 and metrics["precision"] == 1.0 and metrics["recall"] == 1.0
    )  # same set as the reference


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "detailflow_hf.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**EVAL_ENV, "HF_DATASETS_OFFLINE": "1"},
        cwd=ROOT,
    )


def test_cli_eval_generation_scores_against_a_reference(converted_dir, tmp_path):
    rng = np.random.default_rng(0)
    save_samples_npz(tmp_path / "ref.npz", rng.integers(0, 256, (12, 64, 64, 3), dtype=np.uint8))
    result = run_cli(
        "eval-generation",
        "--model",
        converted_dir,
        "--output-dir",
        tmp_path / "out",
        "--num-samples",
        10,
        "--batch-size",
        5,
        "--reference",
        tmp_path / "ref.npz",
        "--recompute-reference-stats",
        "--feature-extractor",
        "tests.feature_nets:tiny_extractor",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    printed = json.loads(result.stdout)
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert printed == report["metrics"] and report["sampling"]["num_samples"] == 10
    samples = load_npz(tmp_path / "out" / "samples.npz")
    expected = evaluate_samples(
        samples.images, load_npz(tmp_path / "ref.npz"), tiny_extractor(), recompute_reference=True
    )
    assert printed["fid"] == pytest.approx(expected.fid, rel=1e-9) and printed["fid"] > 0
    assert printed["inception_score"] == pytest.approx(expected.inception_score, rel=1e-9)


def test_cli_eval_generation_names_a_missing_feature_network(converted_dir, tmp_path):
    save_samples_npz(tmp_path / "ref.npz", np.zeros((2, 8, 8, 3), np.uint8))
    result = run_cli(
        "eval-generation",
        "--model",
        converted_dir,
        "--output-dir",
        tmp_path / "out",
        "--num-samples",
        2,
        "--reference",
        tmp_path / "ref.npz",
        "--feature-extractor",
        "tests.feature_nets",
    )
    assert result.returncode == 2 and "must look like 'package.module:factory'" in result.stderr
    assert not (tmp_path / "out").exists()  # refused before sampling


def test_cli_eval_tokenizer_reports_every_detail_level(converted_dir, pipe, tmp_path):
    pytest.importorskip("torchmetrics")  # SSIM (the `eval` extra)
    from detailflow_hf.evaluation.metrics import psnr_per_detail_level
    from detailflow_hf.evaluation.tokenizer import evaluate_reconstruction, image_batches
    from detailflow_hf.image_datasets import load_image_stream
    from tests.image_folder import write_image_folder

    write_image_folder(tmp_path / "images", per_class=2, size=64, corrupt=False)
    out = tmp_path / "rec.json"
    result = run_cli(
        "eval-tokenizer",
        "--model",
        converted_dir,
        "--data-dir",
        tmp_path / "images",
        "--split",
        "train",
        "--num-samples",
        5,
        "--batch-size",
        2,
        "--prefixes",
        4,
        16,
        32,
        "--feature-extractor",
        "tests.feature_nets:tiny_extractor",
        "--output",
        out,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    levels = json.loads(out.read_text())["levels"]
    assert [level["num_tokens"] for level in levels] == [4, 16, 32]
    assert result.stdout.splitlines()[0].split() == ["tokens", "PSNR", "(dB)", "SSIM", "rFID"]

    rows = load_image_stream(train_data_dir=str(tmp_path / "images"), split="train")
    pixels = torch.cat(list(image_batches(rows, 64, 2, limit=5)))
    expected_psnr = psnr_per_detail_level(pipe.vqvae, pixels, [4, 16, 32])
    for level in levels:
        assert level["psnr"] == pytest.approx(expected_psnr[level["num_tokens"]], rel=1e-5)
        assert 0 < level["ssim"] < 1 and level["rfid"] > 0
    # the perfect "reconstruction" of an identity tokenizer scores SSIM 1 (to torchmetrics' float32
    # rounding on flat backgrounds) and rFID 0
    identity = evaluate_reconstruction(IdentityTokenizer(pipe.vqvae.schedule), [pixels], [32], tiny_extractor())
    assert identity[0].ssim == pytest.approx(1.0, abs=2e-3) and abs(identity[0].rfid) < 1e-6
    assert identity[0].psnr > 100


class IdentityTokenizer:
    """Encodes an image as itself and decodes it unchanged at every level (a perfect tokenizer)."""

    device = torch.device("cpu")

    def __init__(self, schedule):
        self.schedule = schedule

    def encode(self, pixels):
        return type("Encoded", (), {"latents": pixels})

    def decode(self, latents, num_tokens):
        return type("Decoded", (), {"sample": latents})
