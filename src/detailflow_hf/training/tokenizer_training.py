"""Tokenizer training: presets, optimizers, schedules and one training step (docs/algorithm.md §6.1-6.4).

    images (B,3,M,M)
      -> degrade: t tokens, target at token2dec_out_res[t]                          (§6.2)
      -> TokenizerTrainingModel: clean encode (+ noisy self-correction encode)       (§6.4)
         -> decode [clean; noisy] first t tokens -> reconstructions (2B,3,r,r)
         -> codebook loss (mixed), projected first clean token
      -> generator loss (MSE + LPIPS + GAN + VQ/commit + global token), Adam step     (§6.3)
      -> discriminator loss (hinge + LeCam + consistency), Adam step                 (§6.3)

`examples/train_tokenizer.py` is the script around `train_step`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models.tokenizer import RELEASED_DECODER, RELEASED_ENCODER, DetailFlowTokenizer
from ..pipelines.image_processing import to_uint8
from .arguments import config_from_dict, load_preset
from .data import IMAGENET_TRAIN_IMAGES
from .dead_codes import DeadCodeRestarter
from .degradation import degrade
from .discriminator import DINO_MODEL_ID, DinoDiscriminator, LeCamEMA, use_sync_batchnorm
from .perceptual import LPIPS_HEADS_FROM_TORCHMETRICS, VGG16_STAGES, VGG16_TIMM_ID, PerceptualLoss
from .schedules import TOKENIZER, make_schedule
from .self_correction import noise_token_index, noisy_encode
from .step import StepResult
from .tokenizer_losses import (
    SIGLIP2_TEACHER_ID,
    SigLIP2Teacher,
    TokenizerLossConfig,
    codebook_loss,
    discriminator_step_loss,
    generator_loss,
    global_token_loss,
    global_token_projector,
    mix_codebook_losses,
)


# -- configuration -----------------------------------------------------------------------------------
@dataclass
class TokenizerTrainingConfig:
    """Everything a tokenizer run needs besides the data and the run flags.

    Args:
        tokenizer: `DetailFlowTokenizer` keyword arguments (the exported model's config).
        init_encoder_from: SigLIP2 vision tower (Hub id or folder) whose embeddings, first layers and
            post-LN initialise the encoder (the release: so400m truncated to 12 layers); `None`: random.
        perceptual_stages: VGG conv widths per stage; `perceptual_vgg_weights` / `perceptual_lpips_weights`:
            files (or a timm id for the VGG, `"torchmetrics"` for the heads torchmetrics ships) with
            pretrained weights; `None` keeps random weights. The released presets name both.
        discriminator: DINO ViT Hub id, or `ViTConfig` keyword arguments for a random backbone.
        teacher: SigLIP2 Hub id, or `Siglip2VisionConfig` keyword arguments; unused when the
            global-token weight is 0.
        global_token_hidden: hidden width of `global_token_proj`.
        train_batch_size: images per process and step (the release: 256 in all, e.g. 8 GPUs x 32).
        learning_rate, reference_batch_size: lr = learning_rate * global_batch / reference_batch_size.
        betas, warmup_lr, min_lr_ratio, max_grad_norm: Adam and the warm-up + cosine schedule.
        epoch_images, epochs, warmup_epochs: the schedule's length in images (an epoch = `epoch_images`).
        degradation_prob, self_correction, noise_top_k: docs/algorithm.md §6.2 and §6.4.
        dead_code_restart_steps: every this many steps, re-seed the codes no clean token picked since the
            last restart from the batch's encoder outputs (`DeadCodeRestarter`); 0 = never (the original).
        losses: loss weights and start steps.
    """

    tokenizer: dict
    perceptual_stages: list = field(default_factory=lambda: [list(s) for s in VGG16_STAGES])
    perceptual_vgg_weights: str | None = None
    perceptual_lpips_weights: str | None = None
    discriminator: str | dict = DINO_MODEL_ID
    teacher: str | dict = SIGLIP2_TEACHER_ID
    init_encoder_from: str | None = SIGLIP2_TEACHER_ID
    global_token_hidden: int = 1024
    train_batch_size: int = 32
    learning_rate: float = 1e-4
    reference_batch_size: int = 256
    betas: tuple = (0.9, 0.95)
    warmup_lr: float = 1e-5
    min_lr_ratio: float = 0.1
    max_grad_norm: float = 1.0
    epoch_images: int = IMAGENET_TRAIN_IMAGES
    epochs: int = 250
    warmup_epochs: int = 1
    degradation_prob: float = 0.2
    self_correction: bool = True
    noise_top_k: int = 50
    dead_code_restart_steps: int = 0
    losses: TokenizerLossConfig = field(default_factory=TokenizerLossConfig)

    def steps_per_epoch(self, global_batch_size: int) -> int:
        return max(1, self.epoch_images // global_batch_size)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TokenizerTrainingConfig:
        """From a preset/YAML mapping (`config_from_dict`; `tokenizer` is required)."""
        return config_from_dict(cls, values, "tokenizer training config")


def _released(num_tokens: int) -> TokenizerTrainingConfig:
    tokenizer = dict(
        image_size=256,
        num_latent_tokens=num_tokens,
        group_size=8,
        degradation_power=1.5,
        codebook_size=8192,
        codebook_embed_dim=8,
        encoder_config=dict(RELEASED_ENCODER),
        decoder_config=dict(RELEASED_DECODER),
    )
    # The perceptual loss needs pretrained networks: LPIPS heads from torchmetrics' wheel, VGG16 by timm id.
    return TokenizerTrainingConfig(
        tokenizer=tokenizer,
        perceptual_vgg_weights=VGG16_TIMM_ID,
        perceptual_lpips_weights=LPIPS_HEADS_FROM_TORCHMETRICS,
    )


def _tiny() -> TokenizerTrainingConfig:
    vit = dict(
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=2,
        num_hidden_layers=1,
        num_patches=16,
        patch_size=8,
        layer_norm_eps=1e-6,
        hidden_act="gelu_pytorch_tanh",
    )
    return TokenizerTrainingConfig(
        tokenizer=dict(
            image_size=32,
            num_latent_tokens=16,
            group_size=4,
            codebook_size=64,
            codebook_embed_dim=8,
            encoder_config=vit,
            decoder_config=dict(vit),
        ),
        perceptual_stages=[[8, 8], [16, 16], [32, 32]],
        discriminator=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        teacher=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            patch_size=8,
            num_patches=16,
        ),
        init_encoder_from=None,
        global_token_hidden=32,
        train_batch_size=8,
        learning_rate=1e-3,
        reference_batch_size=8,
        epoch_images=64,
        epochs=100,
        losses=TokenizerLossConfig(perceptual_warmup=10, disc_start=20),
    )


PRESETS: dict[str, dict] = {
    "DetailFlow-16": _released(128).to_dict(),
    "DetailFlow-32": _released(256).to_dict(),
    "DetailFlow-64": _released(512).to_dict(),
    "tiny": _tiny().to_dict(),
}


def load_config(name_or_yaml: str) -> TokenizerTrainingConfig:
    """A preset name (`DetailFlow-16/32/64`, `tiny`) or a YAML file of `TokenizerTrainingConfig`
    fields, optionally over a preset (`preset: NAME`; nested sections such as `losses` merge key by key)."""
    return TokenizerTrainingConfig.from_dict(load_preset(name_or_yaml, PRESETS))


# -- models -------------------------------------------------------------------------------------------
@dataclass
class ReconstructionOutput:
    """One training reconstruction.

    Args:
        reconstruction: `(B', 3, r, r)`, `B' = 2B` with self-correction (`[clean; noisy]`), else `B`.
        codebook_loss: VQ + commitment, clean/noisy mixed (scalar).
        global_token: projected first clean token `(B, teacher_dim)`, or `None` without the teacher.
        code_ids: clean token ids `(B, N)`.
        pre_quant: clean `quant_conv` output `(B, N, d)` before quantization.
    """

    reconstruction: torch.Tensor
    codebook_loss: torch.Tensor
    global_token: torch.Tensor | None
    code_ids: torch.LongTensor
    pre_quant: torch.Tensor


class TokenizerTrainingModel(nn.Module):
    """The trained parameters: the tokenizer and the `global_token_proj` MLP (training-only).

    `forward` is the generator's whole differentiable path, so one DDP/FSDP wrapper syncs it.
    """

    def __init__(
        self,
        tokenizer: DetailFlowTokenizer,
        global_token_proj: nn.Module | None,
        commit_beta: float = 0.25,
        noise_top_k: int = 50,
    ):
        super().__init__()
        self.tokenizer = tokenizer
        self.global_token_proj = global_token_proj
        self.commit_beta = commit_beta
        self.noise_top_k = noise_top_k

    def forward(
        self, pixel_values: torch.Tensor, num_tokens: int, resolution: int, noise_index: int | None
    ) -> ReconstructionOutput:
        """pixel_values `(B,3,M,M)`; decode the first `num_tokens` at `resolution`; `noise_index`:
        start `k` of the perturbed prefix span of the self-correction pass, or `None` (no noisy pass)."""
        tok = self.tokenizer
        if noise_index is None:
            latents = tok.quant_conv(tok.encoder(pixel_values))
            quant, ids = tok.quantize(latents)
            cb_loss = codebook_loss(latents, tok.quantize.lookup(ids), self.commit_beta)
            # No noisy pass (t = 1, or self-correction off): give its parameters a zero gradient so that
            # DDP (built without find_unused_parameters) still sees every parameter used.
            cb_loss = cb_loss + 0.0 * (
                tok.refine_conv.weight.sum() + tok.refine_conv.bias.sum() + tok.encoder.refined_tokens.sum()
            )
            decoded, first = quant, quant[:, 0]
            code_ids, pre_quant = ids, latents
        else:
            out = noisy_encode(tok, pixel_values, noise_index, top_k=self.noise_top_k)
            clean = codebook_loss(out.clean_pre_quant, tok.quantize.lookup(out.clean_ids), self.commit_beta)
            # label_ids[:, e:] are the pass-2 ids; only positions >= e enter the noisy loss
            noisy = codebook_loss(
                out.noisy_pre_quant, tok.quantize.lookup(out.label_ids), self.commit_beta, start=out.noise_end
            )
            cb_loss = mix_codebook_losses(clean, noisy, out.clean_latents.shape[1], out.noise_end)
            decoded, first = torch.cat([out.clean_latents, out.noisy_latents]), out.clean_latents[:, 0]
            code_ids, pre_quant = out.clean_ids, out.clean_pre_quant
        reconstruction = tok.decode(decoded, num_tokens=num_tokens, resolution=resolution).sample
        projected = self.global_token_proj(first) if self.global_token_proj is not None else None
        return ReconstructionOutput(reconstruction, cb_loss, projected, code_ids, pre_quant)


def load_siglip2_encoder_weights(tokenizer: DetailFlowTokenizer, model_id: str) -> None:
    """Initialise the encoder from a SigLIP2 vision tower: patch/position embeddings, the first
    `len(encoder.layers)` blocks and the post-LN (the release's `enc_pretrained`)."""
    from transformers import Siglip2VisionModel

    tower = Siglip2VisionModel.from_pretrained(model_id)
    encoder = tokenizer.encoder
    if len(tower.encoder.layers) < len(encoder.layers):
        raise ValueError(
            f"{model_id} has {len(tower.encoder.layers)} layers; the encoder needs {len(encoder.layers)}."
        )
    sources = {
        "patch_embedding": tower.embeddings.patch_embedding,
        "position_embedding": tower.embeddings.position_embedding,
        "post_layernorm": tower.post_layernorm,
    }
    with torch.no_grad():
        for name, module in sources.items():
            getattr(encoder, name).load_state_dict(module.state_dict())
        for ours, theirs in zip(encoder.layers, tower.encoder.layers):
            ours.load_state_dict(theirs.state_dict())


@torch.no_grad()
def build_tokenizer(config: TokenizerTrainingConfig) -> DetailFlowTokenizer:
    """A fresh tokenizer (initialised as the original), its encoder optionally from SigLIP2."""
    tokenizer = DetailFlowTokenizer(**config.tokenizer)
    if config.init_encoder_from:
        load_siglip2_encoder_weights(tokenizer, config.init_encoder_from)
    return tokenizer


def build_perceptual(config: TokenizerTrainingConfig) -> PerceptualLoss:
    perceptual = PerceptualLoss(config.perceptual_stages)
    if config.perceptual_vgg_weights:
        perceptual.load_vgg16_weights(config.perceptual_vgg_weights)
    if config.perceptual_lpips_weights:
        perceptual.load_lpips_heads(config.perceptual_lpips_weights)
    return perceptual


def build_discriminator(config: TokenizerTrainingConfig, sync_batchnorm: bool = False) -> DinoDiscriminator:
    from transformers import ViTConfig

    spec = config.discriminator
    disc = (
        DinoDiscriminator.from_backbone_id(spec)
        if isinstance(spec, str)
        else DinoDiscriminator.from_config(ViTConfig(**spec))
    )
    return use_sync_batchnorm(disc) if sync_batchnorm else disc


def build_teacher(config: TokenizerTrainingConfig) -> SigLIP2Teacher | None:
    from transformers import Siglip2VisionConfig

    if config.losses.global_token_weight == 0:
        return None
    spec = config.teacher
    return (
        SigLIP2Teacher.from_pretrained(spec)
        if isinstance(spec, str)
        else SigLIP2Teacher.from_config(Siglip2VisionConfig(**spec))
    )


# -- optimisation ------------------------------------------------------------------------------------
def build_optimizer_and_schedule(
    parameters, config: TokenizerTrainingConfig, global_batch_size: int, total_steps: int
) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.LambdaLR]:
    """Adam (no weight decay, as the original) and its per-step warm-up + cosine schedule."""
    lr = config.learning_rate * global_batch_size / config.reference_batch_size
    optimizer = torch.optim.Adam([p for p in parameters if p.requires_grad], lr=lr, betas=tuple(config.betas))
    warmup = min(config.warmup_epochs * config.steps_per_epoch(global_batch_size), total_steps)
    schedule = make_schedule(TOKENIZER, optimizer, total_steps, warmup, config.warmup_lr / lr, config.min_lr_ratio)
    return optimizer, schedule


# -- the step -----------------------------------------------------------------------------------------
@dataclass
class TokenizerTrainState:
    """What `train_step` updates. `model` and `discriminator` may be accelerate-wrapped."""

    config: TokenizerTrainingConfig
    model: nn.Module
    discriminator: nn.Module
    perceptual: PerceptualLoss
    teacher: SigLIP2Teacher | None
    lecam: LeCamEMA
    optimizer: torch.optim.Optimizer
    disc_optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    disc_schedule: torch.optim.lr_scheduler.LRScheduler
    restarter: DeadCodeRestarter | None = None

    def per_process_state(self) -> list:
        """The states each process checkpoints on its own (LeCam EMAs, code usage counts)."""
        return [self.lecam] + ([self.restarter] if self.restarter is not None else [])

    def shared_state(self) -> list:
        """The states every process holds alike, checkpointed once (the lr schedules)."""
        return [self.schedule, self.disc_schedule]


def train_step(state: TokenizerTrainState, batch: dict, step: int, accelerator) -> StepResult:
    """One generator update, then one discriminator update, at 1-based `step` (the original's
    `global_step = steps + 1`), on `batch["pixel_values"]` `(B, 3, M, M)` in [-1, 1]. Reports the
    generator loss and every loss term as floats."""
    images = batch["pixel_values"]
    config, losses = state.config, state.config.losses
    tokenizer = accelerator.unwrap_model(state.model).tokenizer
    degraded = degrade(images, tokenizer.schedule, config.degradation_prob)
    schedule = tokenizer.schedule
    noise_index = noise_token_index(
        degraded.num_tokens, schedule.group_size, schedule.causal_num, config.self_correction
    )
    target = degraded.target if noise_index is None else torch.cat([degraded.target, degraded.target])

    state.model.train()
    state.discriminator.train()
    state.perceptual.train()  # LPIPS dropout is active during training, as in the original
    with accelerator.autocast():
        out = state.model(images, degraded.num_tokens, degraded.resolution, noise_index)
        global_loss = None
        if state.teacher is not None:
            global_loss = global_token_loss(out.global_token, state.teacher(images))
        gen = generator_loss(
            target,
            out.reconstruction,
            out.codebook_loss,
            step,
            losses,
            state.perceptual,
            state.discriminator,
            global_loss,
        )
    state.optimizer.zero_grad(set_to_none=True)
    accelerator.backward(gen["loss"])
    accelerator.clip_grad_norm_(state.model.parameters(), config.max_grad_norm)
    lr = state.optimizer.param_groups[0]["lr"]
    state.optimizer.step()
    state.schedule.step()

    logs = {f"g_{k}" if k == "loss" else k: v.item() for k, v in gen.items()}
    logs.update(num_tokens=degraded.num_tokens, lr=lr)
    if state.restarter is not None:
        state.restarter.update(out.code_ids)
        logs["restarted_codes"] = state.restarter.maybe_restart(
            step, out.pre_quant, tokenizer.quantize.embedding, state.optimizer, accelerator
        )
    if losses.disc_weight == 0:  # no GAN in this config: the discriminator is never updated
        return StepResult(loss=logs["g_loss"], logs=logs)
    state.disc_optimizer.zero_grad(set_to_none=True)
    with accelerator.autocast():
        disc = discriminator_step_loss(
            state.discriminator, target, out.reconstruction.detach(), state.lecam, step, losses
        )
    accelerator.backward(disc["loss"])
    accelerator.clip_grad_norm_(state.discriminator.parameters(), config.max_grad_norm)
    state.disc_optimizer.step()
    state.disc_schedule.step()

    logs.update({"d_loss" if k == "loss" else k: v.item() for k, v in disc.items()})
    return StepResult(loss=logs["g_loss"], logs=logs)


def build_train_state(
    config: TokenizerTrainingConfig,
    accelerator,
    global_batch_size: int,
    total_steps: int,
    learning_rate: float | None = None,
) -> TokenizerTrainState:
    """Build every model, optimizer and schedule (in a fixed order, so a seeded rebuild is identical)
    and `accelerator.prepare` the trained ones. `learning_rate` overrides the batch-scaled peak lr."""
    tokenizer = build_tokenizer(config)
    teacher = build_teacher(config)
    projector = None
    if teacher is not None:
        embed_dim = tokenizer.config.codebook_embed_dim
        projector = global_token_projector(embed_dim, teacher.hidden_size, config.global_token_hidden)
    model = TokenizerTrainingModel(tokenizer, projector, config.losses.commit_beta, config.noise_top_k)
    sync_bn = accelerator.num_processes > 1 and accelerator.device.type != "cpu"
    discriminator = build_discriminator(config, sync_batchnorm=sync_bn)
    perceptual = build_perceptual(config)
    if learning_rate is not None:
        config = dataclasses.replace(config, learning_rate=learning_rate, reference_batch_size=global_batch_size)
    optimizer, schedule = build_optimizer_and_schedule(model.parameters(), config, global_batch_size, total_steps)
    disc_optimizer, disc_schedule = build_optimizer_and_schedule(
        discriminator.parameters(), config, global_batch_size, total_steps
    )
    model, discriminator, optimizer, disc_optimizer = accelerator.prepare(
        model, discriminator, optimizer, disc_optimizer
    )
    device = accelerator.device
    restarter = None
    if config.dead_code_restart_steps:
        restarter = DeadCodeRestarter(config.tokenizer["codebook_size"], config.dead_code_restart_steps).to(device)
    return TokenizerTrainState(
        config=config,
        model=model,
        discriminator=discriminator,
        perceptual=perceptual.to(device),
        teacher=teacher.to(device) if teacher is not None else None,
        lecam=LeCamEMA().to(device),
        optimizer=optimizer,
        disc_optimizer=disc_optimizer,
        schedule=schedule,
        disc_schedule=disc_schedule,
        restarter=restarter,
    )


@torch.no_grad()
def reconstruction_grid(tokenizer: DetailFlowTokenizer, images: torch.Tensor, num_prefixes: int = 3) -> np.ndarray:
    """A uint8 `(H', W', 3)` grid: one row per image `(B,3,M,M)`, the input then the decodes of a few
    growing token prefixes (upsampled to `M`, nearest) and of all tokens, coarse to fine."""
    was_training = tokenizer.training
    tokenizer.eval()
    schedule, size = tokenizer.schedule, images.shape[-1]
    latents = tokenizer.encode(images).latents
    picks = [schedule.token_list[(len(schedule.token_list) - 1) * i // num_prefixes] for i in range(num_prefixes)]
    columns = [images]
    for t in picks + [schedule.num_tokens]:
        decoded = tokenizer.decode(latents, num_tokens=t).sample
        columns.append(F.interpolate(decoded, size=(size, size), mode="nearest"))
    tokenizer.train(was_training)
    grid = torch.stack(columns, dim=1)  # (B, columns, 3, M, M)
    b, c = grid.shape[:2]
    grid = (
        grid.permute(0, 2, 3, 1, 4).reshape(b, 3, size, c * size).permute(1, 0, 2, 3).reshape(1, 3, b * size, c * size)
    )
    return to_uint8((grid.float() + 1) / 2)[0]
