import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image


def run_cli(*args, timeout=300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "detailflow_hf.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_generate_grid_and_progressive_strip(converted_dir, tmp_path):
    out = tmp_path / "grid.png"
    result = run_cli(
        "generate",
        "--model",
        converted_dir,
        "--class",
        1,
        "--class",
        2,
        "--num-images",
        2,
        "--seed",
        3,
        "--output",
        out,
        "--progressive",
    )
    assert result.returncode == 0, result.stderr
    assert Image.open(out).size == (128, 128)  # 4 images of 64 px, 2 x 2
    strip = Image.open(tmp_path / "grid_progressive.png")
    assert strip.size == (11 * 64, 4 * 64)  # one row per image, one column per decoding step


def test_generate_display_size_enlarges_grid_and_strip(converted_dir, tmp_path):
    out = tmp_path / "big.png"
    result = run_cli(
        "generate",
        "--model",
        converted_dir,
        "--class",
        1,
        "--seed",
        3,
        "--output",
        out,
        "--progressive",
        "--display-size",
        96,
    )
    assert result.returncode == 0, result.stderr
    assert Image.open(out).size == (96, 96)
    assert Image.open(tmp_path / "big_progressive.png").size == (11 * 96, 96)


def test_generate_into_a_directory_is_seeded(converted_dir, tmp_path):
    for name in ("a", "b"):
        result = run_cli("generate", "--model", converted_dir, "--class", 4, "--seed", 7, "--output", tmp_path / name)
        assert result.returncode == 0, result.stderr
    a, b = (np.asarray(Image.open(tmp_path / n / "000_4.png")) for n in ("a", "b"))
    assert a.shape == (64, 64, 3) and np.array_equal(a, b)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--class", "dog"], "unknown class name 'dog'"),
        (["--class", "10"], "class id 10 is out of range"),
        (["--class", "1", "--num-tokens", "5"], "num_tokens=5 is not a valid prefix length"),
        (
            ["--class", "1", "--display-size", "0"],
            "argument --display-size: 0 is out of range; expected a size in pixels in [1, 4096]",
        ),
    ],
)
def test_generate_user_errors_are_one_line(converted_dir, tmp_path, args, message):
    result = run_cli("generate", "--model", converted_dir, *args, "--output", tmp_path / "x.png")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("detailflow-hf generate: error: ") and message in lines[-1]
    assert "Traceback" not in result.stderr


def test_reconstruct_reports_psnr_per_level(converted_dir, tmp_path):
    image = tmp_path / "in.png"
    Image.fromarray((np.random.default_rng(0).random((80, 100, 3)) * 255).astype("uint8")).save(image)
    result = run_cli("reconstruct", "--model", converted_dir, "--image", image, "--output", tmp_path / "rec.png")
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line.strip() and line.split()[0].isdigit()]
    assert [int(r[0]) for r in rows] == [1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 32]
    assert all(0 < float(r[1]) < 60 for r in rows)
    assert Image.open(tmp_path / "rec.png").size == (11 * 64, 64)
    missing = run_cli("reconstruct", "--model", converted_dir, "--image", tmp_path / "nope.png")
    assert missing.returncode == 2 and "nope.png does not exist" in missing.stderr


def test_card_and_convert(converted_dir, fixture_dir, tmp_path):
    result = run_cli("card", "--model", converted_dir, "--output", tmp_path / "README.md", "--repo-id", "me/tiny")
    assert result.returncode == 0, result.stderr
    assert "pipeline_tag: unconditional-image-generation" in (tmp_path / "README.md").read_text()
    arch = fixture_dir / "tokenizer" / "architecture.json"
    bad = run_cli(
        "convert",
        "--tokenizer",
        fixture_dir / "tokenizer",
        "--generator",
        tmp_path / "missing",
        "--tokenizer-architecture",
        arch,
        "--output",
        tmp_path / "o",
    )
    assert bad.returncode == 2 and "cannot find" in bad.stderr.strip().splitlines()[-1]
    wrong = run_cli(
        "convert",
        "--tokenizer",
        fixture_dir / "tokenizer",
        "--generator",
        fixture_dir / "ar",
        "--output",
        tmp_path / "o",
    )
    assert wrong.returncode == 2 and "but its config builds 1152 / 4304" in wrong.stderr.strip().splitlines()[-1]
    code = run_cli(
        "convert",
        "--tokenizer",
        fixture_dir / "tokenizer",
        "--generator",
        fixture_dir / "ar",
        "--tokenizer-architecture",
        arch,
        "--output",
        tmp_path / "c",
        "--with-code",
    )
    assert code.returncode == 0, code.stderr
    assert (tmp_path / "c" / "pipeline_detailflow.py").is_file()
    card = (tmp_path / "c" / "README.md").read_text()  # local sources: named in the text, no base_model
    assert "base_model" not in card and f"`{fixture_dir / 'ar'}` (generator)" in card and "Parity:" in card
