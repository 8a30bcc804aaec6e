"""Sampling of the DetailFlow generator: its settings, CFG combination, guidance schedule, top-k/top-p
(docs/algorithm.md §5).

Guidance, temperature and top-k/top-p follow the original `generate.py` one for one (transformers'
logits warpers are not bit-identical to it), so greedy ids reproduce the release and sampling draws
from the release's distribution. The draw itself differs: the original calls `torch.multinomial`
position by position, here every position inverts its cumulative distribution at a uniform drawn
before decoding (see [`SamplingParams.draw_uniforms`]), which a compiled step can do with no random
state and no host synchronisation; seeded samples are therefore not the original's seeded samples.

Settings come from three places, first match wins: an explicit argument, the model's
`generation_config` (saved as `generation_config.json` beside the weights), then
[`SamplingParams`]'s defaults, which are what the original sampler does when told nothing.
[`SamplingParams`] is also the only place that checks them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from transformers import GenerationConfig


@dataclass(frozen=True)
class SamplingParams:
    """Resolved, checked sampling settings.

    Args:
        guidance_scale: classifier-free guidance `s` (>= 1; 1 disables it and skips the null branch).
        gradual_guidance: lower `s` linearly over the parallel groups, as the original option.
        do_sample: `False` picks the arg-max (greedy), as in transformers; `True` draws.
        temperature: logits are divided by it before filtering (> 0).
        top_k: keep the `k` largest logits (ties kept); 0 keeps all, 1 is greedy.
        top_p: keep the smallest nucleus of probability mass `top_p` (in (0, 1]; 1 keeps all).
    """

    guidance_scale: float = 1.5
    gradual_guidance: bool = False
    do_sample: bool = True
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if (
            isinstance(self.guidance_scale, bool)
            or not isinstance(self.guidance_scale, (int, float))
            or not (1.0 <= self.guidance_scale < float("inf"))
        ):
            raise ValueError(
                f"guidance_scale={self.guidance_scale!r} is not supported; expected a finite number >= 1 "
                "(1 disables CFG)."
            )
        for name in ("gradual_guidance", "do_sample"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} must be True or False.")
        if (
            isinstance(self.temperature, bool)
            or not isinstance(self.temperature, (int, float))
            or not (0 < self.temperature < float("inf"))
        ):
            raise ValueError(f"temperature={self.temperature!r} must be a finite number > 0.")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k={self.top_k!r} must be an integer >= 0 (0 disables top-k).")
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float)) or not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p!r} must be a number in (0, 1].")

    @classmethod
    def resolve(cls, generation_config: GenerationConfig | None = None, **arguments) -> SamplingParams:
        """Explicit `arguments` (those not `None`) over `generation_config`'s values over the defaults."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(arguments) - names)
        if unknown:
            raise TypeError(f"unknown sampling arguments {unknown}; expected some of {sorted(names)}.")
        values = {}
        for name in names:
            value = arguments.get(name)
            if value is None and generation_config is not None:
                value = getattr(generation_config, name, None)
            if value is not None:
                values[name] = value
        return cls(**values)

    def to_generation_config(self) -> GenerationConfig:
        """A `GenerationConfig` holding every setting (greedy configs leave the sampling knobs unset,
        as transformers requires)."""
        values = asdict(self)
        if not self.do_sample:
            for name in ("temperature", "top_k", "top_p"):
                values.pop(name)
        return GenerationConfig(**values)

    @property
    def guided(self) -> bool:
        """Whether classifier-free guidance runs (a null-class half beside the conditional rows)."""
        return self.guidance_scale > 1.0

    def guidance_for_group(self, group_index: int, num_groups: int) -> float:
        """Scale used for the parallel group `group_index` (in `[c/g, G)`).

        Gradual guidance *decreases* linearly, `s * (G - i + 1) / (G + 1)`, as the original does; the
        token-by-token prefix always uses the plain scale.
        """
        if not self.gradual_guidance:
            return self.guidance_scale
        return self.guidance_scale * (num_groups - group_index + 1) / (num_groups + 1)

    def draw_uniforms(
        self,
        generator: torch.Generator | list[torch.Generator] | None,
        batch_size: int,
        num_tokens: int,
        device: torch.device,
    ) -> torch.Tensor | None:
        """The random numbers of a whole generation, drawn before decoding starts.

        One uniform in `[0, 1)` per image and token position, `(batch_size, num_tokens)` on `device`
        (float64; float32 on MPS, which has no float64); `None` when not sampling. With a list,
        image `b` draws its row from `generator[b]` alone (so its tokens do not depend on the rest
        of the batch); one generator (or the global RNG with `None`) draws the batch row by row.
        Every path then samples position `p` with column `p` (see [`~SamplingParams.sample`]), so
        the recompute, cached and compiled paths draw alike, and stopping early or continuing a
        prefix never shifts the numbers of later positions.
        """
        device = torch.device(device)
        dtype = torch.float32 if device.type == "mps" else torch.float64
        per_image = isinstance(generator, (list, tuple))
        if per_image and len(generator) != batch_size:
            raise ValueError(
                f"got {len(generator)} generators for {batch_size} class labels; pass one per image or a single one."
            )
        if not self.do_sample:
            return None
        if per_image:
            rows = [torch.rand(num_tokens, generator=g, device=g.device, dtype=dtype) for g in generator]
            return torch.stack([row.to(device) for row in rows])
        rng_device = generator.device if generator is not None else device
        return torch.rand(batch_size, num_tokens, generator=generator, device=rng_device, dtype=dtype).to(device)

    def sample(self, logits: torch.Tensor, uniforms: torch.Tensor | None = None) -> torch.LongTensor:
        """`(batch, positions, vocab)` logits -> `(batch, positions)` ids, every position at once.

        Greedy (`do_sample=False`) takes the arg-max. Sampling divides by the temperature, filters
        (top-k, then top-p) and inverts the cumulative distribution at `uniforms` `(batch, positions)`
        (from [`~SamplingParams.draw_uniforms`]): the id drawn is the first whose cumulative
        probability exceeds `u` times the total, an exact draw from the filtered distribution that
        needs no host synchronisation, no loop and no random state inside the step. The cumulative
        sum runs in the uniforms' float64, and the id is capped at the last one with probability > 0,
        so a filtered-out id is never picked.
        """
        if not self.do_sample:
            return logits.argmax(dim=-1)
        if uniforms is None:
            raise ValueError("sampling needs the uniforms of `draw_uniforms` (or do_sample=False).")
        logits = logits / max(self.temperature, 1e-5)
        if self.top_k > 0 or self.top_p < 1.0:
            logits = filter_logits(logits, self.top_k, self.top_p)
        cumulative = F.softmax(logits, dim=-1).to(uniforms.dtype).cumsum(dim=-1)
        threshold = uniforms * cumulative[..., -1]
        ids = (cumulative <= threshold[..., None]).sum(dim=-1)
        last_possible = (cumulative < cumulative[..., -1:]).sum(dim=-1)  # the last id with probability > 0
        return torch.minimum(ids, last_possible)


SAMPLING_ARGUMENTS = tuple(f.name for f in fields(SamplingParams))
"""The names of the sampling settings, as `generate()`, the pipeline and `generation_config.json` spell them."""


def apply_guidance(logits: torch.Tensor, guidance_scale: float | torch.Tensor) -> torch.Tensor:
    """`(2B, ..., V)` logits of `[cond; uncond]` -> `(B, ..., V)` guided logits `u + s (c - u)`.

    `guidance_scale` may be a 0-d tensor (a compiled step takes it as an input, not a constant)."""
    cond, uncond = logits.float().chunk(2, dim=0)
    return uncond + (cond - uncond) * guidance_scale


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set to -inf the logits outside the top-k (ties kept), then outside the nucleus `top_p`.

    `logits` is `(..., vocab)`; the top token always survives.
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


__all__ = ["SAMPLING_ARGUMENTS", "SamplingParams", "apply_guidance", "filter_logits"]
