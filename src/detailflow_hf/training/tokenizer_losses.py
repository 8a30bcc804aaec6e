"""Losses of the tokenizer training (docs/algorithm.md §6.3).

Generator side (one scalar, every step `s`, 1-based as the original's `global_step`):

    MSE(target, rec)
    + min(1, s / perceptual_warmup) * perceptual_weight * LPIPS(target, rec)
    + [s >= disc_start] * disc_weight * (-mean D(DiffAug(rec)))
    + vq + commit                      (unweighted; clean/noisy mixed as in §6.4)
    + global_token_weight * (-mean cos(proj(first clean token), SigLIP2 teacher mean patch feature))

Discriminator side: `discriminator.discriminator_loss` with the same `s >= disc_start` gate on its
weight and on the consistency term.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Siglip2VisionConfig, Siglip2VisionModel

from ..models.tokenizer import patchify
from .diff_aug import GENERATOR_POLICY, diff_augment
from .discriminator import LeCamEMA, discriminator_loss, hinge_g_loss
from .perceptual import PerceptualLoss

SIGLIP2_TEACHER_ID = "google/siglip2-so400m-patch16-naflex"


@dataclass
class TokenizerLossConfig:
    """Weights and start steps of the tokenizer losses (released values by default).

    Args:
        perceptual_weight, perceptual_warmup: LPIPS weight, reached linearly over `perceptual_warmup` steps.
        disc_weight, disc_start: GAN weight `w_d`, zero before step `disc_start` (both sides).
        lecam_weight: LeCam regulariser weight inside the discriminator loss.
        consistency_weight: discriminator consistency term weight (from `disc_start`).
        diff_aug_prob: probability of each DiffAugment family on discriminator inputs.
        commit_beta: commitment loss factor.
        global_token_weight: weight of the SigLIP2 global-token alignment (0 turns the teacher off).
    """

    perceptual_weight: float = 1.0
    perceptual_warmup: int = 10000
    disc_weight: float = 0.2
    disc_start: int = 40000
    lecam_weight: float = 0.001
    consistency_weight: float = 4.0
    diff_aug_prob: float = 0.5
    commit_beta: float = 0.25
    global_token_weight: float = 1.0

    def perceptual_factor(self, step: int) -> float:
        if not self.perceptual_warmup:
            return self.perceptual_weight
        return self.perceptual_weight * min(1.0, step / self.perceptual_warmup)

    def gan_factor(self, step: int) -> float:
        return self.disc_weight if step >= self.disc_start else 0.0


# -- codebook ----------------------------------------------------------------------------------------
def codebook_loss(
    latents: torch.Tensor, codes: torch.Tensor, commit_beta: float = 0.25, start: int = 0
) -> torch.Tensor:
    """`mean((e - sg(z))^2) + beta * mean((sg(e) - z)^2)` over positions `>= start`.

    Args:
        latents: pre-quantization latents `(B, T, d)` (l2-normalised here, as the quantizer does).
        codes: the chosen normalised codebook vectors `(B, T, d)`, with gradient to the codebook.
    """
    z = F.normalize(latents[:, start:], dim=-1)
    e = codes[:, start:]
    return F.mse_loss(e, z.detach()) + commit_beta * F.mse_loss(z, e.detach())


def mix_codebook_losses(clean: torch.Tensor, noisy: torch.Tensor, num_tokens: int, noise_end: int) -> torch.Tensor:
    """`clean * T / (2T - e) + noisy * (T - e) / (2T - e)`: per-position weighting of the two passes.

    `T` is the number of encoded tokens and `e = k + n` the end of the perturbed prefix; the noisy pass
    has losses on its last `T - e` positions only.
    """
    total = 2 * num_tokens - noise_end
    return clean * (num_tokens / total) + noisy * ((num_tokens - noise_end) / total)


# -- global token -------------------------------------------------------------------------------------
def global_token_projector(embed_dim: int, teacher_dim: int, hidden_dim: int = 1024) -> nn.Sequential:
    """`Linear(d, h), SiLU, Linear(h, h), SiLU, Linear(h, teacher_dim)` (indices 0, 2, 4 as released)."""
    return nn.Sequential(
        nn.Linear(embed_dim, hidden_dim),
        nn.SiLU(),
        nn.Linear(hidden_dim, hidden_dim),
        nn.SiLU(),
        nn.Linear(hidden_dim, teacher_dim),
    )


class SigLIP2Teacher(nn.Module):
    """Frozen SigLIP2 vision tower; `forward(images)` -> unit mean patch feature `(B, D)`.

    Reproduces the original's `forward_features`: `post_layernorm` is applied a second time on top of
    the tower's already normalised output (as the original does), then patch tokens are averaged. Images in
    [-1, 1] are used as they are (no SigLIP rescale), square, with a side divisible by the patch size.
    """

    def __init__(self, model: Siglip2VisionModel):
        super().__init__()
        self.model = model
        self.patch_size = model.config.patch_size
        model.requires_grad_(False)
        model.eval()

    @classmethod
    def from_config(cls, config: Siglip2VisionConfig) -> SigLIP2Teacher:
        config.vision_use_head = False
        return cls(Siglip2VisionModel(config))

    @classmethod
    def from_pretrained(cls, model_id: str = SIGLIP2_TEACHER_ID) -> SigLIP2Teacher:
        return cls(Siglip2VisionModel.from_pretrained(model_id, vision_use_head=False))

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.eval()
        return self

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b, _, h, w = images.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"teacher input {h}x{w} is not a multiple of its patch size {p}.")
        patches = patchify(images, p).to(self.model.dtype)
        mask = torch.ones(patches.shape[:2], dtype=torch.long, device=images.device)
        shapes = torch.tensor([[h // p, w // p]], device=images.device).expand(b, 2)
        hidden = self.model(pixel_values=patches, pixel_attention_mask=mask, spatial_shapes=shapes).last_hidden_state
        return F.normalize(self.model.post_layernorm(hidden).mean(dim=1).float(), dim=-1)


def global_token_loss(projected: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """`-mean cos(projected, teacher)` for `(B, D)` inputs."""
    return -(F.normalize(projected.float(), dim=-1) * F.normalize(teacher_features, dim=-1)).sum(dim=-1).mean()


# -- totals -------------------------------------------------------------------------------------------
def generator_loss(
    target: torch.Tensor,
    reconstruction: torch.Tensor,
    codebook: torch.Tensor,
    step: int,
    config: TokenizerLossConfig,
    perceptual: PerceptualLoss,
    discriminator: nn.Module,
    global_loss: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The generator-side loss; `target`, `reconstruction` `(B', 3, r, r)`, `codebook` a scalar.

    The discriminator pass is skipped while its weight is 0 (before `disc_start`): the term would be
    multiplied by 0. Returns `loss` and its detached parts for logging.
    """
    rec = F.mse_loss(reconstruction, target)
    loss = rec + codebook
    parts = {"rec_loss": rec.detach(), "codebook_loss": codebook.detach()}
    if config.perceptual_weight > 0:  # a config without the perceptual term skips the VGG passes
        perc = perceptual(reconstruction.contiguous(), target.contiguous()).mean()
        loss = loss + config.perceptual_factor(step) * perc
        parts["perceptual_loss"] = perc.detach()
    gan_weight = config.gan_factor(step)
    if gan_weight > 0:
        adversarial = hinge_g_loss(discriminator(diff_augment(reconstruction, GENERATOR_POLICY, config.diff_aug_prob)))
        loss = loss + gan_weight * adversarial
        parts["g_adv_loss"] = adversarial.detach()
    if global_loss is not None:
        loss = loss + config.global_token_weight * global_loss
        parts["global_token_loss"] = global_loss.detach()
    parts["loss"] = loss
    return parts


def discriminator_step_loss(
    discriminator: nn.Module,
    target: torch.Tensor,
    reconstruction: torch.Tensor,
    lecam: LeCamEMA,
    step: int,
    config: TokenizerLossConfig,
) -> dict[str, torch.Tensor]:
    """The discriminator-side loss at step `step`, with the release's gates and weights."""
    return discriminator_loss(
        discriminator,
        target,
        reconstruction,
        lecam,
        disc_weight=config.gan_factor(step),
        lecam_weight=config.lecam_weight,
        consistency_weight=config.consistency_weight if step >= config.disc_start else 0.0,
        aug_prob=config.diff_aug_prob,
    )
