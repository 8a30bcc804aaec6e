"""Parity of the generator on an accelerator: fixture greedy ids through every decoding path.

    python benchmarks/check_accelerator.py --device cuda

Runs the reference path, the cached path and the compiled static-cache path in float32 (ids must
equal the fixture's) and reports how many ids bfloat16 changes, which is expected to be nonzero.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import load_file

from detailflow_hf.conversion.original import convert_generator

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "reference" / "tiny_a"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    expected = load_file(FIXTURE / "expected.safetensors")
    labels = expected["ar.labels"].to(args.device)
    failures = 0
    for dtype in (torch.float32, torch.bfloat16):
        model = convert_generator(FIXTURE / "ar").to(args.device, dtype)
        for scale, gradual, key in ((1.5, False, "ar.greedy.cfg1.5"), (3.0, True, "ar.greedy.cfg3.0_gradual")):
            reference = expected[key].to(args.device)
            for name, kwargs in (("reference", {"use_cache": False}), ("cached", {}), ("compiled", {"compile": True})):
                ids = model.generate(labels, guidance_scale=scale, gradual_guidance=gradual, top_k=1, **kwargs)
                differ = int((ids != reference).sum())
                ok = differ == 0 if dtype == torch.float32 else True
                failures += not ok
                print(
                    f"{str(dtype):15s} {key:26s} {name:9s} ids differing from the fixture: "
                    f"{differ:3d}/{ids.numel()} {'ok' if ok else 'FAIL'}"
                )
    print("all float32 paths equal the fixture" if failures == 0 else f"{failures} float32 mismatches")
    raise SystemExit(1 if failures else 0)


if __name__ == "__main__":
    main()
