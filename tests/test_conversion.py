import argparse
import json
import shutil

import pytest
import torch

from detailflow_hf import DetailFlowPipeline
from detailflow_hf.cli import main
from detailflow_hf.conversion.original import ConversionError, convert_generator, convert_release, convert_tokenizer

from .hub_cache import add_snapshot


def test_cli_conversion_reproduces_every_fixture_tensor(converted_dir, expected):
    pipe = DetailFlowPipeline.from_pretrained(converted_dir)
    vq, gpt = pipe.vqvae, pipe.transformer
    assert not vq.training and not gpt.training
    out = vq.encode(expected["tokenizer.images"])
    assert torch.equal(out.token_ids, expected["tokenizer.encode.indices"])
    assert (out.latents - expected["tokenizer.encode.quant"]).abs().max() <= 1e-4
    for k in (1, 4, 8, 16, 24, 32):
        assert (vq.decode(out.latents, k).sample - expected[f"tokenizer.decode.t{k}"]).abs().max() <= 1e-4
    z, y = expected["ar.z"], expected["ar.labels"]
    for length in (2, 4, 28):
        assert (gpt(z[:, :length], y).logits - expected[f"ar.logits.L{length}"]).abs().max() <= 1e-4
    assert abs(gpt(z[:, :-4], y, labels=z).loss.item() - expected["ar.loss"].item()) <= 1e-5
    ids = gpt.generate(y, guidance_scale=1.5, top_k=1)
    assert torch.equal(ids, expected["ar.greedy.cfg1.5"])
    assert torch.equal(
        gpt.generate(y, guidance_scale=3.0, gradual_guidance=True, top_k=1), expected["ar.greedy.cfg3.0_gradual"]
    )
    assert (vq.decode(ids).sample - expected["pipeline.greedy.cfg1.5.pixels"]).abs().max() <= 1e-4


def test_conversion_drops_training_tensors_and_keeps_self_correction(converted_dir):
    from safetensors import safe_open

    with safe_open(converted_dir / "vqvae" / "diffusion_pytorch_model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert "refine_conv.weight" in keys and "encoder.refined_tokens" in keys
    assert not any(k.startswith(("repa_model", "global_token_proj")) or "codebook_used" in k for k in keys)


def test_ema_choice(fixture_dir, expected):
    ema = convert_generator(fixture_dir / "ar")
    plain = convert_generator(fixture_dir / "ar", use_ema=False)
    z, y = expected["ar.z"], expected["ar.labels"]
    assert (ema(z[:, :4], y).logits - expected["ar.logits.L4"]).abs().max() <= 1e-4
    assert (plain(z[:, :4], y).logits - expected["ar.logits.L4"]).abs().max() > 1e-3


def test_hub_repo_ids_offline(fixture_dir, architecture, tmp_path, expected):
    add_snapshot("ByteFlow-AI/DetailFlow-tiny", fixture_dir / "tokenizer")
    add_snapshot("ByteFlow-AI/DetailFlow-tiny-GPT", fixture_dir / "ar")
    out = tmp_path / "pipe"
    pipe = convert_release(
        "ByteFlow-AI/DetailFlow-tiny", "ByteFlow-AI/DetailFlow-tiny-GPT", out, tokenizer_architecture=architecture
    )
    assert torch.equal(pipe.transformer.generate(expected["ar.labels"], top_k=1), expected["ar.greedy.cfg1.5"])
    # and a converted pipeline pushed to the Hub loads by repo id through the cache
    add_snapshot("someone/detailflow-tiny-hf", out)
    loaded = DetailFlowPipeline.from_pretrained("someone/detailflow-tiny-hf")
    assert torch.equal(loaded.transformer.generate(expected["ar.labels"], top_k=1), expected["ar.greedy.cfg1.5"])
    with pytest.raises(ConversionError, match="cannot find 'ByteFlow-AI/not-there'"):
        convert_tokenizer("ByteFlow-AI/not-there")


def _copy_release(fixture_dir, tmp_path, name):
    target = tmp_path / name
    shutil.copytree(fixture_dir / name, target)
    return target


def test_truncated_checkpoint(fixture_dir, tmp_path):
    root = _copy_release(fixture_dir, tmp_path, "ar")
    ckpt = root / "checkpoints" / "0000100.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    with pytest.raises(ConversionError, match=r"0000100.pt is corrupt or truncated"):
        convert_generator(root)


class Payload:
    """Any class a checkpoint might pickle; unpickling it could run code."""


def test_pickled_object_not_allow_listed(fixture_dir, tmp_path):
    root = _copy_release(fixture_dir, tmp_path, "ar")
    with torch.serialization.safe_globals([argparse.Namespace]):
        data = torch.load(root / "checkpoints" / "0000100.pt", weights_only=True)
    data["args"] = Payload()
    torch.save(data, root / "checkpoints" / "0000200.pt")  # newest: picked by default
    with pytest.raises(
        ConversionError, match=r"0000200.pt contains a pickled object that is not allow-listed.*Payload"
    ):
        convert_generator(root)


def test_missing_config_key(fixture_dir, tmp_path):
    root = _copy_release(fixture_dir, tmp_path, "ar")
    config = json.loads((root / "config.json").read_text())
    del config["block_size"]
    (root / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match=r"missing config key 'block_size' in .*ar/config.json"):
        convert_generator(root)


def test_vocabulary_mismatch(fixture_dir, architecture, tmp_path):
    root = _copy_release(fixture_dir, tmp_path, "ar")
    ckpt = root / "checkpoints" / "0000100.pt"
    with torch.serialization.safe_globals([argparse.Namespace]):
        data = torch.load(ckpt, weights_only=True)
    for key in ("model", "ema"):
        data[key]["tok_embeddings.weight"] = data[key]["tok_embeddings.weight"][:100]
        data[key]["output.weight"] = data[key]["output.weight"][:100]
    torch.save(data, ckpt)
    with pytest.raises(ValueError, match="vocabulary size is 128 in the tokenizer but 100 in the generator"):
        convert_release(fixture_dir / "tokenizer", root, tokenizer_architecture=architecture)


def test_cli_reports_errors_in_one_line(tmp_path, capsys):
    code = main(
        [
            "convert",
            "--tokenizer",
            str(tmp_path / "nope"),
            "--generator",
            str(tmp_path),
            "--output",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("detailflow-hf convert: error: ") and "\n" not in err and "nope" in err


def _real_width_release(root, encoder_pretrained: bool, extra_config: dict | None = None):
    """A release-shaped tokenizer folder at the real SigLIP2 widths (one layer each, 64 px), without
    architecture.json: the heads must come from the config, as the original's model_builder.py makes them."""
    from .reference_original import original_tokenizer_state, write_release

    common = dict(
        num_hidden_layers=1, num_patches=256, patch_size=16, layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh"
    )
    enc = (
        dict(hidden_size=1152, intermediate_size=4304, num_attention_heads=16, **common)
        if encoder_pretrained
        else dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, **common)
    )
    dec = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, **common)
    state = original_tokenizer_state(enc, dec, 16, vocab=64, embed_dim=8, seed=3)
    config = {
        "enc_patch_size": 16,
        "dec_patch_size": 16,
        "group_size": 4,
        "causal_num": 4,
        "num_latent_tokens": 16,
        "causal_encoder": True,
        "causal_decoder": False,
        "encoder_model": "siglip2_base",
        "enc_pretrained": encoder_pretrained,
        "decoder_model": "siglip2_base",
        "dec_pretrained": False,
        **(extra_config or {}),
    }
    yaml_config = {
        "max_image_size": 64,
        "group_size": 4,
        "degradation_power": 1.5,
        "content_degradation": "resolution_power",
    }
    return write_release(root, state, config, yaml_config), state, enc, dec


@pytest.mark.parametrize("encoder_pretrained, heads", [(False, 12), (True, 16)])
def test_heads_come_from_the_release_config(tmp_path, encoder_pretrained, heads):
    from .reference_original import original_encode

    root, state, enc, _ = _real_width_release(tmp_path / "tok", encoder_pretrained)
    ours = convert_tokenizer(root)
    assert ours.config.encoder_config["num_attention_heads"] == heads
    assert ours.config.decoder_config["num_attention_heads"] == 12
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    quant, ids = original_encode(state, enc, 4, 4, images)
    out = ours.encode(images)
    assert torch.equal(out.token_ids, ids) and (out.latents - quant).abs().max() < 1e-4


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            {"encoder_model": "siglip2_large", "enc_pretrained": False},
            r"encoder_model='siglip2_large' with enc_pretrained=false",
        ),
        ({"decoder_model": "vit_h"}, r"decoder_model='vit_h' in .*config.json is not one the original builds"),
        (
            {"enc_pretrained": True},
            r"the encoder in .* is 768 wide with an MLP of 3072, but its config builds 1152 / 4304",
        ),
        ({"dec_pretrained": "no"}, r"dec_pretrained='no' in .*config.json must be true or false"),
    ],
)
def test_configs_the_original_would_not_build_are_refused(tmp_path, extra, message):
    root, *_ = _real_width_release(tmp_path / "tok", encoder_pretrained=False, extra_config=extra)
    with pytest.raises(ConversionError, match=message):
        convert_tokenizer(root)
