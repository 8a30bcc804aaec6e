"""Generation from an image: keep its first k tokens, regrow the rest (variations, class transfer, detail completion)."""

import numpy as np
import pytest
import torch
from PIL import Image

from detailflow_hf.image_processing import center_crop_arr, to_tensor


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A smooth 80 x 96 test picture (not square: the processor must crop)."""
    y, x = np.mgrid[0:80, 0:96]
    rgb = np.stack([128 + 100 * np.sin(x / 9), 128 + 100 * np.cos(y / 7), (x + y) % 256], -1)
    return Image.fromarray(rgb.astype(np.uint8))


def encoded(pipe, image) -> torch.LongTensor:
    return pipe.vqvae.encode(to_tensor(center_crop_arr(image, 64))[None]).token_ids


def test_the_kept_prefix_is_exactly_the_image_encoding(pipe, photo):
    ids = encoded(pipe, photo)
    for k in [0, 1, 4, 8, 20, 32]:
        out = pipe(class_labels=[3], image=photo, keep_tokens=k, generator=torch.Generator().manual_seed(0), output_type="pt")
        assert out.kept_tokens == k and out.token_ids.shape == (1, 32)
        assert torch.equal(out.token_ids[:, :k], ids[:, :k])
    full = pipe(class_labels=[3], image=photo, keep_tokens=32, output_type="pt")
    assert torch.equal(full.images, pipe.decode(ids, output_type="pt"))  # everything kept: the reconstruction


def test_greedy_continuation_of_an_image_prefix_matches_the_model(pipe, photo):
    ids = encoded(pipe, photo)
    out = pipe(class_labels=[5], image=photo, keep_tokens=8, top_k=1, output_type="pt")
    reference = pipe.transformer.generate([5], top_k=1, prefix_ids=ids[:, :8], use_cache=False)
    assert torch.equal(out.token_ids, reference)


def test_every_input_form_encodes_alike(pipe, photo):
    array = np.asarray(photo, dtype=np.float32) / 255
    forms = [photo, [photo], array, array[None], torch.from_numpy(array).permute(2, 0, 1),
             torch.from_numpy(array).permute(2, 0, 1)[None]]
    results = [pipe.encode_prefix(form, 12) for form in forms]
    assert all(torch.equal(r, results[0]) for r in results) and results[0].shape == (1, 12)


def test_keep_tokens_follows_the_input_resolution(pipe, photo):
    schedule = pipe.vqvae.schedule
    for side in (8, 16, 24, 30, 48, 64, 200):
        thumb = photo.resize((side, side), Image.BICUBIC)
        expected = max([0] + [k for k in schedule.token_list if schedule.decoder_resolution(k) <= side])
        out = pipe(class_labels=[1], image=thumb, generator=torch.Generator().manual_seed(1), output_type="pt")
        assert out.kept_tokens == expected, side
        assert torch.equal(out.token_ids[:, :expected], pipe.encode_prefix(thumb, expected))
    assert pipe.auto_keep_tokens(24) == 8 and pipe.auto_keep_tokens(64) == 32 and pipe.auto_keep_tokens(7) == 0
    # a batch keeps what its smallest image shows
    small, large = photo.resize((24, 24)), photo.resize((64, 64))
    assert pipe(class_labels=[1, 2], image=[large, small], output_type="pt").kept_tokens == 8


def test_images_labels_and_copies(pipe, photo):
    other = photo.transpose(Image.FLIP_TOP_BOTTOM)
    gens = [torch.Generator().manual_seed(s) for s in range(6)]
    out = pipe(class_labels=[1, 2, 3], image=photo, keep_tokens=4, num_images_per_prompt=2, generator=gens,
               output_type="pt", return_intermediates=True)
    assert out.images.shape == (6, 3, 64, 64) and len(out.intermediates) == len(pipe.prefix_lengths())
    assert torch.equal(out.token_ids[:, :4], encoded(pipe, photo)[:, :4].expand(6, -1))
    two = pipe(class_labels=[1], image=[photo, other], keep_tokens=8, output_type="np")
    assert two.images.shape == (2, 64, 64, 3)
    assert torch.equal(two.token_ids[1, :8], encoded(pipe, other)[0, :8])
    # the same image and seed, alone or in a batch: the same variation
    alone = pipe(class_labels=[2], image=photo, keep_tokens=4, generator=[torch.Generator().manual_seed(2)], output_type="pt")
    assert torch.equal(alone.token_ids, out.token_ids[2:3])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"keep_tokens": 5}, r"keep_tokens=5 is not a valid prefix length; expected one of \[0, 1, 2, 3, 4, 8"),
        ({"keep_tokens": 20, "num_tokens": 12}, r"keep_tokens=20 is more than num_tokens=12"),
        ({"image": np.full((8, 8, 3), 255.0)}, r"image values span \[255, 255\]; expected \[0, 1\]"),
        ({"image": torch.zeros(2, 4, 8, 8)}, r"an image tensor must be \(batch, 3, H, W\)"),
        ({"image": np.zeros((8, 8))}, r"an image array must be \(batch, H, W, 3\)"),
        ({"image": "photo.png"}, r"image must be a PIL image, a list of them"),
        ({"image": torch.full((1, 3, 8, 8), float("nan"))}, r"image contains NaN"),
        ({"image": [Image.new("RGB", (8, 8))] * 2, "class_labels": [1, 2, 3]}, r"got 2 images for 3 class labels"),
        ({"image": None, "keep_tokens": 8}, r"keep_tokens needs an image"),
    ],
)
def test_bad_image_inputs_are_named(pipe, photo, kwargs, message):
    kwargs = {"class_labels": [1], "image": photo, **kwargs}
    with pytest.raises(ValueError, match=message):
        pipe(**kwargs)
