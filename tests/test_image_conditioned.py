"""Generation from an image: keep its first k tokens, regrow the rest.

Variations, class transfer and detail completion."""

import numpy as np
import pytest
import torch
from PIL import Image

from detailflow_hf.pipelines.image_processing import center_crop_arr, to_tensor


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
        out = pipe(
            class_labels=[3], image=photo, keep_tokens=k, generator=torch.Generator().manual_seed(0), output_type="pt"
        )
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
    forms = [
        photo,
        [photo],
        array,
        array[None],
        torch.from_numpy(array).permute(2, 0, 1),
        torch.from_numpy(array).permute(2, 0, 1)[None],
    ]
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
    out = pipe(
        class_labels=[1, 2, 3],
        image=photo,
        keep_tokens=4,
        num_images_per_prompt=2,
        generator=gens,
        output_type="pt",
        return_intermediates=True,
    )
    assert out.images.shape == (6, 3, 64, 64) and len(out.intermediates) == len(pipe.prefix_lengths())
    assert torch.equal(out.token_ids[:, :4], encoded(pipe, photo)[:, :4].expand(6, -1))
    two = pipe(class_labels=[1], image=[photo, other], keep_tokens=8, output_type="np")
    assert two.images.shape == (2, 64, 64, 3)
    assert torch.equal(two.token_ids[1, :8], encoded(pipe, other)[0, :8])
    # the same image and seed, alone or in a batch: the same variation
    alone = pipe(
        class_labels=[2], image=photo, keep_tokens=4, generator=[torch.Generator().manual_seed(2)], output_type="pt"
    )
    assert torch.equal(alone.token_ids, out.token_ids[2:3])


def test_num_candidates_keeps_the_continuation_nearest_the_input_at_every_step(pipe, photo, monkeypatch):
    """Every step draws n continuations of the image's chosen prefix (its n rows draw one after another
    from its generator), takes the one whose decoded image, at the kept resolution, is nearest the input,
    then tries every other id drawn at each new position in turn and keeps a mix that comes nearer;
    rebuilt here from `generate` and the tokenizer alone."""
    n, k, seed, label = 3, 8, 5, 4
    side = pipe.vqvae.schedule.decoder_resolution(k)
    pixels = to_tensor(center_crop_arr(photo, 64))[None]
    target = torch.nn.functional.interpolate(pixels, size=(side, side), mode="bicubic", antialias=True)

    def distances(ids):  # (n, length) -> (n,): mean squared error of the decoded images at the kept resolution
        decoded = pipe.vqvae.decode(ids).sample.clamp(-1, 1)
        decoded = torch.nn.functional.interpolate(decoded, size=(side, side), mode="bicubic", antialias=True)
        return (decoded - target).pow(2).flatten(1).mean(1)

    chosen = encoded(pipe, photo)[:, :k]
    seen, picks, mixed, path, decoded_rows = [], [], [], {}, 0
    for length in [t for t in pipe.prefix_lengths() if t > k]:
        done = chosen.shape[1]
        gens = [torch.Generator().manual_seed(seed)] * n  # one stream, its rows drawn one after another
        candidates = pipe.transformer.generate([label] * n, prefix_ids=chosen.expand(n, -1), num_tokens=length,
                                               generator=gens)  # fmt: skip
        errors = distances(candidates)
        decoded_rows += n
        picks.append(int(errors.argmin()))
        best, best_error = candidates[picks[-1]], errors.min()
        for position in range(done, length):
            others = [i for i in dict.fromkeys(candidates[:, position].tolist()) if i != best[position]]
            if not others:
                continue
            mixes = best.repeat(len(others), 1)
            mixes[:, position] = torch.tensor(others)
            errors = distances(mixes)
            decoded_rows += len(others)  # each other id drawn there, once
            if errors.min() < best_error:
                best, best_error = mixes[errors.argmin()], errors.min()
        mixed.append(not any(torch.equal(best, row) for row in candidates))
        chosen = best[None]
        path[length] = chosen
        seen.append(len(set(map(tuple, candidates[:, done:].tolist()))))
    # the candidates differ, not only the first is ever taken, and some step keeps a mix of them
    assert max(seen) > 1 and any(picks) and any(mixed)

    steps, rows = [], []
    decode = pipe.vqvae.decode
    monkeypatch.setattr(pipe.vqvae, "decode", lambda ids, *a, **kw: rows.append(len(ids)) or decode(ids, *a, **kw))
    out = pipe(class_labels=[label], image=photo, keep_tokens=k, num_candidates=n, output_type="pt",
               generator=[torch.Generator().manual_seed(seed)],
               callback_on_step_end=lambda p, i, t, kw: steps.append(kw["tokens"].shape) or {})  # fmt: skip
    monkeypatch.undo()
    assert torch.equal(out.token_ids, chosen) and out.kept_tokens == k
    assert sum(rows) == decoded_rows + 1  # the search decodes no more than that (+ the final image)
    assert steps == [(1, t) for t in pipe.prefix_lengths() if t > k]  # callbacks see one row per image
    # a batch of two images, two copies each: every image is continued towards its own input, from its
    # own generator, so each row is what it would be alone
    other = photo.transpose(Image.FLIP_TOP_BOTTOM)
    seeds = [seed, 9, 11, 12]
    batch = pipe(class_labels=[label, 2], image=[photo, other], keep_tokens=k, num_candidates=n, output_type="pt",
                 num_images_per_prompt=2, generator=[torch.Generator().manual_seed(s) for s in seeds])  # fmt: skip
    assert torch.equal(batch.token_ids[:1], chosen) and batch.token_ids.shape == (4, 32)
    alone = pipe(class_labels=[2], image=other, keep_tokens=k, num_candidates=n, output_type="pt",
                 generator=[torch.Generator().manual_seed(12)])  # fmt: skip
    assert torch.equal(batch.token_ids[3:], alone.token_ids)

    # a callback sees the chosen continuation and may replace it; an interrupt stops there
    def graft_then_stop(p, i, t, kw):
        if t == 12:
            p._interrupt = True
            return {"tokens": torch.cat([kw["tokens"][:, :8], torch.zeros(1, 4, dtype=torch.long)], dim=1)}
        assert torch.equal(kw["tokens"], path[t])
        return {}

    out = pipe(class_labels=[label], image=photo, keep_tokens=k, num_candidates=n, output_type="pt",
               generator=[torch.Generator().manual_seed(seed)], callback_on_step_end=graft_then_stop)  # fmt: skip
    assert out.token_ids.shape == (1, 12) and torch.equal(out.token_ids[:, :8], chosen[:, :8])
    assert out.token_ids[:, 8:].eq(0).all()
    with pytest.raises(ValueError, match=r"callback_on_step_end returned tokens list; expected integer ids of shape"):
        pipe(class_labels=[label], image=photo, keep_tokens=k, num_candidates=n,
             callback_on_step_end=lambda p, i, t, kw: {"tokens": [1, 2]})  # fmt: skip


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_candidates": 0}, r"num_candidates=0 must be an integer >= 1"),
        ({"num_candidates": True}, r"num_candidates=True must be an integer >= 1"),
        ({"num_candidates": 2, "keep_tokens": 0}, r"num_candidates=2 .* needs an image and keep_tokens > 0"),
        ({"num_candidates": 2, "image": None}, r"num_candidates=2 .* needs an image and keep_tokens > 0"),
        ({"num_candidates": 2, "keep_tokens": 8, "do_sample": False}, r"num_candidates=2 needs sampling"),
        ({"num_candidates": 2, "keep_tokens": 8, "top_k": 1}, r"num_candidates=2 needs sampling"),
        ({"num_candidates": 2, "keep_tokens": 32}, r"num_candidates=2 has no step to choose at: .* 32 kept tokens"),
        ({"num_candidates": 2, "keep_tokens": 8, "num_tokens": 8}, r"num_candidates=2 has no step to choose at"),
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


# -- the CLI and the Space --------------------------------------------------------------------------
def test_cli_vary_writes_the_kept_image_then_the_variations(converted_dir, pipe, photo, tmp_path):
    import subprocess
    import sys

    photo.save(tmp_path / "in.png")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "detailflow_hf.cli",
            "vary",
            "--model",
            str(converted_dir),
            "--image",
            str(tmp_path / "in.png"),
            "--keep-tokens",
            "8",
            "--class",
            "3",
            "--num-images",
            "3",
            "--seed",
            "4",
            "--output",
            str(tmp_path / "v.png"),
            "--progressive",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("kept 8 tokens (24 px) of ")
    grid = np.asarray(Image.open(tmp_path / "v.png"))
    assert grid.shape == (64, 4 * 64, 3)
    kept = pipe.decode(pipe.encode_prefix(photo, 8))[0].resize((64, 64), Image.NEAREST)
    assert np.array_equal(grid[:, :64], np.asarray(kept))
    second = pipe(class_labels=[3], image=photo, keep_tokens=8, generator=[torch.Generator().manual_seed(5)]).images[0]
    assert np.array_equal(grid[:, 128:192], np.asarray(second))  # variation i is seeded with seed + i
    assert Image.open(tmp_path / "v_progressive.png").size == (11 * 64, 3 * 64)
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "detailflow_hf.cli",
            "vary",
            "--model",
            str(converted_dir),
            "--image",
            str(tmp_path / "in.png"),
            "--keep-tokens",
            "5",
            "--class",
            "3",
            "--output",
            str(tmp_path / "w.png"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "keep_tokens=5 is not a valid prefix length" in bad.stderr.splitlines()[-1]


def test_cli_vary_num_candidates(converted_dir, pipe, photo, tmp_path):
    import subprocess
    import sys

    photo.save(tmp_path / "in.png")
    base = [sys.executable, "-m", "detailflow_hf.cli", "vary", "--model", str(converted_dir), "--image",
            str(tmp_path / "in.png"), "--class", "3", "--num-images", "1", "--seed", "6",
            "--num-candidates", "3"]  # fmt: skip
    ok = subprocess.run([*base, "--keep-tokens", "8", "--output", str(tmp_path / "v.png")], capture_output=True,
                        text=True, timeout=300)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    expected = pipe(class_labels=[3], image=photo, keep_tokens=8, num_candidates=3,
                    generator=[torch.Generator().manual_seed(6)]).images[0]  # fmt: skip
    assert np.array_equal(np.asarray(Image.open(tmp_path / "v.png"))[:, 64:], np.asarray(expected))
    bad = subprocess.run([*base, "--keep-tokens", "0", "--output", str(tmp_path / "w.png")], capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert bad.returncode == 2 and "needs an image and keep_tokens > 0" in bad.stderr.splitlines()[-1]
    assert "Traceback" not in bad.stderr and not (tmp_path / "w.png").exists()


def test_space_vary_api(pipe, photo, tmp_path):
    pytest.importorskip("gradio", reason="the demo extra (gradio) is not installed")
    from gradio_client import Client, handle_file

    from .test_spaces_demo import app_module_from_path, free_port

    app = app_module_from_path()
    demo = app.build_demo(pipe)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        photo.save(tmp_path / "in.png")
        client = Client(url, verbose=False)
        assert "/vary" in client.view_api(print_info=False, return_format="dict")["named_endpoints"]
        path = client.predict(handle_file(str(tmp_path / "in.png")), 8, "3", 1.5, 7, api_name="/vary")
        expected = pipe(
            class_labels=[3], image=photo, keep_tokens=8, generator=torch.Generator().manual_seed(7)
        ).images[0]
        assert Image.open(path).resize((64, 64), Image.NEAREST).tobytes() == expected.tobytes()
        path = client.predict(handle_file(str(tmp_path / "in.png")), 8, "3", 1.5, 7, 3, api_name="/vary")
        expected = pipe(
            class_labels=[3], image=photo, keep_tokens=8, num_candidates=3, generator=torch.Generator().manual_seed(7)
        ).images[0]
        assert Image.open(path).resize((64, 64), Image.NEAREST).tobytes() == expected.tobytes()
        job = client.submit(handle_file(str(tmp_path / "in.png")), 5, "3", 1.5, 7, api_name="/vary_progressive")
        job.result(timeout=120)
        steps = [k for k in pipe.prefix_lengths() if k > 8]
        assert len(job.outputs()) == 1 + len(steps)  # the kept image (index 5: 8 tokens), then each regrown step
        with pytest.raises(Exception, match="keep_tokens=5 is not a valid prefix length"):
            client.predict(handle_file(str(tmp_path / "in.png")), 5, "3", 1.5, 7, api_name="/vary")
    finally:
        demo.close()
