"""Tokenizer training: DiffAugment, degradation, losses, schedules, presets, the step, and the script
(`examples/train_tokenizer.py` on a tiny imagefolder of real PNGs: resume, export)."""

import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from transformers import Siglip2VisionConfig, Siglip2VisionModel

from detailflow_hf import DetailFlowTokenizer
from detailflow_hf.models.schedule import ResolutionSchedule
from detailflow_hf.pipelines.image_processing import center_crop_arr, to_tensor
from detailflow_hf.training.degradation import (
    degrade,
    degraded_target,
    resize_images,
    sample_degraded_token_count,
)
from detailflow_hf.training.diff_aug import cutout, diff_augment, parse_policy, translation
from detailflow_hf.training.schedules import tokenizer_factor
from detailflow_hf.training.tokenizer_losses import (
    SigLIP2Teacher,
    TokenizerLossConfig,
    codebook_loss,
    global_token_loss,
    mix_codebook_losses,
)
from detailflow_hf.training.tokenizer_training import (
    PRESETS,
    build_train_state,
    load_config,
    load_siglip2_encoder_weights,
    train_step,
)
from tests.image_folder import load_example, write_image_folder

TINY_SIGLIP = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=8, num_patches=16
)


# -- DiffAugment ---------------------------------------------------------------------------------------
def test_diff_augment_identity_at_zero_and_shapes():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 16, 16, requires_grad=True)
    assert torch.equal(diff_augment(x, prob=0.0), x)
    y = diff_augment(x, prob=1.0)
    assert y.shape == x.shape and not torch.equal(y, x)
    y.sum().backward()
    assert x.grad is not None
    assert parse_policy("color,translation,cutout_0.2") == [("color", None), ("translation", None), ("cutout", 0.2)]
    with pytest.raises(ValueError, match="unknown DiffAugment policy 'blur'"):
        diff_augment(x, "blur")


def test_translation_and_cutout_zero_fill():
    torch.manual_seed(1)
    ones = torch.ones(64, 1, 16, 16)
    shifted = translation(ones)
    kept = shifted.sum(dim=(1, 2, 3))
    # shifts of up to 2 pixels per axis: between (16-2)^2 and 16^2 pixels stay
    assert kept.min() >= 14 * 14 and kept.max() == 256 and kept.min() < 256
    holes = 256 - cutout(ones, ratio=0.5).sum(dim=(1, 2, 3))
    assert holes.max() == 64 and holes.min() >= 16  # an 8x8 square, clipped at most to a quarter


# -- degradation ---------------------------------------------------------------------------------------
SCHEDULE = ResolutionSchedule(
    max_image_size=64,
    num_tokens=32,
    group_size=4,
    causal_num=4,
    degradation_power=1.5,
    encoder_patch_size=8,
    decoder_patch_size=8,
)


def test_degraded_target_sizes_follow_the_schedule():
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    for t, res, dec in [(1, 1, 8), (3, 6, 8), (4, 9, 16), (8, 21, 24), (20, 48, 48), (28, 61, 64)]:
        assert (SCHEDULE.token2res[t], SCHEDULE.token2dec_out_res[t]) == (res, dec)
        out = degraded_target(x, SCHEDULE, t)
        assert out.target.shape == (2, 3, dec, dec) and (out.num_tokens, out.resolution) == (t, dec)
        expected = resize_images(resize_images(x, res), dec)
        assert torch.equal(out.target, expected)


def test_resize_modes():
    x = torch.rand(1, 3, 8, 8)
    assert torch.allclose(resize_images(x, 4), F.avg_pool2d(x, 2))
    assert torch.equal(resize_images(x, 8), x)
    up = resize_images(x, 16)
    assert torch.allclose(up, F.interpolate(x, size=16, mode="bicubic", align_corners=False))


def test_degradation_token_counts():
    g = torch.Generator().manual_seed(0)
    counts = {sample_degraded_token_count(SCHEDULE, g) for _ in range(400)}
    assert counts <= set(SCHEDULE.token_list) and max(counts) == 28 and min(counts) == 1
    assert {1, 2, 3, 4, 8, 28} <= counts
    x = torch.zeros(2, 3, 64, 64)
    full = degrade(x, SCHEDULE, 0.0)
    assert full.target is x and (full.num_tokens, full.resolution) == (32, 64)
    assert all(degrade(x, SCHEDULE, 1.0, g).num_tokens < 32 for _ in range(20))


# -- losses --------------------------------------------------------------------------------------------
def test_codebook_loss_values():
    z = torch.tensor([[[3.0, 4.0], [0.0, 2.0]]])  # normalised: (0.6, 0.8), (0, 1)
    e = torch.tensor([[[0.6, 0.8], [1.0, 0.0]]])
    # position 1: (e - z)^2 = (1, 1) -> mean over 4 entries = 0.5 for both terms
    assert codebook_loss(z, e, commit_beta=0.25).item() == pytest.approx(0.5 * 1.25)
    assert codebook_loss(z, e, commit_beta=0.25, start=1).item() == pytest.approx(1.0 * 1.25)
    assert codebook_loss(z[:, :1], e[:, :1]).item() == pytest.approx(0.0, abs=1e-7)
    # clean over T positions, noisy over T - e: T = 16, e = 5 -> weights 16/27 and 11/27
    mixed = mix_codebook_losses(torch.tensor(1.0), torch.tensor(2.0), 16, 5)
    assert mixed.item() == pytest.approx(16 / 27 + 2 * 11 / 27)


def test_global_token_loss_and_teacher_applies_post_layernorm_twice():
    f = torch.randn(3, 8)
    assert global_token_loss(f, f).item() == pytest.approx(-1.0)
    assert global_token_loss(f, -f).item() == pytest.approx(1.0)
    torch.manual_seed(0)
    teacher = SigLIP2Teacher.from_config(Siglip2VisionConfig(**TINY_SIGLIP))
    with torch.no_grad():
        teacher.model.post_layernorm.weight.normal_()  # make a second LayerNorm visible
        teacher.model.post_layernorm.bias.normal_()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    feats = teacher(x)
    from detailflow_hf.models.tokenizer import patchify

    once = teacher.model(
        pixel_values=patchify(x, 8),
        pixel_attention_mask=torch.ones(2, 16, dtype=torch.long),
        spatial_shapes=torch.tensor([[4, 4], [4, 4]]),
    ).last_hidden_state
    twice = F.normalize(teacher.model.post_layernorm(once).mean(1), dim=-1)
    assert torch.allclose(feats, twice, atol=1e-6)
    assert not torch.allclose(feats, F.normalize(once.mean(1), dim=-1), atol=1e-3)


def test_loss_weights_follow_the_steps():
    config = TokenizerLossConfig(perceptual_warmup=10, disc_start=20, disc_weight=0.2)
    assert [config.perceptual_factor(s) for s in (1, 5, 10, 50)] == [0.1, 0.5, 1.0, 1.0]
    assert [config.gan_factor(s) for s in (19, 20, 100)] == [0.0, 0.2, 0.2]


# -- schedules and presets -----------------------------------------------------------------------------
def test_warmup_cosine_matches_timm_formula():
    f = tokenizer_factor(total_steps=100, warmup_steps=10, warmup_ratio=0.1, min_ratio=0.1)
    assert f(0) == pytest.approx(0.1) and f(5) == pytest.approx(0.55)
    # after warm-up the cosine counts from step 0 (timm warmup_prefix=False)
    assert f(10) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.1)))
    assert f(50) == pytest.approx(0.55) and f(100) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)


def test_presets_and_yaml_override(tmp_path):
    assert set(PRESETS) == {"DetailFlow-16", "DetailFlow-32", "DetailFlow-64", "tiny"}
    for name, tokens in (("DetailFlow-16", 128), ("DetailFlow-32", 256), ("DetailFlow-64", 512)):
        config = load_config(name)
        assert config.tokenizer["num_latent_tokens"] == tokens and config.tokenizer["group_size"] == 8
        assert config.tokenizer["encoder_config"]["hidden_size"] == 1152
        assert config.tokenizer["decoder_config"]["hidden_size"] == 768
        assert config.losses.disc_start == 40000 and config.losses.disc_weight == 0.2
        assert config.discriminator == "facebook/dino-vits16"
        assert config.steps_per_epoch(256) == 5004
    path = tmp_path / "run.yaml"
    path.write_text("preset: tiny\nlosses:\n  disc_start: 3\nlearning_rate: 0.002\n")
    config = load_config(str(path))
    assert config.losses.disc_start == 3 and config.losses.perceptual_warmup == 10 and config.learning_rate == 0.002
    path.write_text("preset: tiny\nlosses:\n  disc_begin: 3\n")
    with pytest.raises(ValueError, match="disc_begin"):
        load_config(str(path))


def test_encoder_initialised_from_a_siglip2_tower(tmp_path):
    torch.manual_seed(0)
    tower = Siglip2VisionModel(Siglip2VisionConfig(**TINY_SIGLIP))
    tower.save_pretrained(tmp_path / "siglip2")
    config = load_config("tiny")
    tokenizer = DetailFlowTokenizer(**config.tokenizer)
    load_siglip2_encoder_weights(tokenizer, str(tmp_path / "siglip2"))
    enc = tokenizer.encoder
    assert torch.equal(enc.patch_embedding.weight, tower.embeddings.patch_embedding.weight)
    assert torch.equal(enc.layers[0].mlp.fc1.weight, tower.encoder.layers[0].mlp.fc1.weight)
    assert torch.equal(enc.post_layernorm.bias, tower.post_layernorm.bias)


# -- training ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("tokenizer-images"))


def fixed_batch(image_dir, n=8):
    files = sorted((image_dir / "train").rglob("[0-9].png"))[:n]
    return torch.stack([to_tensor(center_crop_arr(Image.open(f), 32)) for f in files])


@pytest.mark.slow
def test_tiny_preset_reconstruction_loss_drops(image_dir):
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    images = fixed_batch(image_dir)
    set_seed(0)
    accelerator = Accelerator(cpu=True)
    state = build_train_state(load_config("tiny"), accelerator, global_batch_size=8, total_steps=50)
    tokenizer = accelerator.unwrap_model(state.model).tokenizer

    def full_mse():
        tokenizer.eval()
        with torch.no_grad():
            value = F.mse_loss(tokenizer(images).sample, images).item()
        tokenizer.train()
        return value

    before = full_mse()
    logs = [train_step(state, {"pixel_values": images}, step, accelerator).logs for step in range(1, 51)]
    after = full_mse()
    assert after < 0.6 * before, (before, after)
    assert "g_adv_loss" not in logs[18] and "g_adv_loss" in logs[19]  # GAN from step 20 in `tiny`
    assert all(math.isfinite(v) for log in logs for v in log.values())


def run_script(monkeypatch, argv):
    """Run the example in-process; return {step: logged values}."""
    import accelerate

    logged = {}

    def record(self, values, step=None, **kwargs):
        logged[step] = values

    monkeypatch.setattr(accelerate.Accelerator, "log", record)
    module = load_example("train_tokenizer")
    module.main(argv)
    return logged


@pytest.mark.slow
def test_script_resume_is_exact_and_export_loads(tmp_path, image_dir, monkeypatch):
    config = tmp_path / "tiny_gan.yaml"
    config.write_text("preset: tiny\ndead_code_restart_steps: 2\nlosses:\n  disc_start: 2\n  perceptual_warmup: 2\n")
    common = [
        "--config",
        str(config),
        "--train_data_dir",
        str(image_dir),
        "--max_train_steps",
        "6",
        "--train_batch_size",
        "4",
        "--shuffle_buffer_size",
        "8",
        "--logging_steps",
        "1",
        "--checkpointing_steps",
        "3",
        "--report_to",
        "none",
        "--seed",
        "7",
    ]
    straight = run_script(monkeypatch, common + ["--output_dir", str(tmp_path / "a")])
    first = run_script(monkeypatch, common + ["--output_dir", str(tmp_path / "b"), "--stop_after_steps", "3"])
    assert sorted(first) == [1, 2, 3] and not (tmp_path / "b" / "config.json").exists()  # no export yet
    resume = ["--output_dir", str(tmp_path / "b"), "--resume_from_checkpoint", "latest"]
    from huggingface_hub import ModelCard

    import detailflow_hf.hub

    from .hub_cache import FakeHubApi

    api = FakeHubApi(tmp_path / "hub")
    monkeypatch.setattr(detailflow_hf.hub, "HfApi", lambda: api)
    second = run_script(monkeypatch, common + resume + ["--push_to_hub", "--hub_model_id", "me/tiny-tokenizer"])
    # the export went up with its card, without checkpoints or samples
    repo = tmp_path / "hub" / "me" / "tiny-tokenizer"
    uploaded = sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file())
    assert uploaded == ["README.md", "config.json", "diffusion_pytorch_model.safetensors", "training_config.json"]
    card = ModelCard.load(repo / "README.md")
    assert card.data.library_name == "diffusers" and "image-tokenization" in card.data.tags
    assert 'DetailFlowTokenizer.from_pretrained("me/tiny-tokenizer")' in card.text
    assert sorted(second) == [4, 5, 6]
    resumed = {**first, **second}
    for step in range(1, 7):
        resumed[step].pop("images_per_second"), straight[step].pop("images_per_second")
        assert resumed[step] == straight[step], step
    assert "g_adv_loss" in straight[6] and "d_consistency" in straight[6]
    # 16 tokens x 4 images cannot use all 64 codes: every second step re-seeds some (usage is checkpointed)
    assert [straight[s]["restarted_codes"] for s in (1, 3, 5)] == [0, 0, 0]
    assert all(straight[s]["restarted_codes"] > 0 for s in (2, 4, 6))

    a, b = tmp_path / "a" / "checkpoints" / "checkpoint-6", tmp_path / "b" / "checkpoints" / "checkpoint-6"
    for name in ("model.safetensors", "model_1.safetensors"):
        sa, sb = load_file(a / name), load_file(b / name)
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)

    exported = DetailFlowTokenizer.from_pretrained(tmp_path / "a")
    trained = load_file(a / "model.safetensors")
    assert torch.equal(exported.encoder.latent_tokens, trained["tokenizer.encoder.latent_tokens"])
    assert torch.equal(exported.decoder.to_pixel.weight, trained["tokenizer.decoder.to_pixel.weight"])
    images = fixed_batch(image_dir, 2)
    out = exported.encode(images)
    assert out.token_ids.shape == (2, 16) and exported.decode(out.token_ids).sample.shape == (2, 3, 32, 32)
    samples = sorted((tmp_path / "a" / "samples").glob("*.png"))
    assert samples and Image.open(samples[-1]).size == (5 * 32, 4 * 32)


# -- dead-code restarts ----------------------------------------------------------------------------------


class TwoRankAccelerator:
    """Stands in for rank 0 of two processes: the other rank used `other_usage` and encoded `other_latents`."""

    def __init__(self, other_usage, other_latents):
        self.other_usage, self.other_latents = other_usage, other_latents

    def reduce(self, tensor, reduction="sum"):
        assert reduction == "sum"
        return tensor + self.other_usage

    def gather(self, tensor):
        return torch.cat([tensor, self.other_latents])


def test_dead_code_restart_reseeds_only_codes_unused_on_every_rank():
    from detailflow_hf.training.dead_codes import DeadCodeRestarter

    torch.manual_seed(0)
    embedding = torch.nn.Embedding(12, 4)
    optimizer = torch.optim.Adam(embedding.parameters(), lr=1e-2)
    embedding.weight.sum().backward()
    optimizer.step()  # Adam moments are non-zero everywhere
    before = embedding.weight.detach().clone()
    restarter = DeadCodeRestarter(12, every=5)
    restarter.update(torch.tensor([[0, 1, 1], [2, 0, 1]]))
    other_usage = torch.zeros(12, dtype=torch.long)
    other_usage[[3, 4]] = 7
    pre_quant = torch.randn(2, 3, 4) * 3
    other_latents = F.normalize(torch.randn(6, 4), dim=-1)
    accelerator = TwoRankAccelerator(other_usage, other_latents)

    assert restarter.maybe_restart(4, pre_quant, embedding, optimizer, accelerator) == 0
    assert torch.equal(embedding.weight, before) and restarter.usage.sum() == 6
    assert restarter.maybe_restart(5, pre_quant, embedding, optimizer, accelerator) == 7  # codes 5..11
    assert torch.equal(embedding.weight[:5], before[:5]) and restarter.usage.sum() == 0
    candidates = torch.cat([F.normalize(pre_quant.flatten(0, 1), dim=-1), other_latents])
    distance = torch.cdist(embedding.weight[5:].detach(), candidates).min(dim=1).values
    assert distance.max() < 0.1 and distance.min() > 0  # a picked latent plus noise
    moments = optimizer.state[embedding.weight]
    for name in ("exp_avg", "exp_avg_sq"):
        assert moments[name][5:].abs().sum() == 0 and moments[name][:5].abs().min() > 0
    with pytest.raises(ValueError, match="every=0"):
        DeadCodeRestarter(12, every=0)


def test_one_config_loader_for_every_trainer():
    from detailflow_hf.training.generator_training import preset_from_dict
    from detailflow_hf.training.tokenizer_training import TokenizerTrainingConfig

    with pytest.raises(ValueError, match=r"tokenizer training config 'losses': unknown keys \['mse'\]"):
        TokenizerTrainingConfig.from_dict({"tokenizer": {}, "losses": {"mse": 1.0}})
    with pytest.raises(ValueError, match=r"tokenizer training config: missing keys \['tokenizer'\]"):
        TokenizerTrainingConfig.from_dict({})
    with pytest.raises(ValueError, match=r"generator config: missing keys \['model'\]"):
        preset_from_dict({"learning_rate": 1e-3})
    config = TokenizerTrainingConfig.from_dict({"tokenizer": {}, "betas": [0.5, 0.9], "losses": {"commit_beta": 0.5}})
    assert config.betas == (0.5, 0.9) and config.losses.commit_beta == 0.5 and config.losses.disc_weight == 0.2
    assert preset_from_dict({"model": {}, "betas": [0.8, 0.9]}).betas == (0.8, 0.9)


def test_one_schedule_helper():
    from detailflow_hf.training.schedules import make_schedule, schedule_names

    def lrs(name, **kwargs):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        schedule = make_schedule(name, optimizer, 100, **kwargs)
        values = []
        for _ in range(100):
            values.append(schedule.get_last_lr()[0])
            optimizer.step()
            schedule.step()
        return values

    generator = lrs("detailflow-generator", warmup_steps=5)
    assert (
        generator[0] == 0.005 and generator[5] == pytest.approx(1.0) and generator[99] == pytest.approx(0.01, abs=1e-3)
    )
    tokenizer = lrs("detailflow-tokenizer", warmup_steps=10, warmup_ratio=0.1, min_ratio=0.1)
    assert tokenizer[0] == pytest.approx(0.1) and tokenizer[10] == pytest.approx(
        0.1 + 0.45 * (1 + math.cos(math.pi * 0.1))
    )
    cosine = lrs("cosine", warmup_steps=10)  # diffusers' own, by name
    assert cosine[0] == 0.0 and cosine[10] == pytest.approx(1.0) and cosine[99] < 0.01
    assert {"detailflow-generator", "detailflow-tokenizer", "cosine", "constant"} <= set(schedule_names())
