"""DINO discriminator, hinge loss and LeCam regulariser of the tokenizer training (docs/algorithm.md §6.3).

    image (B,3,H,W) in [-1,1]
      -> [0,1] -> ImageNet normalisation -> 224x224 (random crop w.p. 0.5 when larger, else resize)
      -> frozen ViT (DINO ViT-S/16, key biases zeroed); readouts after the embeddings and blocks
         2, 5, 8, 11: patch tokens + cls token, as (B, D, num_patches)
      -> one trainable head per readout -> logits (B, 5 * num_patches)

Heads: spectral-norm Conv1d(k1) + BatchNorm + LeakyReLU(0.2), a residual block of the same with a
circular k9 conv (sum scaled by 1/sqrt(2)), then a spectral-norm Conv1d(D -> 1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm
from transformers import ViTConfig, ViTModel

from .diff_aug import CONSISTENCY_POLICY, GENERATOR_POLICY, diff_augment

DINO_MODEL_ID = "facebook/dino-vits16"
# Readout blocks of the 12-block DINO ViT-S/16 (0-based); shallower towers scale them (`readout_blocks`).
DINO_READOUT_BLOCKS = (2, 5, 8, 11)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def readout_blocks(num_layers: int, reference=DINO_READOUT_BLOCKS, reference_depth: int = 12) -> tuple[int, ...]:
    """Blocks to read out of a `num_layers`-deep tower: `reference` scaled from `reference_depth`."""
    if num_layers < 1:
        raise ValueError(f"the discriminator backbone needs at least one block, got {num_layers}.")
    return tuple(max(0, math.ceil((b + 1) * num_layers / reference_depth) - 1) for b in reference)


def spectral_conv1d(in_channels: int, out_channels: int, kernel_size: int, circular: bool = False) -> nn.Module:
    conv = nn.Conv1d(
        in_channels,
        out_channels,
        kernel_size,
        padding=kernel_size // 2,
        padding_mode="circular" if circular else "zeros",
    )
    return spectral_norm(conv)


class ConvBlock(nn.Sequential):
    """Spectral-norm Conv1d + BatchNorm1d + LeakyReLU(0.2) over `(B, C, L)`."""

    def __init__(self, channels: int, kernel_size: int):
        super().__init__(
            spectral_conv1d(channels, channels, kernel_size, circular=kernel_size > 1),
            nn.BatchNorm1d(channels),
            nn.LeakyReLU(0.2),
        )


class DiscriminatorHead(nn.Module):
    """`(B, C, L)` readout -> `(B, L)` logits."""

    def __init__(self, channels: int):
        super().__init__()
        self.block = ConvBlock(channels, 1)
        self.residual = ConvBlock(channels, 9)
        self.to_logits = spectral_conv1d(channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.block(x)
        h = (self.residual(h) + h) / math.sqrt(2)
        return self.to_logits(h).squeeze(1)


class DinoDiscriminator(nn.Module):
    """Frozen ViT features + trainable heads; `forward(images)` -> logits `(B, num_readouts * num_patches)`.

    Args:
        backbone: a transformers `ViTModel` (DINO for real runs, `from_pretrained` or `from_backbone_id`).
            It is frozen, put in eval mode, and its attention key biases are zeroed.
        crop_prob: probability of a random crop (instead of a resize) for inputs larger than the ViT size.
    """

    def __init__(self, backbone: ViTModel, crop_prob: float = 0.5):
        super().__init__()
        self.backbone = backbone
        self.crop_prob = crop_prob
        config = backbone.config
        self.input_size = config.image_size
        self.readouts = readout_blocks(config.num_hidden_layers)
        self.heads = nn.ModuleList(DiscriminatorHead(config.hidden_size) for _ in range(len(self.readouts) + 1))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        with torch.no_grad():
            for layer in backbone.layers:
                if layer.attention.k_proj.bias is not None:
                    layer.attention.k_proj.bias.zero_()
        backbone.requires_grad_(False)
        backbone.eval()

    @classmethod
    def from_config(cls, config: ViTConfig, **kwargs) -> DinoDiscriminator:
        """Random backbone from a `ViTConfig` (tests, tiny preset)."""
        return cls(ViTModel(config, add_pooling_layer=False), **kwargs)

    @classmethod
    def from_backbone_id(cls, model_id: str = DINO_MODEL_ID, **kwargs) -> DinoDiscriminator:
        """Pretrained backbone by Hub id or local path (downloads unless cached/offline)."""
        return cls(ViTModel.from_pretrained(model_id, add_pooling_layer=False), **kwargs)

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # frozen features: never dropout
        return self

    def prepare_inputs(self, images: torch.Tensor) -> torch.Tensor:
        """[-1,1] `(B,3,H,W)` -> ImageNet-normalised `(B,3,S,S)`, `S` the backbone's image size."""
        x = ((images + 1) / 2 - self.mean) / self.std
        size = self.input_size
        h, w = x.shape[-2:]
        if h > size and w > size and torch.rand(()).item() < self.crop_prob:
            top = int(torch.randint(0, h - size + 1, ()))
            left = int(torch.randint(0, w - size + 1, ()))
            return x[..., top : top + size, left : left + size]
        if (h, w) == (size, size):
            return x
        mode = "area" if h > size else "bicubic"
        return F.interpolate(x, size=(size, size), mode=mode, **({} if mode == "area" else {"align_corners": False}))

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Readouts `[(B, D, num_patches)]`: patch tokens plus the cls token, after embedding and readout blocks."""
        hidden = self.backbone(self.prepare_inputs(images), output_hidden_states=True).hidden_states
        picked = [hidden[0]] + [hidden[b + 1] for b in self.readouts]
        return [(h[:, 1:] + h[:, :1]).transpose(1, 2) for h in picked]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([head(f) for head, f in zip(self.heads, self.features(images))], dim=1)


# -- losses ----------------------------------------------------------------------------------------
def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """`0.5 * (mean relu(1 - D(real)) + mean relu(1 + D(fake)))`."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """`-mean D(fake)`."""
    return -logits_fake.mean()


class LeCamEMA(nn.Module):
    """EMAs of the mean real/fake logits (decay 0.999, start 0), kept as float64 buffers to checkpoint."""

    def __init__(self, decay: float = 0.999):
        super().__init__()
        self.decay = decay
        self.register_buffer("real", torch.zeros((), dtype=torch.float64))
        self.register_buffer("fake", torch.zeros((), dtype=torch.float64))

    @torch.no_grad()
    def update(self, logits_real: torch.Tensor, logits_fake: torch.Tensor) -> None:
        self.real.mul_(self.decay).add_((1 - self.decay) * logits_real.detach().double().mean())
        self.fake.mul_(self.decay).add_((1 - self.decay) * logits_fake.detach().double().mean())

    def regularizer(self, logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
        """`mean(relu(D(r) - ema_fake)^2) + mean(relu(ema_real - D(f))^2)`."""
        real_term = F.relu(logits_real - self.fake.to(logits_real.dtype)).pow(2).mean()
        fake_term = F.relu(self.real.to(logits_fake.dtype) - logits_fake).pow(2).mean()
        return real_term + fake_term


def discriminator_loss(
    discriminator: nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    lecam: LeCamEMA,
    disc_weight: float,
    lecam_weight: float = 0.001,
    consistency_weight: float = 0.0,
    aug_prob: float = 0.5,
) -> dict[str, torch.Tensor]:
    """Discriminator-side loss on detached images `(B,3,H,W)`.

    `disc_weight * (lecam_weight * LeCam + hinge)` on independently DiffAug'ed real/fake, plus
    `consistency_weight * MSE([D(r), D(f)], [D(r_s), D(f_s)])` with strongly augmented `_s` inputs
    (`color,translation,cutout_0.5` at probability 1) when `consistency_weight > 0`. The LeCam EMAs
    are updated before the regulariser is computed. Returns `loss` and the parts, for logging.
    """
    real, fake = real.detach(), fake.detach()
    logits_real = discriminator(diff_augment(real, GENERATOR_POLICY, aug_prob))
    logits_fake = discriminator(diff_augment(fake, GENERATOR_POLICY, aug_prob))
    lecam.update(logits_real, logits_fake)
    lecam_reg = lecam.regularizer(logits_real, logits_fake)
    hinge = hinge_d_loss(logits_real, logits_fake)
    loss = disc_weight * (lecam_weight * lecam_reg + hinge)
    parts = {
        "d_hinge": hinge.detach(),
        "d_lecam": lecam_reg.detach(),
        "logits_real": logits_real.detach().mean(),
        "logits_fake": logits_fake.detach().mean(),
    }
    if consistency_weight > 0:
        strong_real = discriminator(diff_augment(real, CONSISTENCY_POLICY, 1.0))
        strong_fake = discriminator(diff_augment(fake, CONSISTENCY_POLICY, 1.0))
        consistency = F.mse_loss(torch.cat([logits_real, logits_fake]), torch.cat([strong_real, strong_fake]))
        loss = loss + consistency_weight * consistency
        parts["d_consistency"] = consistency.detach()
    parts["loss"] = loss
    return parts


def use_sync_batchnorm(discriminator: nn.Module) -> nn.Module:
    """SyncBatchNorm for multi-GPU runs (call only when distributed on an accelerator device)."""
    return nn.SyncBatchNorm.convert_sync_batchnorm(discriminator)
