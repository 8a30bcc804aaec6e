"""Flags shared by the training scripts and the `Accelerator` they build.

`--config` names a preset of the script (`tiny`, `GPT-L`, ...) or a YAML file; a YAML file may
start from a preset with `preset: NAME` and override any of its keys. Flags left unset (`None`)
take the preset's value (`resolve_hyperparameters`).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import logging
from dataclasses import MISSING
from pathlib import Path

from ..flags import int_range, non_negative_int, positive_float, positive_int

logger = logging.getLogger(__name__)


# numpy's global seed (set by accelerate's `set_seed`, offset per process) must stay below 2**32.
TRAINING_SEED = int_range(0, 2**32 - 1025, what="a seed")


def default_report_to() -> str:
    """`tensorboard` when it (or tensorboardX) is installed, else `none`."""
    installed = importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX")
    return "tensorboard" if installed else "none"


def add_dataset_args(parser):
    """`--dataset_name`/`--train_data_dir` and the column names (trainers and code extraction)."""
    parser.add_argument("--dataset_name", default=None, help="Hub dataset id (default ILSVRC/imagenet-1k)")
    parser.add_argument("--train_data_dir", default=None, help="local imagefolder or parquet folder instead")
    parser.add_argument("--image_column", default=None, help="image column (default: found by name)")
    parser.add_argument("--label_column", default=None, help="label column (default: found by name)")
    return parser


def add_common_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the flags every trainer shares to `parser` and return it."""
    group = parser.add_argument_group("common training flags")
    group.add_argument("--config", default="tiny", help="a preset name or a YAML file (default: tiny)")
    add_dataset_args(group)
    group.add_argument("--output_dir", required=True, help="checkpoints, logs, samples and the final export")
    group.add_argument("--max_train_steps", type=positive_int, default=None, help="optimizer steps (default: preset)")
    group.add_argument(
        "--stop_after_steps",
        type=positive_int,
        default=None,
        help="end this run (with a checkpoint) at this global step without changing the schedule; "
        "continue later with --resume_from_checkpoint latest (time-limited jobs)",
    )
    group.add_argument(
        "--train_batch_size", type=positive_int, default=None, help="per-process batch (default: preset)"
    )
    group.add_argument(
        "--learning_rate", type=positive_float, default=None, help="peak learning rate (default: preset)"
    )
    group.add_argument("--gradient_accumulation_steps", type=positive_int, default=1)
    group.add_argument("--checkpointing_steps", type=positive_int, default=500, help="save a checkpoint every N steps")
    group.add_argument("--checkpoints_total_limit", type=positive_int, default=None, help="keep at most N checkpoints")
    group.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint folder or 'latest'")
    group.add_argument("--seed", type=TRAINING_SEED, default=0)
    group.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), default="no")
    group.add_argument("--report_to", default=default_report_to(), help="tensorboard, wandb, trackio, ..., or none")
    group.add_argument("--logging_steps", type=positive_int, default=10, help="log scalars every N steps")
    group.add_argument("--dataloader_num_workers", type=non_negative_int, default=0)
    group.add_argument(
        "--shuffle_buffer_size", type=positive_int, default=1000, help="rows in the (checkpointed) shuffle buffer"
    )
    group.add_argument("--push_to_hub", action="store_true", help="upload the final export")
    group.add_argument("--hub_model_id", default=None, help="repo id for --push_to_hub")
    return parser


def check_common_args(args: argparse.Namespace):
    """Errors that name the flag, before any work starts (ranges are checked by the flags' types)."""
    output = Path(args.output_dir)
    if output.exists() and not output.is_dir():
        raise ValueError(f"--output_dir {output} exists and is not a folder.")
    if args.push_to_hub and not args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id (the target repo id).")
    if args.dataset_name and args.train_data_dir:
        raise ValueError("give --dataset_name or --train_data_dir, not both.")


def load_preset(name_or_yaml: str, presets: dict[str, dict]) -> dict:
    """A copy of `presets[name]`, or a YAML file's mapping (over `presets[preset]` if it names one)."""
    if name_or_yaml in presets:
        return _deep_copy(presets[name_or_yaml])
    path = Path(name_or_yaml)
    if path.suffix not in (".yaml", ".yml") or not path.is_file():
        raise ValueError(f"--config {name_or_yaml!r} is neither a preset ({sorted(presets)}) nor a YAML file.")
    import yaml

    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"--config {name_or_yaml!r} must hold a mapping, got {type(values).__name__}.")
    base = values.pop("preset", None)
    if base is None:
        return values
    if base not in presets:
        raise ValueError(f"--config {name_or_yaml!r}: preset {base!r} is not one of {sorted(presets)}.")
    return _merge(_deep_copy(presets[base]), values)


def config_from_dict(cls, values, what: str):
    """The dataclass `cls` from a preset/YAML mapping (the one loader of every training config).

    Unknown and missing keys are an error naming them and `what`; a mapping given for a field whose
    default is itself a dataclass builds that dataclass (recursively), a list given for a tuple
    field becomes a tuple (YAML has no tuples).
    """
    if not isinstance(values, dict):
        raise ValueError(f"{what} must be a mapping of keys, got {type(values).__name__}.")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    required = [n for n, f in fields.items() if f.default is MISSING and f.default_factory is MISSING]
    missing = [name for name in required if name not in values]
    if unknown or missing:
        problem = f"unknown keys {unknown}" if unknown else f"missing keys {missing}"
        raise ValueError(f"{what}: {problem}; expected keys among {sorted(fields)} ({required} required).")
    built = {}
    for name, value in values.items():
        field = fields[name]
        default = field.default_factory() if field.default_factory is not MISSING else field.default
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            value = config_from_dict(type(default), value, f"{what} '{name}'")
        elif isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        built[name] = value
    return cls(**built)


def _deep_copy(value):
    return {k: _deep_copy(v) for k, v in value.items()} if isinstance(value, dict) else value


def _merge(base: dict, override: dict) -> dict:
    for key, value in override.items():
        base[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return base


def make_accelerator(args: argparse.Namespace):
    """An `Accelerator` for per-rank streams: a stateful data loader (exact resume), no batch
    dispatching (each rank reads its own split), `--mixed_precision`, `--report_to` trackers with
    logs under `output_dir/logs`, and `--seed` set (offset per process for dropout and sampling)."""
    if importlib.util.find_spec("torchdata") is None:
        raise ImportError(
            "training needs torchdata (StatefulDataLoader, exact resume): pip install 'detailflow-hf[train]'."
        )
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed

    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        dataloader_config=DataLoaderConfiguration(dispatch_batches=False, use_stateful_dataloader=True),
    )
    set_seed(args.seed, device_specific=True)
    return accelerator


__all__ = [
    "add_common_args",
    "config_from_dict",
    "add_dataset_args",
    "check_common_args",
    "default_report_to",
    "load_preset",
    "make_accelerator",
]
