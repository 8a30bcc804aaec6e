"""Sampling helpers of the DetailFlow generator: CFG combination, guidance schedule, top-k/top-p.

These follow the original `generate.py` operation for operation (transformers' logits warpers are
not bit-identical to it), so that greedy and seeded sampling reproduce the release.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def guidance_scale_for_group(guidance_scale: float, group_index: int, num_groups: int, gradual: bool) -> float:
    """Scale used for the parallel group `group_index` (in `[c/g, G)`).

    Gradual guidance *decreases* linearly, `s * (G - i + 1) / (G + 1)`, as the original does; the
    token-by-token prefix always uses the plain scale.
    """
    if not gradual:
        return guidance_scale
    return guidance_scale * (num_groups - group_index + 1) / (num_groups + 1)


def apply_guidance(logits: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """`(2B, ..., V)` logits of `[cond; uncond]` -> `(B, ..., V)` guided logits `u + s (c - u)`."""
    cond, uncond = logits.float().chunk(2, dim=0)
    return uncond + (cond - uncond) * guidance_scale


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set to -inf the logits outside the top-k (ties kept), then outside the nucleus `top_p`.

    `logits` is `(batch, vocab)`; the top token always survives.
    """
    if top_k > 0:
        k = min(max(top_k, 1), logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, sorted_indices = torch.sort(logits, descending=True, dim=-1)
        cumulative = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
        remove = cumulative > top_p
        remove[..., 1:] = remove[..., :-1].clone()
        remove[..., 0] = False
        logits = logits.masked_fill(remove.scatter(-1, sorted_indices, remove), float("-inf"))
    return logits


def sample_tokens(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> torch.LongTensor:
    """Sample one id per row of `(batch, vocab)` logits (temperature, then top-k/top-p, then multinomial).

    `generator` may be a list with one generator per row: each row then draws from its own stream.
    """
    logits = logits / max(temperature, 1e-5)
    if top_k > 0 or top_p < 1.0:
        logits = filter_logits(logits, top_k, top_p)
    probs = F.softmax(logits, dim=-1)
    if isinstance(generator, (list, tuple)):
        return torch.cat([torch.multinomial(row[None], 1, generator=gen)[0] for row, gen in zip(probs, generator)])
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


def sample_positions(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> torch.LongTensor:
    """`(batch, positions, vocab)` -> `(batch, positions)`, one multinomial draw per position in order."""
    return torch.stack(
        [sample_tokens(logits[:, k], temperature, top_k, top_p, generator) for k in range(logits.shape[1])], dim=1
    )


def check_sampling_args(guidance_scale: float, temperature: float, top_k: int, top_p: float):
    """Raise a `ValueError` naming the first bad sampling argument."""
    if not guidance_scale >= 1.0:
        raise ValueError(f"guidance_scale={guidance_scale} is not supported; expected a value >= 1 (1 disables CFG).")
    if not temperature > 0:
        raise ValueError(f"temperature={temperature} must be > 0.")
    if not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k={top_k!r} must be an integer >= 0 (0 disables top-k).")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p={top_p} must be in (0, 1].")
