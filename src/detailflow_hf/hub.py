"""Hub integration: model cards, pipeline folders that carry their own code (written from an explicit
file manifest, and loaded back with this package's classes), uploads, and publishing converted releases.

Uploads go through `push_folder` and an `HfApi`-like object (`create_repo`, `upload_folder`), so tests
and offline users can pass their own.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from huggingface_hub import HfApi, ModelCard, ModelCardData

PACKAGE = Path(__file__).resolve().parent
PAPER = "https://arxiv.org/abs/2505.21473"
SAMPLE_GRID = "samples.png"
TAGS = ["detailflow", "class-conditional", "autoregressive", "next-detail-prediction", "arxiv:2505.21473"]

# Remote-code layout: (file in this package, its place in an exported folder). Each file is copied
# verbatim: the files of one folder import only each other (`from .x import`), which is what diffusers'
# and transformers' dynamic-module loaders follow, so every exported folder is self-contained.
CODE_FILES = [
    ("pipelines/pipeline_detailflow.py", "pipeline_detailflow.py"),
    ("pipelines/labels.py", "labels.py"),
    ("pipelines/image_processing.py", "image_processing.py"),
    ("pipelines/adapters.py", "adapters.py"),
    ("models/tokenizer.py", "vqvae/detailflow_tokenizer.py"),
    ("models/schedule.py", "vqvae/schedule.py"),
    ("models/modeling_ar.py", "transformer/modeling_detailflow_ar.py"),
    ("models/decoding.py", "transformer/decoding.py"),
    ("models/configuration_ar.py", "transformer/configuration_ar.py"),
    ("models/sampling.py", "transformer/sampling.py"),
    ("models/schedule.py", "transformer/schedule.py"),
]
CODE_MODEL_INDEX = {
    "_class_name": ["pipeline_detailflow", "DetailFlowPipeline"],
    "vqvae": ["detailflow_tokenizer", "DetailFlowTokenizer"],
    "transformer": ["modeling_detailflow_ar", "DetailFlowForImageGeneration"],
}


def is_hub_repo_id(name: str | os.PathLike) -> bool:
    """Whether `name` reads as a Hub repo id (`owner/name`) rather than a local path: the one rule."""
    name = str(name)
    return not Path(name).expanduser().exists() and not name.startswith((".", "/", "~")) and name.count("/") == 1


# -- cards ------------------------------------------------------------------------------------------
def _usage(source: str, class_labels: str, guidance_scale: float, remote_code: bool) -> str:
    """The card's snippet; it shows the model's own guidance (what a call without the argument uses)."""
    imports = "import detailflow_hf\n" if source.startswith("detailflow_hf.") else ""
    usage = f"""```python
import torch
{imports}from detailflow_hf import load_pipeline

pipe = load_pipeline({source})
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
def save_with_code(pipe, folder: str | Path, card: ModelCard | None = None) -> Path:
    """Save `pipe` so that stock diffusers loads it with `trust_remote_code=True`: the weights, the
    model and pipeline code (self-contained per folder), `id2label` written out, and a card."""
    folder = Path(folder)
    pipe.save_pretrained(folder)
    for source, destination in CODE_FILES:
        target = folder / destination
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(PACKAGE / source, target)
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


def is_code_export(model_index: dict) -> bool:
    """Whether a pipeline's `model_index.json` is that of a folder saved with its code (`save_with_code`)."""
    return model_index.get("_class_name") == CODE_MODEL_INDEX["_class_name"]


CODE_EXPORT_LOADING_ARGS = ("dtype", "torch_dtype", "variant", "vqvae", "transformer")


def check_loading_arguments(name, kwargs: dict, allowed, what: str) -> None:
    """The one rule for loading arguments: only `allowed` ones, and not `dtype` and `torch_dtype` together;
    a `ValueError` naming `name` (the model or folder) and `what` it is otherwise."""
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(f"{name}: {what} loads with {', '.join(allowed)} only; got {', '.join(unknown)}.")
    if kwargs.get("dtype") is not None and kwargs.get("torch_dtype") is not None:
        raise ValueError(f"{name}: give dtype or torch_dtype (the same setting), not both.")


def load_code_export(folder: str | Path, **kwargs):
    """Load a folder saved by `save_with_code` with this package's classes (no remote code).

    Accepts `CODE_EXPORT_LOADING_ARGS`: `dtype` (or `torch_dtype`), `variant` and ready
    `vqvae`/`transformer` components; anything else is a `ValueError` naming it, never dropped."""
    from .models import DetailFlowForImageGeneration, DetailFlowTokenizer
    from .pipelines.pipeline_detailflow import DetailFlowPipeline

    check_loading_arguments(folder, kwargs, CODE_EXPORT_LOADING_ARGS, "a pipeline saved with its code")
    folder = Path(folder)
    dtype = kwargs.get("dtype") if kwargs.get("dtype") is not None else kwargs.get("torch_dtype")
    variant = kwargs.get("variant")
    vqvae = kwargs.get("vqvae") or DetailFlowTokenizer.from_pretrained(
        folder, subfolder="vqvae", dtype=dtype, variant=variant
    )
    transformer = kwargs.get("transformer") or DetailFlowForImageGeneration.from_pretrained(
        folder / "transformer", dtype=dtype, variant=variant
    )
    id2label = json.loads((folder / "model_index.json").read_text()).get("id2label")
    return DetailFlowPipeline(vqvae=vqvae.eval(), transformer=transformer.eval(), id2label=id2label)


# -- uploads ------------------------------------------------------------------------------------------
def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    api=None,
    private: bool | None = None,
    commit_message: str = "Upload DetailFlow model",
    create_pr: bool = False,
    ignore_patterns: list[str] | None = None,
):
    """Create `repo_id` if needed and upload `folder` to it; every upload of this package goes through here."""
    api = api or HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        commit_message=commit_message,
        create_pr=create_pr,
        ignore_patterns=ignore_patterns,
    )


def write_pipeline_folder(pipe, folder: str | Path, card: ModelCard, include_code: bool = True, sample_grid=None):
    """A pipeline folder as uploaded: weights, the code (`include_code`), the card and its sample grid
    (a PIL image saved as `samples.png`, which the card should name)."""
    folder = Path(folder)
    if include_code:
        save_with_code(pipe, folder, card)
    else:
        pipe.save_pretrained(folder)
        card.save(folder / "README.md")
    if sample_grid is not None:
        sample_grid.save(folder / SAMPLE_GRID)
    return folder


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
    sample_grid=None,
):
    """Upload a pipeline folder (with its code by default, a model card and an optional sample grid) to `repo_id`."""
    card = card or pipeline_card(pipe, repo_id, sample_grid=SAMPLE_GRID if sample_grid is not None else None)
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_pipeline_folder(pipe, tmp, card, include_code, sample_grid)
        return push_folder(
            folder, repo_id, api=api, private=private, commit_message=commit_message, create_pr=create_pr
        )


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
        return push_folder(tmp, repo_id, api=api, private=private, commit_message=commit_message, create_pr=create_pr)


# -- publishing a converted release -----------------------------------------------------------------------
# The classes of the sample grids of class-conditional ImageNet papers (DiT, VAR, LlamaGen, DetailFlow).
IMAGENET_SAMPLE_CLASSES = [207, 360, 387, 974, 88, 979, 417, 279]


def showcase_grid(pipe, num_images: int = 8, seed: int = 0, device=None):
    """One image for each of `num_images` classes (ImageNet's usual showcase classes for 1000-class
    models, else the first classes), image i seeded `seed + i`, at the model's own generation defaults."""
    import torch

    from .pipelines.image_processing import image_grid

    num_classes = pipe.transformer.config.num_classes
    pool = IMAGENET_SAMPLE_CLASSES if num_classes == 1000 else list(range(num_classes))
    classes = [pool[i % len(pool)] for i in range(num_images)]
    device = device or pipe.transformer.device
    generators = [torch.Generator(device).manual_seed(seed + i) for i in range(num_images)]
    images = pipe(class_labels=classes, generator=generators).images
    return image_grid(images, columns=min(num_images, 4))


def release_card(
    pipe,
    repo_id: str,
    tokenizer_source,
    generator_source,
    results: dict | None = None,
    use_ema: bool = True,
    **kwargs,
):
    """The card of a converted release: `base_model` names the original repos (where they are Hub repos),
    with the parity statement, the generation defaults and the `results` given; `kwargs` go to
    `pipeline_card`."""
    sources = [str(tokenizer_source), str(generator_source)]
    base_model = [source for source in sources if is_hub_repo_id(source)] or None
    description = (
        f"The original [DetailFlow]({PAPER}) release `{sources[0]}` (tokenizer) + `{sources[1]}` (generator), "
        "converted to the diffusers/transformers format by `detailflow_hf`'s converter.\n\n"
        + (
            "Parity: the weights are the release's own (the generator's EMA weights, which the release samples "
            "with), unchanged. "
            if use_ema
            else "Parity: the weights are the release's own (the generator's raw weights, not its EMA), unchanged. "
        )
        + "The converter's tests check the converted models against the original code: identical token ids "
        "for encoding and greedy generation, decoded pixels and logits within 1e-4."
    )
    return pipeline_card(
        pipe,
        repo_id,
        base_model=base_model,
        description=description,
        results={k: str(v) for k, v in (results or {}).items()} or None,
        **kwargs,
    )


def publish_release(
    tokenizer_source,
    generator_source,
    repo_id: str,
    *,
    api=None,
    results: dict | None = None,
    num_samples: int = 8,
    device: str = "cpu",
    include_code: bool = True,
    private: bool | None = None,
    create_pr: bool = False,
    **conversion,
):
    """Convert an original tokenizer + generator release (`conversion`: `convert_release`'s keyword
    arguments, e.g. `tokenizer_architecture`, `use_ema`, `sampling`) and upload it to `repo_id` as a
    ready-to-load pipeline: weights, code (`include_code`), a full card (`release_card`) and a grid of
    `num_samples` samples (0: none). Returns the upload's result."""
    from .conversion.original import convert_release

    pipe = convert_release(tokenizer_source, generator_source, **conversion)
    pipe.set_progress_bar_config(disable=True)
    grid = showcase_grid(pipe.to(device), num_samples) if num_samples else None
    card = release_card(
        pipe,
        repo_id,
        tokenizer_source,
        generator_source,
        results,
        use_ema=conversion.get("use_ema", True),
        sample_grid=SAMPLE_GRID if grid is not None else None,
    )
    return push_pipeline(
        pipe.to("cpu"),
        repo_id,
        api=api,
        include_code=include_code,
        private=private,
        commit_message=f"Convert {tokenizer_source} + {generator_source}",
        create_pr=create_pr,
        card=card,
        sample_grid=grid,
    )
