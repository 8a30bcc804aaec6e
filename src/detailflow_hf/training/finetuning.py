"""Fine-tuning a trained pipeline on a new image set: the examples' shared flags and loop, the
generator's teacher-forced loss (with LoRA and new classes from `detailflow_hf.pipelines.adapters`) and the
tokenizer decoder alone.

Images are encoded on the fly by the frozen tokenizer (`encode_images`), so no code extraction
is needed for the small sets these recipes target. Used by `examples/finetune_lora.py`,
`examples/add_classes.py` and `examples/finetune_tokenizer_decoder.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .. import flags
from .schedules import make_schedule, schedule_names
from .step import StepResult


def add_finetune_args(parser, model_help: str, data_help: str, learning_rate: float):
    """The flags every fine-tuning example shares (`--model`, `--train_data_dir`, `--output_dir`,
    `--learning_rate`, `--lr_scheduler`, `--lr_warmup_steps`, `--train_batch_size`, `--max_train_steps`,
    `--seed`, `--mixed_precision`).
    `--model` defaults to the embedded emoji model (`detailflow_hf.DEFAULT_MODEL`) where it is installed."""
    from .. import DEFAULT_MODEL

    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        required=DEFAULT_MODEL is None,
        help=f"{model_help} (default: the embedded emoji model)",
    )
    parser.add_argument("--train_data_dir", required=True, help=data_help)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--learning_rate", type=flags.positive_float, default=learning_rate)
    parser.add_argument(
        "--lr_scheduler",
        choices=schedule_names(),
        default="constant",
        help="lr schedule over --max_train_steps: diffusers' (e.g. cosine: decays to 0) or the trainers'",
    )
    parser.add_argument("--lr_warmup_steps", type=flags.non_negative_int, default=0)
    parser.add_argument("--train_batch_size", type=flags.positive_int, default=8)
    parser.add_argument("--max_train_steps", type=flags.positive_int, default=1000)
    parser.add_argument("--seed", type=flags.int_range(0, 2**32 - 1, "a seed"), default=0)
    parser.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), default="no")
    return parser


def run_training(
    accelerator,
    model,
    optimizer,
    loader,
    max_steps: int,
    loss_fn,
    log_every: int = 50,
    lr_scheduler: str = "constant",
    lr_warmup_steps: int = 0,
) -> float:
    """The examples' shared loop: `train_step` over `loader` until `max_steps` optimizer steps, the lr
    following the schedule `lr_scheduler` (`make_schedule`, stepped once per optimizer step, on every
    process alike); prints the loss every `log_every` steps on the main process. Returns the last loss."""
    state = FinetuneState(
        model, optimizer, make_schedule(lr_scheduler, optimizer, max_steps, lr_warmup_steps), loss_fn
    )
    model.train()
    step, result = 0, None
    while step < max_steps:
        for batch in loader:
            step += 1
            result = train_step(state, batch, step, accelerator)
            if accelerator.is_main_process and (step % log_every == 0 or step == max_steps):
                print(f"step {step} loss {result.loss:.5f}")
            if step >= max_steps:
                break
    accelerator.wait_for_everyone()
    return result.loss


@dataclass
class FinetuneState:
    """What a fine-tuning `train_step` updates: `loss_fn(batch) -> loss` defines the recipe."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    loss_fn: Callable[[dict], torch.Tensor]


def train_step(state: FinetuneState, batch: dict, step: int, accelerator) -> StepResult:
    """`loss_fn(batch)` -> backward -> optimizer and schedule step (`step` is not read)."""
    with accelerator.autocast():
        loss = state.loss_fn(batch)
    accelerator.backward(loss)
    lr = state.optimizer.param_groups[0]["lr"]
    state.optimizer.step()
    state.schedule.step()
    state.optimizer.zero_grad(set_to_none=True)
    value = loss.item()
    return StepResult(loss=value, logs={"loss": value, "lr": lr})


def encode_images(vqvae, pixel_values: torch.Tensor) -> torch.LongTensor:
    """Token ids `(batch, num_tokens)` of images `(batch, 3, H, W)` in [-1, 1] (frozen tokenizer)."""
    return vqvae.encode(pixel_values.to(vqvae.device, vqvae.dtype)).token_ids.long()


def generator_loss(
    model, token_ids: torch.LongTensor, class_labels: torch.LongTensor, group_size: int
) -> torch.Tensor:
    """Teacher-forced cross-entropy on `(batch, N)` ids of the generator, or of any wrapper that
    forwards its arguments (peft, DDP); `group_size` from the generator's config."""
    return model(input_ids=token_ids[:, :-group_size], class_labels=class_labels, labels=token_ids).loss


# -- tokenizer decoder ------------------------------------------------------------------------------
def decoder_parameters(vqvae) -> list[nn.Parameter]:
    """Freeze the encoder, quantizer and projections into the code space; return the trainable
    decoder side (`post_quant_conv` and `decoder`)."""
    vqvae.requires_grad_(False)
    trainable = [*vqvae.post_quant_conv.parameters(), *vqvae.decoder.parameters()]
    for parameter in trainable:
        parameter.requires_grad_(True)
    return trainable


def decoder_loss(
    vqvae,
    schedule,
    pixel_values: torch.Tensor,
    degradation_prob: float = 0.2,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """MSE of the reconstruction `vqvae(pixel_values, num_tokens)` (the tokenizer or a DDP wrapper;
    with `decoder_parameters` frozen, gradients reach the decoder only) against `(batch, 3, H, W)`
    images in [-1, 1]; with `degradation_prob` a step decodes a random prefix against the degraded
    target at that prefix's resolution, as tokenizer training does. `schedule`: `vqvae.schedule`."""
    from .degradation import degrade

    target = degrade(pixel_values, schedule, degradation_prob, generator)
    reconstruction = vqvae(pixel_values, num_tokens=target.num_tokens).sample
    if reconstruction.shape != target.target.shape:
        raise ValueError(
            f"reconstruction {tuple(reconstruction.shape)} does not match the target {tuple(target.target.shape)}."
        )
    return F.mse_loss(reconstruction, target.target)


__all__ = [
    "FinetuneState",
    "train_step",
    "add_finetune_args",
    "decoder_loss",
    "decoder_parameters",
    "encode_images",
    "generator_loss",
    "run_training",
]
