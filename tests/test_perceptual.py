"""LPIPS-style perceptual loss: zero on equal images, growing with noise, weight loading from files."""

import pytest
import torch
from safetensors.torch import save_file

from detailflow_hf.training.perceptual import (
    VGG16_STAGES,
    PerceptualLoss,
    ScalingLayer,
    VGGFeatures,
    normalize_channels,
)

STAGES = [[4, 4], [8, 8], [8, 8, 8]]


@pytest.fixture
def loss():
    torch.manual_seed(0)
    return PerceptualLoss(STAGES).eval()


def test_zero_on_identical_images_and_grows_with_noise(loss):
    torch.manual_seed(1)
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    noise = torch.randn_like(x)
    assert torch.equal(loss(x, x), torch.zeros(3))
    d = [loss(x, x + s * noise).mean().item() for s in (0.05, 0.2, 0.8)]
    assert 0 < d[0] < d[1] < d[2]
    assert loss(x, x + 0.2 * noise).shape == (3,)


def test_gradient_reaches_the_images_not_the_frozen_net(loss):
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    loss(x, torch.zeros(2, 3, 16, 16)).sum().backward()
    assert x.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in loss.parameters())


def test_dropout_follows_train_mode(loss):
    torch.manual_seed(2)
    x, y = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    assert torch.equal(loss(x, y), loss(x, y))
    loss.train()
    assert not torch.equal(loss(x, y), loss(x, y))


def test_scaling_and_channel_normalisation():
    x = torch.zeros(1, 3, 2, 2)
    expected = torch.tensor([0.030 / 0.458, 0.088 / 0.448, 0.188 / 0.450])
    assert torch.allclose(ScalingLayer()(x)[0, :, 0, 0], expected)
    f = torch.tensor([3.0, 4.0]).view(1, 2, 1, 1)
    assert torch.allclose(normalize_channels(f).flatten(), torch.tensor([0.6, 0.8]))


def test_vgg16_layout_and_small_input_error():
    net = VGGFeatures(VGG16_STAGES)
    assert net.channels == [64, 128, 256, 512, 512]
    assert len(net.convs()) == 13
    with pytest.raises(ValueError, match="at least 16"):
        net(torch.zeros(1, 3, 8, 8))


def test_loads_torchvision_layout_and_lpips_heads(tmp_path, loss):
    torch.manual_seed(3)
    # torchvision numbering: convs at 0, 2, 5, 7, 10, 12, 14 (ReLUs and pools between)
    indices = [0, 2, 5, 7, 10, 12, 14]
    state = {}
    for index, conv in zip(indices, loss.net.convs()):
        state[f"features.{index}.weight"] = torch.randn_like(conv.weight)
        state[f"features.{index}.bias"] = torch.randn_like(conv.bias)
    save_file(state, tmp_path / "vgg.safetensors")
    heads = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate(loss.net.channels)}
    torch.save(heads, tmp_path / "lpips.pth")

    loss.load_vgg16_weights(tmp_path / "vgg.safetensors")
    loss.load_lpips_heads(tmp_path / "lpips.pth")
    assert torch.equal(loss.net.convs()[4].weight, state["features.10.weight"])
    assert torch.equal(loss.heads[2][1].weight, heads["lin2.model.1.weight"])
    with pytest.raises(ValueError, match="lin0.model.1.weight"):
        torch.save({}, tmp_path / "empty.pth")
        loss.load_lpips_heads(tmp_path / "empty.pth")


def test_released_presets_default_to_packaged_lpips_heads_and_a_timm_vgg():
    pytest.importorskip("torchmetrics")
    from detailflow_hf.training.perceptual import (
        LPIPS_HEADS_FROM_TORCHMETRICS,
        VGG16_TIMM_ID,
        PerceptualLoss,
        torchmetrics_lpips_heads,
    )
    from detailflow_hf.training.tokenizer_training import load_config

    for name in ("DetailFlow-16", "DetailFlow-32", "DetailFlow-64"):
        config = load_config(name)
        assert (config.perceptual_lpips_weights, config.perceptual_vgg_weights) == (
            LPIPS_HEADS_FROM_TORCHMETRICS,
            VGG16_TIMM_ID,
        )
    loss = PerceptualLoss()
    loss.load_lpips_heads(LPIPS_HEADS_FROM_TORCHMETRICS)
    shipped = torch.load(torchmetrics_lpips_heads(), map_location="cpu", weights_only=True)
    assert torch.equal(loss.heads[2][1].weight.flatten(), shipped["lin2.model.1.weight"].flatten())
    # offline (as in CI) the timm backbone cannot be fetched: one message naming it
    with pytest.raises(ValueError, match=r"timm/vgg16.tv_in1k|needs timm"):
        loss.load_vgg16_weights(VGG16_TIMM_ID)
