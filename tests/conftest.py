import os
import tempfile

# Read once at import by huggingface_hub/datasets: set before anything imports them.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="detailflow-hf-home-"))
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

FIXTURES = Path(__file__).parent / "fixtures" / "reference" / "tiny_a"


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def expected() -> dict[str, torch.Tensor]:
    return load_file(FIXTURES / "expected.safetensors")


@pytest.fixture(scope="session")
def architecture() -> dict:
    return json.loads((FIXTURES / "tokenizer" / "architecture.json").read_text())


@pytest.fixture(scope="session")
def converted_dir(tmp_path_factory) -> Path:
    """tiny_a converted once through the CLI, as a user would."""
    from detailflow_hf.cli import main

    out = tmp_path_factory.mktemp("converted") / "tiny_a"
    code = main(
        [
            "convert",
            "--tokenizer",
            str(FIXTURES / "tokenizer"),
            "--generator",
            str(FIXTURES / "ar"),
            "--tokenizer-architecture",
            str(FIXTURES / "tokenizer" / "architecture.json"),
            "--output",
            str(out),
        ]
    )
    assert code == 0
    return out


@pytest.fixture(scope="session")
def pipe(converted_dir):
    from detailflow_hf import DetailFlowPipeline

    return DetailFlowPipeline.from_pretrained(converted_dir)


@pytest.fixture(scope="session")
def imagenet_pipe():
    """A tiny random pipeline with 1000 classes (so the ImageNet names apply) and a 2-step causal prefix."""
    from detailflow_hf import DetailFlowARConfig, DetailFlowForImageGeneration, DetailFlowPipeline, DetailFlowTokenizer

    torch.manual_seed(0)
    spec = dict(
        hidden_size=16,
        intermediate_size=32,
        num_attention_heads=2,
        num_hidden_layers=1,
        num_patches=16,
        patch_size=8,
        layer_norm_eps=1e-6,
        hidden_act="gelu_pytorch_tanh",
    )
    vqvae = DetailFlowTokenizer(
        image_size=32,
        num_latent_tokens=16,
        group_size=4,
        codebook_size=64,
        codebook_embed_dim=4,
        encoder_config=spec,
        decoder_config=spec,
    )
    config = DetailFlowARConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        vocab_size=64,
        num_tokens=16,
        group_size=4,
        num_classes=1000,
    )
    transformer = DetailFlowForImageGeneration(config)
    torch.nn.init.normal_(transformer.lm_head.weight, std=0.5)  # zero init would make every draw uniform
    return DetailFlowPipeline(vqvae=vqvae.eval(), transformer=transformer.eval())
