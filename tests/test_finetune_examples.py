"""The fine-tuning examples run a few CPU steps on the tiny converted pipeline; their artifacts load
and do what they claim (asserted on weights and logits)."""

import math

import pytest
import torch

import detailflow_hf
from detailflow_hf import DetailFlowForImageGeneration, DetailFlowPipeline, DetailFlowTokenizer
from detailflow_hf.pipelines.adapters import load_adapter, set_classes
from tests.image_folder import CLASSES, load_example, write_image_folder


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("ft_images"), per_class=3, size=64, corrupt=False)


def probe_logits(transformer, seed=0):
    """Logits of fixed codes for the first three classes `(3, seq, vocab)`."""
    config = transformer.config
    ids = torch.randint(
        0, config.vocab_size, (3, config.num_tokens - config.group_size), generator=torch.Generator().manual_seed(seed)
    )
    with torch.no_grad():
        return transformer(input_ids=ids, class_labels=torch.arange(3)).logits


def test_lora_adapter_changes_outputs_and_merging_reproduces_them(converted_dir, images, tmp_path):
    out = tmp_path / "lora"
    assert (
        load_example("finetune_lora").main(
            [
                "--model",
                str(converted_dir),
                "--train_data_dir",
                str(images),
                "--output_dir",
                str(out),
                "--max_train_steps",
                "4",
                "--train_batch_size",
                "3",
                "--learning_rate",
                "1e-2",
                "--rank",
                "4",
            ]
        )
        == 0
    )
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and (out / "samples.png").is_file()

    peft_model = load_adapter(
        DetailFlowForImageGeneration.from_pretrained(converted_dir / "transformer"), out / "adapter", merge=False
    ).eval()
    lora_b = [p for name, p in peft_model.named_parameters() if "lora_B" in name]
    assert len(lora_b) == 7 * peft_model.get_base_model().config.num_hidden_layers  # every projection of every layer
    assert max(p.abs().max().item() for p in lora_b) > 1e-3  # trained away from their zero init
    adapted = probe_logits(peft_model)
    with peft_model.disable_adapter():
        base = probe_logits(peft_model)
    assert (adapted - base).abs().max() > 1e-2

    merged = peft_model.merge_and_unload()
    assert type(merged) is DetailFlowForImageGeneration
    torch.testing.assert_close(probe_logits(merged), adapted, atol=1e-5, rtol=1e-5)

    saved = DetailFlowPipeline.from_pretrained(out / "merged")
    assert saved.transformer.config.num_classes == 3 and saved.id2label == dict(enumerate(CLASSES))
    torch.testing.assert_close(probe_logits(saved.transformer.eval()), adapted, atol=1e-5, rtol=1e-5)
    saved.set_progress_bar_config(disable=True)
    image = saved(class_labels="triangle", generator=torch.Generator().manual_seed(0), output_type="np").images
    assert image.shape == (1, 64, 64, 3)

    # at the pipeline level: the adapter's card names its base; unmerged -> saved again -> merged gives the same model
    card = (out / "adapter" / "README.md").read_text()
    metadata = card.split("---")[1]  # a local base is no Hub repo: it stays out of the card's base_model
    assert "library_name: peft" in metadata and "base_model" not in metadata and "circle" in card
    unmerged = DetailFlowPipeline.from_pretrained(converted_dir).load_adapter(out / "adapter", merge=False)
    assert unmerged.get_label_ids("square") == [1]
    torch.testing.assert_close(probe_logits(unmerged.transformer), adapted, atol=1e-5, rtol=1e-5)
    unmerged.save_adapter(tmp_path / "again", base_model="me/detailflow-base")
    assert "base_model: me/detailflow-base" in (tmp_path / "again" / "README.md").read_text()
    again = DetailFlowPipeline.from_pretrained(converted_dir).load_adapter(tmp_path / "again")
    assert type(again.transformer) is DetailFlowForImageGeneration and again.id2label == dict(enumerate(CLASSES))
    torch.testing.assert_close(probe_logits(again.transformer), adapted, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="carries no adapter to save"):
        again.save_adapter(tmp_path / "none")


def test_add_classes_keeps_old_rows_and_moves_the_null_class_last(converted_dir, images, tmp_path):
    out = tmp_path / "grown"
    assert (
        load_example("add_classes").main(
            [
                "--model",
                str(converted_dir),
                "--train_data_dir",
                str(images),
                "--output_dir",
                str(out),
                "--max_train_steps",
                "3",
                "--train_batch_size",
                "3",
                "--learning_rate",
                "1e-2",
            ]
        )
        == 0
    )
    before = DetailFlowPipeline.from_pretrained(converted_dir)
    after = DetailFlowPipeline.from_pretrained(out)
    old = before.transformer.model.class_embedding.weight
    new = after.transformer.model.class_embedding.weight
    assert before.transformer.config.num_classes == 10 and after.transformer.config.num_classes == 13
    assert new.shape == (14, old.shape[1])  # 13 classes + the null class, last
    torch.testing.assert_close(new[:10], old[:10], rtol=0, atol=0)  # untouched: no gradient, no weight decay
    start = old[:10].mean(dim=0)
    assert all((new[i] - start).abs().max() > 1e-3 for i in (10, 11, 12))  # trained from the mean start
    assert [after.id2label[i] for i in (10, 11, 12)] == list(CLASSES) and after.id2label[0] == "0"  # unnamed before
    assert after.get_label_ids(["square"]) == [11]
    after.set_progress_bar_config(disable=True)
    ids = after(class_labels=["square", 3], generator=torch.Generator().manual_seed(0), output_type="np").token_ids
    assert ids.shape == (2, 32)


@pytest.mark.skipif(detailflow_hf.DEFAULT_MODEL is None, reason="no embedded model")
def test_add_classes_starts_from_the_embedded_model_without_model_flag(images, tmp_path):
    out = tmp_path / "emoji_plus"
    assert (
        load_example("add_classes").main(
            [
                "--train_data_dir",
                str(images),
                "--output_dir",
                str(out),
                "--max_train_steps",
                "2",
                "--train_batch_size",
                "3",
            ]
        )
        == 0
    )
    before = DetailFlowPipeline.from_pretrained(detailflow_hf.DEFAULT_MODEL)
    after = DetailFlowPipeline.from_pretrained(out)
    n = before.transformer.config.num_classes
    assert after.transformer.config.num_classes == n + 3  # the emoji + 3 shapes (circle, square, triangle)
    old, new = before.transformer.model.class_embedding.weight, after.transformer.model.class_embedding.weight
    torch.testing.assert_close(new[:n], old[:n], rtol=0, atol=0)
    assert after.get_label_ids(["red apple", "square"]) == [before.get_label_ids("red apple")[0], n + 1]


def test_set_classes_replaces_the_label_set():
    config_kwargs = dict(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        vocab_size=8,
        num_tokens=8,
        group_size=2,
        num_classes=4,
    )
    from detailflow_hf import DetailFlowARConfig

    model = DetailFlowForImageGeneration(DetailFlowARConfig(**config_kwargs))
    null = model.model.class_embedding.weight[4].clone()
    mean = model.model.class_embedding.weight[:4].mean(0).clone()
    set_classes(model, ["a", "b"], keep_existing=False)
    weight = model.model.class_embedding.weight
    assert weight.shape[0] == 3 and model.config.null_class_id == 2 and model.config.id2label == {0: "a", 1: "b"}
    torch.testing.assert_close(weight[2], null)
    torch.testing.assert_close(weight[0], mean)
    with pytest.raises(ValueError, match="at least one class name"):
        set_classes(model, [], keep_existing=True)


def test_decoder_finetuning_trains_only_the_decoder(converted_dir, images, tmp_path):
    from detailflow_hf.image_datasets import ImageFolderDataset

    out = tmp_path / "decoder"
    assert (
        load_example("finetune_tokenizer_decoder").main(
            [
                "--model",
                str(converted_dir),
                "--train_data_dir",
                str(images),
                "--output_dir",
                str(out),
                "--max_train_steps",
                "8",
                "--train_batch_size",
                "9",
                "--learning_rate",
                "3e-3",
                "--degradation_prob",
                "0",
            ]
        )
        == 0
    )
    before = DetailFlowTokenizer.from_pretrained(converted_dir, subfolder="vqvae").eval()
    after = DetailFlowTokenizer.from_pretrained(out).eval()
    old, new = before.state_dict(), after.state_dict()
    frozen = [k for k in old if not k.startswith(("decoder.", "post_quant_conv."))]
    assert all(torch.equal(old[k], new[k]) for k in frozen)
    assert any(not torch.equal(old[k], new[k]) for k in old if k.startswith("decoder."))

    pixels = torch.stack([item["pixel_values"] for item in ImageFolderDataset(images, 64)])
    with torch.no_grad():
        assert torch.equal(before.encode(pixels).token_ids, after.encode(pixels).token_ids)  # codes keep their meaning
        mse_before = torch.nn.functional.mse_loss(before(pixels).sample, pixels).item()
        mse_after = torch.nn.functional.mse_loss(after(pixels).sample, pixels).item()
    assert mse_after < 0.9 * mse_before


COSINE_4 = [0.05 * (1 + math.cos(math.pi * s / 4)) for s in range(5)]


@pytest.mark.parametrize(
    "schedule, warmup, expected",
    [
        ("constant", 0, [0.1] * 5),
        ("cosine", 0, COSINE_4),
        ("linear", 2, [0.0, 0.05, 0.1, 0.05, 0.0]),
    ],
)
def test_run_training_follows_the_lr_schedule(schedule, warmup, expected):
    """The lr of each of 4 steps, then after the last: the schedule spans exactly --max_train_steps."""
    from accelerate import Accelerator

    from detailflow_hf.training.finetuning import run_training

    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []

    def loss_fn(batch):
        seen.append(optimizer.param_groups[0]["lr"])
        return model(batch).pow(2).mean()

    loader = [torch.ones(1, 2)] * 3  # 3 steps a pass: the loop goes on into a second pass
    run_training(
        Accelerator(cpu=True), model, optimizer, loader, 4, loss_fn, lr_scheduler=schedule, lr_warmup_steps=warmup
    )
    seen.append(optimizer.param_groups[0]["lr"])
    assert seen == pytest.approx(expected, abs=1e-9)
