"""train_generator.py under `accelerate launch` with 2 CPU processes (gloo).

accelerate 1.15's `launch --cpu --num_processes 2` runs ONE process (`--cpu` selects the simple
launcher); two CPU ranks need the torchrun launcher (`--multi_gpu`) plus `ACCELERATE_USE_CPU=1`.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.image_folder import load_example, tiny_tokenizer, write_image_folder
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[1]


def launch(root: Path, out: Path, *extra: str):
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        str(ROOT / "examples" / "train_generator.py"),
        "--tokenizer",
        str(root / "tokenizer"),
        "--codes_dir",
        str(root / "codes"),
        "--output_dir",
        str(out),
        "--max_train_steps",
        "4",
        "--checkpointing_steps",
        "2",
        "--train_batch_size",
        "2",
        "--shuffle_buffer_size",
        "4",
        "--report_to",
        "none",
        "--sample_steps",
        "100",
        *extra,
    ]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_two_cpu_ranks_read_disjoint_shards_checkpoint_and_resume(tmp_path):
    write_image_folder(tmp_path / "images")
    tiny_tokenizer().save_pretrained(tmp_path / "tokenizer")
    assert (
        load_example("extract_codes").main(
            [
                "--tokenizer",
                str(tmp_path / "tokenizer"),
                "--output_dir",
                str(tmp_path / "codes"),
                "--train_data_dir",
                str(tmp_path / "images"),
                "--rows_per_shard",
                "5",
            ]
        )
        == 0
    )  # 18 rows -> 4 shards: 2 per rank
    out = tmp_path / "out"

    launch(tmp_path, out, "--stop_after_steps", "2")
    first = out / "checkpoints" / "checkpoint-2"
    assert (first / "COMPLETE").is_file()
    assert (first / "process_0_state.pt").is_file() and (first / "process_1_state.pt").is_file()
    assert (first / "random_states_0.pkl").is_file() and (first / "random_states_1.pkl").is_file()
    shards = [set(json.loads((out / "data_stats" / f"process_{r}.json").read_text())["shards"]) for r in (0, 1)]
    assert shards[0] and shards[1] and not shards[0] & shards[1]
    assert shards[0] | shards[1] <= {0, 1, 2, 3}

    launch(tmp_path, out, "--resume_from_checkpoint", "latest")
    assert (out / "checkpoints" / "checkpoint-4" / "COMPLETE").is_file()
    resumed = [set(json.loads((out / "data_stats" / f"process_{r}.json").read_text())["shards"]) for r in (0, 1)]
    assert not resumed[0] & resumed[1] and resumed[0] | resumed[1] <= {0, 1, 2, 3}
    assert (out / "model_index.json").is_file()

    from detailflow_hf import DetailFlowPipeline

    pipe = DetailFlowPipeline.from_pretrained(out)
    assert pipe.transformer.generate([0], guidance_scale=1.5).shape == (1, 16)
