"""Copy a trained emoji pipeline into the package as `detailflow_hf.DEFAULT_MODEL`, with its model card.

    python examples/embed_default_model.py --pipeline outputs/default_model/pipeline \
        --results outputs/default_model/results.json --data_dir data/emoji32

Class names become "Smileys & Emotion, smileys_emotion" (the Unicode group and its folder name, both
accepted by `pipe.get_label_ids`). The card carries the measured numbers and the sample grid.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from detailflow_hf import DetailFlowPipeline
from detailflow_hf.hub import pipeline_card

TARGET = Path(__file__).resolve().parents[1] / "src" / "detailflow_hf" / "default_model"


def write_card(embedded: DetailFlowPipeline, results: dict):
    """The embedded model's card (README.md), from the eval's `results` (its sampling is the model's own)."""
    psnr = results["tokenizer_psnr_db_per_num_tokens"]
    card = pipeline_card(
        embedded,
        "detailflow-hf/detailflow-tiny-emoji",
        sample_grid="samples.png",
        load_from="detailflow_hf.DEFAULT_MODEL",
        remote_code=False,
        description=(
            "DetailFlow-tiny, the model embedded in `detailflow_hf` (`detailflow_hf.DEFAULT_MODEL`): "
            "trained from scratch "
            "by this package's own training scripts (`examples/train_default_model.sh`, about an hour "
            "on a 2-core CPU) "
            "on the Noto Color Emoji font rendered at 32 px, labelled by the 9 Unicode emoji groups: the tokenizer "
            "(`examples/configs/emoji_tokenizer.yaml`: MSE + VQ losses, dead-code restarts, batch 16), "
            "then its decoder "
            "alone with the lr annealed to 0 (`examples/finetune_tokenizer_decoder.py`), then the "
            "generator on the codes "
            "(`examples/configs/emoji_generator.yaml`). It exists so that the CLI, the quick start and the Space run "
            "offline; it is not ImageNet-quality."
        ),
        results={
            "tokenizer PSNR, all tokens (held-out)": f"{psnr[max(psnr, key=int)]} dB",
            "tokenizer PSNR per token count (held-out)": ", ".join(f"{k}: {v}" for k, v in psnr.items()),
            "classifier accuracy on held-out real images": results["classifier_heldout_accuracy"],
            f"class accuracy of {results['num_samples']} generated images (chance {results['chance']})": results[
                "generated_class_accuracy"
            ],
            "Frechet distance, generated vs held-out (classifier features)": results[
                "frechet_distance_generated_vs_heldout"
            ],
            "Frechet distance, train vs held-out (classifier features)": results["frechet_distance_train_vs_heldout"],
            "sampling": f"guidance_scale={results['guidance_scale']}, top_k={results['top_k']}, "
            f"temperature={results['temperature']}",
        },
    )
    card.save(TARGET / "README.md")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", required=True)
    parser.add_argument(
        "--results", required=True, help="examples/eval_default_model.py output (a PNG grid beside it)"
    )
    parser.add_argument("--data_dir", required=True, help="the emoji dataset (for the group names)")
    args = parser.parse_args(argv)

    pipe = DetailFlowPipeline.from_pretrained(args.pipeline)
    groups = json.loads((Path(args.data_dir) / "dataset_info.json").read_text())["classes"]
    id2label = {i: f"{groups[slug]}, {slug}" for i, slug in pipe.id2label.items()}
    embedded = DetailFlowPipeline(vqvae=pipe.vqvae, transformer=pipe.transformer, id2label=id2label)
    if TARGET.exists():
        shutil.rmtree(TARGET)
    embedded.save_pretrained(TARGET)
    results = json.loads(Path(args.results).read_text())
    shutil.copy(Path(args.results).with_suffix(".png"), TARGET / "samples.png")
    write_card(embedded, results)
    (TARGET / "results.json").write_text(json.dumps(results, indent=1))
    size = sum(p.stat().st_size for p in TARGET.rglob("*") if p.is_file())
    print(f"embedded {TARGET} ({size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
