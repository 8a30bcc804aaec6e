"""Streamed training data: `datasets` image streams, the original's crop/flip augmentation, and a
checkpointable shuffle buffer so that a resumed run reads exactly the examples an uninterrupted
one would.

    load_image_stream (datasets IterableDataset, undecoded images)
      -> split_dataset_by_node(rank, world)
      -> ShuffledStream: seeded shuffle buffer + per-example transform (decode, crop, flip, [-1, 1])
      -> {"pixel_values": (3, H, W) float32 in [-1, 1], "label": int64}

`datasets`' own `IterableDataset.shuffle` loses its buffer on `load_state_dict` (documented), so the
buffer lives in `ShuffledStream`, whose `state_dict()` holds the source position, the buffered
(still undecoded) rows and the random generator: a `torchdata` `StatefulDataLoader` (accelerate's
`use_stateful_dataloader=True`) checkpoints it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..image_datasets import load_image_stream
from ..pipelines.image_processing import center_crop_arr, open_image, random_crop_arr, to_tensor

logger = logging.getLogger(__name__)

IMAGENET_TRAIN_IMAGES = 1_281_167  # ILSVRC-2012 train: an "epoch" in the original's schedules
DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError)


# -- augmentation (ADM's crops, `image_processing`) -----------------------------------------------
@dataclass
class ImageTransform:
    """Training augmentation: random (or centre) crop to `size`, optional horizontal flip, [-1, 1]."""

    size: int
    random_crop: bool = True
    hflip: bool = True

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> torch.Tensor:
        image = image.convert("RGB")
        image = random_crop_arr(image, self.size, rng) if self.random_crop else center_crop_arr(image, self.size)
        if self.hflip and rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        return to_tensor(image)


def image_name(row: dict) -> str:
    """How a warning names a row: its file path when known, and its position in this process's stream."""
    value = row.get("image")
    path = value.get("path") if isinstance(value, dict) else None
    where = f"row {row.get('_row', '?')} of this process's stream"
    return f"{path!r} ({where})" if path else where


# -- the checkpointable stream ----------------------------------------------------------------------
# A stream stops with an error after this many undecodable images in a row (a dataset that is all
# or mostly broken must not spin forever); per-file warnings stop after the first few.
MAX_CONSECUTIVE_SKIPS = 1000
LOGGED_SKIPS = 10


@dataclass
class SkipCounter:
    """Rows dropped because their image could not be decoded; the last one is named.

    The first `LOGGED_SKIPS` are logged one by one, later ones only at every power of ten.
    """

    count: int = 0
    last: str | None = None
    consecutive: int = 0

    def record(self, name: str, error: Exception):
        self.count += 1
        self.consecutive += 1
        self.last = name
        if self.count <= LOGGED_SKIPS:
            logger.warning("skipped undecodable image %s: %s (%d skipped so far)", name, error, self.count)
        elif math.log10(self.count).is_integer():
            logger.warning("%d undecodable images skipped so far (last: %s: %s)", self.count, name, error)

    def record_success(self):
        self.consecutive = 0


class ShuffledStream(torch.utils.data.IterableDataset):
    """A seeded shuffle buffer over a `datasets` stream, then `transform(row, rng) -> dict | None`.

    Loops over the source forever (`set_epoch(e)` at each pass). `transform` returning `None`
    drops the row. `state_dict()` holds everything needed to continue exactly: the source's own
    state, the buffered rows, the generator state, the epoch and the counters.

    Args:
        source: a `datasets.IterableDataset` (already split per rank).
        transform: `(row, rng) -> example dict or None`; may raise one of `DECODE_ERRORS` for a bad
            image, which is counted in `skipped` and named in a warning (the first few). A whole
            pass, or `MAX_CONSECUTIVE_SKIPS` rows in a row, without a decodable image stops the
            stream with an error naming `name`.
        buffer_size: rows held for shuffling (`<= 1`: no shuffling).
        seed: seeds the generator (per data-loader worker: `seed + worker_id`).
        name: how errors name the data (e.g. the dataset id or folder).
    """

    def __init__(self, source, transform: Callable, buffer_size: int, seed: int, name: str = "the training stream"):
        super().__init__()
        self.source, self.transform, self.name = source, transform, name
        self.buffer_size, self.seed = buffer_size, seed
        self.skipped = SkipCounter()
        self._reset()

    def _reset(self):
        self.epoch, self.rows_read, self.buffer, self._rng_state = 0, 0, [], None

    def _rng(self) -> np.random.Generator:
        worker = torch.utils.data.get_worker_info()
        rng = np.random.default_rng(self.seed + (worker.id if worker else 0))
        if self._rng_state is not None:
            rng.bit_generator.state = self._rng_state
        return rng

    def __iter__(self):
        rng = self._rng()
        whole_pass = self.rows_read == 0 and not self.buffer  # this iterator sees the pass from its start
        while True:
            self.source.set_epoch(self.epoch)
            emitted = 0
            for row in self.source:
                self.buffer.append({**row, "_row": self.rows_read})
                self.rows_read += 1
                if len(self.buffer) >= max(self.buffer_size, 1):
                    example = self._emit(rng)
                    if example is not None:
                        emitted += 1
                        yield example
            while self.buffer:
                example = self._emit(rng)
                if example is not None:
                    emitted += 1
                    yield example
            if self.rows_read == 0:
                raise ValueError(f"{self.name} is empty (no rows for this process).")
            if whole_pass and emitted == 0:
                raise ValueError(
                    f"no image of {self.name} could be decoded in a whole pass ({self.skipped.count} files "
                    f"skipped, last: {self.skipped.last})."
                )
            self.epoch, whole_pass = self.epoch + 1, True

    def _emit(self, rng: np.random.Generator) -> dict | None:
        """Pop a random buffered row and transform it; keep the generator state in step."""
        index = int(rng.integers(len(self.buffer))) if len(self.buffer) > 1 else 0
        row = self.buffer[index]
        self.buffer[index] = self.buffer[-1]
        self.buffer.pop()
        try:
            example = self.transform(row, rng)
        except DECODE_ERRORS as error:
            self.skipped.record(image_name(row), error)
            example = None
            if self.skipped.consecutive >= MAX_CONSECUTIVE_SKIPS:
                raise ValueError(
                    f"{self.skipped.consecutive} images of {self.name} in a row could not be decoded "
                    f"({self.skipped.count} skipped in all, last: {self.skipped.last}: {error})."
                ) from None
        else:
            self.skipped.record_success()
        self._rng_state = rng.bit_generator.state
        return example

    def state_dict(self) -> dict:
        return {
            "source": self.source.state_dict(),
            "buffer": list(self.buffer),
            "rng": self._rng_state,
            "epoch": self.epoch,
            "rows_read": self.rows_read,
            "skipped": self.skipped.count,
        }

    def load_state_dict(self, state: dict):
        self.source.load_state_dict(state["source"])
        self.buffer = list(state["buffer"])
        self._rng_state = state["rng"]
        self.epoch, self.rows_read = state["epoch"], state["rows_read"]
        self.skipped.count = state["skipped"]


def make_loader(stream: ShuffledStream, batch_size: int, num_workers: int = 0):
    """A `torchdata` `StatefulDataLoader` over this process's stream. Keep it out of
    `accelerator.prepare` and checkpoint it per process (`save_checkpoint(..., per_process=[loader])`):
    the stream is already split per rank, and accelerate writes one shared loader state for all ranks.

    The loader draws its per-iterator base seed from its own generator, not the global one: a resumed
    run creates its iterator after the random states are restored, and must not shift them."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    generator = torch.Generator().manual_seed(stream.seed)
    return StatefulDataLoader(stream, batch_size=batch_size, num_workers=num_workers, generator=generator)


def rank_seed(seed: int, rank: int) -> int:
    """The stream seed of process `rank` (apart by 1000, so data-loader workers `seed + worker` never collide)."""
    return seed + 1000 * rank


def _rank_and_world(accelerator) -> tuple[int, int]:
    return (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)


def split_for_process(ds, accelerator=None):
    """This process's part of a stream (`split_dataset_by_node`: whole shards when the shard count
    divides evenly, else every `world`-th row)."""
    from datasets.distributed import split_dataset_by_node

    rank, world = _rank_and_world(accelerator)
    return ds if world == 1 else split_dataset_by_node(ds, rank=rank, world_size=world)


def image_example_transform(transform: ImageTransform) -> Callable:
    """`(row, rng) -> {"pixel_values", "label"}` for `ShuffledStream` (decode errors propagate)."""

    def apply(row: dict, rng: np.random.Generator) -> dict:
        pixels = transform(open_image(row["image"]), rng)
        return {"pixel_values": pixels, "label": torch.tensor(int(row["label"]))}

    return apply


def build_train_stream(
    *,
    resolution: int,
    seed: int,
    accelerator=None,
    dataset_name: str | None = None,
    train_data_dir: str | None = None,
    split: str = "train",
    image_column: str | None = None,
    label_column: str | None = None,
    random_crop: bool = True,
    hflip: bool = True,
    shuffle_buffer_size: int = 1000,
) -> ShuffledStream:
    """The training image stream of this process: load, split per rank (a partition of the rows),
    shuffle (seeded per rank), decode + augment; bad images are skipped and counted.

    Yields `{"pixel_values": (3, resolution, resolution) float32 in [-1, 1], "label": int64 ()}`.
    """
    ds = load_image_stream(dataset_name, train_data_dir, split, image_column, label_column, streaming=True)
    ds = split_for_process(ds, accelerator)
    transform = image_example_transform(ImageTransform(resolution, random_crop=random_crop, hflip=hflip))
    rank, _ = _rank_and_world(accelerator)
    name = repr(dataset_name or train_data_dir)
    return ShuffledStream(ds, transform, buffer_size=shuffle_buffer_size, seed=rank_seed(seed, rank), name=name)


__all__ = [
    "DECODE_ERRORS",
    "IMAGENET_TRAIN_IMAGES",
    "rank_seed",
    "image_name",
    "ImageTransform",
    "ShuffledStream",
    "SkipCounter",
    "build_train_stream",
    "make_loader",
    "split_for_process",
]
