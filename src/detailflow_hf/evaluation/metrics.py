"""Reconstruction metrics per detail level (token prefix) for the tokenizer."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def psnr(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of `(batch, 3, H, W)` images in [-1, 1] (data range 2)."""
    mse = (reconstruction.float().clamp(-1, 1) - target.float()).pow(2).flatten(1).mean(dim=1)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-12))


def ssim(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (Gaussian window 11, sigma 1.5) of `(batch, 3, H, W)` images in [-1, 1]
    (torchmetrics' functional SSIM on images mapped to [0, 1])."""
    try:
        from torchmetrics.functional.image import structural_similarity_index_measure
    except ImportError as error:
        raise ImportError("SSIM needs torchmetrics: pip install 'detailflow-hf[eval]'.") from error
    rec = (reconstruction.float().clamp(-1, 1) + 1) / 2
    return structural_similarity_index_measure(rec, (target.float() + 1) / 2, data_range=1.0, reduction="none")


@torch.no_grad()
def prefix_reconstructions(
    vqvae, pixel_values: torch.Tensor, prefixes: list[int] | None = None
) -> dict[int, torch.Tensor]:
    """Encode once, decode every prefix length; each decode (at its own resolution) is resized
    (bicubic) to the input size so that all levels compare to the same full-detail image.

    Returns `{num_tokens: (batch, 3, H, W)}` in [-1, 1]."""
    latents = vqvae.encode(pixel_values).latents
    size = pixel_values.shape[-2:]
    outputs = {}
    for k in prefixes or vqvae.schedule.token_list:
        sample = vqvae.decode(latents, num_tokens=k).sample.float()
        if sample.shape[-2:] != size:
            sample = F.interpolate(sample, size=size, mode="bicubic", align_corners=False)
        outputs[k] = sample.clamp(-1, 1)
    return outputs


def psnr_per_detail_level(vqvae, pixel_values: torch.Tensor, prefixes: list[int] | None = None) -> dict[int, float]:
    """Mean PSNR (dB) of the reconstruction from each prefix length against the input images."""
    return {
        k: psnr(rec, pixel_values).mean().item()
        for k, rec in prefix_reconstructions(vqvae, pixel_values, prefixes).items()
    }
