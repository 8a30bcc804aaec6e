"""DINO discriminator (tiny random ViT), hinge and LeCam values on constructed logits."""

import pytest
import torch
from transformers import ViTConfig

from detailflow_hf.training.discriminator import (
    DinoDiscriminator,
    LeCamEMA,
    discriminator_loss,
    hinge_d_loss,
    hinge_g_loss,
    readout_blocks,
)

TINY_VIT = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2, image_size=32, patch_size=8
)


@pytest.fixture
def disc():
    torch.manual_seed(0)
    with torch.no_grad():
        d = DinoDiscriminator.from_config(ViTConfig(**TINY_VIT))
    return d


def test_readout_blocks_scale_with_depth():
    assert readout_blocks(12) == (2, 5, 8, 11)
    assert readout_blocks(4) == (0, 1, 2, 3)
    assert readout_blocks(24) == (5, 11, 17, 23)
    with pytest.raises(ValueError, match="at least one block"):
        readout_blocks(0)


def test_backbone_frozen_with_zero_key_bias_and_logit_shape(disc):
    assert all(not p.requires_grad for p in disc.backbone.parameters())
    assert all(torch.equal(layer.attention.k_proj.bias, torch.zeros(32)) for layer in disc.backbone.layers)
    assert sum(p.numel() for p in disc.parameters() if p.requires_grad) > 0
    logits = disc(torch.rand(3, 3, 32, 32) * 2 - 1)
    assert logits.shape == (3, 5 * 16)  # embeddings + 4 blocks, 16 patches each
    disc.train()
    assert disc.training and not disc.backbone.training


def test_inputs_resized_or_cropped_to_the_vit_size(disc):
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    disc.crop_prob = 0.0
    area = disc.prepare_inputs(x)
    assert area.shape == (2, 3, 32, 32)
    mean, std = disc.mean, disc.std
    expected = (((x + 1) / 2 - mean) / std).reshape(2, 3, 32, 2, 32, 2).mean(dim=(3, 5))
    assert torch.allclose(area, expected, atol=1e-5)
    disc.crop_prob = 1.0
    crop = disc.prepare_inputs(x)
    assert crop.shape == (2, 3, 32, 32)
    assert any(
        torch.equal(crop, (((x + 1) / 2 - mean) / std)[..., i : i + 32, j : j + 32])
        for i in range(33)
        for j in range(33)
    )
    assert disc.prepare_inputs(torch.zeros(1, 3, 16, 16)).shape == (1, 3, 32, 32)


def test_hinge_losses_on_constructed_logits():
    real, fake = torch.tensor([2.0, 0.0]), torch.tensor([-2.0, 0.5])
    # relu(1 - real) = [0, 1] -> 0.5; relu(1 + fake) = [0, 1.5] -> 0.75
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (0.5 + 0.75))
    assert hinge_g_loss(fake).item() == pytest.approx(0.75)


def test_lecam_ema_and_regulariser():
    lecam = LeCamEMA(decay=0.9)
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([-1.0, -3.0])
    lecam.update(real, fake)
    assert lecam.real.item() == pytest.approx(0.2) and lecam.fake.item() == pytest.approx(-0.2)
    lecam.update(real, fake)
    assert lecam.real.item() == pytest.approx(0.9 * 0.2 + 0.1 * 2.0)
    ema_r, ema_f = lecam.real.item(), lecam.fake.item()
    expected = ((real - ema_f).clamp(min=0) ** 2).mean() + ((ema_r - fake).clamp(min=0) ** 2).mean()
    assert lecam.regularizer(real, fake).item() == pytest.approx(expected.item(), rel=1e-6)
    state = lecam.state_dict()
    fresh = LeCamEMA(decay=0.9)
    fresh.load_state_dict(state)
    assert fresh.real.item() == ema_r


def test_discriminator_loss_parts_and_gates(disc):
    torch.manual_seed(1)
    real, fake = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    off = discriminator_loss(disc, real, fake, LeCamEMA(), disc_weight=0.0)
    assert off["loss"].item() == 0.0 and "d_consistency" not in off
    lecam = LeCamEMA()
    on = discriminator_loss(
        disc, real, fake, lecam, disc_weight=0.2, lecam_weight=0.001, consistency_weight=4.0, aug_prob=0.0
    )
    expected = 0.2 * (0.001 * on["d_lecam"] + on["d_hinge"]) + 4.0 * on["d_consistency"]
    assert on["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert lecam.real.item() == pytest.approx(0.001 * on["logits_real"].item(), rel=1e-5)
    on["loss"].backward()
    assert all(p.grad is not None for p in disc.heads.parameters())
