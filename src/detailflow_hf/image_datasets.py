"""Labelled image datasets: a Hub dataset or a local folder (imagefolder or parquet), with the image
and label columns found by name; streamed for training and evaluation, or in memory for the small
sets fine-tuning uses."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .pipelines.image_processing import center_crop_arr, open_image, to_tensor

DEFAULT_DATASET = "ILSVRC/imagenet-1k"
IMAGE_COLUMNS = ("image", "img", "jpg", "png", "webp")
LABEL_COLUMNS = ("label", "labels", "cls", "class")


def load_image_stream(
    dataset_name: str | None = None,
    train_data_dir: str | None = None,
    split: str = "train",
    image_column: str | None = None,
    label_column: str | None = None,
    streaming: bool = True,
):
    """Load an image classification dataset with columns renamed to `image` (undecoded) and `label`.

    Args:
        dataset_name: a Hub dataset id (default `ILSVRC/imagenet-1k`) or a local builder/path.
        train_data_dir: a local folder instead: `*.parquet` files are read with the `parquet`
            builder, anything else as an `imagefolder` (class = sub-folder name).
        image_column / label_column: source column names; found among common names if omitted.

    Returns:
        a `datasets.IterableDataset` (`Dataset` with `streaming=False`) whose `image` column is
        `Image(decode=False)` (`{"bytes", "path"}`), so a corrupt file fails in our transform, where it
        is skipped and counted, not inside `datasets`.
    """
    from datasets import Image as ImageFeature
    from datasets import load_dataset

    if dataset_name and train_data_dir:
        raise ValueError(f"give --dataset_name ({dataset_name!r}) or --train_data_dir ({train_data_dir!r}), not both.")
    if train_data_dir:
        folder = Path(train_data_dir)
        if not folder.is_dir():
            raise ValueError(f"--train_data_dir {train_data_dir!r} is not a directory.")
        parquet = sorted(str(p) for p in folder.rglob("*.parquet"))
        if parquet:
            ds = load_dataset("parquet", data_files={split: parquet}, split=split, streaming=streaming)
        else:
            ds = load_dataset("imagefolder", data_dir=str(folder), split=split, streaming=streaming)
    else:
        ds = load_dataset(dataset_name or DEFAULT_DATASET, split=split, streaming=streaming)
    ds = _rename(ds, image_column, IMAGE_COLUMNS, "image")
    ds = _rename(ds, label_column, LABEL_COLUMNS, "label")
    return ds.cast_column("image", ImageFeature(decode=False))


def _rename(ds, given: str | None, candidates: tuple[str, ...], target: str):
    columns = list(ds.features or {}) or list(ds.column_names or [])
    name = given or next((c for c in candidates if c in columns), None)
    if name is None or name not in columns:
        raise ValueError(
            f"no {target} column: "
            f"{'--' + target + '_column ' + repr(given) if given else 'none of ' + str(candidates)} "
            f"in the dataset's columns {columns}."
        )
    return ds if name == target else ds.rename_column(name, target)


def class_names(dataset) -> list[str] | None:
    """Label names of a dataset's `label` column (a `ClassLabel`), for a generator's `id2label`;
    `None` when the column carries bare integers."""
    from datasets import ClassLabel

    feature = (dataset.features or {}).get("label")
    return list(feature.names) if isinstance(feature, ClassLabel) else None


class ImageFolderDataset(torch.utils.data.Dataset):
    """A small labelled image set (imagefolder or parquet via `load_image_stream`, not streamed),
    centre-cropped to `size`: items `{"pixel_values": (3, size, size) in [-1, 1], "label": ()}`."""

    def __init__(self, data_dir: str | os.PathLike, size: int, split: str = "train"):
        self.rows = load_image_stream(train_data_dir=str(data_dir), split=split, streaming=False)
        self.class_names = class_names(self.rows) or [str(i) for i in sorted(set(self.rows["label"]))]
        self.size = size

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        row = self.rows[index]
        image = center_crop_arr(open_image(row["image"]), self.size)
        return {"pixel_values": to_tensor(image), "label": torch.tensor(int(row["label"]))}


__all__ = ["DEFAULT_DATASET", "ImageFolderDataset", "class_names", "load_image_stream"]
