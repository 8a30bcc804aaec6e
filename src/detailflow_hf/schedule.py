"""Token count <-> resolution schedule of DetailFlow (pure Python, no torch).

A prefix of ``t`` tokens decodes to an image whose side grows with ``t`` along a power law
(``ResolutionDegradation`` of the original release). Both models and the pipeline ask this module;
nothing else computes resolutions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


def prefix_lengths(num_tokens: int, group_size: int, causal_num: int) -> tuple[int, ...]:
    """Token counts reached after each decoding step: `1, 2, .., c`, then one group at a time."""
    return tuple(range(1, causal_num + 1)) + tuple(range(causal_num + group_size, num_tokens + 1, group_size))


@dataclass(frozen=True)
class ResolutionSchedule:
    """The resolution mapping for one tokenizer.

    Args:
        max_image_size: side of the full-detail image (256 for the release).
        num_tokens: ``N``, the number of latent tokens.
        group_size: ``g``, tokens predicted in parallel after the causal prefix.
        causal_num: ``c``, the length of the token-by-token prefix (a multiple of ``g``).
        degradation_power: exponent of the power law (1.5 for the release).
        encoder_patch_size / decoder_patch_size: resolutions snap up to multiples of these.

    Tables (all keyed by token count ``t`` or by decoder resolution ``r``):
        ``token_list``: the prefix lengths the models were trained on: ``1..c`` then every group.
        ``token2res[t]``: raw power-law resolution; ``token2dec_res`` / ``token2enc_res``: snapped to
        the decoder / encoder patch; ``token2dec_out_res``: what the decoder outputs for ``t`` tokens.
        ``decres2besttoken[r]`` / ``decres2mintoken[r]`` / ``decres2maxtoken[r]``: token counts per
        decoder resolution; ``best_res``: the decoder resolutions, ascending.
    """

    max_image_size: int
    num_tokens: int
    group_size: int
    causal_num: int
    degradation_power: float
    encoder_patch_size: int
    decoder_patch_size: int
    token_list: tuple[int, ...] = field(init=False)

    def __post_init__(self):
        n, g, c = self.num_tokens, self.group_size, self.causal_num
        if n <= 0 or g <= 0 or n % g != 0:
            raise ValueError(f"num_tokens ({n}) must be a positive multiple of group_size ({g}).")
        if c <= 0 or c % g != 0 or c > n:
            raise ValueError(f"causal_num ({c}) must be a positive multiple of group_size ({g}) and <= num_tokens ({n}).")
        if self.encoder_patch_size > self.decoder_patch_size:
            raise ValueError(
                f"encoder_patch_size ({self.encoder_patch_size}) must be <= decoder_patch_size ({self.decoder_patch_size})."
            )
        if self.max_image_size % self.decoder_patch_size != 0:
            raise ValueError(
                f"max_image_size ({self.max_image_size}) must be a multiple of decoder_patch_size ({self.decoder_patch_size})."
            )
        object.__setattr__(self, "token_list", prefix_lengths(n, g, c))

    # -- per token count --------------------------------------------------------------------------
    def resolution(self, num_tokens: int) -> int:
        """Raw power-law resolution ``res(t)`` (``int`` truncation of a double, clamped to [1, M])."""
        self._check_count(num_tokens)
        m, n = self.max_image_size, self.num_tokens
        if n == 1:
            return m
        b = (m - 1) / math.pow(n - 1, self.degradation_power)
        res = int(m - b * math.pow(n - num_tokens, self.degradation_power))
        return min(max(res, 1), m)

    @staticmethod
    def snap(resolution: int, patch_size: int) -> int:
        """Round a resolution up to a multiple of ``patch_size`` (at least one patch)."""
        return patch_size * max(1, math.ceil(resolution / patch_size))

    def decoder_resolution(self, num_tokens: int) -> int:
        """Side of the image the decoder outputs for the first ``num_tokens`` tokens."""
        return max(self.snap(self.resolution(num_tokens), self.decoder_patch_size), self.decoder_patch_size)

    def encoder_resolution(self, num_tokens: int) -> int:
        return self.snap(self.resolution(num_tokens), self.encoder_patch_size)

    def is_valid_prefix(self, num_tokens: int) -> bool:
        return num_tokens in self.token_list

    def check_prefix(self, num_tokens: int) -> int:
        """Return ``num_tokens`` if it is a trained prefix length, else raise naming the valid ones."""
        if not isinstance(num_tokens, int) or isinstance(num_tokens, bool) or num_tokens not in self.token_list:
            raise ValueError(f"num_tokens={num_tokens!r} is not a valid prefix length; expected one of {list(self.token_list)}.")
        return num_tokens

    def _check_count(self, num_tokens: int):
        if not 1 <= num_tokens <= self.num_tokens:
            raise ValueError(f"num_tokens={num_tokens} is out of range; expected 1 <= num_tokens <= {self.num_tokens}.")

    # -- tables -----------------------------------------------------------------------------------
    @property
    def token2res(self) -> dict[int, int]:
        return {t: self.resolution(t) for t in self.token_list}

    @property
    def token2dec_res(self) -> dict[int, int]:
        return {t: self.snap(self.resolution(t), self.decoder_patch_size) for t in self.token_list}

    @property
    def token2enc_res(self) -> dict[int, int]:
        return {t: self.encoder_resolution(t) for t in self.token_list}

    @property
    def token2dec_out_res(self) -> dict[int, int]:
        return {t: self.decoder_resolution(t) for t in self.token_list}

    @property
    def decres2besttoken(self) -> dict[int, int]:
        return self._best_token(self.token2dec_res)

    @property
    def encres2besttoken(self) -> dict[int, int]:
        return self._best_token(self.token2enc_res)

    @property
    def decres2mintoken(self) -> dict[int, int]:
        table: dict[int, int] = {}
        for t, r in self.token2dec_res.items():
            table.setdefault(r, t)
        return table

    @property
    def decres2maxtoken(self) -> dict[int, int]:
        table: dict[int, int] = {}
        for t, r in self.token2dec_res.items():
            table[r] = t
        return table

    @property
    def best_res(self) -> list[int]:
        return list(self.decres2besttoken)

    def _best_token(self, token2snapped: dict[int, int]) -> dict[int, int]:
        # The original keeps the later token on ties (`<=`), iterating token_list ascending.
        best: dict[int, int] = {}
        for t, r in token2snapped.items():
            if r not in best or abs(self.resolution(t) - r) <= abs(self.resolution(best[r]) - r):
                best[r] = t
        return best

    def tables(self) -> dict[str, object]:
        """All tables, as the original names them (for inspection and parity tests)."""
        return {
            "token2res": self.token2res,
            "token2dec_res": self.token2dec_res,
            "token2enc_res": self.token2enc_res,
            "token2dec_out_res": self.token2dec_out_res,
            "decres2besttoken": self.decres2besttoken,
            "decres2mintoken": self.decres2mintoken,
            "decres2maxtoken": self.decres2maxtoken,
            "best_res": self.best_res,
            "token_list": list(self.token_list),
        }
