"""The embedded DetailFlow-tiny (emoji) model: present, named, coarse-to-fine, packaged."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

import detailflow_hf
from detailflow_hf import DetailFlowPipeline
from detailflow_hf.evaluation.metrics import psnr_per_detail_level
from detailflow_hf.image_processing import to_tensor

HELDOUT = Path(__file__).parent / "fixtures" / "emoji_heldout"
pytestmark = pytest.mark.skipif(
    detailflow_hf.DEFAULT_MODEL is None, reason="the embedded model is not built yet (examples/train_default_model.sh)"
)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def default_pipe():
    pipe = DetailFlowPipeline.from_pretrained(detailflow_hf.DEFAULT_MODEL)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_default_model_names_the_emoji_groups(default_pipe):
    assert len(default_pipe.id2label) == 9
    smileys = default_pipe.get_label_ids("Smileys & Emotion")[0]
    assert default_pipe.get_label_ids("smileys_emotion") == [smileys]
    images = default_pipe(
        class_labels=["Flags", "food_drink"], generator=torch.Generator().manual_seed(0), output_type="pt"
    ).images
    assert images.shape == (2, 3, 32, 32)


@pytest.fixture(scope="module")
def heldout_images():
    """All 183 held-out emoji of `examples/build_emoji_dataset.py --size 32` (`<group>_<codepoints>.png`)."""
    images = torch.stack([to_tensor(Image.open(p)) for p in sorted(HELDOUT.glob("*.png"))])
    assert images.shape == (183, 3, 32, 32)
    return images


def test_psnr_grows_with_the_number_of_tokens(default_pipe, heldout_images):
    few = heldout_images[::20]  # 10 images across the groups
    psnr = psnr_per_detail_level(default_pipe.vqvae, few, prefixes=[1, 8, 16, 32, 48, 64])
    values = list(psnr.values())
    assert all(later > earlier for earlier, later in zip(values, values[1:])), psnr


def test_full_token_psnr_on_the_heldout_split_is_the_cards(default_pipe, heldout_images):
    """The card's headline number, recomputed here: at least 22 dB with all 64 tokens."""
    measured = psnr_per_detail_level(default_pipe.vqvae, heldout_images, prefixes=[64])[64]
    results = json.loads((Path(detailflow_hf.DEFAULT_MODEL) / "results.json").read_text())
    assert measured == pytest.approx(results["tokenizer_psnr_db_per_num_tokens"]["64"], abs=0.01)
    assert measured >= 22.0


def test_card_carries_the_measured_numbers():
    card = (Path(detailflow_hf.DEFAULT_MODEL) / "README.md").read_text()
    assert "tokenizer PSNR, all tokens (held-out)" in card and "generated images" in card
    # the usage example loads the embedded copy and names the model's own classes, not ImageNet's
    assert "DetailFlowPipeline.from_pretrained(detailflow_hf.DEFAULT_MODEL)" in card
    assert '["Activities", "Animals & Nature"]' in card and "golden retriever" not in card
    assert "trust_remote_code" not in card  # the embedded folder carries no code
    assert (Path(detailflow_hf.DEFAULT_MODEL) / "samples.png").is_file()


def test_wheel_contains_the_default_model(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    wheel = next(tmp_path.glob("detailflow_hf-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "detailflow_hf/default_model/model_index.json",
        "detailflow_hf/default_model/vqvae/diffusion_pytorch_model.safetensors",
        "detailflow_hf/default_model/transformer/model.safetensors",
        "detailflow_hf/default_model/README.md",
        "detailflow_hf/pipelines/imagenet_classes.json",
    ):
        assert required in names, required
    size = sum(info.file_size for info in zipfile.ZipFile(wheel).infolist() if "default_model" in info.filename)
    assert size < 20 * 2**20

    # Installed from the wheel (not this checkout), the package finds its own copy of the model.
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    found = subprocess.run(
        [sys.executable, "-c", "import detailflow_hf; print(detailflow_hf.DEFAULT_MODEL)"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(target)},
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert Path(found) == target / "detailflow_hf" / "default_model"
    assert (Path(found) / "model_index.json").is_file()
