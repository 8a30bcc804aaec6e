"""Loading a model by name: a local folder or a Hub repo, of one model or of a whole pipeline."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def load_tokenizer(model: str | os.PathLike, device: str | torch.device = "cpu"):
    """A `DetailFlowTokenizer` from a tokenizer folder, a pipeline folder (its `vqvae/`) or a Hub repo."""
    from .models.tokenizer import DetailFlowTokenizer

    path = Path(model)
    if not path.is_dir():
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(str(model)))
    subfolder = "vqvae" if (path / "model_index.json").is_file() else None
    return DetailFlowTokenizer.from_pretrained(path, subfolder=subfolder).to(device).eval()


__all__ = ["load_tokenizer"]
