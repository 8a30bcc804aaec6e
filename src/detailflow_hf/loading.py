"""Loading a model by name: a local folder or a Hub repo, of one model or of a whole pipeline.

`load_pipeline` is the one way the CLI, the evaluation, the examples and the Space load a pipeline:
no name means the embedded model, a path must exist and hold a pipeline, anything else is a Hub repo
id, and `original:TOKENIZER,GENERATOR` converts a release (once, cached).
"""

from __future__ import annotations

import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch


def load_tokenizer(model: str | os.PathLike, device: str | torch.device = "cpu"):
    """A `DetailFlowTokenizer` from a tokenizer folder, a pipeline folder (its `vqvae/`) or a Hub repo."""
    from .models.tokenizer import DetailFlowTokenizer

    return DetailFlowTokenizer.from_pretrained(_component_folder(model, "vqvae")).to(device).eval()


def load_generator(model: str | os.PathLike, device: str | torch.device = "cpu"):
    """A `DetailFlowForImageGeneration` from a generator folder, a pipeline folder (its `transformer/`) or a
    Hub repo."""
    from .models.modeling_ar import DetailFlowForImageGeneration

    return DetailFlowForImageGeneration.from_pretrained(_component_folder(model, "transformer")).to(device)


def _component_folder(model: str | os.PathLike, component: str) -> Path:
    """The folder of one model: `model` itself, or its `component/` when it is a pipeline folder; a name that
    is no local folder is a Hub repo, downloaded first."""
    path = Path(model)
    if not path.is_dir():
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(str(model)))
    return path / component if (path / "model_index.json").is_file() else path


DOWNLOAD_ARGS = ("revision", "cache_dir", "token", "local_files_only", "force_download")
# What `DetailFlowPipeline.from_pretrained` (diffusers) honours for this pipeline; anything else it would
# only log and ignore, so it is refused here instead.
PRETRAINED_LOADING_ARGS = (
    "dtype",
    "torch_dtype",
    "variant",
    "use_safetensors",
    "device_map",
    "max_memory",
    "offload_folder",
    "offload_state_dict",
    "low_cpu_mem_usage",
    "vqvae",
    "transformer",
    "id2label",
)


@dataclass(frozen=True)
class ModelSource:
    """What a model name means: a local pipeline `folder`, a Hub `repo_id`, or an original release
    (`original`: tokenizer and generator repos or folders)."""

    folder: Path | None = None
    repo_id: str | None = None
    original: tuple[str, str] | None = None


def model_source(model: str | os.PathLike | None) -> ModelSource:
    """The one reading of a model name (see the module docstring); a `ValueError` naming it otherwise."""
    from . import DEFAULT_MODEL
    from .hub import is_hub_repo_id

    if model is None:
        if DEFAULT_MODEL is None:
            raise ValueError("no model given and this installation has no embedded default model.")
        model = DEFAULT_MODEL
    model = str(model)
    if model.startswith("original:"):
        sources = [part.strip() for part in model.removeprefix("original:").split(",")]
        if len(sources) != 2 or not all(sources):
            raise ValueError(f"{model!r}: expected 'original:TOKENIZER_REPO_OR_DIR,GENERATOR_REPO_OR_DIR'.")
        return ModelSource(original=(sources[0], sources[1]))
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise ValueError(f"model {model}: not a pipeline folder (it has no model_index.json).")
        return ModelSource(folder=path)
    if not is_hub_repo_id(model):
        raise ValueError(f"model {model}: no such folder (and not a Hub repo id of the form 'owner/name').")
    return ModelSource(repo_id=model)


def load_pipeline(model: str | os.PathLike | None = None, device: str | torch.device | None = None, **kwargs):
    """A `DetailFlowPipeline` by name (see the module docstring), on `device`.

    `kwargs`: for every layout `dtype`, `variant` and ready `vqvae`/`transformer` components; for Hub
    repos also `revision`, `token`, `cache_dir`, `local_files_only`, `force_download`; for native
    folders and repos the rest of `PRETRAINED_LOADING_ARGS` (e.g. `device_map`); for `original:`
    sources the arguments of `conversion.load_original` (its `cache_dir` is where conversions are
    kept). An argument a layout cannot honour is a `ValueError` naming it, checked before any
    download, as is every other problem."""
    from .hub import CODE_EXPORT_LOADING_ARGS, check_loading_arguments, is_code_export, load_code_export
    from .pipelines.pipeline_detailflow import DetailFlowPipeline

    source = model_source(model)
    model = model if model is not None else "(the embedded model)"  # for the messages
    if source.original:
        from .conversion.original import load_original

        own = [p.name for p in inspect.signature(load_original).parameters.values() if p.kind is p.KEYWORD_ONLY]
        check_loading_arguments(f"model {model}", kwargs, (*own, *PRETRAINED_LOADING_ARGS), "an original release")
        pipe = load_original(*source.original, **kwargs)
        return pipe.to(device) if device is not None else pipe
    download = {k: kwargs.pop(k) for k in DOWNLOAD_ARGS if k in kwargs}
    if source.folder and download:
        raise ValueError(f"model {model}: {', '.join(download)} apply to Hub repos, and this is a local folder.")
    check_loading_arguments(f"model {model}", kwargs, PRETRAINED_LOADING_ARGS, "a pipeline")
    if source.folder:
        index_file = source.folder / "model_index.json"
    else:
        from huggingface_hub import hf_hub_download

        index_file = Path(hf_hub_download(source.repo_id, "model_index.json", **download))
    if is_code_export(json.loads(index_file.read_text())):
        check_loading_arguments(f"model {model}", kwargs, CODE_EXPORT_LOADING_ARGS, "a pipeline saved with its code")
        folder = source.folder
        if folder is None:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(source.repo_id, **download))
        pipe = load_code_export(folder, **kwargs)
    else:
        pipe = DetailFlowPipeline.from_pretrained(str(source.folder or source.repo_id), **download, **kwargs)
    return pipe.to(device) if device is not None else pipe


__all__ = ["ModelSource", "load_generator", "load_pipeline", "load_tokenizer", "model_source"]
