"""Atomic training checkpoints (`accelerator.save_state` folders) and the generator's EMA.

Layout: `output_dir/checkpoints/checkpoint-<step>/`, each holding accelerate's state files, one
`process_<rank>_state.pt` per process (its data loader's position: accelerate's own
`dl_state_dict.bin` is written by every rank to the same file, so per-rank streams keep theirs
here), `shared_state.pt` (objects every rank holds alike: lr schedules, the EMA), plus a
`COMPLETE` marker (`{"step": step}`).

Nothing is lost: a checkpoint is written into a hidden sibling `.checkpoint-<step>.partial/`,
marked, then renamed into place, and only then are old checkpoints pruned (each renamed to a
hidden `.deleting` name before it is removed). A run killed at any instant therefore leaves every
complete checkpoint it had, or the new one; a `.partial` folder is never listed, resumed from, or
counted towards the limit.

Nothing is executed: every state file is read with `torch.load(weights_only=True)` and an
allow-list of the few non-tensor types the states need (numpy arrays and dtypes of random
states); a file holding any other pickled object is refused, naming it, before anything is
restored. Objects are therefore never registered with `accelerator.register_for_checkpointing`
(accelerate reads those back with `weights_only=False`).
"""

from __future__ import annotations

import codecs
import json
import logging
import os
import re
import shutil
import zipfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
MARKER = "COMPLETE"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_dir(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / CHECKPOINTS


def is_complete(path: str | os.PathLike) -> bool:
    """A finished checkpoint folder: named `checkpoint-<step>` and carrying the marker."""
    path = Path(path)
    return bool(_NAME.match(path.name)) and (path / MARKER).is_file()


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under `output_dir/checkpoints`, oldest (lowest step) first."""
    root = checkpoint_dir(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and is_complete(p)]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The complete checkpoint with the highest step, or `None`."""
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def checkpoint_step(path: str | os.PathLike) -> int:
    """The global step stored in a complete checkpoint's marker."""
    path = Path(path)
    if not is_complete(path):
        raise ValueError(
            f"{str(path)!r} is not a complete checkpoint (a checkpoint-<step> folder with a {MARKER} file)."
        )
    return int(json.loads((path / MARKER).read_text())["step"])


def check_total_limit(total_limit: int | None):
    if total_limit is not None and (
        isinstance(total_limit, bool) or not isinstance(total_limit, int) or total_limit < 1
    ):
        raise ValueError(f"checkpoints_total_limit={total_limit!r} must be an integer >= 1 (or None for no limit).")


def _remove(folder: Path):
    """Rename out of the listing first (atomic), then delete: a half-deleted folder never looks complete."""
    doomed = folder.with_name(f".{folder.name.lstrip('.')}.deleting")
    os.replace(folder, doomed)
    shutil.rmtree(doomed)


def prune_checkpoints(output_dir: str | os.PathLike, total_limit: int | None, keep: Path | None = None):
    """Delete the oldest complete checkpoints beyond `total_limit` (never `keep`), and the leftovers of
    killed runs (`.partial` and `.deleting` folders). `None` keeps every checkpoint."""
    check_total_limit(total_limit)
    root = checkpoint_dir(output_dir)
    for leftover in [*root.glob(".checkpoint-*.partial"), *root.glob(".checkpoint-*.deleting")]:
        shutil.rmtree(leftover, ignore_errors=True)
    if total_limit is None:
        return
    found = [p for p in list_checkpoints(output_dir) if keep is None or p.resolve() != keep.resolve()]
    keep_others = total_limit - (1 if keep is not None else 0)
    for old in found[: max(0, len(found) - keep_others)]:
        logger.info("removing old checkpoint %s", old)
        _remove(old)


def process_state_file(path: str | os.PathLike, process_index: int) -> Path:
    return Path(path) / f"process_{process_index}_state.pt"


SHARED_STATE = "shared_state.pt"
# The only non-tensor objects training states hold: numpy arrays/dtypes (random states, as accelerate
# stores them) and `codecs.encode`, which numpy's legacy pickles use to rebuild byte strings.
SAFE_GLOBALS = [np.ndarray, np.dtype, codecs.encode, type(np.dtype(np.uint32)), type(np.dtype(np.float64))]
try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct
SAFE_GLOBALS.append(_reconstruct)
STATE_SUFFIXES = (".pt", ".bin", ".pkl", ".pth")


def safe_load(file: str | os.PathLike, mmap: bool = False):
    """`torch.load` a state file allowing tensors, plain Python containers and `SAFE_GLOBALS` only;
    anything else raises a `ValueError` naming the file (and nothing in it runs). `mmap` maps the
    tensors instead of reading them (zip-format files)."""
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:  # UnpicklingError, truncated zip, ...
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"{file} is not a safe state file ({reason}); refusing to load it: only tensors, numbers, "
            "strings, lists and dicts are read back, never arbitrary pickled objects."
        ) from None


def check_state_files(path: str | os.PathLike):
    """Read every pickle-based file of a checkpoint with `safe_load` before anything is restored
    (accelerate's own files included: optimizer, schedulers, random states, loader states)."""
    for file in sorted(Path(path).iterdir()):
        if file.is_file() and file.suffix in STATE_SUFFIXES:
            # the unpickler runs in full, but tensors are only mapped: an optimizer state is not read twice
            safe_load(file, mmap=zipfile.is_zipfile(file))


def save_checkpoint(
    accelerator,
    output_dir: str | os.PathLike,
    step: int,
    total_limit: int | None = None,
    per_process: Sequence = (),
    shared: Sequence = (),
) -> Path:
    """`accelerator.save_state` into `output_dir/checkpoints/checkpoint-<step>`, atomically.

    Every process must call it (each saves its random states, and the `state_dict()` of each
    object in `per_process`, e.g. its `StatefulDataLoader`); the main process also saves the
    `state_dict()` of each object in `shared` (the same on every rank: lr schedules, the EMA),
    marks and renames, and only then prunes to `total_limit`. Returns the final path.
    """
    check_total_limit(total_limit)
    root = checkpoint_dir(output_dir)
    final, partial = root / f"checkpoint-{step}", root / f".checkpoint-{step}.partial"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)  # a killed run's attempt at this step
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    if per_process:
        torch.save([obj.state_dict() for obj in per_process], process_state_file(partial, accelerator.process_index))
    if shared and accelerator.is_main_process:
        torch.save([obj.state_dict() for obj in shared], partial / SHARED_STATE)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (partial / MARKER).write_text(json.dumps({"step": step}))
        if final.exists():  # the same step saved again: the old copy leaves the listing only after the new is in
            os.replace(final, final.with_name(f".{final.name}.deleting"))
        os.replace(partial, final)
        logger.info("saved checkpoint %s", final)
        prune_checkpoints(output_dir, total_limit, keep=final)
    accelerator.wait_for_everyone()
    return final


def resolve_resume(output_dir: str | os.PathLike, resume_from_checkpoint: str | None) -> Path | None:
    """`--resume_from_checkpoint`: `None` -> None; `"latest"` -> the newest complete checkpoint
    (None, with a log line, if there is none yet); a path -> that checkpoint, which must be complete."""
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint == "latest":
        path = latest_checkpoint(output_dir)
        if path is None:
            logger.info("no checkpoint in %s yet: starting from scratch", checkpoint_dir(output_dir))
        return path
    path = Path(resume_from_checkpoint)
    if not is_complete(path):
        raise ValueError(
            f"--resume_from_checkpoint {resume_from_checkpoint!r} is not a complete checkpoint "
            f"(a checkpoint-<step> folder with a {MARKER} file); use 'latest' or one of "
            f"{[str(p) for p in list_checkpoints(output_dir)]}."
        )
    return path


def _read_states(path: Path, name: str, objects: Sequence, hint: str) -> list:
    file = path / name
    if not file.is_file():
        raise ValueError(f"{str(path)!r} has no {name}: {hint}")
    states = safe_load(file)
    if not isinstance(states, list) or len(states) != len(objects):
        raise ValueError(
            f"{file} holds {len(states) if isinstance(states, list) else type(states).__name__} states; "
            f"expected a list of {len(objects)}."
        )
    return states


def load_checkpoint(accelerator, path: str | os.PathLike, per_process: Sequence = (), shared: Sequence = ()) -> int:
    """Restore everything `save_checkpoint` stored (the `per_process` objects from this process's
    file and the `shared` ones, in the same order); returns the global step. Every state file is
    checked to be safe to read before anything is restored."""
    path = Path(path)
    step = checkpoint_step(path)
    check_state_files(path)
    per_states = shared_states = []
    if per_process:
        per_states = _read_states(
            path,
            process_state_file(path, accelerator.process_index).name,
            per_process,
            "it was saved by a run with fewer processes or without per-process state; "
            "resume with the same number of processes.",
        )
    if shared:
        shared_states = _read_states(
            path, SHARED_STATE, shared, "it was saved without the schedules/EMA this run needs."
        )
    accelerator.load_state(str(path))
    for obj, state in zip([*per_process, *shared], [*per_states, *shared_states], strict=True):
        obj.load_state_dict(state)
    logger.info("resumed from %s (step %d)", path, step)
    return step


class EMA:
    """Exponential moving average of parameters with a constant decay, as the original's
    `update_ema` (`ema = decay * ema + (1 - decay) * param`, initialised as a copy, updated every
    step; diffusers' `EMAModel` instead warms its decay up). Checkpoint it as a `shared` object of
    `save_checkpoint`.

    Args:
        parameters: the parameters to track (their order is the state's order).
        decay: the constant decay (0.9999 in the original).
    """

    def __init__(self, parameters: Iterable[torch.nn.Parameter], decay: float = 0.9999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay={decay} must be in [0, 1).")
        self.decay = decay
        self.shadow = [p.detach().clone().float() for p in parameters]
        self._stored: list[torch.Tensor] | None = None

    @torch.no_grad()
    def step(self, parameters: Iterable[torch.nn.Parameter]):
        for shadow, param in zip(self.shadow, parameters, strict=True):
            shadow.lerp_(param.detach().to(shadow.device, torch.float32), 1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, parameters: Iterable[torch.nn.Parameter]):
        for shadow, param in zip(self.shadow, parameters, strict=True):
            param.copy_(shadow.to(param.device, param.dtype))

    def store(self, parameters: Iterable[torch.nn.Parameter]):
        self._stored = [p.detach().clone() for p in parameters]

    @torch.no_grad()
    def restore(self, parameters: Iterable[torch.nn.Parameter]):
        if self._stored is None:
            raise RuntimeError("EMA.restore() called without a matching store().")
        for saved, param in zip(self._stored, parameters, strict=True):
            param.copy_(saved)
        self._stored = None

    def to(self, device):
        self.shadow = [s.to(device) for s in self.shadow]
        return self

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": list(self.shadow)}

    def load_state_dict(self, state: dict):
        if len(state["shadow"]) != len(self.shadow):
            raise ValueError(f"EMA state holds {len(state['shadow'])} tensors, this model has {len(self.shadow)}.")
        self.decay = state["decay"]
        self.shadow = [s.to(t.device, t.dtype) for s, t in zip(state["shadow"], self.shadow, strict=True)]


def export_with_ema(ema: EMA, model: torch.nn.Module, save: Callable[[], None]):
    """Run `save()` (e.g. a pipeline's `save_pretrained`) with the EMA weights swapped into `model`,
    then put the training weights back: store -> copy_to -> save -> restore."""
    params = list(model.parameters())
    ema.store(params)
    ema.copy_to(params)
    try:
        save()
    finally:
        ema.restore(params)


EXPORT_IGNORE = ["checkpoints/*", "logs/*", "samples/*", "data_stats/*", ".*"]


def push_export(output_dir: str | os.PathLike, repo_id: str, api=None, commit_message: str = "Upload trained model"):
    """Upload an export folder (without checkpoints, logs and samples) to the Hub repo `repo_id`.
    `api` is a `huggingface_hub.HfApi`-like object (default: a new `HfApi()`)."""
    from ..hub import push_folder

    return push_folder(output_dir, repo_id, api=api, commit_message=commit_message, ignore_patterns=EXPORT_IGNORE)


__all__ = [
    "EMA",
    "push_export",
    "checkpoint_step",
    "export_with_ema",
    "is_complete",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "prune_checkpoints",
    "resolve_resume",
    "safe_load",
    "save_checkpoint",
]
