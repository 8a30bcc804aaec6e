import pytest
import torch
from transformers import AutoConfig, AutoModel

from detailflow_hf import DetailFlowARConfig, DetailFlowForImageGeneration
from detailflow_hf.conversion.original import convert_generator

from .reference_original import original_gpt_logits, original_gpt_state, write_release


@pytest.fixture(scope="module")
def gpt(fixture_dir):
    return convert_generator(fixture_dir / "ar")


@pytest.mark.parametrize("length", [2, 4, 28])
def test_logits_match_the_original(gpt, expected, length):
    logits = gpt(expected["ar.z"][:, :length], expected["ar.labels"]).logits
    reference = expected[f"ar.logits.L{length}"]
    assert logits.shape == reference.shape and logits.dtype == torch.float32
    assert (logits - reference).abs().max() <= 1e-4


def test_training_loss_matches_the_original(gpt, expected):
    z = expected["ar.z"]
    out = gpt(z[:, :-4], expected["ar.labels"], labels=z)
    assert out.logits.shape == (3, 32, 128)
    assert abs(out.loss.item() - expected["ar.loss"].item()) <= 1e-5


@pytest.mark.parametrize(
    "scale, gradual, key", [(1.5, False, "ar.greedy.cfg1.5"), (3.0, True, "ar.greedy.cfg3.0_gradual")]
)
def test_greedy_generation_matches_the_original(gpt, expected, scale, gradual, key):
    ids = gpt.generate(expected["ar.labels"], guidance_scale=scale, gradual_guidance=gradual, top_k=1)
    assert ids.dtype == torch.long
    assert torch.equal(ids, expected[key])


def test_eager_and_sdpa_agree(gpt, expected):
    z, y = expected["ar.z"], expected["ar.labels"]
    reference = gpt(z[:, :28], y).logits
    saved = gpt.config._attn_implementation
    gpt.set_attn_implementation("eager")
    try:
        assert (gpt(z[:, :28], y).logits - reference).abs().max() < 1e-5
    finally:
        gpt.set_attn_implementation(saved)


def test_dropouts_only_in_training(gpt, expected):
    z, y = expected["ar.z"], expected["ar.labels"]
    saved = gpt.config.class_dropout_prob
    gpt.config.class_dropout_prob = 1.0
    try:
        eval_logits = gpt(z[:, :28], y).logits
        gpt.train()
        torch.manual_seed(0)
        train_logits = gpt(z[:, :28], y).logits
    finally:
        gpt.eval()
        gpt.config.class_dropout_prob = saved
    assert torch.equal(eval_logits, gpt(z[:, :28], y).logits)
    assert (train_logits - eval_logits).abs().max() > 1e-3


def test_save_load_and_auto_classes(gpt, expected, tmp_path):
    gpt.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).model_type == "detailflow_ar"
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, DetailFlowForImageGeneration)
    # non-persistent RoPE table and block ids must be rebuilt, not left as garbage
    assert torch.equal(loaded.model.rotary_emb.cos, gpt.model.rotary_emb.cos)
    assert torch.equal(loaded.model.block_ids, gpt.model.block_ids)
    z, y = expected["ar.z"], expected["ar.labels"]
    assert torch.equal(loaded(z[:, :28], y).logits, gpt(z[:, :28], y).logits)
    assert torch.equal(loaded.generate(y, top_k=1), expected["ar.greedy.cfg1.5"])


def test_fresh_model_follows_the_original_init():
    config = DetailFlowARConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        vocab_size=16,
        num_tokens=8,
        group_size=2,
        num_classes=3,
    )
    model = DetailFlowForImageGeneration(config)
    assert config.intermediate_size == 256  # find_multiple(int(8 * 32 / 3), 256)
    assert model.lm_head.weight.abs().max() == 0
    assert 0.01 < model.model.embed_tokens.weight.std() < 0.03
    assert model.model.class_embedding.weight.shape == (4, 32)  # + null class


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: m.generate([0, 10]), r"class id 10 is out of range; expected 0 <= id < 10\."),
        (lambda m: m.generate([-1]), r"class id -1 is out of range"),
        (lambda m: m.generate([1], guidance_scale=0.5), r"guidance_scale=0.5 is not supported"),
        (lambda m: m.generate([1], top_p=0.0), r"top_p=0.0 must be a number in \(0, 1\]"),
        (lambda m: m(torch.zeros(1, 4, dtype=torch.long), [11]), r"class id 11 is out of range"),
        (lambda m: m(torch.full((1, 4), 128), [1]), r"expected ids in \[0, 128\)"),
        (lambda m: m(torch.zeros(1, 30, dtype=torch.long), [1]), r"L <= 29"),
    ],
)
def test_bad_inputs_are_named(gpt, call, message):
    with pytest.raises(ValueError, match=message):
        call(gpt)


CONFIGS = [
    # dim, layers, heads, kv heads, vocab, classes, group, causal, tokens
    (48, 2, 3, 3, 40, 5, 2, 4, 16),
    (64, 1, 4, 2, 50, 7, 4, 8, 24),
    (32, 2, 2, 1, 30, 3, 8, 8, 32),
]


@pytest.mark.parametrize("dim, layers, heads, kv, vocab, classes, group, causal, tokens", CONFIGS)
def test_any_shape_matches_the_original(tmp_path, dim, layers, heads, kv, vocab, classes, group, causal, tokens):
    hidden = 256
    state = original_gpt_state(dim, layers, heads, kv, vocab, classes, group, hidden, seed=dim + tokens)
    config = {
        "dim": dim,
        "n_layer": layers,
        "n_head": heads,
        "n_kv_head": kv,
        "vocab_size": vocab,
        "num_classes": classes,
        "block_size": tokens,
        "group_size": group,
        "causal_num": causal,
        "cls_token_num": 1,
        "rope_base": 10000,
        "norm_eps": 1e-5,
    }
    root = write_release(tmp_path / "ar", {}, config, {"gpt_model": "GPT-B"}, ema=state)
    ours = convert_generator(root)
    assert ours.config.num_key_value_heads == kv and ours.config.causal_num == causal
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, vocab, (2, tokens), generator=g)
    labels = torch.tensor([0, classes])
    cfg = {
        "dim": dim,
        "n_head": heads,
        "n_kv": kv,
        "group": group,
        "causal": causal,
        "block_size": tokens,
        "base": 10000.0,
        "eps": 1e-5,
    }
    for length in (0, 1, causal - 1, causal, causal + group, tokens - group):
        reference = original_gpt_logits(state, cfg, codes[:, :length], labels)
        logits = ours(codes[:, :length], labels).logits
        assert logits.shape == reference.shape
        assert (logits - reference).abs().max() < 1e-4, length


@pytest.mark.parametrize("key", ["num_tokens", "vocab_size", "num_classes", "group_size"])
def test_a_config_without_a_shape_key_is_refused(gpt, tmp_path, key):
    import json

    gpt.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config[key]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"config.json lacks the key '{key}'"):
        DetailFlowForImageGeneration.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match=rf"lacks the key '{key}'"):
        AutoModel.from_pretrained(tmp_path)
