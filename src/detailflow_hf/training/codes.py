"""Extracted token codes as a `datasets` dataset of parquet shards (docs/algorithm.md §6.5).

    codes_dir/
      codes_info.json                  tokenizer config, code shape, class names
      data/codes-<shard>.parquet       columns: codes (crops, N, 3|1) int16/int32, label int64, shard int32

Each extraction process writes its own shards (numbered `part * world + rank`, so names never
collide); a shard is written to a temporary name and renamed, so a killed extraction never leaves
a half-written parquet file that the trainer would read. The generator trainer streams the shards
and picks one crop per access, as the original dataset does.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .data import ShuffledStream, rank_seed, split_for_process

INFO_FILE = "codes_info.json"
DATA_DIR = "data"


@dataclass
class CodesInfo:
    """What the generator needs to know about a codes folder.

    Args:
        tokenizer_config: the tokenizer's `config` (to rebuild or check it).
        vocab_size, num_tokens, group_size, causal_num: the code sequence shape and schedule.
        num_classes: labels are `0 .. num_classes - 1`.
        class_names: one per class, or `None` (integer labels).
        crops: codes stored per image (10 with ten-crop, else 2: centre + its mirror image; half without mirrors),
            then any thumbnail-prefix codes (`training.thumbnail_prefixes`); the trainer picks one uniformly.
        triples: `True` if each code holds `[clean, noisy input, label]` (self-correction), else `[clean]`.
        image_size: the resolution the tokenizer encoded.
    """

    tokenizer_config: dict
    vocab_size: int
    num_tokens: int
    group_size: int
    causal_num: int
    num_classes: int
    class_names: list[str] | None
    crops: int
    triples: bool
    image_size: int

    @property
    def channels(self) -> int:
        return 3 if self.triples else 1

    @property
    def dtype(self) -> str:
        return "int16" if self.vocab_size <= np.iinfo(np.int16).max + 1 else "int32"

    def features(self):
        from datasets import Array3D, Features, Value

        return Features(
            {
                "codes": Array3D(shape=(self.crops, self.num_tokens, self.channels), dtype=self.dtype),
                "label": Value("int64"),
                "shard": Value("int32"),
            }
        )


def codes_info_for(tokenizer, num_classes: int, class_names: list[str] | None, crops: int, triples: bool) -> CodesInfo:
    config = dict(tokenizer.config)
    return CodesInfo(
        tokenizer_config={k: v for k, v in config.items() if not k.startswith("_")},
        vocab_size=config["codebook_size"],
        num_tokens=config["num_latent_tokens"],
        group_size=tokenizer.schedule.group_size,
        causal_num=tokenizer.schedule.causal_num,
        num_classes=num_classes,
        class_names=class_names,
        crops=crops,
        triples=triples,
        image_size=config["image_size"],
    )


def write_codes_info(codes_dir: str | os.PathLike, info: CodesInfo):
    path = Path(codes_dir) / INFO_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(info), indent=2))


def read_codes_info(codes_dir: str | os.PathLike) -> CodesInfo:
    path = Path(codes_dir) / INFO_FILE
    if not path.is_file():
        raise ValueError(f"{str(codes_dir)!r} is not a codes folder: no {INFO_FILE} (run examples/extract_codes.py).")
    return CodesInfo(**json.loads(path.read_text()))


def shard_files(codes_dir: str | os.PathLike) -> list[str]:
    files = sorted(str(p) for p in (Path(codes_dir) / DATA_DIR).glob("codes-*.parquet"))
    if not files:
        raise ValueError(f"no codes shards in {str(Path(codes_dir) / DATA_DIR)!r}.")
    return files


class CodesWriter:
    """Buffers `(codes, label)` rows of one process and writes them as parquet shards.

    Args:
        codes_dir: the output folder.
        info: the shape of every row.
        rank, world_size: this process among the extraction processes (shard numbering).
        rows_per_shard: rows per parquet file.
    """

    def __init__(self, codes_dir: str | os.PathLike, info: CodesInfo, rank: int, world_size: int, rows_per_shard: int):
        if rows_per_shard < 1:
            raise ValueError(f"rows_per_shard={rows_per_shard} must be >= 1.")
        self.folder = Path(codes_dir) / DATA_DIR
        self.folder.mkdir(parents=True, exist_ok=True)
        self.info, self.rank, self.world_size, self.rows_per_shard = info, rank, world_size, rows_per_shard
        self.part, self.rows, self.written = 0, [], 0

    @property
    def shard_id(self) -> int:
        return self.part * self.world_size + self.rank

    def add(self, codes: np.ndarray, label: int):
        """One image's codes `(crops, N, 3|1)`."""
        expected = (self.info.crops, self.info.num_tokens, self.info.channels)
        if tuple(codes.shape) != expected:
            raise ValueError(f"codes of shape {tuple(codes.shape)}; this folder stores {expected}.")
        self.rows.append((codes.astype(self.info.dtype), int(label)))
        if len(self.rows) >= self.rows_per_shard:
            self.flush()

    def flush(self):
        if not self.rows:
            return
        from datasets import Dataset

        columns = {
            "codes": [codes for codes, _ in self.rows],
            "label": [label for _, label in self.rows],
            "shard": [self.shard_id] * len(self.rows),
        }
        import pyarrow.parquet as pq

        final = self.folder / f"codes-{self.shard_id:05d}.parquet"
        partial = self.folder / f".{final.name}.partial"
        # the Arrow table carries the `datasets` features in its schema metadata
        pq.write_table(Dataset.from_dict(columns, features=self.info.features()).data.table, str(partial))
        os.replace(partial, final)
        self.written += len(self.rows)
        self.part, self.rows = self.part + 1, []


def pick_crop(row: dict, rng: np.random.Generator) -> dict:
    """`ShuffledStream` transform: one random crop of a row -> `{"codes": (N, 3|1) long, "label", "shard"}`."""
    crops = row["codes"]
    crop = crops[int(rng.integers(len(crops)))]
    return {
        "codes": torch.tensor(crop, dtype=torch.long),
        "label": torch.tensor(int(row["label"])),
        "shard": torch.tensor(int(row["shard"])),
    }


def build_codes_stream(
    codes_dir: str | os.PathLike, seed: int, accelerator=None, shuffle_buffer_size: int = 1000
) -> ShuffledStream:
    """This process's infinite, shuffled stream of one-crop code examples (see `pick_crop`).

    Shards are split between processes with `split_dataset_by_node` (whole shards when their count
    is a multiple of the process count).
    """
    from datasets import load_dataset

    ds = load_dataset("parquet", data_files={"train": shard_files(codes_dir)}, split="train", streaming=True)
    ds = split_for_process(ds, accelerator)
    rank = accelerator.process_index if accelerator is not None else 0
    return ShuffledStream(ds, pick_crop, buffer_size=shuffle_buffer_size, seed=rank_seed(seed, rank))


__all__ = [
    "CodesInfo",
    "CodesWriter",
    "build_codes_stream",
    "codes_info_for",
    "pick_crop",
    "read_codes_info",
    "shard_files",
    "write_codes_info",
]
