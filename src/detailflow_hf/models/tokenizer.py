"""DetailFlow tokenizer: a SigLIP2 encoder to 1D coarse-to-fine tokens, a VQ codebook, a SigLIP2 decoder
(docs/algorithm.md §2).

image (B,3,H,W) in [-1,1]
  -> DetailFlowEncoder: patches + N latent queries (group-causal) -> latents (B,N,D_e)
  -> quant_conv -> DetailFlowVectorQuantizer (l2-normalised codebook) -> codes (B,N,d), ids (B,N)
  -> post_quant_conv -> first t latents
  -> DetailFlowDecoder: (r/p)^2 mask tokens + t latents -> pixels (B,3,r,r), r = schedule(t)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from diffusers.utils.accelerate_utils import apply_forward_hook
from torch import nn
from transformers import Siglip2VisionConfig
from transformers.models.siglip2.modeling_siglip2 import Siglip2EncoderLayer

from .schedule import ResolutionSchedule, check_config_keys

# Shapes of the released tokenizers (SigLIP2 so400m truncated to 12 layers for the encoder; a fresh
# 768-wide tower for the decoder). The release does not store them.
RELEASED_ENCODER = {
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_attention_heads": 16,
    "num_hidden_layers": 12,
    "num_patches": 256,
    "patch_size": 16,
    "layer_norm_eps": 1e-6,
    "hidden_act": "gelu_pytorch_tanh",
}
RELEASED_DECODER = {**RELEASED_ENCODER, "hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12}
VISION_KEYS = tuple(RELEASED_ENCODER)


@dataclass
class DetailFlowEncoderOutput(BaseOutput):
    """Output of [`DetailFlowTokenizer.encode`].

    Args:
        latents (`torch.Tensor` of shape `(batch, num_tokens, codebook_embed_dim)`): quantized latents.
        token_ids (`torch.LongTensor` of shape `(batch, num_tokens)`): their codebook ids.
    """

    latents: torch.Tensor
    token_ids: torch.LongTensor


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/p * W/p, p*p*C); patches row-major, features (row, column, channel)."""
    b, c, h, w = images.shape
    p = patch_size
    x = images.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: torch.Tensor, patch_size: int, channels: int = 3) -> torch.Tensor:
    """(B, n*n, p*p*C) -> (B, C, n*p, n*p); the inverse of `patchify` for square grids."""
    b, num_patches, _ = patches.shape
    n, p = math.isqrt(num_patches), patch_size
    x = patches.reshape(b, n, n, p, p, channels).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, channels, n * p, n * p)


def resize_position_table(table: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize a square `(S*S, D)` position table to `(height*width, D)`.

    Antialiased bilinear, `align_corners=False`, as the original (not transformers' per-image variant).
    """
    size = math.isqrt(table.shape[0])
    if (height, width) == (size, size):
        return table
    grid = table.reshape(size, size, -1).permute(2, 0, 1).unsqueeze(0).float()
    grid = F.interpolate(grid, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return grid.reshape(table.shape[1], height * width).transpose(0, 1).to(table.dtype)


def group_causal_latent_mask(
    num_patches: int, num_latents: int, group_size: int, causal_num: int, dtype: torch.dtype, device
) -> torch.Tensor:
    """Additive encoder mask `(1, 1, n+T, n+T)` over `[patches, latents]`.

    Patches see patches only; latents see all patches, the first `causal_num` latents one by one,
    then whole groups, causally across groups. Blocked entries are `finfo(dtype).min`, not -inf.
    """
    idx = torch.arange(num_latents, device=device)
    last_visible = torch.where(idx < causal_num, idx, (idx // group_size + 1) * group_size - 1)
    latent_allowed = idx[None, :] <= last_visible[:, None]
    total = num_patches + num_latents
    allowed = torch.ones(total, total, dtype=torch.bool, device=device)
    allowed[:num_patches, num_patches:] = False
    allowed[num_patches:, num_patches:] = latent_allowed
    mask = torch.zeros(total, total, dtype=dtype, device=device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[None, None]


def learned_table(*shape: int, truncated: bool = False, std: float = 0.02) -> nn.Parameter:
    """A learned token table, initialised as the original: N(0, std); position tables use
    `trunc_normal_` with its default absolute bounds (+-2), as the original does."""
    table = torch.empty(*shape)
    if truncated:
        nn.init.trunc_normal_(table, std=std)
    else:
        nn.init.normal_(table, std=std)
    return nn.Parameter(table)


def _vision_config(spec: dict) -> Siglip2VisionConfig:
    missing = [k for k in VISION_KEYS if k not in spec]
    if missing:
        raise ValueError(f"vision transformer spec {spec} lacks keys {missing}.")
    config = Siglip2VisionConfig(**{k: spec[k] for k in VISION_KEYS}, attention_dropout=0.0)
    config._attn_implementation = "sdpa"
    return config


class DetailFlowEncoder(nn.Module):
    """SigLIP2 blocks over `[patch embeddings, latent queries]`; returns the latent outputs."""

    def __init__(self, config: Siglip2VisionConfig, num_latent_tokens: int, group_size: int, causal_num: int):
        super().__init__()
        self.patch_size = config.patch_size
        self.group_size, self.causal_num = group_size, causal_num
        dim = config.hidden_size
        self.patch_embedding = nn.Linear(config.num_channels * config.patch_size**2, dim)
        self.position_embedding = nn.Embedding(config.num_patches, dim)
        self.latent_tokens = learned_table(1, num_latent_tokens, dim)
        self.latent_pos_embed = learned_table(1, num_latent_tokens, dim, truncated=True)
        # Queries of the self-correction (noisy) encode used by training and code extraction.
        self.refined_tokens = learned_table(1, num_latent_tokens, dim)
        self.layers = nn.ModuleList([Siglip2EncoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.post_layernorm = nn.LayerNorm(dim, eps=config.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor, latent_queries: torch.Tensor | None = None) -> torch.Tensor:
        """(B,3,H,W) -> (B,T,D_e). `latent_queries` (B or 1, T, D_e) default to the learned ones (T = N)."""
        _, _, height, width = pixel_values.shape
        weight_dtype = self.position_embedding.weight.dtype
        patches = self.patch_embedding(patchify(pixel_values, self.patch_size).to(weight_dtype))
        patches = patches + resize_position_table(
            self.position_embedding.weight, height // self.patch_size, width // self.patch_size
        )
        if latent_queries is None:
            latent_queries = self.latent_tokens
        num_latents = latent_queries.shape[1]
        latents = latent_queries + self.latent_pos_embed[:, :num_latents]
        hidden = torch.cat([patches, latents.expand(patches.shape[0], -1, -1)], dim=1)
        mask = group_causal_latent_mask(
            patches.shape[1], num_latents, self.group_size, self.causal_num, hidden.dtype, hidden.device
        )
        for layer in self.layers:
            hidden = layer(hidden, mask)
        return self.post_layernorm(hidden)[:, patches.shape[1] :]


class DetailFlowDecoder(nn.Module):
    """SigLIP2 blocks over `[mask tokens at the output grid, latents]`, bidirectional; returns pixels."""

    def __init__(self, config: Siglip2VisionConfig, num_latent_tokens: int):
        super().__init__()
        self.patch_size = config.patch_size
        dim = config.hidden_size
        self.mask_token = learned_table(1, 1, dim)
        self.position_embedding = nn.Embedding(config.num_patches, dim)
        self.latent_pos_embed = learned_table(1, num_latent_tokens, dim, truncated=True)
        self.layers = nn.ModuleList([Siglip2EncoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.post_layernorm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.to_pixel = nn.Linear(dim, config.num_channels * config.patch_size**2)

    def forward(self, latents: torch.Tensor, resolution: int) -> torch.Tensor:
        """(B,t,D_d) latents (already projected) -> (B,3,resolution,resolution), unclamped."""
        grid = resolution // self.patch_size
        positions = resize_position_table(self.position_embedding.weight, grid, grid)
        queries = self.mask_token + positions.unsqueeze(0)
        latents = latents + self.latent_pos_embed[:, : latents.shape[1]]
        hidden = torch.cat([queries.expand(latents.shape[0], -1, -1), latents], dim=1)
        for layer in self.layers:
            hidden = layer(hidden, None)
        hidden = self.post_layernorm(hidden)[:, : grid * grid]
        return unpatchify(self.to_pixel(hidden), self.patch_size)


class DetailFlowVectorQuantizer(nn.Module):
    """Nearest-neighbour quantizer over an l2-normalised codebook `(codebook_size, embed_dim)`."""

    def __init__(self, codebook_size: int, embed_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(codebook_size, embed_dim)

    def normalized_codebook(self) -> torch.Tensor:
        return F.normalize(self.embedding.weight, dim=-1)

    def forward(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.LongTensor]:
        """(B,T,d) -> quantized (B,T,d) with a straight-through gradient, and ids (B,T)."""
        z = F.normalize(latents, dim=-1)
        codebook = self.normalized_codebook()
        flat = z.reshape(-1, z.shape[-1])
        distances = (
            flat.pow(2).sum(dim=1, keepdim=True)
            + codebook.pow(2).sum(dim=1)
            - 2 * torch.einsum("bd,dn->bn", flat, codebook.t())
        )
        ids = distances.argmin(dim=1).reshape(z.shape[:-1])
        quantized = z + (codebook[ids] - z).detach()
        return quantized, ids

    def lookup(self, ids: torch.LongTensor) -> torch.Tensor:
        """(B,T) ids -> (B,T,d) normalised codes."""
        return F.embedding(ids, self.normalized_codebook())


class DetailFlowTokenizer(ModelMixin, ConfigMixin):
    r"""The DetailFlow 1D coarse-to-fine VQ tokenizer.

    Args:
        image_size (`int`): side of the full-detail image (the schedule's maximum resolution).
        num_latent_tokens (`int`): `N`, tokens per image.
        group_size (`int`): `g`, tokens per parallel group; also the encoder's causal block.
        causal_num (`int`, *optional*): `c`, the token-by-token prefix; defaults to `group_size`.
        degradation_power (`float`): exponent of the token-count-to-resolution power law.
        codebook_size (`int`), codebook_embed_dim (`int`): VQ codebook shape.
        encoder_config (`dict`), decoder_config (`dict`): vision transformer shapes (`hidden_size`,
            `intermediate_size`, `num_attention_heads`, `num_hidden_layers`, `num_patches`,
            `patch_size`, `layer_norm_eps`, `hidden_act`). Default to the released shapes.
    """

    _supports_gradient_checkpointing = False
    _no_split_modules = ["Siglip2EncoderLayer"]

    @register_to_config
    def __init__(
        self,
        image_size: int = 256,
        num_latent_tokens: int = 128,
        group_size: int = 8,
        causal_num: int | None = None,
        degradation_power: float = 1.5,
        codebook_size: int = 8192,
        codebook_embed_dim: int = 8,
        encoder_config: dict | None = None,
        decoder_config: dict | None = None,
    ):
        super().__init__()
        encoder_config = _vision_config(encoder_config or RELEASED_ENCODER)
        decoder_config = _vision_config(decoder_config or RELEASED_DECODER)
        self.schedule = ResolutionSchedule(
            max_image_size=image_size,
            num_tokens=num_latent_tokens,
            group_size=group_size,
            causal_num=causal_num or group_size,
            degradation_power=degradation_power,
            encoder_patch_size=encoder_config.patch_size,
            decoder_patch_size=decoder_config.patch_size,
        )
        self.encoder = DetailFlowEncoder(encoder_config, num_latent_tokens, group_size, self.schedule.causal_num)
        self.quant_conv = nn.Linear(encoder_config.hidden_size, codebook_embed_dim)
        self.quantize = DetailFlowVectorQuantizer(codebook_size, codebook_embed_dim)
        self.post_quant_conv = nn.Linear(codebook_embed_dim, decoder_config.hidden_size)
        self.refine_conv = nn.Linear(codebook_embed_dim, encoder_config.hidden_size)
        self.decoder = DetailFlowDecoder(decoder_config, num_latent_tokens)

    # Keys a saved config must carry: defaulting any of them would silently build another model.
    shape_keys = (
        "image_size",
        "num_latent_tokens",
        "group_size",
        "codebook_size",
        "codebook_embed_dim",
        "encoder_config",
        "decoder_config",
    )

    @classmethod
    def _dict_from_json_file(cls, json_file):
        config = super()._dict_from_json_file(json_file)
        check_config_keys(config, cls.shape_keys, str(json_file), cls.__name__)
        return config

    def _check_images(self, images: torch.Tensor):
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"pixel_values must be a (batch, 3, height, width) tensor, got {shape}.")
        size = self.config.image_size
        if tuple(images.shape[2:]) != (size, size):
            raise ValueError(
                f"pixel_values are {images.shape[2]} x {images.shape[3]} px but this tokenizer encodes "
                f"{size} x {size} "
                "(its image_size); resize and center-crop them first (the pipeline and the CLI do)."
            )
        if not torch.isfinite(images).all():
            raise ValueError("pixel_values contain NaN or infinite values; expected finite values in [-1, 1].")
        low, high = images.min().item(), images.max().item()
        if low < -1.001 or high > 1.001:
            raise ValueError(
                f"pixel_values range [{low:.3g}, {high:.3g}] is outside the expected [-1, 1] "
                "(map uint8 images with x / 127.5 - 1)."
            )

    @apply_forward_hook
    def encode(self, pixel_values: torch.Tensor, return_dict: bool = True) -> DetailFlowEncoderOutput | tuple:
        """Encode images `(batch, 3, H, W)` in [-1, 1] into `num_latent_tokens` quantized tokens."""
        self._check_images(pixel_values)
        latents = self.quant_conv(self.encoder(pixel_values))
        quantized, ids = self.quantize(latents)
        if not return_dict:
            return quantized, ids
        return DetailFlowEncoderOutput(latents=quantized, token_ids=ids)

    @apply_forward_hook
    def decode(
        self,
        tokens: torch.Tensor,
        num_tokens: int | None = None,
        resolution: int | None = None,
        return_dict: bool = True,
    ) -> DecoderOutput | tuple:
        """Decode the first `num_tokens` tokens to an image.

        Args:
            tokens: ids `(batch, n)` (integer dtype, looked up in the normalised codebook) or
                quantized latents `(batch, n, codebook_embed_dim)` (float).
            num_tokens: how many leading tokens to decode (default: all `n`).
            resolution: output side; default: the schedule's decoder resolution for `num_tokens`.

        Returns:
            `DecoderOutput` with `sample` `(batch, 3, resolution, resolution)`, nominally in [-1, 1]
            but not clamped (as the original).
        """
        latents = self._as_latents(tokens)
        n = latents.shape[1]
        num_tokens = n if num_tokens is None else num_tokens
        if not 1 <= num_tokens <= n:
            raise ValueError(f"num_tokens={num_tokens} must be between 1 and the {n} tokens given.")
        if resolution is None:
            resolution = self.schedule.decoder_resolution(num_tokens)
        elif resolution <= 0 or resolution % self.decoder.patch_size:
            raise ValueError(f"resolution={resolution} must be a positive multiple of {self.decoder.patch_size}.")
        sample = self.decoder(self.post_quant_conv(latents[:, :num_tokens]), resolution)
        if not return_dict:
            return (sample,)
        return DecoderOutput(sample=sample)

    def _as_latents(self, tokens: torch.Tensor) -> torch.Tensor:
        n_max, vocab, dim = self.config.num_latent_tokens, self.config.codebook_size, self.config.codebook_embed_dim
        if not torch.is_floating_point(tokens):
            if tokens.ndim != 2 or not 1 <= tokens.shape[1] <= n_max:
                raise ValueError(f"token ids must be (batch, n) with 1 <= n <= {n_max}, got {tuple(tokens.shape)}.")
            if tokens.numel() and (tokens.min() < 0 or tokens.max() >= vocab):
                raise ValueError(
                    f"token ids span [{tokens.min().item()}, {tokens.max().item()}]; the codebook has "
                    f"ids 0..{vocab - 1}."
                )
            return self.quantize.lookup(tokens.long())
        if tokens.ndim != 3 or tokens.shape[-1] != dim or not 1 <= tokens.shape[1] <= n_max:
            raise ValueError(f"latents must be (batch, n, {dim}) with 1 <= n <= {n_max}, got {tuple(tokens.shape)}.")
        return tokens

    def forward(self, pixel_values: torch.Tensor, num_tokens: int | None = None) -> DecoderOutput:
        """Reconstruct: encode all tokens, decode the first `num_tokens` at their resolution."""
        return self.decode(self.encode(pixel_values).latents, num_tokens=num_tokens)
