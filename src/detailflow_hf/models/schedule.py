"""Token count <-> resolution schedule of DetailFlow (pure Python, no torch; docs/algorithm.md §1), and
the other rules both models share: the group layout, and that saved configs state every shape key.

A prefix of ``t`` tokens decodes to an image whose side grows with ``t`` along a power law
(``ResolutionDegradation`` of the original release). Both models and the pipeline ask this module;
nothing else computes resolutions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


def check_group_layout(num_tokens: int, group_size: int, causal_num: int) -> None:
    """The one rule on `(N, g, c)`: `g` divides `N`, and the causal prefix `c` is a positive multiple
    of `g` that ends at least one group before the end (`c <= N - g`).

    The last condition comes from training: the generator is fed the first `N - g` codes and must
    return `N` logits, which only happens once those codes reach past the causal prefix (the `g - 1`
    special tokens are inserted after `c` codes). A release with `c > N - g` could not have been trained.
    """
    n, g, c = num_tokens, group_size, causal_num
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (n, g, c)):
        raise ValueError(f"num_tokens, group_size and causal_num must be integers, got {n!r}, {g!r}, {c!r}.")
    if g <= 0 or n <= 0 or n % g:
        raise ValueError(f"num_tokens ({n}) must be a positive multiple of group_size ({g}).")
    if c <= 0 or c % g or c > n - g:
        raise ValueError(
            f"causal_num ({c}) must be a positive multiple of group_size ({g}) and at most "
            f"num_tokens - group_size ({n - g})."
        )


def prefix_lengths(num_tokens: int, group_size: int, causal_num: int, stop: int | None = None) -> tuple[int, ...]:
    """Token counts reached after each decoding step: `1, 2, .., c`, then one group at a time.

    With `stop`, only the lengths up to `stop`, which must itself be one of them.
    """
    check_group_layout(num_tokens, group_size, causal_num)
    lengths = tuple(range(1, causal_num + 1)) + tuple(range(causal_num + group_size, num_tokens + 1, group_size))
    if stop is None:
        return lengths
    if not isinstance(stop, int) or isinstance(stop, bool) or stop not in lengths:
        raise ValueError(f"num_tokens={stop!r} is not a valid prefix length; expected one of {list(lengths)}.")
    return lengths[: lengths.index(stop) + 1]


def check_config_keys(config, keys: tuple[str, ...], where: str, model: str):
    """Raise a `ValueError` naming `where` (a file, or a description) unless `config` is a mapping that
    states every key in `keys`."""
    if not isinstance(config, dict):
        raise ValueError(f"{where} holds a JSON {type(config).__name__}; expected an object of config keys.")
    missing = [key for key in keys if key not in config]
    if missing:
        raise ValueError(f"{where} lacks the key {missing[0]!r} (a {model} config must state {list(keys)}).")


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
        check_group_layout(self.num_tokens, self.group_size, self.causal_num)
        if self.encoder_patch_size > self.decoder_patch_size:
            raise ValueError(
                f"encoder_patch_size ({self.encoder_patch_size}) must be <= decoder_patch_size "
                f"({self.decoder_patch_size})."
            )
        if self.max_image_size % self.decoder_patch_size != 0:
            raise ValueError(
                f"max_image_size ({self.max_image_size}) must be a multiple of decoder_patch_size "
                f"({self.decoder_patch_size})."
            )
        object.__setattr__(self, "token_list", prefix_lengths(self.num_tokens, self.group_size, self.causal_num))

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

    def tokens_shown(self, short_side: int) -> int:
        """The longest trained prefix whose decoder resolution is at most ``short_side`` px (0 if none
        is): what an image of that size actually shows."""
        fitting = [t for t in self.token_list if self.decoder_resolution(t) <= short_side]
        return fitting[-1] if fitting else 0

    def encoder_resolution(self, num_tokens: int) -> int:
        return self.snap(self.resolution(num_tokens), self.encoder_patch_size)

    def check_prefix(self, num_tokens: int) -> int:
        """Return ``num_tokens`` if it is a trained prefix length, else raise naming the valid ones."""
        prefix_lengths(self.num_tokens, self.group_size, self.causal_num, stop=num_tokens)
        return num_tokens

    def _check_count(self, num_tokens: int):
        if not 1 <= num_tokens <= self.num_tokens:
            raise ValueError(
                f"num_tokens={num_tokens} is out of range; expected 1 <= num_tokens <= {self.num_tokens}."
            )

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
