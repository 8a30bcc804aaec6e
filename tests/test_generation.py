import pytest
import torch

from detailflow_hf.conversion.original import convert_generator


@pytest.fixture(scope="module")
def gpt(fixture_dir):
    return convert_generator(fixture_dir / "ar")


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize(
    "scale, gradual, key", [(1.5, False, "ar.greedy.cfg1.5"), (3.0, True, "ar.greedy.cfg3.0_gradual")]
)
def test_cached_greedy_equals_reference_and_fixture(gpt, expected, attn, scale, gradual, key):
    saved = gpt.config._attn_implementation
    gpt.set_attn_implementation(attn)
    try:
        labels = expected["ar.labels"]
        fast = gpt.generate(labels, guidance_scale=scale, gradual_guidance=gradual, top_k=1)
        slow = gpt.generate(labels, guidance_scale=scale, gradual_guidance=gradual, top_k=1, use_cache=False)
    finally:
        gpt.set_attn_implementation(saved)
    assert torch.equal(fast, expected[key])
    assert torch.equal(slow, expected[key])


def test_cached_logits_equal_full_forward(gpt, expected):
    """Every chunk the cache sees gives the logits the full sequence gives at those positions."""
    from detailflow_hf.models.modeling_ar import CachedStepper

    z, labels = expected["ar.z"], expected["ar.labels"]
    full = gpt(z[:, :28], labels).logits  # 32 positions
    stepper = CachedStepper(gpt, labels, 32, compile=False)
    pieces, done = [], 0
    for length in gpt.prefix_lengths():
        pieces.append(stepper(z[:, :done], length - done))
        done = length
    assert (torch.cat(pieces, dim=1) - full).abs().max() < 1e-5


def test_seeded_sampling_is_reproducible(gpt):
    labels = [1, 5, 7]
    a = gpt.generate(labels, generator=torch.Generator().manual_seed(3), temperature=1.3, top_k=50, top_p=0.95)
    b = gpt.generate(labels, generator=torch.Generator().manual_seed(3), temperature=1.3, top_k=50, top_p=0.95)
    c = gpt.generate(labels, generator=torch.Generator().manual_seed(4), temperature=1.3, top_k=50, top_p=0.95)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # the cached path draws the same numbers in the same order as the reference
    ref = gpt.generate(
        labels, generator=torch.Generator().manual_seed(3), temperature=1.3, top_k=50, top_p=0.95, use_cache=False
    )
    assert torch.equal(a, ref)


def test_per_image_generators_do_not_depend_on_the_batch(gpt):
    alone = gpt.generate([4], generator=[torch.Generator().manual_seed(11)])
    together = gpt.generate([2, 4, 9], generator=[torch.Generator().manual_seed(s) for s in (5, 11, 6)])
    assert torch.equal(together[1:2], alone)
    with pytest.raises(ValueError, match="got 2 generators for 3 class labels"):
        gpt.generate([1, 2, 3], generator=[torch.Generator(), torch.Generator()])


def test_num_tokens_and_callback(gpt, expected):
    seen = []
    ids = gpt.generate(
        expected["ar.labels"],
        top_k=1,
        num_tokens=12,
        callback=lambda step, tokens: seen.append((step, tokens.shape[1])),
    )
    assert torch.equal(ids, expected["ar.greedy.cfg1.5"][:, :12])
    assert seen == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 8), (5, 12)]
    with pytest.raises(
        ValueError, match=r"num_tokens=10 is not a valid prefix length; expected one of \[1, 2, 3, 4, 8, 12"
    ):
        gpt.generate([1], num_tokens=10)


def test_guidance_scale_one_runs_without_the_null_branch(gpt, expected):
    calls = []
    handle = gpt.model.register_forward_hook(lambda module, args, kwargs_out: calls.append(1))
    try:
        a = gpt.generate(expected["ar.labels"], guidance_scale=1.0, top_k=1)
    finally:
        handle.remove()
    cond_only = gpt(a[:, :28], expected["ar.labels"]).logits.argmax(-1)
    assert torch.equal(a, cond_only)  # greedy without guidance = argmax of the conditional logits
    assert len(calls) == 11  # c + (N - c) / g forward passes


@pytest.mark.slow
def test_compiled_static_cache_path(gpt, expected):
    """Static cache + torch.compile (inductor on CPU): same ids, compiled once per (batch, num_tokens)."""
    from torch._dynamo.utils import counters

    labels = expected["ar.labels"]
    before = counters["stats"]["unique_graphs"]
    first = gpt.generate(labels, top_k=1, compile=True)
    assert counters["stats"]["unique_graphs"] - before == 2  # the two chunk shapes (1 and g entries), no more
    second = gpt.generate(labels, top_k=1, compile=True, gradual_guidance=True, guidance_scale=3.0)
    assert torch.equal(first, expected["ar.greedy.cfg1.5"])
    assert torch.equal(second, expected["ar.greedy.cfg3.0_gradual"])
    # a callback that replaces the prefix: the static cache is refilled (eagerly) and decoding goes on compiled
    donor = gpt.generate(labels.flip(0), top_k=1)
    graft = lambda step, tokens: donor[:, :8].clone() if tokens.shape[1] == 8 else None  # noqa: E731
    grafted = gpt.generate(labels, top_k=1, compile=True, callback=graft)
    assert torch.equal(grafted, gpt.generate(labels, top_k=1, callback=graft, use_cache=False))
    assert len(gpt._compiled_decoding) == 1
    assert counters["stats"]["unique_graphs"] - before == 2  # later runs reuse them


# -- continuing a given prefix (image-conditioned generation) --------------------------------------------
@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("scale", [1.0, 1.5])
def test_every_prefix_continues_to_the_full_greedy_sequence(gpt, expected, use_cache, scale):
    labels = expected["ar.labels"]
    full = gpt.generate(labels, guidance_scale=scale, do_sample=False, use_cache=use_cache)
    if scale == 1.5:
        assert torch.equal(full, expected["ar.greedy.cfg1.5"])
    for k in [0, *gpt.prefix_lengths()]:
        again = gpt.generate(
            labels, guidance_scale=scale, do_sample=False, use_cache=use_cache, prefix_ids=full[:, :k]
        )
        assert torch.equal(again, full), k


def test_sampled_continuations_keep_the_prefix_and_steps(gpt):
    prefix = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(0))
    seen = []
    out = gpt.generate(
        [1, 2],
        prefix_ids=prefix,
        generator=[torch.Generator().manual_seed(s) for s in (3, 4)],
        callback=lambda step, tokens: seen.append((step, tokens.shape[1])),
    )
    assert torch.equal(out[:, :8], prefix) and out.shape == (2, 32)
    assert seen == [(5, 12), (6, 16), (7, 20), (8, 24), (9, 28), (10, 32)]  # steps keep their schedule index
    alone = gpt.generate([2], prefix_ids=prefix[1:], generator=[torch.Generator().manual_seed(4)])
    assert torch.equal(alone, out[1:])  # per-image generators: independent of the batch
    assert torch.equal(gpt.generate([1, 2], prefix_ids=prefix, num_tokens=8), prefix)  # nothing left to generate
    assert gpt.generate([1, 2], prefix_ids=prefix, num_tokens=16).shape == (2, 16)


@pytest.mark.parametrize(
    "prefix, kwargs, message",
    [
        (
            torch.zeros(2, 5, dtype=torch.long),
            {},
            r"prefix_ids hold 5 tokens, not a valid prefix length; expected one of \[0, 1, 2, 3, 4, 8",
        ),
        (torch.zeros(3, 4, dtype=torch.long), {}, r"prefix_ids must be integer ids of shape \(2, k\)"),
        (torch.zeros(2, 4), {}, r"prefix_ids must be integer ids"),
        (torch.full((2, 4), 128), {}, r"prefix_ids span \[128, 128\]; expected ids in \[0, 128\)"),
        (
            torch.zeros(2, 12, dtype=torch.long),
            {"num_tokens": 8},
            r"prefix_ids hold 12 tokens, more than num_tokens=8",
        ),
    ],
)
def test_bad_prefixes_are_named(gpt, prefix, kwargs, message):
    with pytest.raises(ValueError, match=message):
        gpt.generate([1, 2], prefix_ids=prefix, **kwargs)


@pytest.mark.slow
def test_compiled_path_continues_a_prefix(gpt, expected):
    labels = expected["ar.labels"]
    full = expected["ar.greedy.cfg1.5"]
    for k in (0, 3, 8, 20):
        assert torch.equal(gpt.generate(labels, top_k=1, compile=True, prefix_ids=full[:, :k]), full), k


def test_reference_and_fast_paths_draw_alike_with_per_image_generators(gpt):
    def run(use_cache):
        generators = [torch.Generator().manual_seed(s) for s in (21, 22, 23)]
        return gpt.generate([1, 5, 7], generator=generators, temperature=1.2, top_p=0.9, use_cache=use_cache)

    assert torch.equal(run(True), run(False))


@pytest.mark.slow
def test_the_compiled_step_has_no_graph_breaks(gpt):
    """The step `compile=True` compiles (the model's forward on a static cache) is one graph on CPU."""
    from transformers.cache_utils import StaticCache

    config = gpt.config
    cache = StaticCache(config=config, max_cache_len=config.num_tokens)
    cache.early_initialization(6, config.num_key_value_heads, config.head_dim, gpt.dtype, gpt.device)
    for chunk in (1, config.group_size):
        embeds = torch.randn(6, chunk, config.hidden_size)
        positions = torch.arange(chunk)[None]
        explanation = torch._dynamo.explain(gpt.forward)(
            inputs_embeds=embeds, position_ids=positions, cache=cache, logits_to_keep=chunk
        )
        assert explanation.graph_break_count == 0 and explanation.graph_count == 1, explanation.break_reasons
        cache.reset()
