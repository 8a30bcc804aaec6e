"""Writing a deployable Hugging Face Space: the demo app with this package's own source beside it.

A Space installs `requirements.txt` with pip and runs `app.py` from the folder. This package is on
no index a Space can reach, so the folder carries its source (`detailflow_hf/`, importable from the
app's folder) and `requirements.txt` pins its dependencies at the versions installed here, the ones
this copy ran with. Gradio itself comes from the README header's `sdk_version`.

The model the app serves:
- none: the tiny model embedded in the package (CPU is enough);
- a local pipeline folder: copied into the Space as `model/`;
- a Hub repo id, or `original:TOKENIZER,GENERATOR`: named in the README's `models:` and
  `preload_from_hub:`, so the Space downloads it at build time, not on the first request.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import importlib.resources
import json
import os
import re
import shutil
import sys
from pathlib import Path

import yaml

from .hub import is_hub_repo_id
from .loading import model_source
from .training.checkpointing import EXPORT_IGNORE

PACKAGE = Path(__file__).resolve().parent
DISTRIBUTION = "detailflow-hf"
HARDWARE = ("cpu-basic", "zero-a10g")
# Read by the app at start-up (`spaces_demo/app.py`): which model to serve, relative to the folder.
SPACE_CONFIG = "space_config.json"
LOCAL_MODEL_DIR = "model"


def pinned_requirements() -> list[str]:
    """This package's run-time requirements, each pinned to the version installed here (local
    version labels such as `+cpu` dropped: a Space installs the index's build)."""
    pins = []
    for requirement in importlib.metadata.requires(DISTRIBUTION) or []:
        if "extra ==" in requirement:
            continue
        name = re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0)
        version = importlib.metadata.version(name).split("+")[0]
        pins.append(f"{name}=={version}")
    return pins


def _readme(hardware: str, hub_models: list[str]) -> str:
    """The Space's README: the demo's own (header and text), with the header set for this build."""
    source = importlib.resources.files("detailflow_hf.spaces_demo").joinpath("README.md").read_text()
    _, header, body = source.split("---\n", 2)
    meta = yaml.safe_load(header)
    meta["sdk_version"] = importlib.metadata.version("gradio")
    meta["python_version"] = f"{sys.version_info.major}.{sys.version_info.minor}"  # what the pins were made on
    meta["suggested_hardware"] = hardware
    if hub_models:
        meta["models"] = list(hub_models)
        meta["preload_from_hub"] = list(hub_models)
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n" + body


def build_space(output_dir: str | os.PathLike, model: str | None = None, hardware: str = "cpu-basic") -> Path:
    """Write a self-contained Space folder serving `model` (see the module docstring) to `output_dir`,
    which must not exist or be empty. Returns the folder."""
    if hardware not in HARDWARE:
        raise ValueError(f"hardware {hardware!r}: expected one of {', '.join(HARDWARE)}.")
    output_dir = Path(output_dir).resolve()
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise ValueError(f"{output_dir} already exists and is not an empty folder; give a new one.")
    for distribution in (DISTRIBUTION, "gradio"):
        try:
            importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            raise ValueError(
                f"building a Space needs the installed {distribution} distribution: pip install 'detailflow-hf[demo]'."
            ) from None
    source = model_source(model) if model is not None else None
    hub_models = []
    if source is not None and source.repo_id:
        hub_models = [source.repo_id]
    elif source is not None and source.original:
        hub_models = list(source.original)
        for name in hub_models:
            if not is_hub_repo_id(name):
                raise ValueError(f"model {model}: a Space converts releases from Hub repos; {name!r} is not one.")

    # Written aside and moved into place at the end: an interrupted build leaves no half Space.
    staging = output_dir.parent / f".{output_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        _write_space(staging, source, model, hardware, hub_models)
        os.replace(staging, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir


def _write_space(staging: Path, source, model, hardware: str, hub_models: list[str]) -> None:
    demo = importlib.resources.files("detailflow_hf.spaces_demo")
    with importlib.resources.as_file(demo) as demo_dir:
        shutil.copyfile(demo_dir / "app.py", staging / "app.py")
        shutil.copytree(demo_dir / "examples", staging / "examples")
    skip = ["__pycache__", "*.pyc", "spaces_demo"] + (["default_model"] if source is not None else [])
    shutil.copytree(PACKAGE, staging / "detailflow_hf", ignore=shutil.ignore_patterns(*skip))
    served = None
    if source is not None and source.folder:  # the export only: no checkpoints, logs or samples
        shutil.copytree(source.folder, staging / LOCAL_MODEL_DIR, ignore=_ignore_outside_export)
        served = LOCAL_MODEL_DIR
    elif source is not None:
        served = str(model)
    (staging / SPACE_CONFIG).write_text(json.dumps({"model": served}, indent=1) + "\n")
    (staging / "requirements.txt").write_text("\n".join(pinned_requirements()) + "\n")
    (staging / "README.md").write_text(_readme(hardware, hub_models))


def _ignore_outside_export(folder: str, names: list[str]) -> list[str]:
    """For `shutil.copytree`: what a training run leaves beside its export (`EXPORT_IGNORE`)."""
    top = [pattern.split("/")[0] for pattern in EXPORT_IGNORE]
    return [name for name in names if any(fnmatch.fnmatch(name, pattern) for pattern in top)]


__all__ = ["HARDWARE", "build_space", "pinned_requirements"]
