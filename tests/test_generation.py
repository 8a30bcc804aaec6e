import contextlib
import copy
import logging
from pathlib import Path

import pytest
import torch

from detailflow_hf.conversion.original import convert_generator


@pytest.fixture(scope="module")
def gpt(fixture_dir):
    return convert_generator(fixture_dir / "ar")


@pytest.fixture
def fresh_compiled(gpt):
    """No compiled steps on `gpt` before or after the test (the counts below assume a fresh store)."""
    from detailflow_hf.models.decoding import COMPILED_STEPS

    COMPILED_STEPS.pop(gpt, None)
    yield gpt
    COMPILED_STEPS.pop(gpt, None)


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
    from detailflow_hf.models.decoding import CachedStepper

    z, labels = expected["ar.z"], expected["ar.labels"]
    full = gpt(z[:, :28], labels).logits  # 32 positions
    stepper = CachedStepper(gpt, labels, gpt.sampling_params())
    pieces, done = [], 0
    for length in gpt.prefix_lengths():
        pieces.append(stepper.logits(z[:, :done], length - done))
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
def test_compiled_static_cache_path(fresh_compiled, gpt, expected):
    """Static cache + torch.compile (inductor on CPU): same ids, compiled once per batch and settings."""
    from torch._dynamo.utils import counters

    from detailflow_hf.models.decoding import COMPILED_STEPS

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
    assert len(COMPILED_STEPS[gpt]) == 1
    assert counters["stats"]["unique_graphs"] - before == 2  # later runs reuse them


@pytest.mark.slow
def test_compiled_steps_of_many_batch_sizes_coexist(fresh_compiled, gpt):
    """Each batch size compiles its own two graphs; more keys than dynamo's 8 graphs per function is fine
    (the fifth would fail a fullgraph compile if the keys shared one function). The model keeps the 4 most
    recently used (each holds a KV cache)."""
    from torch._dynamo.utils import counters

    from detailflow_hf.models.decoding import COMPILED_STEPS, MAX_COMPILED_PER_MODEL

    for batch in range(1, 6):
        labels = list(range(batch))
        before = counters["stats"]["unique_graphs"]
        assert torch.equal(gpt.generate(labels, top_k=1, compile=True), gpt.generate(labels, top_k=1)), batch
        assert counters["stats"]["unique_graphs"] - before == 2
    assert MAX_COMPILED_PER_MODEL == 4 and [key[0] for key in COMPILED_STEPS[gpt]] == [4, 6, 8, 10]  # CFG rows
    before = counters["stats"]["unique_graphs"]
    gpt.generate([0, 1], top_k=1, compile=True)
    assert counters["stats"]["unique_graphs"] == before  # kept: reused
    gpt.generate([0], top_k=1, compile=True)
    assert counters["stats"]["unique_graphs"] == before + 2  # evicted (least recently used): compiled again


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
    """The step `compile=True` compiles (forward on the static cache, guidance, top-k/top-p sampling,
    the packed linear layers where they apply) is one graph on CPU."""
    from detailflow_hf.models.decoding import PackedLinears, decode_step, new_static_cache

    config = gpt.config
    sampler = gpt.sampling_params(temperature=1.3, top_k=50, top_p=0.9)
    cache = new_static_cache(gpt, 6)
    packing = PackedLinears.for_model(gpt)
    for chunk in (1, config.group_size):
        embeds = torch.randn(6, chunk, config.hidden_size)
        positions = torch.arange(chunk)[None]
        uniforms = torch.rand(3, chunk, dtype=torch.float64)
        with packing or contextlib.nullcontext():
            explanation = torch._dynamo.explain(decode_step)(
                gpt, sampler, embeds, positions, cache, chunk, torch.tensor(1.5), uniforms
            )
        assert explanation.graph_break_count == 0 and explanation.graph_count == 1, explanation.break_reasons
        graph = explanation.graphs[0].code
        assert "packed_linear" in graph if packing is not None else "linear" in graph
        cache.reset()


@pytest.mark.slow
def test_compiled_sampling_draws_as_eager_with_per_image_generators(gpt):
    def run(compile):
        generators = [torch.Generator().manual_seed(s) for s in (31, 32, 33)]
        return gpt.generate([2, 6, 8], generator=generators, temperature=1.1, top_k=40, compile=compile)

    assert torch.equal(run(True), run(False))


def test_sampling_inverts_the_cumulative_distribution():
    from detailflow_hf.models.sampling import SamplingParams

    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    logits = probs.log().expand(1, 20000, 4)
    uniforms = SamplingParams().draw_uniforms(torch.Generator().manual_seed(0), 1, 20000, "cpu")
    ids = SamplingParams().sample(logits, uniforms)
    frequencies = torch.bincount(ids[0], minlength=4) / 20000
    assert (frequencies - probs).abs().max() < 0.01  # 4 sigma of a 20000-draw frequency is 0.014
    # the draw is the first id whose cumulative probability exceeds u: u=0.25 -> id 1 (0.1 < 0.25 < 0.3)
    edges = torch.tensor([[0.0, 0.05, 0.25, 0.55, 0.65, 1 - 2**-53]], dtype=torch.float64)
    assert SamplingParams().sample(probs.log().expand(1, 6, 4), edges).tolist() == [[0, 0, 1, 2, 3, 3]]
    # filtered-out ids are never drawn, even at the ends of [0, 1)
    top2 = SamplingParams(top_k=2).sample(probs.log().expand(1, 6, 4), edges)
    assert top2.tolist() == [[2, 2, 2, 3, 3, 3]]  # 0.3 and 0.4 renormalised: 3/7 = 0.43
    nucleus = SamplingParams(top_p=0.5).sample(probs.log().expand(1, 6, 4), edges)  # keeps 0.4 and 0.3
    assert set(nucleus.flatten().tolist()) == {2, 3}
    assert SamplingParams(do_sample=False).draw_uniforms(torch.Generator(), 2, 8, "cpu") is None


def test_sampled_ids_do_not_depend_on_where_generation_stops(gpt):
    """Each position has its own pre-drawn number: stopping early or resuming from a prefix of the same
    sampled sequence gives the same ids."""
    full = gpt.generate([1, 5], generator=torch.Generator().manual_seed(8), temperature=1.2)
    early = gpt.generate([1, 5], generator=torch.Generator().manual_seed(8), temperature=1.2, num_tokens=12)
    assert torch.equal(early, full[:, :12])
    resumed = gpt.generate(
        [1, 5], generator=torch.Generator().manual_seed(8), temperature=1.2, prefix_ids=full[:, :12]
    )
    assert torch.equal(resumed, full)


def test_packed_linears_give_the_plain_logits_and_follow_weight_changes(gpt, expected, monkeypatch):
    from detailflow_hf.models import decoding
    from detailflow_hf.models.decoding import PackedLinears

    if not PackedLinears.applies(gpt):
        pytest.skip("weight packing applies to x86 CPUs with AVX2 / AVX-512 and oneDNN")
    z, labels = expected["ar.z"], expected["ar.labels"]
    packing = PackedLinears.for_model(gpt)
    assert PackedLinears.for_model(gpt) is packing  # made once, reused
    assert len(packing.packed) == 7 * gpt.config.num_hidden_layers + 1  # q, k, v, o, gate, up, down + head
    calls = []
    packed_call = decoding.packed_linear_eager
    monkeypatch.setattr(decoding, "packed_linear_eager", lambda *a: calls.append(1) or packed_call(*a))
    plain = gpt(z[:, :28], labels).logits
    with packing:
        packed = gpt(z[:, :28], labels).logits
    assert len(calls) == len(packing.packed)  # every linear layer ran on its packed weight
    assert (packed - plain).abs().max() < 1e-5
    original = gpt.lm_head.weight.detach().clone()
    original_up = gpt.model.layers[0].mlp.up_proj.weight.detach().clone()
    try:
        with torch.no_grad():
            gpt.lm_head.weight[3] += 1.0  # an in-place update (an optimizer step, a merged adapter)
        repacked = PackedLinears.for_model(gpt)
        assert repacked is not packing
        with repacked:
            after = gpt(z[:, :28], labels).logits
        assert (after - gpt(z[:, :28], labels).logits).abs().max() < 1e-5
        assert (after - packed).abs().max() > 0.5
        # a write through `.data` (peft's adapter merge), which PyTorch's version counter does not see
        up = gpt.model.layers[0].mlp.up_proj.weight
        up.data += 0.05 * torch.outer(torch.randn(up.shape[0]), torch.randn(up.shape[1]))
        merged = PackedLinears.for_model(gpt)
        assert merged is not repacked
        with merged:
            after_merge = gpt(z[:, :28], labels).logits
        assert (after_merge - gpt(z[:, :28], labels).logits).abs().max() < 5e-5  # larger logits after the updates
    finally:
        with torch.no_grad():
            gpt.lm_head.weight.copy_(original)
            gpt.model.layers[0].mlp.up_proj.weight.copy_(original_up)
    half = copy.deepcopy(gpt).to(torch.bfloat16)
    assert not PackedLinears.applies(half) and PackedLinears.for_model(half) is None


def test_int8_weight_only_through_torchao(gpt, expected, tmp_path):
    """transformers' own quantization path: `from_pretrained(quantization_config=TorchAoConfig(...))`."""
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import TorchAoConfig

    from detailflow_hf import DetailFlowForImageGeneration
    from detailflow_hf.models.decoding import PackedLinears

    gpt.save_pretrained(tmp_path)
    int8 = DetailFlowForImageGeneration.from_pretrained(
        tmp_path, quantization_config=TorchAoConfig(Int8WeightOnlyConfig())
    ).eval()
    assert type(int8.model.layers[0].mlp.up_proj.weight.data).__name__ == "Int8Tensor"
    z, labels = expected["ar.z"], expected["ar.labels"]
    plain, quantized = gpt(z[:, :28], labels).logits, int8(z[:, :28], labels).logits
    assert (quantized - plain).norm() < 0.05 * plain.norm()  # measured 0.024: int8 rows, one scale each
    assert (quantized.argmax(-1) == plain.argmax(-1)).float().mean() > 0.9  # measured 0.97
    # packing leaves the int8 weights alone (only the float head is packed) and decodes as the reference
    if PackedLinears.applies(int8):
        assert len(PackedLinears.for_model(int8).packed) == 1
    assert torch.equal(int8.generate(labels, top_k=1), int8.generate(labels, top_k=1, use_cache=False))


def test_filtered_ids_at_the_end_of_the_vocabulary_are_never_drawn():
    from detailflow_hf.models.sampling import SamplingParams

    logits = torch.tensor([0.4, 0.3, 0.2, 0.1]).log().expand(1, 3, 4)
    edges = torch.tensor([[0.0, 0.5, 1 - 2**-53]], dtype=torch.float64)
    assert SamplingParams(top_k=2).sample(logits, edges).tolist() == [[0, 0, 1]]  # 4/7 and 3/7 kept
    with pytest.raises(ValueError, match="sampling needs the uniforms"):
        SamplingParams().sample(logits)


def test_generation_refuses_nan_logits_and_compile_without_cache(gpt):
    broken = copy.deepcopy(gpt)
    with torch.no_grad():
        broken.lm_head.weight[5] = float("nan")
    for use_cache in (True, False):
        with pytest.raises(ValueError, match="NaN or infinite logits"):
            broken.generate([1], generator=torch.Generator().manual_seed(0), use_cache=use_cache)
    with pytest.raises(ValueError, match="cannot be combined with use_cache=False"):
        gpt.generate([1], compile=True, use_cache=False)


def test_the_kv_cache_size_is_checked_before_allocating(gpt, monkeypatch):
    from detailflow_hf.models import decoding

    cache = decoding.new_static_cache(gpt, 6)
    needed = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)  # what transformers allocates
    monkeypatch.setattr(decoding, "free_memory", lambda device: 1000)
    with pytest.raises(ValueError, match=rf"the KV cache for 6 sequences .* needs {needed / 2**30:.2f} GiB, but only"):
        gpt.generate([1, 2, 3])


def test_a_second_copy_of_the_decoding_module_imports(tmp_path):
    """The code exported beside a Hub model is a second copy of these files; loading it next to the
    package must not collide on the registered op."""
    import importlib.util
    import shutil
    import sys

    import detailflow_hf.models.decoding as decoding

    folder = tmp_path / "exported"
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    for name in ("decoding.py", "sampling.py"):
        shutil.copy(Path(decoding.__file__).with_name(name), folder / name)
    spec = importlib.util.spec_from_file_location("exported", folder / "__init__.py")
    package = importlib.util.module_from_spec(spec)
    sys.modules["exported"] = package
    try:
        copy_of = importlib.import_module("exported.decoding")
        x, w = torch.randn(3, 16), torch.randn(8, 16)
        packed = torch.ops.mkldnn._reorder_linear_weight(w, 4) if torch.backends.mkldnn.is_available() else None
        if packed is not None:
            assert (copy_of.packed_linear(x, packed, None, 8) - x @ w.T).abs().max() < 1e-5
            again = decoding._registered_packed_linear()  # a re-import of this module reuses its op
            assert (again(x, packed, None, 8) - x @ w.T).abs().max() < 1e-5
    finally:
        for name in [n for n in sys.modules if n == "exported" or n.startswith("exported.")]:
            del sys.modules[name]


@pytest.mark.slow
def test_compiled_steps_follow_weights_stop_early_without_recompiling_and_step_aside(
    fresh_compiled, gpt, expected, caplog
):
    from torch._dynamo.utils import counters

    from detailflow_hf.models.decoding import COMPILED_STEPS

    labels = expected["ar.labels"]
    full = gpt.generate(labels, top_k=1, compile=True)
    before = counters["stats"]["unique_graphs"]
    assert torch.equal(gpt.generate(labels, top_k=1, compile=True, num_tokens=12), full[:, :12])
    assert counters["stats"]["unique_graphs"] == before  # another num_tokens: same graphs, same cache
    # a compiled step in use (another thread, a callback that generates) is not shared: eager instead
    (entry,) = [e for key, e in COMPILED_STEPS[gpt].items() if key[0] == 2 * len(labels)]
    with entry.lock, caplog.at_level(logging.INFO, logger="detailflow_hf.models.decoding"):
        assert torch.equal(gpt.generate(labels, top_k=1, compile=True), full)
    assert "in use by another generation; decoding eagerly" in caplog.text
    # the compiled graphs read the current (re)packed weights
    original = gpt.lm_head.weight.detach().clone()
    try:
        with torch.no_grad():
            gpt.lm_head.weight.mul_(-1.0)
        assert torch.equal(gpt.generate(labels, top_k=1, compile=True), gpt.generate(labels, top_k=1))
        assert not torch.equal(gpt.generate(labels, top_k=1, compile=True), full)
    finally:
        with torch.no_grad():
            gpt.lm_head.weight.copy_(original)
    assert counters["stats"]["unique_graphs"] == before


@pytest.mark.slow
def test_decoding_state_goes_with_the_model():
    """Packed weights and compiled steps live beside a model, not in it: a collected model frees them."""
    import gc
    import weakref

    from detailflow_hf import DetailFlowARConfig, DetailFlowForImageGeneration
    from detailflow_hf.models.decoding import COMPILED_STEPS, PACKED_LINEARS, PackedLinears

    config = DetailFlowARConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=64, num_tokens=16, group_size=4,
        num_classes=3,
    )  # fmt: skip
    model = DetailFlowForImageGeneration(config).eval()
    packed_before, compiled_before = len(PACKED_LINEARS), len(COMPILED_STEPS)
    model.generate([0, 1], compile=True)
    assert len(COMPILED_STEPS) == compiled_before + 1
    assert len(PACKED_LINEARS) == packed_before + PackedLinears.applies(model)
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None
    assert (len(PACKED_LINEARS), len(COMPILED_STEPS)) == (packed_before, compiled_before)
