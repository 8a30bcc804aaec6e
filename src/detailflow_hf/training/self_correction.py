"""Self-correction (docs/algorithm.md §6.4): perturb one position (or group) of the token prefix and re-encode
the rest conditioned on the perturbed prefix, so the generator learns to continue from its own
mistakes. Used by the tokenizer trainer (every step) and by code extraction (the triples).

With `k` the noise index and `e = k + n` the noise end (`n = 1` inside the causal prefix, else
`group_size`):

    pass 1   encode normally -> clean ids;  noise ids at k..e-1 drawn among the `top_k` nearest codes
    prefix   quant_noise = sg([clean[:k], noise[k:e]])
    pass 2   encoder with latent queries [refine_conv(quant_noise), refined_tokens[e:T]] -> ids2
    codes    input = [clean[:k], noise[k:e], ids2[e:]],  label = [clean[:e], ids2[e:]]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def noise_token_index(
    num_tokens: int, group_size: int, causal_num: int, enabled: bool = True, generator: torch.Generator | None = None
) -> int | None:
    """The original's `get_noise_token_idx` (probability 1): where the noise starts, or `None`.

    `None` if disabled or `num_tokens == 1`; else `k ~ U[0, t)` for `t <= c`, otherwise
    `k ~ U[0, t - g)` rounded down to a group start once `k >= c`.
    """
    if not enabled or num_tokens == 1:
        return None
    high = num_tokens if num_tokens <= causal_num else num_tokens - group_size
    k = int(torch.randint(0, high, (1,), generator=generator))
    if k >= causal_num:
        k = k // group_size * group_size
    return k


def noise_span(noise_index: int, group_size: int, causal_num: int) -> int:
    """`n`: one token inside the causal prefix, a whole group after it."""
    return 1 if noise_index < causal_num else group_size


@dataclass
class NoisyEncoding:
    """Both encodes of a self-correction step (`T` = num_latent_tokens, `d` = codebook_embed_dim).

    Args:
        clean_latents (`(B, T, d)`): pass-1 quantized latents (straight-through).
        clean_ids (`(B, T)`): pass-1 ids.
        noisy_latents (`(B, T, d)`): `[sg(clean[:k]), sg(noise[k:e]), pass2[e:]]`.
        input_ids (`(B, T)`): `[clean[:k], noise[k:e], pass2[e:]]`, what the generator sees.
        label_ids (`(B, T)`): `[clean[:e], pass2[e:]]`, what it must predict.
        noise_index (`int | None`): `k`; `None` = no noise (then everything equals pass 1).
        noise_end (`int`): `e`; the VQ/commit losses of pass 2 cover positions `>= e`.
        clean_pre_quant (`(B, T, d)`): pass-1 `quant_conv` output before quantization.
        noisy_pre_quant (`(B, T, d)` or `None`): pass-2 `quant_conv` output (`None` without noise).
    """

    clean_latents: torch.Tensor
    clean_ids: torch.LongTensor
    noisy_latents: torch.Tensor
    input_ids: torch.LongTensor
    label_ids: torch.LongTensor
    noise_index: int | None
    noise_end: int
    clean_pre_quant: torch.Tensor
    noisy_pre_quant: torch.Tensor | None

    def code_triples(self) -> torch.LongTensor:
        """`(B, T, 3)` = `[clean, input, label]`, the layout extraction stores."""
        return torch.stack([self.clean_ids, self.input_ids, self.label_ids], dim=-1)


def nearest_code_candidates(quantizer, pre_quant: torch.Tensor, top_k: int) -> torch.LongTensor:
    """Ids of the `top_k` nearest normalised codes `(B, T, top_k)` to each normalised latent `(B, T, d)`."""
    z = F.normalize(pre_quant, dim=-1)
    codebook = quantizer.normalized_codebook()
    distances = z.pow(2).sum(-1, keepdim=True) + codebook.pow(2).sum(-1) - 2 * z @ codebook.t()
    return distances.topk(min(top_k, codebook.shape[0]), dim=-1, largest=False).indices


def noisy_encode(
    tokenizer,
    pixel_values: torch.Tensor,
    noise_index: int | None,
    top_k: int = 50,
    generator: torch.Generator | None = None,
) -> NoisyEncoding:
    """Run the two self-correction encodes of `tokenizer` (a `DetailFlowTokenizer`) on
    `pixel_values` `(B, 3, H, W)` in [-1, 1] with noise at `noise_index` (see the module docstring).

    The noise id of each perturbed position is drawn uniformly (with `generator`) among its `top_k`
    nearest codes, so it may equal the clean one. Gradients flow through both encodes except the
    perturbed prefix, which is detached; wrap in `torch.no_grad()` for extraction.
    """
    clean_pre = tokenizer.quant_conv(tokenizer.encoder(pixel_values))
    clean_latents, clean_ids = tokenizer.quantize(clean_pre)
    if noise_index is None:
        return NoisyEncoding(clean_latents, clean_ids, clean_latents, clean_ids, clean_ids, None, 0, clean_pre, None)
    schedule, num_tokens = tokenizer.schedule, clean_ids.shape[1]
    k = noise_index
    e = k + noise_span(k, schedule.group_size, schedule.causal_num)
    if not 0 <= k < e <= num_tokens:
        raise ValueError(f"noise_index={k} leaves no room for its span in {num_tokens} tokens (need k + n <= T).")

    candidates = nearest_code_candidates(tokenizer.quantize, clean_pre[:, k:e], top_k)
    pick = torch.randint(0, candidates.shape[-1], candidates.shape[:-1] + (1,), generator=generator)
    noise_ids = candidates.gather(-1, pick.to(candidates.device)).squeeze(-1)
    noise_latents = tokenizer.quantize.lookup(noise_ids)
    prefix = torch.cat([clean_latents[:, :k], noise_latents], dim=1).detach()

    refined = tokenizer.encoder.refined_tokens[:, e:num_tokens].expand(prefix.shape[0], -1, -1)
    queries = torch.cat([tokenizer.refine_conv(prefix), refined], dim=1)
    noisy_pre = tokenizer.quant_conv(tokenizer.encoder(pixel_values, latent_queries=queries))
    noisy_quant, noisy_ids = tokenizer.quantize(noisy_pre)
    return NoisyEncoding(
        clean_latents=clean_latents,
        clean_ids=clean_ids,
        noisy_latents=torch.cat([prefix, noisy_quant[:, e:]], dim=1),
        input_ids=torch.cat([clean_ids[:, :k], noise_ids, noisy_ids[:, e:]], dim=1),
        label_ids=torch.cat([clean_ids[:, :e], noisy_ids[:, e:]], dim=1),
        noise_index=k,
        noise_end=e,
        clean_pre_quant=clean_pre,
        noisy_pre_quant=noisy_pre,
    )


__all__ = ["NoisyEncoding", "nearest_code_candidates", "noise_span", "noise_token_index", "noisy_encode"]
