"""Bad, unusual and hostile inputs: each ends in one clear line (CLI: exit 2, no traceback), never in a
silently wrong result, a hang or an unbounded allocation."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from detailflow_hf.cli import main
from detailflow_hf.pipelines.image_processing import MAX_IMAGE_PIXELS, open_image

from .image_folder import load_example


def run(capsys, *args) -> tuple[int, str]:
    """`detailflow-hf ARGS` in this process: (exit code, the last line on stderr)."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit_:  # argparse
        code = exit_.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    return code, lines[-1] if lines else ""


def broken_copy(converted_dir, tmp_path, edit) -> str:
    folder = tmp_path / "model"
    shutil.copytree(converted_dir, folder)
    edit(folder)
    return str(folder)


# -- the command line -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, message",
    [
        (["--guidance-scale", "inf"], "guidance_scale=inf is not supported; expected a finite number >= 1"),
        (["--guidance-scale", "nan"], "guidance_scale=nan is not supported"),
        (["--temperature", "0"], "temperature=0.0 must be a finite number > 0"),
        (["--top-p", "2"], "top_p=2.0 must be a number in (0, 1]"),
        (["--seed", "-1"], "argument --seed: -1 is out of range; expected a seed in [0, 9223372036854775807]"),
        (["--seed", "9223372036854775807", "--num-images", "2"], "the 2 images use seeds up to 9223372036854775808"),
        (["--seed", "x"], "argument --seed: 'x' is not a seed"),
        (["--num-images", "0"], "argument --num-images: 0 is out of range; expected a positive integer >= 1"),
        (["--num-images", "100000"], "the grid of 100000 images at 64 px would have"),
        (
            ["--num-images", "40", "--progressive", "--display-size", "512"],
            "the coarse-to-fine strip of 40 images at 512 px would have 115,343,360 pixels",
        ),
        (["--display-size", "100000"], "argument --display-size: 100000 is out of range"),
        (["--num-tokens", "-4"], "argument --num-tokens: -4 is out of range"),
        (["--num-tokens", "6"], "num_tokens=6 is not a valid prefix length"),
    ],
)
def test_generate_flags(converted_dir, tmp_path, capsys, args, message):
    code, line = run(capsys, "generate", "--model", converted_dir, "--class", 1, *args, "--output", tmp_path / "x.png")
    assert code == 2 and message in line, line
    assert not (tmp_path / "x.png").exists()


def test_generate_output_kinds(converted_dir, tmp_path, capsys):
    code, _ = run(
        capsys, "generate", "--model", converted_dir, "--class", 1, "--num-images", 2, "--output", tmp_path / "x.jpg"
    )
    assert code == 0 and (tmp_path / "x.jpg").is_file() and Image.open(tmp_path / "x.jpg").size == (128, 64)
    (tmp_path / "dir.png").mkdir()
    (tmp_path / "plain").write_text("a file")
    for output, message in (
        (tmp_path / "x.txt", "expected a grid file ending in .png/.jpg/.jpeg/.webp"),
        (tmp_path / "dir.png", "is an existing folder; a grid file was meant"),
        (tmp_path / "plain", "is an existing file; expected a folder"),
    ):
        code, line = run(capsys, "generate", "--model", converted_dir, "--class", 1, "--output", output)
        assert code == 2 and message in line, line


def test_many_images_are_generated_in_bounded_batches(converted_dir, tmp_path, capsys, monkeypatch):
    import detailflow_hf.cli as cli
    from detailflow_hf import DetailFlowPipeline

    monkeypatch.setattr(cli, "BATCH_SIZE", 3)
    sizes = []
    original = DetailFlowPipeline.__call__

    def spy(self, class_labels, **kwargs):
        sizes.append(len(class_labels))
        return original(self, class_labels, **kwargs)

    monkeypatch.setattr(DetailFlowPipeline, "__call__", spy)
    code, _ = run(
        capsys,
        "generate",
        "--model",
        converted_dir,
        "--class",
        1,
        "--class",
        2,
        "--num-images",
        4,
        "--seed",
        5,
        "--output",
        tmp_path / "many",
    )
    assert code == 0 and sizes == [3, 3, 2]
    files = sorted((tmp_path / "many").iterdir())
    assert len(files) == 8
    # batching does not change an image: image 5 (class 2, seed 10) alone gives the same pixels
    alone = DetailFlowPipeline.from_pretrained(converted_dir)(
        class_labels=[2], generator=[torch.Generator().manual_seed(10)]
    )
    assert np.array_equal(np.asarray(Image.open(files[5])), np.asarray(alone.images[0]))


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda f: (f / "transformer" / "model.safetensors").write_bytes(b"\x10\x00\x00\x00{}"),
            "cannot load the pipeline",
        ),
        (lambda f: (f / "vqvae" / "config.json").write_text("{not json"), "cannot load the pipeline"),
        (lambda f: (f / "vqvae" / "config.json").write_text("[1, 2]"), "holds a JSON list; expected an object"),
        (lambda f: _edit_json(f / "transformer" / "config.json", num_tokens="32"), "cannot load the pipeline"),
        (lambda f: _edit_json(f / "transformer" / "config.json", drop="vocab_size"), "lacks the key 'vocab_size'"),
        (lambda f: _edit_json(f / "vqvae" / "config.json", drop="image_size"), "lacks the key 'image_size'"),
        (lambda f: _edit_json(f / "vqvae" / "config.json", group_size=8), "group size is 8 in the tokenizer but 4"),
        (lambda f: (f / "model_index.json").unlink(), "not a pipeline folder (it has no model_index.json)"),
    ],
)
def test_broken_model_folders(converted_dir, tmp_path, capsys, edit, message):
    model = broken_copy(converted_dir, tmp_path, edit)
    code, line = run(capsys, "generate", "--model", model, "--class", 1, "--output", tmp_path / "x.png")
    assert code == 2 and message in line and (model in line or "config.json" in line), line


def _edit_json(path, drop=None, **values):
    config = json.loads(path.read_text())
    config.pop(drop, None)
    config.update(values)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize("model", ["/no/such/model", "./missing", "a/b/c"])
def test_a_missing_model_path_is_named_as_a_path(tmp_path, capsys, model):
    code, line = run(capsys, "generate", "--model", model, "--class", 1, "--output", tmp_path / "x.png")
    assert code == 2 and f"model {model}: no such folder" in line


def test_reconstruct_inputs(converted_dir, tmp_path, capsys):
    (tmp_path / "notes.png").write_text("not an image")
    code, line = run(capsys, "reconstruct", "--model", converted_dir, "--image", tmp_path / "notes.png")
    assert code == 2 and "cannot read image" in line and "notes.png" in line
    bomb = tmp_path / "bomb.png"
    Image.new("1", (10_000, 10_000)).save(bomb)  # 100 M pixels in a few KB
    code, line = run(capsys, "reconstruct", "--model", converted_dir, "--image", bomb)
    assert code == 2 and "is 10000 x 10000 px, more than the" in line


def test_convert_refuses_bad_sampling(fixture_dir, tmp_path, capsys):
    code, line = run(
        capsys,
        "convert",
        "--tokenizer",
        fixture_dir / "tokenizer",
        "--generator",
        fixture_dir / "ar",
        "--tokenizer-architecture",
        fixture_dir / "tokenizer" / "architecture.json",
        "--output",
        tmp_path / "o",
        "--guidance-scale",
        "0.5",
    )
    assert code == 2 and "guidance_scale=0.5 is not supported" in line and not (tmp_path / "o").exists()


# -- images -------------------------------------------------------------------------------------------
def test_transparent_images_are_composited_onto_white(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)  # transparent black...
    rgba[:4, :, :] = (200, 10, 10, 255)  # ...under an opaque red top half
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    rgb = np.asarray(open_image(tmp_path / "a.png"))
    assert (rgb[4:] == 255).all() and (rgb[:4] == (200, 10, 10)).all()
    palette = Image.fromarray(rgba, "RGBA").convert("P")
    palette.info["transparency"] = palette.getpixel((0, 7))
    palette.save(tmp_path / "p.png", transparency=palette.getpixel((0, 7)))
    assert (np.asarray(open_image(tmp_path / "p.png"))[7] == 255).all()
    half = np.full((8, 8, 2), (0, 128), np.uint8)  # LA: black at half opacity -> mid grey
    assert abs(int(np.asarray(open_image(Image.fromarray(half, "LA")))[0, 0, 0]) - 127) <= 1


def test_image_size_limit_is_checked_before_decoding(tmp_path):
    Image.new("1", (9000, 8000)).save(tmp_path / "big.png")
    assert MAX_IMAGE_PIXELS < 9000 * 8000
    with pytest.raises(ValueError, match=r"'.*big.png' is 9000 x 8000 px"):
        open_image(tmp_path / "big.png")


# -- training flags -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--stop_after_steps", "0", "argument --stop_after_steps: 0 is out of range"),
        ("--stop_after_steps", "-5", "argument --stop_after_steps: -5 is out of range"),
        ("--max_train_steps", "0", "argument --max_train_steps: 0 is out of range"),
        ("--checkpoints_total_limit", "0", "argument --checkpoints_total_limit: 0 is out of range"),
        ("--learning_rate", "-1e-4", "argument --learning_rate: -1e-4 is out of range"),
        ("--learning_rate", "nan", "argument --learning_rate: nan is out of range"),
        ("--seed", "-3", "argument --seed: -3 is out of range"),
        ("--shuffle_buffer_size", "0", "argument --shuffle_buffer_size: 0 is out of range"),
    ],
)
def test_training_flags_out_of_range(tmp_path, capsys, flag, value, message):
    with pytest.raises(SystemExit) as exit_:
        load_example("train_generator").parse_args(
            ["--tokenizer", "t", "--codes_dir", "c", "--output_dir", str(tmp_path), f"{flag}={value}"]
        )
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_training_output_dir_must_be_a_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"--output_dir .*file exists and is not a folder"):
        load_example("train_generator").main(
            ["--tokenizer", "t", "--codes_dir", "c", "--output_dir", str(tmp_path / "file")]
        )


# -- the Space ----------------------------------------------------------------------------------------
def test_space_binds_to_loopback_unless_configured(monkeypatch):
    import sys
    from pathlib import Path

    pytest.importorskip("gradio", reason="the demo extra (gradio) is not installed")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "spaces_demo"))
    try:
        import app
    finally:
        sys.path.pop(0)
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    assert app.server_name() == "127.0.0.1"
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")  # what a Space sets
    assert app.server_name() == "0.0.0.0"


def test_one_pipeline_loader(converted_dir):
    """`loading.load_pipeline` is what the CLI, the evaluation, the examples and the Space call."""
    import detailflow_hf
    from detailflow_hf.loading import load_pipeline

    assert load_pipeline(converted_dir).transformer.config.num_tokens == 32
    if detailflow_hf.DEFAULT_MODEL is not None:
        assert load_pipeline().transformer.config.num_classes == len(load_pipeline().id2label)
    for spec, message in (
        ("original:only-one", "expected 'original:TOKENIZER_REPO_OR_DIR,GENERATOR_REPO_OR_DIR'"),
        ("./nope", "model ./nope: no such folder"),
    ):
        with pytest.raises(ValueError, match=message):
            load_pipeline(spec)
