"""Loading a model by name: a local folder or a Hub repo, of one model or of a whole pipeline.

`load_pipeline` is the one way the CLI, the evaluation, the examples and the Space load a pipeline:
no name means the embedded model, a path must exist and hold a pipeline, anything else is a Hub repo
id, and `original:TOKENIZER,GENERATOR` converts a release (once, cached).
"""

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


def load_pipeline(model: str | os.PathLike | None = None, device: str | torch.device | None = None, **kwargs):
    """A `DetailFlowPipeline` by name (see the module docstring), on `device`; `kwargs` go to
    `DetailFlowPipeline.from_pretrained` (e.g. `dtype`). Every problem is a `ValueError` naming `model`."""
    from . import DEFAULT_MODEL
    from .pipelines.pipeline_detailflow import DetailFlowPipeline

    if model is None:
        if DEFAULT_MODEL is None:
            raise ValueError("no model given and this installation has no embedded default model.")
        model = DEFAULT_MODEL
    model = str(model)
    if model.startswith("original:"):
        sources = [part.strip() for part in model.removeprefix("original:").split(",")]
        if len(sources) != 2 or not all(sources):
            raise ValueError(f"{model!r}: expected 'original:TOKENIZER_REPO_OR_DIR,GENERATOR_REPO_OR_DIR'.")
        pipe = DetailFlowPipeline.from_original(*sources, **kwargs)
    else:
        path = Path(model).expanduser()
        if not path.exists() and (model.startswith((".", "/", "~")) or model.count("/") != 1):
            raise ValueError(f"model {model}: no such folder (and not a Hub repo id of the form 'owner/name').")
        if path.exists() and not (path / "model_index.json").is_file():
            raise ValueError(f"model {model}: not a pipeline folder (it has no model_index.json).")
        pipe = DetailFlowPipeline.from_pretrained(str(path) if path.exists() else model, **kwargs)
    return pipe.to(device) if device is not None else pipe


__all__ = ["load_pipeline", "load_tokenizer"]
