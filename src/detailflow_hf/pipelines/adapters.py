"""Adapting a trained generator: a new label set in its class embedding (the classifier-free guidance
null class stays the last row) and LoRA on its projections (peft), saved and restored with the
label set it was trained on and a model card (`library_name: peft`, `base_model`).

A saved adapter folder: peft's `adapter_config.json` and `adapter_model.safetensors` (the LoRA
weights and the whole class embedding, new rows included), `id2label.json`, `README.md`.
`DetailFlowPipeline.save_adapter` / `load_adapter` wrap these for a whole pipeline."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

GENERATOR_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LABELS_FILE = "id2label.json"


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
def add_generator_lora(
    transformer, rank: int = 8, alpha: float | None = None, dropout: float = 0.0, train_class_embedding: bool = True
):
    """Wrap the generator in a peft LoRA model on every attention and MLP projection; the class
    embedding (a new label set) is trained in full and saved with the adapter when asked."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=rank,
        lora_alpha=alpha or rank,
        lora_dropout=dropout,
        target_modules=list(GENERATOR_LORA_TARGETS),
        modules_to_save=["class_embedding"] if train_class_embedding else None,
    )
    return get_peft_model(transformer, config)


def save_adapter(peft_model, folder: str | os.PathLike, base_model: str | None = None) -> Path:
    """`adapter_config.json`, `adapter_model.safetensors`, the label set the adapter was trained on
    (`id2label.json`) and a card naming `base_model` (the pipeline or generator it adapts)."""
    from huggingface_hub import ModelCard, ModelCardData

    folder = Path(folder)
    peft_model.save_pretrained(folder)
    labels = _unwrap(peft_model).config.id2label
    (folder / LABELS_FILE).write_text(json.dumps({str(k): v for k, v in labels.items()}, indent=1))
    data = ModelCardData(library_name="peft", base_model=base_model, tags=["detailflow", "lora", "class-conditional"])
    rank = peft_model.peft_config["default"].r
    names = ", ".join(str(labels[k]) for k in sorted(labels)[:8]) + (", ..." if len(labels) > 8 else "")
    body = (
        f"A LoRA adapter (rank {rank}) for the DetailFlow generator"
        + (f" of `{base_model}`" if base_model else "")
        + f", with its own {len(labels)} classes ({names}).\n\n"
        "```python\nfrom detailflow_hf import load_pipeline\n\n"
        f"pipe = load_pipeline({json.dumps(base_model or 'BASE_PIPELINE')})\n"
        f"pipe.load_adapter({json.dumps(str(folder.name))})  # merged into the generator\n"
        f"images = pipe(class_labels={json.dumps([labels[k] for k in sorted(labels)[:2]])}).images\n```\n"
    )
    ModelCard(f"---\n{data.to_yaml()}\n---\n\n# {folder.name}\n\n{body}").save(folder / "README.md")
    return folder


def load_adapter(transformer, folder: str | os.PathLike, merge: bool = True):
    """Put the adapter of `folder` (or a Hub repo id) on a fresh copy of its base generator: the label
    set is restored first (the class embedding shape), then the weights; `merge` folds LoRA into the
    base weights (`merge_and_unload`) and returns a plain generator, else the peft model."""
    from peft import PeftModel

    folder = Path(folder)
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(str(folder)))
    labels_path = folder / LABELS_FILE
    if not labels_path.is_file():
        raise FileNotFoundError(f"{folder} has no {LABELS_FILE}; expected an adapter saved by save_adapter().")
    labels = json.loads(labels_path.read_text())
    set_classes(transformer, [labels[str(i)] for i in range(len(labels))], keep_existing=False)
    model = PeftModel.from_pretrained(transformer, folder)
    return model.merge_and_unload() if merge else model


__all__ = [
    "GENERATOR_LORA_TARGETS",
    "LABELS_FILE",
    "add_generator_lora",
    "load_adapter",
    "save_adapter",
    "set_classes",
]
