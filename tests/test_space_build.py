"""`detailflow-hf space`: the folder it writes installs from the package index alone and serves images."""

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import detailflow_hf
import detailflow_hf.spaces_demo
from detailflow_hf.cli import main
from detailflow_hf.pipelines.image_processing import upscale
from detailflow_hf.space import build_space

from .servers import free_port, wait_until_serving

pytest.importorskip("gradio", reason="the demo extra (gradio) is not installed")


def header(folder) -> dict:
    return yaml.safe_load((folder / "README.md").read_text().split("---\n")[1])


@pytest.mark.skipif(detailflow_hf.DEFAULT_MODEL is None, reason="no embedded model")
def test_folder_for_the_embedded_model(tmp_path):
    folder = build_space(tmp_path / "space")
    assert (folder / "app.py").read_bytes() == (
        Path(detailflow_hf.spaces_demo.__file__).parent / "app.py"
    ).read_bytes()
    assert (folder / "detailflow_hf" / "default_model" / "model_index.json").is_file()
    assert not (folder / "detailflow_hf" / "spaces_demo").exists()
    assert json.loads((folder / "space_config.json").read_text()) == {"model": None}
    meta = header(folder)
    assert meta["sdk"] == "gradio" and meta["sdk_version"] == importlib.metadata.version("gradio") == "6.31.0"
    assert meta["python_version"] == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert meta["suggested_hardware"] == "cpu-basic" and "models" not in meta and meta["app_file"] == "app.py"
    requirements = (folder / "requirements.txt").read_text().split()
    # every run-time requirement of the package, pinned to what is installed here (no local +cpu label)
    assert [r.split("==")[0] for r in requirements] == [
        "torch", "transformers", "diffusers", "accelerate", "datasets", "huggingface_hub", "safetensors", "peft",
        "psutil", "numpy", "Pillow", "PyYAML",
    ]  # fmt: skip
    assert f"torch=={torch.__version__.split('+')[0]}" in requirements and "diffusers==0.42.1" in requirements
    assert sorted(p.name for p in (folder / "examples").iterdir()) == ["cat_face.png", "red_apple.png", "rocket.png"]


def test_hub_model_is_preloaded_and_zero_gpu_suggested(tmp_path):
    folder = build_space(tmp_path / "space", model="someone/detailflow-16", hardware="zero-a10g")
    meta = header(folder)
    assert meta["models"] == meta["preload_from_hub"] == ["someone/detailflow-16"]
    assert meta["suggested_hardware"] == "zero-a10g"
    assert json.loads((folder / "space_config.json").read_text()) == {"model": "someone/detailflow-16"}
    assert not (folder / "detailflow_hf" / "default_model").exists()  # the Space serves the Hub model
    original = build_space(
        tmp_path / "original", model="original:ByteFlow-AI/DetailFlow-16,ByteFlow-AI/DetailFlow-16-GPT-L"
    )
    assert header(original)["preload_from_hub"] == ["ByteFlow-AI/DetailFlow-16", "ByteFlow-AI/DetailFlow-16-GPT-L"]


def test_local_model_is_copied_in_without_training_leftovers(tmp_path, converted_dir):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(converted_dir, run)
    (run / "checkpoints" / "checkpoint-4").mkdir(parents=True)
    (run / "checkpoints" / "checkpoint-4" / "model.safetensors").write_bytes(b"x")
    (run / "samples").mkdir()
    folder = build_space(tmp_path / "space", model=str(run))
    copied = sorted(p.relative_to(folder / "model").as_posix() for p in (folder / "model").rglob("*") if p.is_file())
    assert copied == sorted(p.relative_to(converted_dir).as_posix() for p in converted_dir.rglob("*") if p.is_file())
    assert json.loads((folder / "space_config.json").read_text()) == {"model": "model"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "nowhere/at/all"], "model nowhere/at/all: no such folder"),
        (["--model", "original:foo,owner/gen"], "a Space converts releases from Hub repos; 'foo' is not one"),
        (["--hardware", "tpu"], "invalid choice: 'tpu'"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, capsys, args, message):
    if args[0] == "--hardware":
        with pytest.raises(SystemExit) as exit_info:
            main(["space", str(tmp_path / "s"), *args])
        assert exit_info.value.code == 2
    else:
        assert main(["space", str(tmp_path / "s"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not (tmp_path / "s").exists()


def test_existing_folder_is_never_overwritten(tmp_path, capsys):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "keep.txt").write_text("mine")
    assert main(["space", str(tmp_path / "s")]) == 2
    assert "already exists and is not an empty folder" in capsys.readouterr().err
    assert (tmp_path / "s" / "keep.txt").read_text() == "mine"


@pytest.mark.slow
@pytest.mark.skipif(detailflow_hf.DEFAULT_MODEL is None, reason="no embedded model")
def test_space_installs_in_a_fresh_venv_and_serves_through_gradio_client(tmp_path):
    """As a Space builds it: a fresh virtual environment, `pip install -r requirements.txt` from the package
    index (plus the Gradio of the README's `sdk_version`), then `python app.py` in the folder."""
    from gradio_client import Client

    folder = build_space(tmp_path / "space")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    install = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", "requirements.txt"]
    install.append(f"gradio=={header(folder)['sdk_version']}")
    result = subprocess.run(install, cwd=folder, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stderr[-3000:]

    port = free_port()
    env = {k: os.environ[k] for k in ("PATH", "HOME", "TMPDIR") if k in os.environ}
    env.update(GRADIO_SERVER_PORT=str(port), GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")
    with open(tmp_path / "server.log", "w") as log:
        server = subprocess.Popen([python, "app.py"], cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until_serving(url, server, (tmp_path / "server.log").read_text, tries=360)
        # the served package is the folder's own copy, not this checkout
        probe = [python, "-c", "import detailflow_hf; print(detailflow_hf.__file__)"]
        served_from = subprocess.run(probe, cwd=folder, env=env, capture_output=True, text=True).stdout.strip()
        assert served_from == str(folder / "detailflow_hf" / "__init__.py")
        path = Client(url, verbose=False).predict("red apple", 1.0, 0, 64, api_name="/generate")
    finally:
        server.terminate()
        server.wait(timeout=30)
    served = np.asarray(Image.open(path).convert("RGB"))
    pipe = detailflow_hf.load_pipeline()
    expected = pipe(class_labels=["red apple"], guidance_scale=1.0, generator=torch.Generator().manual_seed(0))
    assert served.shape == (256, 256, 3)
    assert np.array_equal(served, np.asarray(upscale(expected.images[0], 256)))
