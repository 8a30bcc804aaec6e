import json

import pytest
import torch

from detailflow_hf import DetailFlowTokenizer
from detailflow_hf.conversion.original import convert_tokenizer

from .reference_original import original_decode, original_encode, original_tokenizer_state, write_release

PREFIXES = [1, 4, 8, 16, 24, 32]


@pytest.fixture(scope="module")
def tokenizer(fixture_dir, architecture):
    return convert_tokenizer(fixture_dir / "tokenizer", architecture=architecture)


def test_encode_matches_the_original(tokenizer, expected):
    out = tokenizer.encode(expected["tokenizer.images"])
    assert out.latents.shape == (2, 32, 8)
    assert torch.equal(out.token_ids, expected["tokenizer.encode.indices"])
    assert (out.latents - expected["tokenizer.encode.quant"]).abs().max() <= 1e-4


@pytest.mark.parametrize("k", PREFIXES)
def test_prefix_decode_matches_the_original(tokenizer, expected, k):
    sample = tokenizer.decode(expected["tokenizer.encode.quant"], num_tokens=k).sample
    reference = expected[f"tokenizer.decode.t{k}"]
    assert sample.shape == reference.shape
    assert sample.shape[-1] == tokenizer.schedule.decoder_resolution(k)
    assert (sample - reference).abs().max() <= 1e-4


def test_decode_ids_matches_decode_code(tokenizer, expected):
    sample = tokenizer.decode(expected["tokenizer.encode.indices"]).sample
    assert (sample - expected["tokenizer.decode_code.full"]).abs().max() <= 1e-4
    assert sample.abs().max() > 1.0  # unclamped, as the original


def test_first_latents_do_not_depend_on_later_queries(tokenizer, expected):
    images = expected["tokenizer.images"]
    full = tokenizer.encoder(images)
    for t in (1, 4, 8, 20):
        partial = tokenizer.encoder(images, latent_queries=tokenizer.encoder.latent_tokens[:, :t])
        assert (partial - full[:, :t]).abs().max() < 1e-5


def test_save_load_round_trip(tokenizer, expected, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    loaded = DetailFlowTokenizer.from_pretrained(tmp_path).eval()
    images = expected["tokenizer.images"]
    a, b = tokenizer.encode(images), loaded.encode(images)
    assert torch.equal(a.token_ids, b.token_ids) and torch.equal(a.latents, b.latents)
    assert torch.equal(tokenizer.decode(a.latents, 8).sample, loaded.decode(b.latents, 8).sample)


@pytest.mark.parametrize(
    "images, message",
    [
        (torch.zeros(2, 64, 64), r"\(batch, 3, height, width\)"),
        (torch.zeros(2, 1, 64, 64), r"\(batch, 3, height, width\)"),
        (
            torch.zeros(1, 3, 60, 64),
            r"pixel_values are 60 x 64 px but this tokenizer encodes 64 x 64 \(its image_size\)",
        ),
        (torch.zeros(1, 3, 32, 32), r"pixel_values are 32 x 32 px but this tokenizer encodes 64 x 64"),
        (torch.zeros(1, 3, 128, 128), r"pixel_values are 128 x 128 px"),
        (torch.full((1, 3, 64, 64), 255.0), r"range \[255, 255\] is outside the expected \[-1, 1\]"),
        (torch.zeros(1, 3, 64, 64).index_fill_(2, torch.tensor([5]), float("nan")), r"contain NaN or infinite values"),
        (torch.full((1, 3, 64, 64), float("inf")), r"contain NaN or infinite values"),
    ],
)
def test_bad_images_are_named(tokenizer, images, message):
    with pytest.raises(ValueError, match=message):
        tokenizer.encode(images)


def test_bad_tokens_are_named(tokenizer):
    with pytest.raises(ValueError, match=r"span \[0, 500\]; the codebook has ids 0..127"):
        tokenizer.decode(torch.tensor([[0, 500]]))
    with pytest.raises(ValueError, match="latents must be"):
        tokenizer.decode(torch.zeros(1, 4, 3))
    with pytest.raises(ValueError, match="num_tokens=9 must be between 1 and the 8 tokens given"):
        tokenizer.decode(torch.zeros(1, 8, dtype=torch.long), num_tokens=9)


SHAPES = [
    # (encoder, decoder, N, g, causal_num, image_size): other widths, heads, patch sizes, causal prefixes
    (
        dict(
            hidden_size=24,
            intermediate_size=40,
            num_attention_heads=3,
            num_hidden_layers=1,
            num_patches=16,
            patch_size=4,
        ),
        dict(
            hidden_size=16,
            intermediate_size=24,
            num_attention_heads=2,
            num_hidden_layers=2,
            num_patches=16,
            patch_size=8,
        ),
        16,
        2,
        4,
        32,
    ),
    (
        dict(
            hidden_size=32,
            intermediate_size=48,
            num_attention_heads=4,
            num_hidden_layers=2,
            num_patches=36,
            patch_size=8,
        ),
        dict(
            hidden_size=24,
            intermediate_size=32,
            num_attention_heads=6,
            num_hidden_layers=1,
            num_patches=36,
            patch_size=8,
        ),
        24,
        8,
        8,
        48,
    ),
]


@pytest.mark.parametrize("enc, dec, n, g, c, size", SHAPES)
def test_any_shape_matches_the_original(tmp_path, enc, dec, n, g, c, size):
    for spec in (enc, dec):
        spec.update(layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh")
    state = original_tokenizer_state(enc, dec, n, vocab=64, embed_dim=6, seed=n)
    config = {
        "enc_patch_size": enc["patch_size"],
        "dec_patch_size": dec["patch_size"],
        "group_size": g,
        "causal_num": c,
        "num_latent_tokens": n,
        "causal_encoder": True,
        "causal_decoder": False,
    }
    yaml_config = {
        "max_image_size": size,
        "group_size": g,
        "degradation_power": 1.5,
        "content_degradation": "resolution_power",
    }
    root = write_release(tmp_path / "tok", state, config, yaml_config)
    ours = convert_tokenizer(root, architecture={"encoder": enc, "decoder": dec})
    images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    quant, ids = original_encode(state, enc, g, c, images)
    out = ours.encode(images)
    assert torch.equal(out.token_ids, ids)
    assert (out.latents - quant).abs().max() < 1e-5
    for t in ours.schedule.token_list:
        res = ours.schedule.decoder_resolution(t)
        reference = original_decode(state, dec, quant, t, res)
        assert (ours.decode(out.latents, num_tokens=t).sample - reference).abs().max() < 1e-4, t


def test_fresh_tables_follow_the_original_init():
    torch.manual_seed(0)
    spec = dict(
        hidden_size=64,
        intermediate_size=64,
        num_attention_heads=2,
        num_hidden_layers=1,
        num_patches=16,
        patch_size=8,
        layer_norm_eps=1e-6,
        hidden_act="gelu_pytorch_tanh",
    )
    vq = DetailFlowTokenizer(
        image_size=32,
        num_latent_tokens=64,
        group_size=4,
        codebook_size=16,
        codebook_embed_dim=4,
        encoder_config=spec,
        decoder_config=spec,
    )
    for table in (
        vq.encoder.latent_tokens,
        vq.encoder.refined_tokens,
        vq.encoder.latent_pos_embed,
        vq.decoder.latent_pos_embed,
    ):
        assert 0.015 < table.std().item() < 0.025


@pytest.mark.parametrize("key", ["image_size", "num_latent_tokens", "codebook_size", "encoder_config"])
def test_a_config_without_a_shape_key_is_refused(tokenizer, tmp_path, key):
    tokenizer.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config[key]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"config.json lacks the key '{key}'"):
        DetailFlowTokenizer.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"config.json holds a JSON list; expected an object"):
        DetailFlowTokenizer.from_pretrained(tmp_path)
