"""Copy a trained emoji pipeline into the package as `detailflow_hf.DEFAULT_MODEL`, with its model card.

    python scripts/embed_default_model.py --pipeline outputs/default_model/pipeline \
        --results outputs/default_model/results.json --data_dir data/emoji32

Class names become the emoji's Unicode names ("red apple", "rocket"; `pipe.get_label_ids` matches them
case-insensitively). The Unicode groups stay metadata: the card lists them with their class counts.
The card carries the measured numbers and the sample grid.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections import Counter
from pathlib import Path

from detailflow_hf import DetailFlowPipeline
from detailflow_hf.hub import pipeline_card

TARGET = Path(__file__).resolve().parents[1] / "src" / "detailflow_hf" / "default_model"


def _table(values: dict) -> str:
    return ", ".join(f"{k}: {v}" for k, v in values.items())


def write_card(embedded: DetailFlowPipeline, results: dict, groups: Counter):
    """The embedded model's card (README.md), from the eval's `results` (its sampling is the model's own)."""
    psnr, reframed = results["tokenizer_psnr_db_per_num_tokens"], results["tokenizer_psnr_db_per_num_tokens_reframed"]
    full = max(psnr, key=int)
    description = (
        "DetailFlow-tiny, the model embedded in `detailflow_hf` (`detailflow_hf.DEFAULT_MODEL`): trained from "
        "scratch by this package's own training scripts (`bash scripts/train_default_model.sh`, seeded, about "
        "100 minutes on a 2-core CPU) on the Noto Color Emoji font rendered at 32 px. One class per emoji, named "
        f'by its Unicode name ({results["num_classes"]} classes: "red apple", "rocket", "cat face", ...); '
        f"{results['num_heldout_emoji']} emoji (every 10th of each Unicode group) are held out of all training "
        "to measure the tokenizer. The tokenizer (`scripts/configs/emoji_tokenizer.yaml`: MSE + VQ losses, "
        "dead-code restarts) learns each emoji in four framings (75-105% of the frame, moved up to 3 px), then "
        "its decoder alone is annealed (`examples/finetune_tokenizer_decoder.py`); the generator "
        "(`scripts/configs/emoji_generator.yaml`) learns the codes of each emoji as drawn (one crop, no mirror "
        "image), then continues (`scripts/configs/emoji_generator_detail.yaml`) on codes that also start from the "
        "prefixes of the emoji's thumbnails and, in 30% of rows, from another emoji's prefix, so that it completes "
        "the detail of an image it is given. It exists so that the CLI, the quick start and the Space run "
        "offline; it is not ImageNet-quality.\n\n"
        "Classes by Unicode group (metadata, not classes): "
        + ", ".join(f"{group} ({count})" for group, count in groups.items())
        + '. Names with commas write them " & " (commas separate synonyms in `id2label`): "kiss: woman & man".'
    )
    card = pipeline_card(
        embedded,
        "detailflow-hf/detailflow-tiny-emoji",
        sample_grid="samples.png",
        load_from="detailflow_hf.DEFAULT_MODEL",
        remote_code=False,
        description=description,
        results={
            "tokenizer PSNR, all tokens (held-out)": f"{psnr[full]} dB",
            "tokenizer PSNR, all tokens (held-out, re-framed)": f"{reframed[full]} dB",
            "tokenizer PSNR per token count (held-out)": _table(psnr),
            "tokenizer PSNR per token count (held-out, re-framed)": _table(reframed),
            f"judge top-1 / top-5, {results['num_samples']} generated images (one per random class)": (
                f"{results['generated_top1']:.1%} / {results['generated_top5']:.1%}"
            ),
            "judge top-1 / top-5 on fresh renders of all classes": (
                f"{results['judge_top1_on_fresh_renders']:.1%} / {results['judge_top5_on_fresh_renders']:.1%}"
            ),
            "Frechet distance in the judge's features, generated vs renders": results[
                "frechet_distance_generated_vs_real"
            ],
            "Frechet distance in the judge's features, renders vs renders": results["frechet_distance_real_vs_real"],
            "sampling": f"guidance_scale={results['guidance_scale']}, top_k={results['top_k']}, "
            f"top_p={results['top_p']}, temperature={results['temperature']}",
        },
    )
    card.save(TARGET / "README.md")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", required=True)
    parser.add_argument("--results", required=True, help="scripts/eval_default_model.py output (a PNG grid beside it)")
    parser.add_argument("--data_dir", required=True, help="the emoji dataset (for the names and groups)")
    args = parser.parse_args(argv)

    pipe = DetailFlowPipeline.from_pretrained(args.pipeline)
    classes = json.loads((Path(args.data_dir) / "dataset_info.json").read_text())["classes"]
    id2label = {i: classes[key]["name"] for i, key in pipe.id2label.items()}
    embedded = DetailFlowPipeline(vqvae=pipe.vqvae, transformer=pipe.transformer, id2label=id2label)
    if TARGET.exists():
        shutil.rmtree(TARGET)
    embedded.save_pretrained(TARGET)
    results = json.loads(Path(args.results).read_text())
    shutil.copy(Path(args.results).with_suffix(".png"), TARGET / "samples.png")
    write_card(embedded, results, Counter(classes[key]["group"] for key in pipe.id2label.values()))
    (TARGET / "results.json").write_text(json.dumps(results, indent=1))
    size = sum(p.stat().st_size for p in TARGET.rglob("*") if p.is_file())
    print(f"embedded {TARGET} ({size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
