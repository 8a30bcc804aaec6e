from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import load_dataset
from PIL import Image

import detailflow_hf
from detailflow_hf.training.codes import CodesInfo, CodesWriter, build_codes_stream, read_codes_info, shard_files
from tests.image_folder import CLASSES, load_example, tiny_tokenizer, write_image_folder

HELDOUT = Path(__file__).parent / "fixtures" / "emoji_heldout"


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """The tiny folder (18 good images + 1 corrupt) extracted by examples/extract_codes.py."""
    root = tmp_path_factory.mktemp("extract")
    write_image_folder(root / "images")
    tiny_tokenizer().save_pretrained(root / "tokenizer")
    code = load_example("extract_codes").main(
        [
            "--tokenizer",
            str(root / "tokenizer"),
            "--output_dir",
            str(root / "codes"),
            "--train_data_dir",
            str(root / "images"),
            "--rows_per_shard",
            "5",
        ]
    )
    assert code == 0
    return root


def test_extraction_writes_triples_for_every_good_image(extracted):
    info = read_codes_info(extracted / "codes")
    assert (info.num_tokens, info.group_size, info.causal_num, info.vocab_size) == (16, 4, 4, 64)
    assert info.class_names == list(CLASSES) and info.crops == 2 and info.triples
    assert len(shard_files(extracted / "codes")) == 4  # 18 rows, 5 per shard
    ds = load_dataset("parquet", data_files=shard_files(extracted / "codes"), split="train")
    assert ds.num_rows == 18 and sorted(ds["label"]).count(0) == 6
    assert ds.features["codes"].shape == (2, 16, 3) and ds.features["codes"].dtype == "int16"
    codes = np.asarray(ds.with_format("numpy")["codes"])
    assert codes.min() >= 0 and codes.max() < 64
    # label = clean up to the noise end: at least the first token always agrees
    assert (codes[..., 0, 2] == codes[..., 0, 0]).all()
    # the noisy input differs from the label somewhere (noise among 50 of 64 codes)
    assert (codes[..., 1] != codes[..., 2]).any()


def test_extracted_clean_codes_match_the_tokenizer(extracted):
    from PIL import Image

    from detailflow_hf.pipelines.image_processing import center_crop_arr, to_tensor

    tok = tiny_tokenizer()
    ds = load_dataset("parquet", data_files=shard_files(extracted / "codes"), split="train").with_format("numpy")
    first = ds[0]
    candidates = sorted((extracted / "images" / "train").rglob("[0-9].png"))
    crops = [center_crop_arr(Image.open(p).convert("RGB"), 32) for p in candidates]
    with torch.no_grad():
        ids = tok.encode(torch.stack([to_tensor(c) for c in crops])).token_ids.numpy()
    # the row's clean codes (centre crop) are exactly one image's tokenizer ids
    assert any((first["codes"][0, :, 0] == row).all() for row in ids)


def test_writer_checks_shapes_and_never_leaves_partial_files(tmp_path):
    info = CodesInfo({}, 64, 16, 4, 4, 3, None, 1, False, 32)
    writer = CodesWriter(tmp_path, info, rank=1, world_size=2, rows_per_shard=2)
    with pytest.raises(ValueError, match=r"codes of shape \(1, 16, 3\); this folder stores \(1, 16, 1\)"):
        writer.add(np.zeros((1, 16, 3)), 0)
    for i in range(3):
        writer.add(np.full((1, 16, 1), i), i % 3)
    writer.flush()
    names = sorted(p.name for p in (tmp_path / "data").iterdir())
    assert names == ["codes-00001.parquet", "codes-00003.parquet"]  # part * world + rank


def test_code_stream_picks_one_crop_per_access(extracted):
    stream = build_codes_stream(extracted / "codes", seed=0, shuffle_buffer_size=4)
    examples = [next(it) for it in [iter(stream)] for _ in range(36)]
    assert examples[0]["codes"].shape == (16, 3) and examples[0]["codes"].dtype == torch.long
    assert {int(e["shard"]) for e in examples} == {0, 1, 2, 3}
    ds = load_dataset("parquet", data_files=shard_files(extracted / "codes"), split="train").with_format("numpy")
    stored = {tuple(c[k, :, 0]) for c in ds["codes"] for k in range(2)}
    assert all(tuple(e["codes"][:, 0].tolist()) in stored for e in examples)


def test_no_mirror_stores_only_the_unflipped_crops(extracted, tmp_path):
    """`--no_mirror` (flags, text): 5 of the 10 crops with `--ten_crop`, the centre crop alone without."""
    from PIL import Image

    example = load_example("extract_codes")
    image = Image.open(sorted((extracted / "images" / "train").rglob("[0-9].png"))[0]).convert("RGB")
    torch.testing.assert_close(
        example.image_crops(image, 32, True, mirror=False), example.image_crops(image, 32, True)[:5]
    )
    assert example.image_crops(image, 32, False, mirror=False).shape == (1, 3, 32, 32)
    arguments = ["--tokenizer", str(extracted / "tokenizer"), "--train_data_dir", str(extracted / "images")]
    assert example.main([*arguments, "--output_dir", str(tmp_path / "five"), "--ten_crop", "--no_mirror"]) == 0
    assert example.main([*arguments, "--output_dir", str(tmp_path / "one"), "--no_mirror", "--no_correction"]) == 0
    assert read_codes_info(tmp_path / "five").crops == 5
    one = load_dataset("parquet", data_files=shard_files(tmp_path / "one"), split="train")
    assert read_codes_info(tmp_path / "one").crops == 1 and one.features["codes"].shape == (1, 16, 1)


def _thumbnail_inputs(tok, image, sides):
    """What a thumbnail-prefix code of `image` must hold per side, computed here from the pipeline's
    own preprocessing: the full image's ids, and the thumbnail's first k ids followed by them."""
    from detailflow_hf.pipelines.image_processing import DetailFlowImageProcessor, center_crop_arr

    centre = center_crop_arr(image, tok.config.image_size)
    pixels, _ = DetailFlowImageProcessor(tok.config.image_size).preprocess(
        [centre] + [centre.resize((s, s), Image.BICUBIC) for s in sides]
    )
    with torch.no_grad():
        ids = tok.encode(pixels).token_ids
    shown = [tok.schedule.tokens_shown(s) for s in sides]
    return ids[0], [torch.cat([row[:k], ids[0][k:]]) for row, k in zip(ids[1:], shown)]


def test_thumbnail_prefix_codes_continue_a_thumbnails_prefix_with_the_image(extracted):
    from PIL import Image

    from detailflow_hf.pipelines.image_processing import center_crop_arr
    from detailflow_hf.training.thumbnail_prefixes import (
        draw_thumbnail_sides,
        thumbnail_prefix_codes,
        thumbnail_sides,
    )

    tok = tiny_tokenizer()
    # the tiny schedule (16 tokens, 32 px, 8 px patches): 1-3 tokens show 8 px, 4 show 16, 8 show 24, 12-16 show 32
    assert thumbnail_sides(tok.schedule) == [8, 16, 24]
    assert [tok.schedule.tokens_shown(s) for s in (7, 8, 15, 16, 24, 32)] == [0, 3, 3, 4, 8, 16]
    drawn = draw_thumbnail_sides(tok.schedule, 30, torch.Generator().manual_seed(0))
    assert set(drawn) == {8, 16, 24}
    image = Image.open(sorted((extracted / "images" / "train").rglob("[0-9].png"))[0]).convert("RGB")
    sides = [8, 16, 24, 16]
    clean, inputs = _thumbnail_inputs(tok, image, sides)
    centre = center_crop_arr(image, 32)
    codes = thumbnail_prefix_codes(tok, centre, clean, sides)
    assert codes.shape == (4, 16, 3)
    assert (codes[..., 0] == clean).all() and (codes[..., 2] == clean).all()
    assert torch.equal(codes[..., 1], torch.stack(inputs))
    with pytest.raises(
        ValueError, match=r"a 32 px thumbnail shows 16 of 16 tokens; .* needs 1 to 15 \(sides 8-31 px\)"
    ):
        thumbnail_prefix_codes(tok, centre, clean, [8, 32])
    with pytest.raises(ValueError, match=r"the full image is 40 x 40 px; expected 32 x 32"):
        thumbnail_prefix_codes(tok, image.resize((40, 40)), clean, [8])


@pytest.mark.skipif(detailflow_hf.DEFAULT_MODEL is None, reason="no embedded model")
def test_a_thumbnails_prefix_is_not_the_full_images():
    """On the embedded model's trained tokenizer a thumbnail's kept ids differ from the full image's:
    what thumbnail-prefix codes teach the generator to continue from."""
    from detailflow_hf.pipelines.image_processing import open_image
    from detailflow_hf.training.thumbnail_prefixes import thumbnail_prefix_codes

    tok = detailflow_hf.load_tokenizer(detailflow_hf.DEFAULT_MODEL)
    image = open_image(sorted(HELDOUT.glob("*.png"))[0]).resize((32, 32), Image.BICUBIC)
    clean, _ = _thumbnail_inputs(tok, image, [])
    codes = thumbnail_prefix_codes(tok, image, clean, [8, 16, 24])
    shown = [tok.schedule.tokens_shown(s) for s in (8, 16, 24)]
    assert shown == [8, 24, 40]
    differing = [int((row[:k, 1] != row[:k, 0]).sum()) for row, k in zip(codes, shown)]
    assert all(d > 0 for d in differing), differing
    assert all((row[k:, 1] == row[k:, 0]).all() for row, k in zip(codes, shown))


def test_extract_codes_appends_thumbnail_prefix_codes(extracted, tmp_path):
    from PIL import Image

    example = load_example("extract_codes")
    arguments = ["--tokenizer", str(extracted / "tokenizer"), "--train_data_dir", str(extracted / "images")]
    out = tmp_path / "thumbs"
    assert example.main([*arguments, "--output_dir", str(out), "--no_mirror", "--thumbnail_prefixes", "3"]) == 0
    assert read_codes_info(out).crops == 4
    ds = load_dataset("parquet", data_files=shard_files(out), split="train").with_format("numpy")
    codes = np.asarray(ds["codes"])
    assert codes.shape == (18, 4, 16, 3)
    # crop 0 is the centre crop's self-correction triple; crops 1-3 continue a thumbnail's prefix with it
    assert (codes[:, 1:, :, 0] == codes[:, 1:, :, 2]).all() and (codes[:, 1:, :, 0] == codes[:, :1, :, 0]).all()
    tok = tiny_tokenizer()
    allowed = {}
    for path in sorted((extracted / "images" / "train").rglob("[0-9].png")):
        clean, inputs = _thumbnail_inputs(tok, Image.open(path).convert("RGB"), [8, 16, 24])
        allowed.setdefault(tuple(clean.tolist()), []).extend(tuple(i.tolist()) for i in inputs)
    for row in codes:
        assert all(tuple(code.tolist()) in allowed[tuple(row[0, :, 0].tolist())] for code in row[1:, :, 1])
    for other in ("--no_correction", "--ten_crop"):
        with pytest.raises(SystemExit) as exit_info:
            example.parse_args([*arguments, "--output_dir", str(out), "--thumbnail_prefixes", "3", other])
        assert exit_info.value.code == 2
