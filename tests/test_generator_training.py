import math

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from detailflow_hf import DetailFlowARConfig, DetailFlowPipeline
from detailflow_hf.loading import load_generator
from detailflow_hf.training.checkpointing import (
    EMA,
    MARKER,
    export_with_ema,
    latest_checkpoint,
    list_checkpoints,
    prune_checkpoints,
    resolve_resume,
    save_checkpoint,
)
from detailflow_hf.training.generator_training import (
    PRESETS,
    GeneratorTrainState,
    build_generator,
    init_generator,
    inputs_and_targets,
    make_optimizer,
    make_scheduler,
    param_groups,
    preset_from_dict,
    swap_prefixes,
    train_step,
)
from detailflow_hf.training.schedules import generator_factor
from tests.image_folder import load_example, tiny_tokenizer, write_image_folder

CODES = {"vocab_size": 64, "num_tokens": 16, "group_size": 4, "causal_num": 4, "num_classes": 3}


def test_inputs_and_targets_follow_the_correction_probability():
    n = 16
    clean = torch.arange(n).repeat(1000, 1)
    codes = torch.stack([clean, clean + 100, clean + 200], dim=-1)
    inputs, targets = inputs_and_targets(codes, 4, 0.3, generator=torch.Generator().manual_seed(0))
    assert inputs.shape == (1000, 12) and targets.shape == (1000, 16)
    noisy = targets[:, 0] == 200
    assert abs(noisy.float().mean().item() - 0.3) < 0.05
    assert torch.equal(inputs[noisy], (clean + 100)[noisy, :12]) and torch.equal(inputs[~noisy], clean[~noisy, :12])
    only_clean, t = inputs_and_targets(codes[..., :1], 4, 0.3)
    assert torch.equal(only_clean, clean[:, :12]) and torch.equal(t, clean)
    with pytest.raises(ValueError, match=r"got \(1000, 16, 2\)"):
        inputs_and_targets(codes[..., :2], 4, 0.3)


def test_swap_prefixes_take_a_prefix_from_the_next_row():
    rows, length = 1000, 12
    inputs = torch.arange(rows)[:, None] * 100 + torch.arange(length)  # row r holds r*100 + position
    assert swap_prefixes(inputs, [1, 4, 8], 0.0) is inputs
    swapped = swap_prefixes(inputs, [1, 4, 8], 0.3, generator=torch.Generator().manual_seed(0))
    source_row = swapped // 100
    foreign = source_row != torch.arange(rows)[:, None]
    assert torch.equal(swapped % 100, inputs % 100)  # positions stay; only the row they come from changes
    assert torch.equal(source_row[foreign], (torch.arange(rows)[:, None] - 1).expand(-1, length)[foreign] % rows)
    counts = foreign.sum(1)
    assert set(counts.tolist()) == {0, 1, 4, 8}  # a whole valid prefix, nothing after it
    assert all(foreign[r, : counts[r]].all() for r in range(rows))
    assert abs((counts > 0).float().mean().item() - 0.3) < 0.05


def test_presets_and_param_groups():
    large = DetailFlowARConfig(**preset_from_dict(PRESETS["GPT-L"]).model, vocab_size=8192, num_tokens=128)
    assert (large.hidden_size, large.num_hidden_layers, large.intermediate_size) == (1024, 24, 2816)
    preset = preset_from_dict(PRESETS["tiny"])
    model = build_generator(preset, CODES, ["a", "b", "c"])
    assert model.config.id2label == {0: "a", 1: "b", 2: "c"}
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert any(p is model.model.class_embedding.weight for p in decay["params"])  # embeddings decay too
    with pytest.raises(ValueError, match=r"generator config: unknown keys \[.lr.\]"):
        preset_from_dict({"model": {}, "lr": 1})


def test_warmup_cosine_values():
    f = generator_factor(1000, 50)  # W = int(0.05 * 1000)
    assert f(0) == pytest.approx(0.005) and f(25) == pytest.approx(0.005 + 0.995 * 0.5)
    assert f(50) == pytest.approx(1.0) and f(525) == pytest.approx(0.01 + 0.99 * 0.5)
    assert f(1000) == pytest.approx(0.01)


def test_ema_constant_decay_store_restore():
    p = torch.nn.Parameter(torch.zeros(3))
    ema = EMA([p], decay=0.9)
    with torch.no_grad():
        p.fill_(1.0)
    ema.step([p])
    ema.step([p])
    assert torch.allclose(ema.shadow[0], torch.full((3,), 1 - 0.81))
    seen = {}
    export_with_ema(ema, torch.nn.ParameterList([p]), lambda: seen.setdefault("p", p.detach().clone()))
    assert torch.allclose(seen["p"], torch.full((3,), 0.19)) and torch.equal(p.detach(), torch.ones(3))


def test_tiny_generator_loss_drops_on_a_fixed_batch():
    torch.manual_seed(0)
    preset = preset_from_dict(PRESETS["tiny"])
    model = build_generator(preset, CODES, None)
    accelerator = Accelerator(cpu=True)
    optimizer = make_optimizer(model, preset, preset.learning_rate)
    scheduler = make_scheduler(optimizer, 50, preset.warmup_fraction)
    model, optimizer = accelerator.prepare(model, optimizer)
    codes = torch.randint(0, 64, (8, 16, 1), generator=torch.Generator().manual_seed(1))  # clean codes: a fixed target
    batch = {"codes": codes, "label": torch.arange(8) % 3}
    state = GeneratorTrainState(model, optimizer, scheduler, preset)
    losses = [train_step(state, batch, step, accelerator).loss for step in range(1, 51)]
    assert losses[0] == pytest.approx(math.log(64), abs=0.01)  # zero-initialised head: uniform logits
    # 4.16 -> ~2.7 (class dropout stays on; the cosine schedule ends at 1% of the peak)
    assert losses[-1] < losses[25] < losses[0] and losses[-1] < 0.7 * losses[0], losses[::10]


def test_train_step_swaps_prefixes_at_the_presets_rate(monkeypatch):
    from dataclasses import replace

    from detailflow_hf.training import generator_training

    calls, fed = [], []

    def recording(inputs, lengths, prob, generator=None):
        swapped = swap_prefixes(inputs, lengths, prob, generator)
        calls.append((tuple(inputs.shape), lengths, prob, swapped))
        return swapped

    monkeypatch.setattr(generator_training, "swap_prefixes", recording)
    torch.manual_seed(0)
    for prob in (0.0, 0.9):
        preset = replace(preset_from_dict(PRESETS["tiny"]), prefix_swap_prob=prob)
        model = build_generator(preset, CODES, None)
        model.register_forward_pre_hook(lambda m, a, kw: fed.append(kw["input_ids"].clone()), with_kwargs=True)
        optimizer = make_optimizer(model, preset, preset.learning_rate)
        state = GeneratorTrainState(model, optimizer, make_scheduler(optimizer, 5, 0.0), preset)
        codes = torch.arange(8)[:, None, None] * 16 + torch.arange(16)[None, :, None]  # distinct ids per row
        train_step(state, {"codes": codes % 64, "label": torch.arange(8) % 3}, 1, Accelerator(cpu=True))
    # off by default; on, every trained prefix that fits the 12 input positions (16 tokens minus a group)
    assert [c[:3] for c in calls] == [((8, 12), [1, 2, 3, 4, 8, 12], 0.9)]
    assert torch.equal(fed[0], (codes % 64)[:8, :12, 0])  # off: the codes as they are
    assert torch.equal(fed[1], calls[0][3]) and not torch.equal(fed[1], fed[0])  # on: the model gets the swap


@pytest.mark.parametrize("field", ["correction_prob", "prefix_swap_prob"])
def test_preset_probabilities_are_checked(field):
    for bad in (1.5, -0.1, "0.3", True):
        with pytest.raises(ValueError, match=rf"{field}={bad!r} must be a probability in \[0, 1\]"):
            preset_from_dict({"model": {}, field: bad})


def test_half_written_checkpoint_is_never_latest_and_pruning(tmp_path):
    accelerator = Accelerator(cpu=True)
    accelerator.prepare(torch.nn.Linear(2, 2))
    for step in (10, 20, 30):
        save_checkpoint(accelerator, tmp_path, step, total_limit=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-20", "checkpoint-30"]
    # a run killed while writing step 40: the partial folder, or even a final name without the marker
    killed = tmp_path / "checkpoints" / ".checkpoint-40.partial"
    killed.mkdir()
    (killed / "model.safetensors").write_bytes(b"\0" * 10)
    unmarked = tmp_path / "checkpoints" / "checkpoint-50"
    unmarked.mkdir()
    assert latest_checkpoint(tmp_path).name == "checkpoint-30"
    assert resolve_resume(tmp_path, "latest").name == "checkpoint-30"
    with pytest.raises(ValueError, match="is not a complete checkpoint"):
        resolve_resume(tmp_path, str(unmarked))
    assert (latest_checkpoint(tmp_path) / MARKER).read_text() == '{"step": 30}'
    prune_checkpoints(tmp_path, 2)
    assert not killed.exists()
    assert resolve_resume(tmp_path / "empty", "latest") is None


@pytest.fixture(scope="module")
def codes_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    write_image_folder(root / "images")
    tiny_tokenizer().save_pretrained(root / "tokenizer")
    assert (
        load_example("extract_codes").main(
            [
                "--tokenizer",
                str(root / "tokenizer"),
                "--output_dir",
                str(root / "codes"),
                "--train_data_dir",
                str(root / "images"),
                "--rows_per_shard",
                "5",
            ]
        )
        == 0
    )
    return root


def train(root, out, *extra):
    return load_example("train_generator").main(
        [
            "--tokenizer",
            str(root / "tokenizer"),
            "--codes_dir",
            str(root / "codes"),
            "--output_dir",
            str(out),
            "--config",
            "tiny",
            "--max_train_steps",
            "12",
            "--train_batch_size",
            "4",
            "--shuffle_buffer_size",
            "6",
            "--checkpointing_steps",
            "4",
            "--sample_steps",
            "100",
            "--report_to",
            "none",
            "--seed",
            "5",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def straight_run(codes_dir, tmp_path_factory):
    """12 uninterrupted steps (`train`'s defaults): the run's summary and its output folder."""
    out = tmp_path_factory.mktemp("straight")
    return train(codes_dir, out), out


def test_resume_is_exact_and_the_export_loads(codes_dir, straight_run, tmp_path):
    straight, straight_dir = straight_run
    first = train(codes_dir, tmp_path / "b", "--stop_after_steps", "6")
    assert first.global_step == 6 and not (tmp_path / "b" / "model_index.json").exists()
    second = train(codes_dir, tmp_path / "b", "--resume_from_checkpoint", "latest")
    assert second.global_step == 12 and len(second.losses) == 6
    assert straight.losses == first.losses + second.losses  # bitwise equal floats
    for name in ("transformer/model.safetensors", "checkpoints/checkpoint-12/model.safetensors"):
        a, b = load_file(straight_dir / name), load_file(tmp_path / "b" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the export holds the EMA weights, not the raw ones
    raw = load_file(straight_dir / "checkpoints/checkpoint-12/model.safetensors")
    ema = load_file(straight_dir / "transformer/model.safetensors")
    assert not torch.equal(raw["model.embed_tokens.weight"], ema["model.embed_tokens.weight"])

    pipe = DetailFlowPipeline.from_pretrained(straight_dir)
    assert pipe.transformer.config.id2label == {0: "circle", 1: "square", 2: "triangle"}
    ids = pipe.transformer.generate([0, 2], guidance_scale=1.5, generator=torch.Generator().manual_seed(0))
    assert ids.shape == (2, 16) and ids.max() < 64
    images = pipe([1], output_type="pt", generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 3, 32, 32)


def test_init_from_continues_a_trained_generator(codes_dir, straight_run, tmp_path):
    """`--init_from` starts from a trained export's weights (bitwise), takes the codes' class names, and refuses a
    generator of another architecture or class count, naming the field."""
    straight, straight_dir = straight_run
    preset = preset_from_dict(PRESETS["tiny"])
    names = ["x", "y", "z"]
    model = init_generator(load_generator(straight_dir), preset, CODES, names)
    saved = load_file(straight_dir / "transformer" / "model.safetensors")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())
    assert model.config.id2label == {0: "x", 1: "y", 2: "z"} and model.config.label2id["z"] == 2

    wider = preset_from_dict({**PRESETS["tiny"], "model": {**PRESETS["tiny"]["model"], "hidden_size": 32}})
    with pytest.raises(ValueError, match=r"hidden_size=64 \(expected 32\)"):
        init_generator(load_generator(straight_dir / "transformer"), wider, CODES, None)
    with pytest.raises(ValueError, match=r"num_classes=3 \(expected 5\)"):
        init_generator(model, preset, {**CODES, "num_classes": 5}, None)  # checked before anything is renamed

    # Same seed, same batches: only the starting weights differ from the straight run's.
    continued = train(codes_dir, tmp_path / "c", "--init_from", str(straight_dir), "--max_train_steps", "2")
    fresh = train(codes_dir, tmp_path / "d", "--max_train_steps", "2")
    assert fresh.losses[0] == straight.losses[0]
    assert continued.losses[0] != fresh.losses[0]
    assert DetailFlowPipeline.from_pretrained(tmp_path / "c").transformer.config.id2label[2] == "triangle"


# -- nothing lost, nothing executed ---------------------------------------------------------------------
KILL_DRIVER = r"""
import json, os, shutil, signal, sys
from pathlib import Path

import torch

import detailflow_hf.training.checkpointing as checkpointing
from tests.image_folder import load_example

point, args = sys.argv[1], json.loads(sys.argv[2])


def die():
    os.kill(os.getpid(), signal.SIGKILL)


if point == "writing":  # in the middle of accelerate's save_state of step 8 (weights written, optimizer not)
    real_save = torch.save
    def save(obj, f, *a, **k):
        if ".checkpoint-8.partial" in str(f):
            die()
        return real_save(obj, f, *a, **k)
    torch.save = save
elif point == "marked":  # complete and marked, not yet renamed into place
    real_replace = os.replace
    def replace(src, dst):
        if str(src).endswith(".checkpoint-8.partial"):
            die()
        return real_replace(src, dst)
    os.replace = replace
elif point == "renamed":  # the new checkpoint in place, the old one not yet pruned
    real_prune = checkpointing.prune_checkpoints
    def prune(output_dir, total_limit, keep=None):
        if keep is not None and keep.name == "checkpoint-8":
            die()
        return real_prune(output_dir, total_limit, keep)
    checkpointing.prune_checkpoints = prune
elif point == "pruning":  # half-way through deleting the old checkpoint
    real_rmtree = shutil.rmtree
    def rmtree(path, *a, **k):
        if str(path).endswith(".checkpoint-4.deleting"):
            (Path(path) / "model.safetensors").unlink()
            die()
        return real_rmtree(path, *a, **k)
    shutil.rmtree = rmtree
load_example("train_generator").main(args)
"""


@pytest.mark.parametrize("point", ["writing", "marked", "renamed", "pruning"])
def test_a_kill_during_a_save_with_limit_one_loses_nothing(codes_dir, tmp_path, point):
    import json
    import signal
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    common = ["--checkpoints_total_limit", "1"]
    straight = train(codes_dir, tmp_path / "straight", *common)
    args = [
        "--tokenizer",
        str(codes_dir / "tokenizer"),
        "--codes_dir",
        str(codes_dir / "codes"),
        "--output_dir",
        str(tmp_path / "killed"),
        "--config",
        "tiny",
        "--max_train_steps",
        "12",
        "--train_batch_size",
        "4",
        "--shuffle_buffer_size",
        "6",
        "--checkpointing_steps",
        "4",
        "--sample_steps",
        "100",
        "--report_to",
        "none",
        "--seed",
        "5",
        *common,
    ]
    killed = subprocess.run(
        [sys.executable, "-c", KILL_DRIVER, point, json.dumps(args)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    survivor = latest_checkpoint(tmp_path / "killed")
    assert survivor is not None and survivor.name == (
        "checkpoint-4" if point in ("writing", "marked") else "checkpoint-8"
    )
    resumed = train(codes_dir, tmp_path / "killed", "--resume_from_checkpoint", "latest", *common)
    assert resumed.global_step == 12 and resumed.losses == straight.losses[-len(resumed.losses) :]
    a = load_file(tmp_path / "straight" / "transformer" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "transformer" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [p.name for p in (tmp_path / "killed" / "checkpoints").iterdir()] == ["checkpoint-12"]  # leftovers pruned


class Payload:
    """Pickles to a call that creates `path`: it must never run."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        from pathlib import Path

        return Path.touch, (Path(self.path),)


@pytest.mark.parametrize(
    "name",
    ["process_0_state.pt", "shared_state.pt", "optimizer.bin", "random_states_0.pkl", "custom_checkpoint_0.pkl"],
)
def test_a_checkpoint_carrying_a_pickle_payload_is_refused(codes_dir, tmp_path, name):
    out = tmp_path / "run"
    train(codes_dir, out, "--stop_after_steps", "4")
    checkpoint = latest_checkpoint(out)
    ran = tmp_path / "payload-ran"
    torch.save({"state": Payload(ran)}, checkpoint / name)
    with pytest.raises(ValueError, match=rf"{name} is not a safe state file .*refusing to load it"):
        train(codes_dir, out, "--resume_from_checkpoint", "latest")
    assert not ran.exists()


def test_push_to_hub_uploads_the_export_with_its_card_and_samples(codes_dir, tmp_path, monkeypatch):
    from huggingface_hub import ModelCard
    from PIL import Image

    import detailflow_hf.hub

    from .hub_cache import FakeHubApi

    api = FakeHubApi(tmp_path / "hub")
    monkeypatch.setattr(detailflow_hf.hub, "HfApi", lambda: api)
    train(codes_dir, tmp_path / "out", "--push_to_hub", "--hub_model_id", "me/tiny-generator")
    repo = tmp_path / "hub" / "me" / "tiny-generator"
    uploaded = {p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file()}
    assert {"model_index.json", "README.md", "samples.png", "transformer/model.safetensors"} <= uploaded
    assert not any(name.startswith(("checkpoints/", "samples/", "logs/", "data_stats/")) for name in uploaded)
    card = ModelCard.load(repo / "README.md")
    assert card.data.library_name == "diffusers" and card.data.base_model is None  # a local tokenizer
    assert "for 12 steps on the codes of the tokenizer" in card.text and "![samples](samples.png)" in card.text
    assert "| sampling defaults (`generation_config.json`) | guidance" in card.text
    assert Image.open(repo / "samples.png").size == (3 * 32, 32)  # one sample per class (3) at 32 px
