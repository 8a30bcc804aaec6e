"""Fine-tuning a trained pipeline on a new image set: LoRA on the generator (peft), new classes in the
class embedding (the CFG null class stays the last row), and the tokenizer decoder alone.

Images are encoded on the fly by the frozen tokenizer (`encode_images`), so no code extraction
is needed for the small sets these recipes target. Used by `examples/finetune_lora.py`,
`examples/add_classes.py` and `examples/finetune_tokenizer_decoder.py`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.optimization import SchedulerType, get_scheduler
from torch import nn

from . import flags

GENERATOR_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LABELS_FILE = "id2label.json"


# -- data -------------------------------------------------------------------------------------------
class ImageFolderDataset(torch.utils.data.Dataset):
    """A small labelled image set (imagefolder or parquet via `load_image_stream`, not streamed),
    centre-cropped to `size`: items `{"pixel_values": (3, size, size) in [-1, 1], "label": ()}`."""

    def __init__(self, data_dir: str | os.PathLike, size: int, split: str = "train"):
        from .training.data import class_names, load_image_stream

        self.rows = load_image_stream(train_data_dir=str(data_dir), split=split, streaming=False)
        self.class_names = class_names(self.rows) or [str(i) for i in sorted(set(self.rows["label"]))]
        self.size = size

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        from .image_processing import center_crop_arr, open_image, to_tensor

        row = self.rows[index]
        image = center_crop_arr(open_image(row["image"]), self.size)
        return {"pixel_values": to_tensor(image), "label": torch.tensor(int(row["label"]))}


def add_finetune_args(parser, model_help: str, data_help: str, learning_rate: float):
    """The flags every fine-tuning example shares (`--model`, `--train_data_dir`, `--output_dir`,
    `--learning_rate`, `--lr_scheduler`, `--lr_warmup_steps`, `--train_batch_size`, `--max_train_steps`,
    `--seed`, `--mixed_precision`).
    `--model` defaults to the embedded emoji model (`detailflow_hf.DEFAULT_MODEL`) where it is installed."""
    from . import DEFAULT_MODEL

    parser.add_argument("--model", default=DEFAULT_MODEL, required=DEFAULT_MODEL is None,
                        help=f"{model_help} (default: the embedded emoji model)")
    parser.add_argument("--train_data_dir", required=True, help=data_help)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--learning_rate", type=flags.positive_float, default=learning_rate)
    parser.add_argument("--lr_scheduler", choices=[s.value for s in SchedulerType], default="constant",
                        help="diffusers schedule over --max_train_steps (e.g. cosine: decays to 0)")
    parser.add_argument("--lr_warmup_steps", type=flags.non_negative_int, default=0)
    parser.add_argument("--train_batch_size", type=flags.positive_int, default=8)
    parser.add_argument("--max_train_steps", type=flags.positive_int, default=1000)
    parser.add_argument("--seed", type=flags.int_range(0, 2**32 - 1, "a seed"), default=0)
    parser.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), default="no")
    return parser


def run_training(accelerator, model, optimizer, loader, max_steps: int, loss_fn, log_every: int = 50,
                 lr_scheduler: str = "constant", lr_warmup_steps: int = 0) -> float:
    """The examples' shared loop: `loss_fn(batch)` -> backward -> step, over `loader` until `max_steps`
    optimizer steps, the lr following the diffusers schedule `lr_scheduler` (stepped once per optimizer
    step, on every process alike); prints the loss every `log_every` steps on the main process.
    Returns the last loss."""
    schedule = get_scheduler(lr_scheduler, optimizer, num_warmup_steps=lr_warmup_steps, num_training_steps=max_steps)
    model.train()
    step, loss = 0, None
    while step < max_steps:
        for batch in loader:
            with accelerator.autocast():
                loss = loss_fn(batch)
            accelerator.backward(loss)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if accelerator.is_main_process and (step % log_every == 0 or step == max_steps):
                print(f"step {step} loss {loss.item():.5f}")
            if step >= max_steps:
                break
    accelerator.wait_for_everyone()
    return loss.item()


def encode_images(vqvae, pixel_values: torch.Tensor) -> torch.LongTensor:
    """Token ids `(batch, num_tokens)` of images `(batch, 3, H, W)` in [-1, 1] (frozen tokenizer)."""
    return vqvae.encode(pixel_values.to(vqvae.device, vqvae.dtype)).token_ids.long()


def generator_loss(model, token_ids: torch.LongTensor, class_labels: torch.LongTensor, group_size: int) -> torch.Tensor:
    """Teacher-forced cross-entropy on `(batch, N)` ids of the generator, or of any wrapper that
    forwards its arguments (peft, DDP); `group_size` from the generator's config."""
    return model(input_ids=token_ids[:, :-group_size], class_labels=class_labels, labels=token_ids).loss


def _unwrap(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


# -- class embedding --------------------------------------------------------------------------------
@torch.no_grad()
def set_classes(transformer, class_names: list[str], keep_existing: bool) -> None:
    """Give the generator a new label set in place: `keep_existing` appends `class_names` after
    the current classes (their rows untouched), else the classes are replaced by `class_names`.
    New rows start at the mean of the current class rows (an "average class"); the null class
    (CFG) keeps its row and stays last. Updates `config.num_classes` and `config.id2label`."""
    config = transformer.config
    old = transformer.model.class_embedding.weight
    num_old = config.num_classes
    kept = old[:num_old] if keep_existing else old[:0]
    if not class_names:
        raise ValueError("set_classes needs at least one class name.")
    fresh = old[:num_old].mean(dim=0, keepdim=True).expand(len(class_names), -1)
    rows = torch.cat([kept, fresh, old[num_old:]])
    embedding = nn.Embedding(rows.shape[0], rows.shape[1], device=old.device, dtype=old.dtype)
    embedding.weight.copy_(rows)
    transformer.model.class_embedding = embedding
    old_names = [_class_name(config.id2label, i) for i in range(num_old)] if keep_existing else []
    names = old_names + list(class_names)
    config.num_classes = len(names)
    config.id2label = dict(enumerate(names))
    config.label2id = {name: i for i, name in enumerate(names)}


def _class_name(id2label: dict, class_id: int) -> str:
    """The config's name for `class_id`, or the id as text where it has none (or transformers' `LABEL_i`)."""
    name = id2label.get(class_id)
    return str(class_id) if name is None or name == f"LABEL_{class_id}" else name


# -- LoRA -------------------------------------------------------------------------------------------
def add_generator_lora(transformer, rank: int = 8, alpha: float | None = None, dropout: float = 0.0,
                       train_class_embedding: bool = True):
    """Wrap the generator in a peft LoRA model on every attention and MLP projection; the class
    embedding (a new label set) is trained in full and saved with the adapter when asked."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=rank, lora_alpha=alpha or rank, lora_dropout=dropout, target_modules=list(GENERATOR_LORA_TARGETS),
        modules_to_save=["class_embedding"] if train_class_embedding else None,
    )
    return get_peft_model(transformer, config)


def save_adapter(peft_model, folder: str | os.PathLike) -> Path:
    """`adapter_config.json`, `adapter_model.safetensors` and the label set the adapter was trained on."""
    folder = Path(folder)
    peft_model.save_pretrained(folder)
    labels = _unwrap(peft_model).config.id2label
    (folder / LABELS_FILE).write_text(json.dumps({str(k): v for k, v in labels.items()}, indent=1))
    return folder


def load_adapter(transformer, folder: str | os.PathLike, merge: bool = True):
    """Put the adapter of `folder` on a fresh copy of its base generator: the label set is restored
    first (the class embedding shape), then the weights; `merge` folds LoRA into the base weights
    (`merge_and_unload`) and returns a plain generator, else the peft model."""
    from peft import PeftModel

    folder = Path(folder)
    labels_path = folder / LABELS_FILE
    if not labels_path.is_file():
        raise FileNotFoundError(f"{folder} has no {LABELS_FILE}; expected an adapter saved by save_adapter().")
    labels = json.loads(labels_path.read_text())
    set_classes(transformer, [labels[str(i)] for i in range(len(labels))], keep_existing=False)
    model = PeftModel.from_pretrained(transformer, folder)
    return model.merge_and_unload() if merge else model


# -- tokenizer decoder ------------------------------------------------------------------------------
def decoder_parameters(vqvae) -> list[nn.Parameter]:
    """Freeze the encoder, quantizer and projections into the code space; return the trainable
    decoder side (`post_quant_conv` and `decoder`)."""
    vqvae.requires_grad_(False)
    trainable = [*vqvae.post_quant_conv.parameters(), *vqvae.decoder.parameters()]
    for parameter in trainable:
        parameter.requires_grad_(True)
    return trainable


def decoder_loss(vqvae, schedule, pixel_values: torch.Tensor, degradation_prob: float = 0.2,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """MSE of the reconstruction `vqvae(pixel_values, num_tokens)` (the tokenizer or a DDP wrapper;
    with `decoder_parameters` frozen, gradients reach the decoder only) against `(batch, 3, H, W)`
    images in [-1, 1]; with `degradation_prob` a step decodes a random prefix against the degraded
    target at that prefix's resolution, as tokenizer training does. `schedule`: `vqvae.schedule`."""
    from .training.degradation import degrade

    target = degrade(pixel_values, schedule, degradation_prob, generator)
    reconstruction = vqvae(pixel_values, num_tokens=target.num_tokens).sample
    if reconstruction.shape != target.target.shape:
        raise ValueError(f"reconstruction {tuple(reconstruction.shape)} does not match the target {tuple(target.target.shape)}.")
    return F.mse_loss(reconstruction, target.target)


def load_tokenizer(model: str | os.PathLike, device: str | torch.device = "cpu"):
    """A `DetailFlowTokenizer` from a tokenizer folder, a pipeline folder (its `vqvae/`) or a Hub repo."""
    from .models.tokenizer import DetailFlowTokenizer

    path = Path(model)
    if not path.is_dir():
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(str(model)))
    subfolder = "vqvae" if (path / "model_index.json").is_file() else None
    return DetailFlowTokenizer.from_pretrained(path, subfolder=subfolder).to(device).eval()


__all__ = [
    "GENERATOR_LORA_TARGETS",
    "ImageFolderDataset",
    "add_generator_lora",
    "decoder_loss",
    "decoder_parameters",
    "encode_images",
    "generator_loss",
    "load_adapter",
    "load_tokenizer",
    "save_adapter",
    "set_classes",
]
