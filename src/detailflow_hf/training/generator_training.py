"""Generator (AR) training as the original `train_c2i.py` (docs/algorithm.md §6.5): self-correction inputs, AdamW
with decay groups, per-step warm-up + cosine `LambdaLR`, presets, and one optimizer step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.configuration_ar import LLAMAGEN_SIZES, DetailFlowARConfig, llamagen_size
from ..models.modeling_ar import DetailFlowForImageGeneration
from ..pipelines.image_processing import image_grid, to_pil
from .arguments import config_from_dict
from .data import IMAGENET_TRAIN_IMAGES
from .schedules import GENERATOR, make_schedule
from .step import StepResult


@dataclass
class GeneratorPreset:
    """Architecture (`DetailFlowARConfig` kwargs) and hyper-parameters of one training setup.

    The tokenizer-dependent fields (`vocab_size`, `num_tokens`, `group_size`, `causal_num`) and
    `num_classes` come from the extracted codes, not from here.
    """

    model: dict
    learning_rate: float = 1e-4
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_fraction: float = 0.05
    train_batch_size: int = 256
    max_train_steps: int = 300 * (IMAGENET_TRAIN_IMAGES // 256)  # 300 epochs of ImageNet at global batch 256
    ema_decay: float = 0.9999
    max_grad_norm: float = 1.0
    correction_prob: float = 0.3
    prefix_swap_prob: float = 0.0
    sample_steps: int = 5000

    def __post_init__(self):
        for name in ("correction_prob", "prefix_swap_prob"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"{name}={value!r} must be a probability in [0, 1].")


PRESETS: dict[str, dict] = {
    # LlamaGen GPT-B / GPT-L (released) with the original's dropouts (token/resid/ffn/class 0.1).
    **{name: {"model": llamagen_size(name)} for name in LLAMAGEN_SIZES},
    # Trains on a CPU in minutes; dropouts off so a tiny dataset can be fitted.
    "tiny": {
        "model": {
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "token_dropout": 0.0,
            "residual_dropout": 0.0,
            "ffn_dropout": 0.0,
        },
        "learning_rate": 1e-3,
        "train_batch_size": 8,
        "max_train_steps": 200,
        "ema_decay": 0.99,
        "sample_steps": 100,
    },
}


def preset_from_dict(values: dict) -> GeneratorPreset:
    """A `GeneratorPreset` from a preset/YAML mapping (`config_from_dict`)."""
    return config_from_dict(GeneratorPreset, values, "generator config")


def build_generator(
    preset: GeneratorPreset, codes_info: dict, class_names: list[str] | None
) -> DetailFlowForImageGeneration:
    """A freshly initialised generator shaped by `preset.model` and the codes' tokenizer.

    Args:
        codes_info: `vocab_size`, `num_tokens`, `group_size`, `causal_num`, `num_classes` of the codes.
        class_names: stored as the config's `id2label` when given (one per class).
    """
    config = DetailFlowARConfig(**preset.model, **_codes_shape(codes_info))
    _set_class_names(config, class_names)
    return DetailFlowForImageGeneration(config)


def init_generator(
    model: DetailFlowForImageGeneration, preset: GeneratorPreset, codes_info: dict, class_names: list[str] | None
) -> DetailFlowForImageGeneration:
    """`model`, a trained generator to continue training from (`--init_from`), checked and given the codes' names.

    Its architecture must be the preset's (`preset.model`) and its token shape and class count the codes'
    (what `build_generator` would make); otherwise a `ValueError` names each field that differs.
    """
    expected = {**preset.model, **_codes_shape(codes_info)}
    differing = {k: (getattr(model.config, k), v) for k, v in expected.items() if getattr(model.config, k) != v}
    if differing:
        listed = ", ".join(f"{k}={ours!r} (expected {theirs!r})" for k, (ours, theirs) in differing.items())
        raise ValueError(f"--init_from: the generator does not match the preset and the codes: {listed}.")
    _set_class_names(model.config, class_names)
    return model


def _codes_shape(codes_info: dict) -> dict:
    return {k: codes_info[k] for k in ("vocab_size", "num_tokens", "group_size", "causal_num", "num_classes")}


def _set_class_names(config: DetailFlowARConfig, class_names: list[str] | None) -> None:
    if class_names is None:
        return
    if len(class_names) != config.num_classes:
        raise ValueError(f"{len(class_names)} class names for {config.num_classes} classes.")
    config.id2label = dict(enumerate(class_names))
    config.label2id = {name: i for i, name in enumerate(class_names)}


def check_codes_match_tokenizer(info, tokenizer):
    """The codes must come from this tokenizer's codebook and schedule (`info`: a `CodesInfo`)."""
    ours = {
        "vocab_size": tokenizer.config.codebook_size,
        "num_tokens": tokenizer.config.num_latent_tokens,
        "group_size": tokenizer.schedule.group_size,
        "causal_num": tokenizer.schedule.causal_num,
    }
    theirs = {k: getattr(info, k) for k in ours}
    if ours != theirs:
        raise ValueError(f"the codes were extracted with {theirs}, but --tokenizer has {ours}.")


def sample_grid(images: torch.Tensor):
    """`(B, 3, H, W)` in [0, 1] -> one PIL image, the samples side by side."""
    return image_grid(to_pil(images), columns=images.shape[0])


def inputs_and_targets(
    codes: torch.LongTensor, group_size: int, correction_prob: float, generator: torch.Generator | None = None
) -> tuple[torch.LongTensor, torch.LongTensor]:
    """The original `generate_z_input_target`.

    Args:
        codes: `(B, N, 3)` `[clean, noisy input, label]` triples, or `(B, N, 1)` clean codes only.

    Returns:
        `input_ids` `(B, N - g)` and `targets` `(B, N)`: per sample with probability
        `correction_prob` the noisy input and its label, else the clean codes for both.
    """
    if codes.ndim != 3 or codes.shape[-1] not in (1, 3):
        raise ValueError(
            f"codes must be (batch, num_tokens, 3) triples or (batch, num_tokens, 1), got {tuple(codes.shape)}."
        )
    clean = codes[..., 0]
    if codes.shape[-1] == 1 or correction_prob <= 0:
        return clean[:, :-group_size], clean
    use_noisy = torch.rand(codes.shape[0], generator=generator, device=codes.device) < correction_prob
    inputs = torch.where(use_noisy[:, None], codes[..., 1], clean)
    targets = torch.where(use_noisy[:, None], codes[..., 2], clean)
    return inputs[:, :-group_size], targets


def swap_prefixes(
    inputs: torch.LongTensor, lengths: list[int], prob: float, generator: torch.Generator | None = None
) -> torch.LongTensor:
    """Per row with probability `prob`: its first `k` input ids (`k` drawn from `lengths`) replaced by the
    previous row's (the batch rolled by one; needs 2 or more rows); the targets stay the row's own.

    The generator then learns that its class, not the kept tokens, sets what follows a prefix: a model
    whose classes are single pictures (the embedded emoji model) continues a foreign image's prefix with
    its class's own detail instead of an arbitrary one. Off (0) for datasets with many images per class,
    where the prefix should lead.

    Args:
        inputs: `(B, L)` input ids; `lengths` must not exceed `L`.
    """
    if prob <= 0 or inputs.shape[0] < 2:
        return inputs
    rows = inputs.shape[0]
    swap = torch.rand(rows, generator=generator, device=inputs.device) < prob
    picks = torch.randint(0, len(lengths), (rows,), generator=generator, device=inputs.device)
    k = torch.tensor(lengths, device=inputs.device)[picks]
    foreign = torch.arange(inputs.shape[1], device=inputs.device)[None] < k[:, None]
    return torch.where(swap[:, None] & foreign, inputs.roll(1, dims=0), inputs)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: `weight_decay` on every >= 2-D parameter (embeddings included), 0 on 1-D (norms)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def make_optimizer(model: torch.nn.Module, preset: GeneratorPreset, learning_rate: float) -> torch.optim.AdamW:
    fused = next(model.parameters()).is_cuda
    return torch.optim.AdamW(
        param_groups(model, preset.weight_decay), lr=learning_rate, betas=preset.betas, fused=fused
    )


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_fraction: float):
    """The original's per-step schedule over `total_steps`, `int(warmup_fraction * total_steps)` warm-up steps."""
    return make_schedule(GENERATOR, optimizer, total_steps, int(warmup_fraction * total_steps))


@dataclass
class GeneratorTrainState:
    """What `train_step` updates. `model` and `optimizer` may be accelerate-wrapped; `scheduler` is
    the plain `LambdaLR` (not passed to `accelerator.prepare`, which would step it once per process):
    it advances once per optimizer step. Checkpoint it and the EMA as `shared` objects of
    `save_checkpoint`."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    preset: GeneratorPreset
    ema: object | None = None


def train_step(state: GeneratorTrainState, batch: dict, step: int, accelerator) -> StepResult:
    """One micro-batch under `accelerator.accumulate`: loss, backward, and on the sync step clip,
    optimizer and scheduler step and EMA update (`step` is not read: the schedule counts itself).

    Args:
        batch: `codes` `(B, N, 3|1)` long and `label` `(B,)`.
    """
    model, optimizer, scheduler, preset, ema = state.model, state.optimizer, state.scheduler, state.preset, state.ema
    unwrapped = accelerator.unwrap_model(model)
    with accelerator.accumulate(model):
        inputs, targets = inputs_and_targets(
            batch["codes"].long(), unwrapped.config.group_size, preset.correction_prob
        )
        if preset.prefix_swap_prob > 0:
            lengths = [k for k in unwrapped.prefix_lengths() if k <= inputs.shape[1]]
            inputs = swap_prefixes(inputs, lengths, preset.prefix_swap_prob)
        with accelerator.autocast():
            loss = model(input_ids=inputs, class_labels=batch["label"].long(), labels=targets).loss
        accelerator.backward(loss)
        grad_norm = None
        if accelerator.sync_gradients:
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), preset.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if accelerator.sync_gradients:
        scheduler.step()
        if ema is not None:
            ema.step(accelerator.unwrap_model(model).parameters())
    logs = {"loss": float(loss.detach())}
    if grad_norm is not None:
        logs["grad_norm"] = float(grad_norm)
    return StepResult(loss=logs["loss"], logs=logs, synced=accelerator.sync_gradients)


__all__ = [
    "GeneratorPreset",
    "PRESETS",
    "GeneratorTrainState",
    "build_generator",
    "check_codes_match_tokenizer",
    "sample_grid",
    "swap_prefixes",
    "inputs_and_targets",
    "make_optimizer",
    "make_scheduler",
    "param_groups",
    "preset_from_dict",
    "train_step",
]
