"""Dead-code restarts for the l2-normalised VQ codebook (not in the original release; off by default).

A small tokenizer trained from scratch uses few of its codes (the embedded 1024-code emoji tokenizer:
398 after 7000 steps). Every `every` steps, the codes that no clean token picked since the last
restart are re-seeded from this step's normalised encoder outputs (a random pick, plus a little noise),
and their Adam moments are zeroed so the stale statistics do not throw them straight back.

Under several processes the usage counts are summed and the latents gathered, and the picks come from
a generator seeded with the step: every process writes the same rows without a broadcast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DeadCodeRestarter(nn.Module):
    """Per-process code usage since the last restart, kept as a buffer so a checkpoint restores it.

    Args:
        codebook_size: number of codes.
        every: restart period in optimizer steps (> 0).
        noise_std: std of the Gaussian noise added to a picked latent before it becomes a code.
    """

    def __init__(self, codebook_size: int, every: int, noise_std: float = 0.01):
        super().__init__()
        if every <= 0:
            raise ValueError(f"dead-code restart period every={every}; expected a positive number of steps.")
        self.every = every
        self.noise_std = noise_std
        self.register_buffer("usage", torch.zeros(codebook_size, dtype=torch.long))

    @torch.no_grad()
    def update(self, ids: torch.LongTensor) -> None:
        """Count the codes picked this step; `ids` of any shape."""
        self.usage += torch.bincount(ids.flatten(), minlength=self.usage.numel()).to(self.usage.device)

    @torch.no_grad()
    def maybe_restart(
        self, step: int, pre_quant: torch.Tensor, embedding: nn.Embedding, optimizer, accelerator
    ) -> int:
        """At every `every`-th 1-based `step`, re-seed the unused rows of `embedding.weight` from this
        step's pre-quantization latents `(B, T, d)` (all processes' together). Returns how many rows
        were re-seeded (0 on other steps)."""
        if step % self.every:
            return 0
        usage = accelerator.reduce(self.usage.clone(), reduction="sum")
        self.usage.zero_()
        dead = (usage == 0).nonzero().flatten()
        if dead.numel() == 0:
            return 0
        latents = accelerator.gather(F.normalize(pre_quant.detach().float(), dim=-1).flatten(0, -2).contiguous())
        generator = torch.Generator().manual_seed(step)  # CPU draws: the same picks on every device
        picks = torch.randint(latents.shape[0], (dead.numel(),), generator=generator)
        noise = torch.randn(dead.numel(), latents.shape[-1], generator=generator) * self.noise_std
        weight, dead = embedding.weight, dead.to(embedding.weight.device)
        weight[dead] = (latents[picks.to(latents.device)] + noise.to(latents.device)).to(weight.dtype)
        for moment in optimizer.state.get(weight, {}).values():
            if moment.dim() and moment.shape[0] == weight.shape[0]:
                moment[dead] = 0
        return dead.numel()
