import numpy as np
import pytest
import torch
from PIL import Image

from detailflow_hf import DetailFlowPipeline


def test_pt_output_is_the_clamped_original_pixels(pipe, expected):
    images = pipe(class_labels=expected["ar.labels"].tolist(), guidance_scale=1.5, top_k=1, output_type="pt").images
    reference = (expected["pipeline.greedy.cfg1.5.pixels"] / 2 + 0.5).clamp(0, 1)
    assert images.shape == (3, 3, 64, 64)
    assert (images - reference).abs().max() <= 1e-4
    assert images.min() >= 0 and images.max() <= 1


def test_np_and_pil_outputs(pipe):
    arr = pipe(class_labels=[1, 2], top_k=1, output_type="np").images
    assert isinstance(arr, np.ndarray) and arr.shape == (2, 64, 64, 3)
    pil = pipe(class_labels=[1, 2], top_k=1).images
    assert all(isinstance(im, Image.Image) and im.size == (64, 64) for im in pil)
    assert np.abs(np.asarray(pil[0], dtype=np.float32) / 255 - arr[0]).max() <= 1 / 255 + 1e-6


def test_same_seed_same_images(pipe):
    a = pipe(class_labels=[3, 4], generator=torch.Generator().manual_seed(7), output_type="pt").images
    b = pipe(class_labels=[3, 4], generator=torch.Generator().manual_seed(7), output_type="pt").images
    c = pipe(class_labels=[3, 4], generator=torch.Generator().manual_seed(8), output_type="pt").images
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_save_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    loaded = DetailFlowPipeline.from_pretrained(tmp_path)
    a = pipe(class_labels=[5], generator=torch.Generator().manual_seed(1), output_type="pt").images
    b = loaded(class_labels=[5], generator=torch.Generator().manual_seed(1), output_type="pt").images
    assert torch.equal(a, b)


def test_bad_output_type(pipe):
    with pytest.raises(ValueError, match="output_type='jpg' is not supported"):
        pipe(class_labels=[1], output_type="jpg")
