"""Write `src/detailflow_hf/pipelines/imagenet_classes.json`: the 1000 ImageNet-1k class names, in index order.

The names are not typed by hand: they come from the `timm` wheel (`timm/data/_info/imagenet_synsets.txt` gives the
synsets in class-index order, `imagenet_synset_to_lemma.txt` their comma-separated names, the strings DiT's
`id2label` uses). The wheel is downloaded (no dependencies, nothing installed or imported) and read as a zip.

    python examples/build_imagenet_classes.py [--wheel PATH_TO_timm.whl]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

TIMM_VERSION = "1.0.31"
TARGET = Path(__file__).resolve().parents[1] / "src" / "detailflow_hf" / "pipelines" / "imagenet_classes.json"


def download_wheel(directory: str) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "-d",
            directory,
            f"timm=={TIMM_VERSION}",
        ],
        check=True,
    )
    return next(Path(directory).glob("timm-*.whl"))


def read_classes(wheel: Path) -> list[dict[str, str]]:
    with zipfile.ZipFile(wheel) as archive:
        synsets = archive.read("timm/data/_info/imagenet_synsets.txt").decode().split()
        lemmas = dict(
            line.split("\t", 1)
            for line in archive.read("timm/data/_info/imagenet_synset_to_lemma.txt").decode().splitlines()
            if "\t" in line
        )
    if len(synsets) != 1000:
        raise SystemExit(f"expected 1000 synsets in {wheel}, found {len(synsets)}")
    return [{"synset": synset, "names": lemmas[synset]} for synset in synsets]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheel", type=Path, help=f"a downloaded timm wheel (default: download timm=={TIMM_VERSION})")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or download_wheel(tmp)
        classes = read_classes(wheel)
        source = wheel.name
    payload = {
        "source": f"{source}: timm/data/_info/imagenet_synsets.txt + imagenet_synset_to_lemma.txt",
        "classes": classes,
    }
    TARGET.write_text(json.dumps(payload, indent=0, ensure_ascii=False) + "\n")
    print(f"wrote {TARGET} ({len(classes)} classes from {source})")


if __name__ == "__main__":
    main()
