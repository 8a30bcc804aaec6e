"""Hub integration: model cards, pipeline folders that carry their own code, and uploads.

Uploads go through an `HfApi`-like object (`create_repo`, `upload_folder`), so tests and offline
users can pass their own.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

from huggingface_hub import HfApi, ModelCard, ModelCardData

PACKAGE = Path(__file__).resolve().parent
PAPER = "https://arxiv.org/abs/2505.21473"
TAGS = ["detailflow", "class-conditional", "autoregressive", "next-detail-prediction", "arxiv:2505.21473"]

# Remote-code layout: (source file in this package, destination in the exported folder). Parent-package
# imports become sibling imports so each folder is self-contained for diffusers' dynamic modules.
CODE_FILES = [
    ("pipelines/pipeline_detailflow.py", "pipeline_detailflow.py"),
    ("pipelines/labels.py", "labels.py"),
    ("image_processing.py", "image_processing.py"),
    ("adapters.py", "adapters.py"),
    ("models/tokenizer.py", "vqvae/detailflow_tokenizer.py"),
    ("schedule.py", "vqvae/schedule.py"),
    ("models/modeling_ar.py", "transformer/modeling_detailflow_ar.py"),
    ("models/configuration_ar.py", "transformer/configuration_ar.py"),
    ("models/sampling.py", "transformer/sampling.py"),
    ("schedule.py", "transformer/schedule.py"),
]
CODE_MODEL_INDEX = {
    "_class_name": ["pipeline_detailflow", "DetailFlowPipeline"],
    "vqvae": ["detailflow_tokenizer", "DetailFlowTokenizer"],
    "transformer": ["modeling_detailflow_ar", "DetailFlowForImageGeneration"],
}


# -- cards ------------------------------------------------------------------------------------------
def _usage(source: str, class_labels: str, guidance_scale: float, remote_code: bool) -> str:
    """The card's snippet; it shows the model's own guidance (what a call without the argument uses)."""
    imports = "import detailflow_hf\n" if source.startswith("detailflow_hf.") else ""
    usage = f"""```python
import torch
{imports}from detailflow_hf import DetailFlowPipeline

pipe = DetailFlowPipeline.from_pretrained({source})
out = pipe(class_labels={class_labels}, guidance_scale={guidance_scale}, generator=torch.Generator().manual_seed(0),
           return_intermediates=True)
out.images[0].save("sample.png")          # full detail
out.intermediates[3][0].save("coarse.png")  # a coarse prefix, at its own low resolution
```"""
    if not remote_code:
        return usage
    return (
        usage
        + f"""

Without this package (the repo carries its own code):

```python
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained({source}, trust_remote_code=True)
```"""
    )


def _example_labels(pipe) -> str:
    num_classes = pipe.transformer.config.num_classes
    if num_classes == 1000:
        return '["golden retriever", 207]'
    if pipe.id2label:
        return json.dumps([pipe.labels.name(i) for i in sorted(pipe.id2label)[:2]], ensure_ascii=False)
    return repr(list(range(min(2, num_classes))))


def _sampling_summary(sampling) -> str:
    """One line of a card: the generation defaults a call without arguments uses."""
    if not sampling.do_sample:
        draws = "greedy"
    else:
        draws = f"temperature {sampling.temperature}, top-k {sampling.top_k or 'off'}, top-p {sampling.top_p}"
    gradual = ", decreasing over the groups" if sampling.gradual_guidance else ""
    return f"guidance {sampling.guidance_scale}{gradual}; {draws}"


def _card(data: ModelCardData, title: str, body: str) -> ModelCard:
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n# {title}\n\n{body.strip()}\n")


def pipeline_card(
    pipe,
    repo_id: str = "your-name/detailflow",
    *,
    license: str = "apache-2.0",
    base_model: str | None = None,
    sample_grid: str | None = None,
    results: dict[str, str] | None = None,
    description: str | None = None,
    load_from: str | None = None,
    remote_code: bool = True,
) -> ModelCard:
    """A model card for a `DetailFlowPipeline` folder: metadata, architecture, usage, optional sample
    grid and results.

    The usage example names two of the model's own classes (ImageNet's when it has no `id2label`)
    at the guidance of the generator's `generation_config`; `load_from` is the Python expression it
    loads from (default: the quoted `repo_id`); `remote_code` adds the stock-diffusers snippet, for
    folders saved with their code.
    """
    vq, gpt = pipe.vqvae.config, pipe.transformer.config
    sampling = pipe.sampling_params()
    imagenet = gpt.num_classes == 1000
    data = ModelCardData(
        library_name="diffusers",
        pipeline_tag="unconditional-image-generation",
        license=license,
        tags=TAGS + (["imagenet"] if imagenet else []),
        datasets=["ILSVRC/imagenet-1k"] if imagenet else None,
        base_model=base_model,
    )
    steps = len(pipe.vqvae.schedule.token_list)
    lines = [
        description
        or f"A [DetailFlow]({PAPER}) class-conditional image generator in the diffusers/transformers format.",
        "",
        "DetailFlow orders an image's tokens from global structure to fine detail: the first *k* tokens decode to a "
        "low-resolution image and more tokens add detail.",
        "",
        "| | |",
        "|---|---|",
        f"| image size | {vq.image_size} px |",
        f"| tokens per image | {vq.num_latent_tokens} ({steps} decoding steps: "
        f"{pipe.vqvae.schedule.causal_num} one by one, then groups of {vq.group_size}) |",
        f"| codebook | {vq.codebook_size} x {vq.codebook_embed_dim} |",
        f"| generator | {gpt.num_hidden_layers} layers, width {gpt.hidden_size}, "
        f"{gpt.num_attention_heads} heads, {gpt.num_classes} classes |",
        f"| sampling defaults (`generation_config.json`) | {_sampling_summary(sampling)} |",
        "",
        "## How to use",
        "",
        _usage(load_from or json.dumps(repo_id), _example_labels(pipe), sampling.guidance_scale, remote_code),
    ]
    if sample_grid:
        lines += ["", "## Samples", "", f"![samples]({sample_grid})"]
    if results:
        lines += ["", "## Results", "", "| metric | value |", "|---|---|"] + [
            f"| {k} | {v} |" for k, v in results.items()
        ]
    lines += [
        "",
        "## Citation",
        "",
        f"DetailFlow: 1D Coarse-to-Fine Autoregressive Image Generation via Next-Detail Prediction, {PAPER}",
    ]
    return _card(data, repo_id.split("/")[-1], "\n".join(lines))


def tokenizer_card(
    model, repo_id: str = "your-name/detailflow-tokenizer", *, license: str = "apache-2.0"
) -> ModelCard:
    """A model card for a `DetailFlowTokenizer` folder."""
    data = ModelCardData(library_name="diffusers", license=license, tags=TAGS + ["image-tokenization"])
    body = f"""The [DetailFlow]({PAPER}) 1D coarse-to-fine image tokenizer: {model.config.num_latent_tokens} tokens per
{model.config.image_size} px image; any prefix of *k* tokens decodes to the resolution *k* maps to
(trained prefixes: {list(model.schedule.token_list)}).

```python
from detailflow_hf import DetailFlowTokenizer

vq = DetailFlowTokenizer.from_pretrained("{repo_id}")
enc = vq.encode(images)                        # (B,3,H,W) in [-1,1] -> .token_ids (B,N)
low = vq.decode(enc.token_ids, num_tokens=16).sample
```"""
    return _card(data, repo_id.split("/")[-1], body)


def generator_card(
    model, repo_id: str = "your-name/detailflow-generator", *, license: str = "apache-2.0"
) -> ModelCard:
    """A model card for a `DetailFlowForImageGeneration` folder."""
    data = ModelCardData(library_name="transformers", license=license, tags=TAGS)
    body = f"""The [DetailFlow]({PAPER}) class-conditional generator ({model.config.num_hidden_layers} layers, width
{model.config.hidden_size}), predicting {model.config.num_tokens} tokens: {model.config.causal_num} one by one, then
{model.config.group_size} at a time.

```python
from detailflow_hf import DetailFlowForImageGeneration

gpt = DetailFlowForImageGeneration.from_pretrained("{repo_id}")
ids = gpt.generate([207])  # (1, {model.config.num_tokens}) ids, guidance {model.sampling_params().guidance_scale}
```"""
    return _card(data, repo_id.split("/")[-1], body)


# -- folders with code --------------------------------------------------------------------------------
def _sibling_imports(source: str) -> str:
    return re.sub(r"^(\s*)from \.\.(\w+) import", r"\1from .\2 import", source, flags=re.MULTILINE)


def save_with_code(pipe, folder: str | Path, card: ModelCard | None = None) -> Path:
    """Save `pipe` so that stock diffusers loads it with `trust_remote_code=True`: the weights, the
    model and pipeline code (self-contained per folder), `id2label` written out, and a card."""
    folder = Path(folder)
    pipe.save_pretrained(folder)
    for source, destination in CODE_FILES:
        target = folder / destination
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(_sibling_imports((PACKAGE / source).read_text()))
    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text())
    index.update(CODE_MODEL_INDEX)
    index["id2label"] = {str(k): v for k, v in pipe.id2label.items()}
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    config_path = folder / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    config["auto_map"] = {
        "AutoConfig": "configuration_ar.DetailFlowARConfig",
        "AutoModel": "modeling_detailflow_ar.DetailFlowForImageGeneration",
    }
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (card or pipeline_card(pipe)).save(folder / "README.md")
    return folder


# -- uploads ------------------------------------------------------------------------------------------
def _upload(folder: Path, repo_id: str, api, private: bool | None, commit_message: str, create_pr: bool):
    api = api or HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    return api.upload_folder(
        repo_id=repo_id, folder_path=str(folder), commit_message=commit_message, create_pr=create_pr
    )


def push_pipeline(
    pipe,
    repo_id: str,
    *,
    api=None,
    include_code: bool = True,
    private: bool | None = None,
    commit_message: str = "Upload DetailFlow pipeline",
    create_pr: bool = False,
    card: ModelCard | None = None,
):
    """Upload a pipeline folder (with its code by default, and a model card) to `repo_id`."""
    card = card or pipeline_card(pipe, repo_id)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if include_code:
            save_with_code(pipe, folder, card)
        else:
            pipe.save_pretrained(folder)
            card.save(folder / "README.md")
        return _upload(folder, repo_id, api, private, commit_message, create_pr)


def push_model(
    model,
    repo_id: str,
    *,
    api=None,
    private: bool | None = None,
    commit_message: str = "Upload DetailFlow model",
    create_pr: bool = False,
    card: ModelCard | None = None,
):
    """Upload one model (`DetailFlowTokenizer` or `DetailFlowForImageGeneration`) with a model card."""
    if card is None:
        card = tokenizer_card(model, repo_id) if hasattr(model, "schedule") else generator_card(model, repo_id)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        card.save(Path(tmp) / "README.md")
        return _upload(Path(tmp), repo_id, api, private, commit_message, create_pr)
