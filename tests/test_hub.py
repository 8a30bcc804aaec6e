import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

from detailflow_hf import DetailFlowPipeline, load_pipeline
from detailflow_hf.hub import CODE_FILES, PACKAGE, pipeline_card, push_model, push_pipeline, save_with_code

from .hub_cache import FakeHubApi


def files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_pipeline_push_writes_weights_code_and_card(pipe, tmp_path, expected):
    api = FakeHubApi(tmp_path)
    url = push_pipeline(pipe, "me/detailflow-tiny", api=api, private=True)
    assert url.endswith("/commit/0")
    assert api.calls[0] == ("create_repo", "me/detailflow-tiny", True, True)
    repo = tmp_path / "me" / "detailflow-tiny"
    weights = {"vqvae/config.json", "vqvae/diffusion_pytorch_model.safetensors", "transformer/config.json"}
    weights |= {"transformer/model.safetensors", "transformer/generation_config.json", "model_index.json"}
    assert files(repo) == weights | {"README.md"} | {destination for _, destination in CODE_FILES}
    for source, destination in CODE_FILES:  # the code goes up verbatim
        assert (repo / destination).read_bytes() == (PACKAGE / source).read_bytes(), destination
    card = ModelCard.load(repo / "README.md")
    assert card.data.library_name == "diffusers" and card.data.pipeline_tag == "unconditional-image-generation"
    assert "arxiv:2505.21473" in card.data.tags and "class-conditional" in card.data.tags
    assert 'load_pipeline("me/detailflow-tiny")' in card.text
    index = json.loads((repo / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_detailflow", "DetailFlowPipeline"]
    # the uploaded folder loads back with this package's classes
    loaded = load_pipeline(repo)
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


def test_publish_converts_a_release_and_uploads_it_with_a_full_card(
    fixture_dir, architecture, expected, tmp_path, monkeypatch, capsys
):
    import detailflow_hf.hub
    from detailflow_hf.cli import main

    from .hub_cache import add_snapshot

    add_snapshot("ByteFlow-AI/DetailFlow-tiny", fixture_dir / "tokenizer")
    add_snapshot("ByteFlow-AI/DetailFlow-tiny-GPT-L", fixture_dir / "ar")
    api = FakeHubApi(tmp_path / "hub")
    monkeypatch.setattr(detailflow_hf.hub, "HfApi", lambda: api)
    (tmp_path / "arch.json").write_text(json.dumps(architecture))
    (tmp_path / "results.json").write_text(json.dumps({"gFID (50k)": 2.96, "IS": 274.3}))
    argv = [
        "publish",
        "--tokenizer",
        "ByteFlow-AI/DetailFlow-tiny",
        "--generator",
        "ByteFlow-AI/DetailFlow-tiny-GPT-L",
    ]
    argv += ["--repo-id", "me/detailflow-tiny", "--tokenizer-architecture", str(tmp_path / "arch.json")]
    argv += ["--results", str(tmp_path / "results.json"), "--num-samples", "4", "--private"]
    assert main(argv) == 0
    assert "published me/detailflow-tiny" in capsys.readouterr().out
    assert api.calls[0] == ("create_repo", "me/detailflow-tiny", True, True)
    assert api.calls[1][2] == "Convert ByteFlow-AI/DetailFlow-tiny + ByteFlow-AI/DetailFlow-tiny-GPT-L"
    repo = tmp_path / "hub" / "me" / "detailflow-tiny"
    assert {"README.md", "samples.png", "model_index.json", "pipeline_detailflow.py", "vqvae/schedule.py"} <= files(
        repo
    )
    card = ModelCard.load(repo / "README.md")
    assert card.data.base_model == ["ByteFlow-AI/DetailFlow-tiny", "ByteFlow-AI/DetailFlow-tiny-GPT-L"]
    assert card.data.library_name == "diffusers" and card.data.pipeline_tag == "unconditional-image-generation"
    loaded = load_pipeline(repo)
    sampling = loaded.sampling_params()
    assert f"| sampling defaults (`generation_config.json`) | guidance {sampling.guidance_scale}" in card.text
    assert "Parity: the weights are the release's own" in card.text and "![samples](samples.png)" in card.text
    assert "| gFID (50k) | 2.96 |" in card.text and "| IS | 274.3 |" in card.text
    from PIL import Image

    assert Image.open(repo / "samples.png").size == (4 * 64, 64)  # 4 samples of the 64 px model in a row
    assert torch.equal(
        loaded(class_labels=expected["ar.labels"], top_k=1, output_type="pt").token_ids, expected["ar.greedy.cfg1.5"]
    )


def test_publish_reports_a_bad_results_file_in_one_line(tmp_path, capsys):
    from detailflow_hf.cli import main

    (tmp_path / "results.json").write_text("[1, 2]")
    argv = ["publish", "--tokenizer", "a/b", "--generator", "a/c", "--repo-id", "me/x"]
    assert main(argv + ["--results", str(tmp_path / "results.json")]) == 2
    assert "expected a JSON object of metric: value" in capsys.readouterr().err


def test_loading_arguments_are_honoured_or_refused(pipe, tmp_path):
    save_with_code(pipe, tmp_path / "export")
    loaded = load_pipeline(tmp_path / "export", dtype=torch.float64)
    assert loaded.vqvae.dtype == loaded.transformer.dtype == torch.float64
    with pytest.raises(
        ValueError, match="loads with dtype, torch_dtype, variant, vqvae, transformer only; got device_map"
    ):
        load_pipeline(tmp_path / "export", device_map="cpu")
    with pytest.raises(ValueError, match="revision apply to Hub repos, and this is a local folder"):
        load_pipeline(tmp_path / "export", revision="main")
    pipe.save_pretrained(tmp_path / "fp16", variant="fp16")
    assert load_pipeline(tmp_path / "fp16", variant="fp16").transformer.config.num_classes == 10


def test_adapter_round_trip_through_the_hub(pipe, tmp_path):
    from detailflow_hf.hub import push_folder
    from detailflow_hf.pipelines.adapters import add_generator_lora, set_classes

    from .hub_cache import add_snapshot

    pipe.save_pretrained(tmp_path / "base")
    base = load_pipeline(tmp_path / "base")
    set_classes(base.transformer, ["ring", "star"], keep_existing=False)
    adapted = DetailFlowPipeline(vqvae=base.vqvae, transformer=add_generator_lora(base.transformer, rank=2))
    with torch.no_grad():
        for name, param in adapted.transformer.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    adapted.save_adapter(tmp_path / "adapter", base_model="me/detailflow-tiny")
    api = FakeHubApi(tmp_path / "hub")
    push_folder(tmp_path / "adapter", "me/tiny-lora", api=api)
    card = ModelCard.load(tmp_path / "hub" / "me" / "tiny-lora" / "README.md")
    assert card.data.library_name == "peft" and card.data.base_model == "me/detailflow-tiny"
    add_snapshot("me/tiny-lora", tmp_path / "hub" / "me" / "tiny-lora")
    reloaded = load_pipeline(tmp_path / "base").load_adapter("me/tiny-lora")
    assert reloaded.id2label == {0: "ring", 1: "star"} and reloaded.get_label_ids("star") == [1]
    a = adapted(class_labels=["star"], top_k=1, output_type="pt").token_ids
    b = reloaded(class_labels=["star"], top_k=1, output_type="pt").token_ids
    assert torch.equal(a, b)


def test_hub_repos_load_by_id_in_either_layout(pipe, tmp_path, expected):
    from .hub_cache import add_snapshot

    pipe.save_pretrained(tmp_path / "native")
    save_with_code(pipe, tmp_path / "code")
    add_snapshot("someone/tiny-native", tmp_path / "native")
    add_snapshot("someone/tiny-code", tmp_path / "code")
    for repo_id in ("someone/tiny-native", "someone/tiny-code"):
        loaded = load_pipeline(repo_id, local_files_only=True)
        assert type(loaded.vqvae).__module__ == "detailflow_hf.models.tokenizer", repo_id
        ids = loaded(class_labels=expected["ar.labels"], top_k=1, output_type="pt").token_ids
        assert torch.equal(ids, expected["ar.greedy.cfg1.5"]), repo_id
    with pytest.raises(ValueError, match="saved with its code loads with dtype, .* only; got device_map"):
        load_pipeline("someone/tiny-code", device_map="cpu")
    with pytest.raises(ValueError, match="give dtype or torch_dtype"):
        load_pipeline("someone/tiny-native", dtype=torch.float64, torch_dtype=torch.float64)
    with pytest.raises(ValueError, match="a pipeline loads with .* only; got colour"):
        load_pipeline("someone/tiny-native", colour="blue")
    with pytest.raises(ValueError, match="an original release loads with .* only; got revision"):
        load_pipeline("original:someone/tok,someone/gen", revision="main")
