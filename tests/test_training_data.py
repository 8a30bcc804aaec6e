import logging
from itertools import islice
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from detailflow_hf.image_datasets import class_names, load_image_stream
from detailflow_hf.pipelines.image_processing import center_crop_arr, random_crop_arr, ten_crop, to_tensor
from detailflow_hf.training.data import ImageTransform, build_train_stream, make_loader
from tests.image_folder import CLASSES, write_image_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("images"))


def gradient_image(w, h):
    x = np.arange(w)[None, :, None] * 255 // max(w - 1, 1)
    y = np.arange(h)[:, None, None] * 255 // max(h - 1, 1)
    return Image.fromarray(
        np.concatenate(
            [np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)), np.full((h, w, 1), 128)], axis=-1
        ).astype(np.uint8)
    )


def test_center_crop_halves_then_bicubic_and_crops_the_middle():
    image = gradient_image(300, 140)  # short side 140 >= 2*64: one BOX halving to 150x70, then 137x64
    out = center_crop_arr(image, 64)
    assert out.size == (64, 64)
    halved = image.resize((150, 70), Image.BOX).resize((137, 64), Image.BICUBIC)
    assert np.array_equal(np.asarray(out), np.asarray(halved)[:, 36:100])


def test_random_crop_short_side_range_and_degenerate_case():
    image = gradient_image(50, 40)
    rng = np.random.default_rng(0)
    crops = [random_crop_arr(image, 32, rng) for _ in range(20)]
    assert all(c.size == (32, 32) for c in crops)
    assert len({np.asarray(c).tobytes() for c in crops}) > 5  # scale and offset vary
    # scale fixed to 1 on a square image: exactly the centre crop
    square = gradient_image(40, 40)
    fixed = random_crop_arr(square, 32, np.random.default_rng(1), min_scale=1.0, max_scale=1.0)
    assert np.array_equal(np.asarray(fixed), np.asarray(center_crop_arr(square, 32)))
    with pytest.raises(ValueError, match="need size <= ceil"):
        random_crop_arr(square, 32, rng, min_scale=0.5)


def test_ten_crop_corners_and_mirrors():
    image = gradient_image(40, 36)
    crops = ten_crop(image, 32)
    arr = np.asarray(image)
    assert len(crops) == 10 and all(c.size == (32, 32) for c in crops)
    assert np.array_equal(np.asarray(crops[0]), arr[:32, :32])
    assert np.array_equal(np.asarray(crops[3]), arr[4:, 8:])
    assert np.array_equal(np.asarray(crops[4]), arr[2:34, 4:36])
    assert np.array_equal(np.asarray(crops[5]), arr[:32, 8:][:, ::-1])  # mirror's top-left


def test_to_tensor_range_and_flip():
    image = Image.fromarray(np.array([[[0, 255, 0], [255, 255, 255]]], dtype=np.uint8))
    t = to_tensor(image)
    assert t.shape == (3, 1, 2) and t.tolist() == [[[-1.0, 1.0]], [[1.0, 1.0]], [[-1.0, 1.0]]]
    transform = ImageTransform(32, random_crop=False, hflip=True)
    flips = {transform(gradient_image(32, 32), np.random.default_rng(s))[0, 0, 0].item() for s in range(8)}
    assert flips == {-1.0, 1.0}


def test_folder_labels_and_class_names(folder):
    ds = load_image_stream(train_data_dir=str(folder))
    assert class_names(ds) == list(CLASSES)
    assert set(ds.features) == {"image", "label"}
    with pytest.raises(ValueError, match="not both"):
        load_image_stream(dataset_name="x", train_data_dir=str(folder))
    with pytest.raises(ValueError, match="no image column: --image_column 'pixels'"):
        load_image_stream(train_data_dir=str(folder), image_column="pixels")


def test_parquet_folder_is_read_too(tmp_path, folder):
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature

    paths = sorted(str(p) for p in (folder / "train").rglob("[0-9].png"))
    labels = [CLASSES.index(p.split("/")[-2]) for p in paths]
    features = Features({"img": ImageFeature(), "cls": ClassLabel(names=list(CLASSES))})
    (tmp_path / "pq").mkdir()
    Dataset.from_dict({"img": paths, "cls": labels}, features=features).to_parquet(str(tmp_path / "pq" / "0.parquet"))
    stream = build_train_stream(resolution=32, seed=0, train_data_dir=str(tmp_path / "pq"), shuffle_buffer_size=4)
    assert class_names(stream.source) == list(CLASSES)
    examples = list(islice(stream, 18))
    assert sorted(int(e["label"]) for e in examples) == sorted(labels)


def test_stream_epoch_covers_every_good_image_once_and_skips_the_corrupt_one(folder, caplog):
    stream = build_train_stream(resolution=32, seed=0, train_data_dir=str(folder), shuffle_buffer_size=5)
    with caplog.at_level(logging.WARNING):
        examples = list(islice(stream, 18))
    assert stream.skipped.count == 1 and "bad.png" in stream.skipped.last
    assert "bad.png" in caplog.text
    assert [int(e["label"]) for e in examples].count(0) == 6 and stream.epoch == 0
    pixels = torch.stack([e["pixel_values"] for e in examples])
    assert pixels.shape == (18, 3, 32, 32) and pixels.min() >= -1 and pixels.max() <= 1
    # shuffled: not the folder order (all class 0 first)
    assert [int(e["label"]) for e in examples[:6]] != [0] * 6


def test_stream_resumes_exactly_through_the_stateful_loader(folder):
    def loader():
        return make_loader(
            build_train_stream(resolution=32, seed=3, train_data_dir=str(folder), shuffle_buffer_size=6), 4
        )

    straight = loader()
    it = iter(straight)
    for _ in range(3):
        next(it)
    state = straight.state_dict()
    rest = [next(it) for _ in range(6)]  # crosses into the second epoch (18 images / 4)
    resumed = loader()
    resumed.load_state_dict(state)
    again = list(islice(resumed, 6))
    for a, b in zip(rest, again):
        assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["label"], b["label"])


def test_two_processes_read_disjoint_rows(folder):
    seen = []
    for rank in range(2):
        accel = SimpleNamespace(process_index=rank, num_processes=2)
        stream = build_train_stream(
            resolution=32,
            seed=0,
            accelerator=accel,
            train_data_dir=str(folder),
            shuffle_buffer_size=1,
            random_crop=False,
            hflip=False,
        )
        seen.append({e["pixel_values"].numpy().tobytes() for e in islice(stream, 9)})
    assert len(seen[0]) == len(seen[1]) == 9 and not seen[0] & seen[1]


def _corrupt_folder(root, count: int):
    for i in range(count):
        path = root / "train" / CLASSES[i % 3] / f"broken{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    return root


def test_a_dataset_of_only_undecodable_images_stops_with_an_error(tmp_path, caplog):
    import time

    root = _corrupt_folder(tmp_path / "broken", 12)
    stream = build_train_stream(resolution=32, seed=0, train_data_dir=str(root), shuffle_buffer_size=4)
    started = time.perf_counter()
    with caplog.at_level(logging.WARNING), pytest.raises(ValueError) as error:
        next(iter(stream))
    assert time.perf_counter() - started < 30
    message = str(error.value)
    assert message.startswith(f"no image of {str(root)!r} could be decoded in a whole pass (12 files skipped, last: ")
    assert len(caplog.records) == 10  # the first 10 files one by one, then only at 100, 1000, ...


def test_a_long_run_of_undecodable_images_stops_the_stream(tmp_path, monkeypatch):
    """Mid-pass (a resumed stream, where a whole pass is not seen) the bound on consecutive failures holds."""
    import detailflow_hf.training.data as data

    monkeypatch.setattr(data, "MAX_CONSECUTIVE_SKIPS", 5)
    root = _corrupt_folder(tmp_path / "broken", 6)
    stream = build_train_stream(resolution=32, seed=0, train_data_dir=str(root), shuffle_buffer_size=1)
    stream.rows_read = 3  # as after a resume: the whole-pass check cannot apply to this pass
    with pytest.raises(
        ValueError, match=rf"5 images of {str(root)!r} in a row could not be decoded \(5 skipped in all"
    ):
        next(iter(stream))
