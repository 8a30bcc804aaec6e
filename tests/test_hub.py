import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from huggingface_hub import ModelCard

from detailflow_hf import DetailFlowPipeline
from detailflow_hf.hub import pipeline_card, push_model, save_with_code


class FakeHubApi:
    """Records what an upload would send and lays the files out like a repo on disk."""

    def __init__(self, root: Path):
        self.root, self.calls = root, []

    def create_repo(self, repo_id, private=None, exist_ok=False, **kwargs):
        self.calls.append(("create_repo", repo_id, private, exist_ok))
        (self.root / repo_id).mkdir(parents=True, exist_ok=True)

    def upload_folder(self, repo_id, folder_path, commit_message=None, create_pr=False, **kwargs):
        self.calls.append(("upload_folder", repo_id, commit_message, create_pr))
        shutil.copytree(folder_path, self.root / repo_id, dirs_exist_ok=True)
        return f"https://example.invalid/{repo_id}/commit/0"


def files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_pipeline_push_writes_weights_code_and_card(pipe, tmp_path, expected):
    api = FakeHubApi(tmp_path)
    url = pipe.push_to_hub("me/detailflow-tiny", api=api, private=True)
    assert url.endswith("/commit/0")
    assert api.calls[0] == ("create_repo", "me/detailflow-tiny", True, True)
    repo = tmp_path / "me" / "detailflow-tiny"
    assert {
        "README.md",
        "model_index.json",
        "pipeline_detailflow.py",
        "labels.py",
        "vqvae/config.json",
        "vqvae/diffusion_pytorch_model.safetensors",
        "vqvae/detailflow_tokenizer.py",
        "vqvae/schedule.py",
        "transformer/config.json",
        "transformer/model.safetensors",
        "transformer/modeling_detailflow_ar.py",
        "transformer/configuration_ar.py",
        "transformer/sampling.py",
        "transformer/schedule.py",
    } <= files(repo)
    card = ModelCard.load(repo / "README.md")
    assert card.data.library_name == "diffusers" and card.data.pipeline_tag == "unconditional-image-generation"
    assert "arxiv:2505.21473" in card.data.tags and "class-conditional" in card.data.tags
    assert 'DetailFlowPipeline.from_pretrained("me/detailflow-tiny")' in card.text
    index = json.loads((repo / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_detailflow", "DetailFlowPipeline"]
    # the uploaded folder loads back with this package's classes
    loaded = DetailFlowPipeline.from_pretrained(repo)
    assert type(loaded.vqvae).__module__ == "detailflow_hf.models.tokenizer"
    assert torch.equal(
        loaded(class_labels=expected["ar.labels"], top_k=1, output_type="pt").token_ids, expected["ar.greedy.cfg1.5"]
    )


def test_exported_folder_loads_with_stock_diffusers_only(pipe, tmp_path, expected):
    save_with_code(pipe, tmp_path / "export")
    script = (
        "import sys, json; sys.modules['detailflow_hf'] = None\n"
        "from diffusers import DiffusionPipeline\n"
        f"pipe = DiffusionPipeline.from_pretrained({str(tmp_path / 'export')!r}, trust_remote_code=True)\n"
        "out = pipe(class_labels=[0, 3, 9], top_k=1, output_type='pt')\n"
        "print(json.dumps([type(pipe).__name__, type(pipe.vqvae).__module__, out.token_ids.tolist()]))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    name, module, ids = json.loads(result.stdout.strip().splitlines()[-1])
    assert name == "DetailFlowPipeline" and not module.startswith("detailflow_hf")
    assert ids == expected["ar.greedy.cfg1.5"].tolist()


def test_model_pushes_carry_their_cards(pipe, tmp_path):
    api = FakeHubApi(tmp_path)
    push_model(pipe.vqvae, "me/tok", api=api)
    push_model(pipe.transformer, "me/gpt", api=api)
    tok, gpt = tmp_path / "me" / "tok", tmp_path / "me" / "gpt"
    assert {"config.json", "diffusion_pytorch_model.safetensors", "README.md"} <= files(tok)
    assert {"config.json", "model.safetensors", "README.md"} <= files(gpt)
    assert "image-tokenization" in ModelCard.load(tok / "README.md").data.tags
    assert ModelCard.load(gpt / "README.md").data.library_name == "transformers"


def test_card_for_imagenet_models_names_the_dataset(imagenet_pipe):
    card = pipeline_card(imagenet_pipe, "me/df", sample_grid="grid.png", results={"gFID": "2.96"})
    assert card.data.datasets == ["ILSVRC/imagenet-1k"] and "imagenet" in card.data.tags
    assert "![samples](grid.png)" in card.text and "| gFID | 2.96 |" in card.text
