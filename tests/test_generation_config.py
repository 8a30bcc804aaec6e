"""Sampling defaults the transformers way: `generation_config.json` beside the weights, `None` = the model's."""

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from detailflow_hf import DetailFlowARConfig, DetailFlowForImageGeneration, DetailFlowPipeline, ResolutionSchedule
from detailflow_hf.cli import main
from detailflow_hf.conversion.original import release_sampling_params
from detailflow_hf.hub import pipeline_card
from detailflow_hf.models.sampling import SamplingParams

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def guided_dir(converted_dir, tmp_path_factory) -> Path:
    """The converted fixture with guidance 3.0 written into its generation config."""
    folder = tmp_path_factory.mktemp("guided") / "tiny_a"
    shutil.copytree(converted_dir, folder)
    path = folder / "transformer" / "generation_config.json"
    config = json.loads(path.read_text())
    config["guidance_scale"] = 3.0
    path.write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def guided(guided_dir):
    return DetailFlowPipeline.from_pretrained(guided_dir)


def test_converted_folder_carries_the_release_sampling(converted_dir, pipe):
    saved = json.loads((converted_dir / "transformer" / "generation_config.json").read_text())
    # tiny_a has 32 tokens: not a released count, so the original sampler's defaults
    assert {
        k: saved[k] for k in ("guidance_scale", "gradual_guidance", "do_sample", "temperature", "top_k", "top_p")
    } == {
        "guidance_scale": 1.5,
        "gradual_guidance": False,
        "do_sample": True,
        "temperature": 1.0,
        "top_k": 0,
        "top_p": 1.0,
    }
    assert pipe.transformer.generation_config.guidance_scale == 1.5


@pytest.mark.parametrize("num_tokens, guidance", [(128, 1.45), (256, 1.5), (512, 1.32), (64, 1.5)])
def test_release_guidance_by_token_count(num_tokens, guidance):
    params = release_sampling_params(num_tokens)
    assert params == SamplingParams(guidance_scale=guidance, top_k=0, top_p=1.0, temperature=1.0, do_sample=True)
    assert release_sampling_params(num_tokens, guidance_scale=2.25, top_k=None).guidance_scale == 2.25


def test_the_model_guidance_is_the_default_and_arguments_win(pipe, guided):
    from_config = guided(class_labels=[0], top_k=1, output_type="pt").token_ids
    explicit = pipe(class_labels=[0], guidance_scale=3.0, top_k=1, output_type="pt").token_ids
    plain = pipe(class_labels=[0], top_k=1, output_type="pt").token_ids
    assert torch.equal(from_config, explicit)
    assert not torch.equal(from_config, plain)  # the saved value really changed what is drawn
    assert torch.equal(guided(class_labels=[0], guidance_scale=1.5, top_k=1, output_type="pt").token_ids, plain)
    assert guided.transformer.generate([0], top_k=1).tolist() == explicit.tolist()


def test_do_sample_false_is_greedy(pipe, expected):
    ids = pipe.transformer.generate(expected["ar.labels"], do_sample=False, generator=torch.Generator().manual_seed(1))
    assert torch.equal(ids, expected["ar.greedy.cfg1.5"])
    greedy = SamplingParams(do_sample=False).to_generation_config()
    assert greedy.top_k is None and greedy.do_sample is False  # transformers refuses sampling knobs on greedy configs
    ids = pipe.transformer.generate(expected["ar.labels"], generation_config=greedy)
    assert torch.equal(ids, expected["ar.greedy.cfg1.5"])


def test_model_without_generation_config_uses_the_original_defaults(pipe, tmp_path):
    pipe.transformer.save_pretrained(tmp_path)
    (tmp_path / "generation_config.json").unlink()
    loaded = DetailFlowForImageGeneration.from_pretrained(tmp_path)
    assert loaded.sampling_params() == SamplingParams(
        guidance_scale=1.5, do_sample=True, top_k=0, top_p=1.0, temperature=1.0
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"guidance_scale": float("inf")}, r"guidance_scale=inf is not supported; expected a finite number >= 1"),
        ({"guidance_scale": "2"}, r"guidance_scale='2' is not supported"),
        ({"temperature": 0.0}, r"temperature=0.0 must be a finite number > 0"),
        ({"top_k": 2.5}, r"top_k=2.5 must be an integer >= 0"),
        ({"top_p": 1.5}, r"top_p=1.5 must be a number in \(0, 1\]"),
        ({"do_sample": "yes"}, r"do_sample='yes' must be True or False"),
        ({"gradual_guidance": 1}, r"gradual_guidance=1 must be True or False"),
    ],
)
def test_bad_sampling_is_named_by_every_entry_point(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipe.transformer.generate([1], **kwargs)
    with pytest.raises(ValueError, match=message):
        pipe(class_labels=[1], **kwargs)


def test_cli_uses_the_model_guidance_unless_given(guided_dir, converted_dir, tmp_path):
    def generate(model, name, *extra):
        assert (
            main(
                [
                    "generate",
                    "--model",
                    str(model),
                    "--class",
                    "4",
                    "--top-k",
                    "1",
                    "--output",
                    str(tmp_path / name),
                    *extra,
                ]
            )
            == 0
        )
        return Image.open(tmp_path / name).tobytes()

    from_model = generate(guided_dir, "model.png")
    assert from_model == generate(converted_dir, "explicit.png", "--guidance-scale", "3.0")
    assert from_model != generate(converted_dir, "plain.png")
    assert generate(guided_dir, "override.png", "--guidance-scale", "1.5") == generate(converted_dir, "plain2.png")


def test_cli_convert_writes_the_given_sampling(fixture_dir, tmp_path):
    out = tmp_path / "converted"
    code = main(
        [
            "convert",
            "--tokenizer",
            str(fixture_dir / "tokenizer"),
            "--generator",
            str(fixture_dir / "ar"),
            "--tokenizer-architecture",
            str(fixture_dir / "tokenizer" / "architecture.json"),
            "--output",
            str(out),
            "--guidance-scale",
            "2.5",
            "--top-k",
            "7",
            "--gradual-guidance",
        ]
    )
    assert code == 0
    saved = json.loads((out / "transformer" / "generation_config.json").read_text())
    assert (saved["guidance_scale"], saved["top_k"], saved["gradual_guidance"], saved["top_p"]) == (2.5, 7, True, 1.0)


def test_eval_generation_records_the_model_guidance(guided_dir, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "detailflow_hf.cli",
            "eval-generation",
            "--model",
            str(guided_dir),
            "--output-dir",
            str(tmp_path / "out"),
            "--num-samples",
            "2",
            "--batch-size",
            "2",
            "--top-k",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sampling = json.loads((tmp_path / "out" / "sampling.json").read_text())
    assert (sampling["guidance_scale"], sampling["top_k"], sampling["do_sample"]) == (3.0, 1, True)


def test_card_shows_the_model_guidance(guided):
    card = str(pipeline_card(guided, "me/guided"))
    assert "guidance_scale=3.0" in card and "guidance 3.0; temperature 1.0, top-k off, top-p 1.0" in card


def test_space_slider_starts_at_the_model_guidance(guided):
    pytest.importorskip("gradio", reason="the demo extra (gradio) is not installed")
    sys.path.insert(0, str(ROOT / "spaces_demo"))
    try:
        import app
    finally:
        sys.path.remove(str(ROOT / "spaces_demo"))
    demo = app.build_demo(guided)
    sliders = [c["props"] for c in demo.config["components"] if c["props"].get("label") == "Guidance scale"]
    assert [s["value"] for s in sliders] == [3.0, 3.0]  # both tabs
    assert app.Demo(guided)._arguments("4", None, 0, 32)["guidance_scale"] is None  # left out: the model's


# -- outputs, deprecations, callbacks -------------------------------------------------------------------
def test_output_hidden_states_and_attentions(pipe, expected):
    gpt = pipe.transformer
    z, labels = expected["ar.z"][:, :28], expected["ar.labels"]
    out = gpt(z, labels, output_hidden_states=True)
    layers, width = gpt.config.num_hidden_layers, gpt.config.hidden_size
    assert len(out.hidden_states) == layers + 1 and all(h.shape == (3, 32, width) for h in out.hidden_states)
    assert torch.equal(out.hidden_states[0], gpt.model.embed_sequence(z, labels))
    assert torch.allclose(gpt.lm_head(out.hidden_states[-1]).float(), out.logits, atol=1e-6)
    assert gpt(z, labels).hidden_states is None
    saved = gpt.config._attn_implementation
    gpt.set_attn_implementation("eager")
    try:
        attentions = gpt(z, labels, output_attentions=True).attentions
    finally:
        gpt.set_attn_implementation(saved)
    assert len(attentions) == layers and attentions[0].shape == (3, gpt.config.num_attention_heads, 32, 32)
    # group-causal: position 4 (x_3, first of a block) sees its whole block 4..7 and nothing after
    assert (attentions[0][:, :, 4, 8:] == 0).all() and (attentions[0][:, :, 4, 5:8] > 0).all()


def test_deprecations_through_our_calls_are_errors():
    """The suite's filter is live: a deprecated transformers argument passed from our code fails."""
    from transformers.masking_utils import create_causal_mask

    config = DetailFlowARConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=64, num_tokens=16, group_size=4
    )
    with pytest.raises(FutureWarning, match="past_key_values"):
        create_causal_mask(
            config=config, inputs_embeds=torch.zeros(1, 2, 32), attention_mask=None, past_key_values=None
        )


def test_generation_raises_no_deprecation(pipe, expected):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        warnings.simplefilter("error", FutureWarning)
        pipe.transformer.generate(expected["ar.labels"], top_k=1)
        pipe.transformer.generate(expected["ar.labels"], top_k=1, use_cache=False)


def test_interrupt_returns_the_prefix_so_far(pipe):
    def stop_at_step_4(p, step, k, kwargs):
        if step == 4:
            p._interrupt = True
        return kwargs

    out = pipe(
        class_labels=[1, 2], top_k=1, output_type="pt", callback_on_step_end=stop_at_step_4, return_intermediates=True
    )
    assert pipe.interrupt
    full = pipe(class_labels=[1, 2], top_k=1, output_type="pt")  # the flag is reset by the next call
    assert out.token_ids.shape == (2, 8) and torch.equal(out.token_ids, full.token_ids[:, :8])
    side = pipe.vqvae.schedule.decoder_resolution(8)
    assert out.images.shape == (2, 3, side, side) and len(out.intermediates) == 5
    assert torch.equal(out.images, pipe.decode(full.token_ids[:, :8], output_type="pt"))
    assert full.token_ids.shape == (2, 32) and not pipe.interrupt


@pytest.mark.parametrize("use_cache", [True, False])
def test_callback_tokens_replace_the_prefix(pipe, use_cache):
    gpt = pipe.transformer
    donor = gpt.generate([7], top_k=1)

    def graft(step, tokens):
        return donor[:, :8].clone() if tokens.shape[1] == 8 else None

    grafted = gpt.generate([3], top_k=1, callback=graft, use_cache=use_cache)
    reference = gpt.generate([3], top_k=1, callback=graft, use_cache=False)
    assert torch.equal(grafted[:, :8], donor[:, :8])
    assert torch.equal(grafted, reference)  # the cache was rebuilt from the new prefix
    assert not torch.equal(grafted, gpt.generate([3], top_k=1))


@pytest.mark.parametrize("use_cache", [True, False])
def test_callback_replacing_only_the_new_ids_keeps_the_cache(pipe, use_cache, monkeypatch):
    """The cache has seen only the ids before a step: replacing just the step's new ids needs no rebuild."""
    from detailflow_hf.models import decoding

    resets = []
    monkeypatch.setattr(
        decoding.CachedStepper, "reset", lambda self, f=decoding.CachedStepper.reset: resets.append(1) or f(self)
    )
    gpt = pipe.transformer
    donor = gpt.generate([7], top_k=1)

    def swap_new(step, tokens):
        if tokens.shape[1] == 12:
            return torch.cat([tokens[:, :8], donor[:, 8:12]], dim=1)
        return None

    swapped = gpt.generate([3], top_k=1, callback=swap_new, use_cache=use_cache)
    assert not resets
    reference = gpt.generate([3], top_k=1, callback=swap_new, use_cache=False)
    assert torch.equal(swapped[:, 8:12], donor[:, 8:12]) and torch.equal(swapped, reference)
    assert not torch.equal(swapped, gpt.generate([3], top_k=1))
    # replacing ids the cache has seen rebuilds it
    gpt.generate([3], top_k=1, callback=lambda s, t: donor[:, :12] if t.shape[1] == 12 else None, use_cache=use_cache)
    assert len(resets) == int(use_cache)


def test_pipeline_callback_dict_is_honoured(pipe):
    donor = pipe(class_labels=[7], top_k=1, output_type="pt").token_ids

    def graft(p, step, k, kwargs):
        return {"tokens": donor[:, :k].clone()} if k == 12 else kwargs

    out = pipe(class_labels=[3], top_k=1, output_type="pt", callback_on_step_end=graft)
    assert torch.equal(out.token_ids[:, :12], donor[:, :12])
    assert torch.equal(
        out.token_ids,
        pipe.transformer.generate(
            [3], top_k=1, callback=lambda s, t: donor[:, :12] if t.shape[1] == 12 else None, use_cache=False
        ),
    )
    with pytest.raises(ValueError, match=r"expected integer ids of shape \(1, 12\)"):
        pipe(
            class_labels=[3],
            top_k=1,
            callback_on_step_end=lambda p, s, k, kw: {"tokens": donor[:, :3]} if k == 12 else kw,
        )


# -- one owner per rule -----------------------------------------------------------------------------------
def test_pipeline_refuses_a_mismatched_pair(pipe):
    other = DetailFlowForImageGeneration(
        DetailFlowARConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            vocab_size=128,
            num_tokens=32,
            group_size=8,
            num_classes=10,
        )
    )
    with pytest.raises(ValueError, match="group size is 4 in the tokenizer but 8 in the generator"):
        DetailFlowPipeline(vqvae=pipe.vqvae, transformer=other)


def test_from_pretrained_refuses_a_mismatched_pair(converted_dir, tmp_path):
    folder = tmp_path / "pair"
    shutil.copytree(converted_dir, folder)
    config_path = folder / "vqvae" / "config.json"
    config = json.loads(config_path.read_text())
    config["group_size"] = 8  # shapes no weight: only the pairing check can notice
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="group size is 8 in the tokenizer but 4 in the generator"):
        DetailFlowPipeline.from_pretrained(folder)


def test_schedule_and_config_share_the_causal_rule():
    message = (
        r"causal_num \(16\) must be a positive multiple of group_size \(8\) and at most num_tokens - group_size \(8\)"
    )
    with pytest.raises(ValueError, match=message):
        ResolutionSchedule(64, 16, 8, 16, 1.5, 8, 8)
    with pytest.raises(Exception, match=message):  # @strict wraps it in its validation error
        DetailFlowARConfig(num_tokens=16, group_size=8, causal_num=16, hidden_size=32, num_attention_heads=2)
    assert (
        ResolutionSchedule(64, 16, 8, 8, 1.5, 8, 8).token_list
        == DetailFlowForImageGeneration(
            DetailFlowARConfig(
                num_tokens=16,
                group_size=8,
                causal_num=8,
                hidden_size=32,
                num_attention_heads=2,
                num_hidden_layers=1,
                vocab_size=16,
                num_classes=2,
            )
        ).prefix_lengths()
    )
