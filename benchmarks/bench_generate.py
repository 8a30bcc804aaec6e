"""Time generate() against the original's recompute sampler (the reference path), in one process,
and against what the hardware allows.

Random weights of the release's generator shape (GPT-L: 24 layers, 1024 wide, 16 heads; 128 tokens,
groups of 8, causal prefix 8, 8192 codes, 1000 classes), CFG 1.5, sampled (top_k 0), token ids only.
Per batch size it prints the median time of the reference path (`use_cache=False`), of the default
fast path and of `compile=True`, images/s, each path's speedup over the reference, and how far the
fast paths sit above two floors of this device:

- bandwidth floor: every step reads all linear weights once and the keys/values cached so far; those
  bytes / measured read bandwidth (a large tensor summed);
- compute floor: the FLOPs the steps need (linear layers on the rows fed, the head on the rows kept,
  attention over the cache) / measured GEMM peak (the best of a large `torch.mm` and, where weights
  are packed, the packed GEMM on 1024 rows).

    python benchmarks/bench_generate.py                        # 2-core CPU: batches 1, 2, 8 (~12 min)
    python benchmarks/bench_generate.py --device cuda --dtype bfloat16 --compile --int8   # GPU: 1, 8, 64
    python benchmarks/bench_generate.py --shape gpt-b --batches 1 8 32                     # the GPT-B case

`--int8` adds the model loaded through transformers' `TorchAoConfig(Int8WeightOnlyConfig())` (the
`quantization` extra), timed with the same settings (compiled only, with `--compile`) and set
against the same floors, those of the float model: its own bandwidth floor is lower.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from functools import partial

import torch

from detailflow_hf import DetailFlowARConfig, DetailFlowForImageGeneration
from detailflow_hf.models.configuration_ar import llamagen_size
from detailflow_hf.models.decoding import PackedLinears, kv_cache_bytes

SHAPES = {"gpt-l": llamagen_size("GPT-L"), "gpt-b": llamagen_size("GPT-B")}


def build_model(shape: str, device: str, dtype: torch.dtype) -> DetailFlowForImageGeneration:
    torch.manual_seed(0)
    config = DetailFlowARConfig(vocab_size=8192, num_tokens=128, group_size=8, num_classes=1000, **SHAPES[shape])
    model = DetailFlowForImageGeneration(config)
    torch.nn.init.normal_(model.lm_head.weight, std=0.02)  # the zero init would make every draw uniform
    return model.to(device=device, dtype=dtype).eval()


def int8_model(model: DetailFlowForImageGeneration) -> DetailFlowForImageGeneration:
    """The same weights loaded as the ecosystem does it: `from_pretrained(quantization_config=...)`."""
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import TorchAoConfig

    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        quantized = DetailFlowForImageGeneration.from_pretrained(
            folder,
            quantization_config=TorchAoConfig(Int8WeightOnlyConfig()),
            dtype=model.dtype,
            device_map=str(model.device),
        )
    return quantized.eval()


def seeded(device: str) -> torch.Generator:
    """A seeded generator for one timed function (its later runs continue the same stream)."""
    return torch.Generator(device).manual_seed(0)


def synchronize(device: str):
    if device == "cuda":
        torch.cuda.synchronize()


def median_time(fn, device: str, repeats: int, warmup: bool = True) -> float:
    if warmup:
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def read_bandwidth(device: str) -> float:
    """Bytes/s summing a 512 MiB float32 tensor (well beyond any cache)."""
    data = torch.ones(128 * 2**20, device=device)
    seconds = median_time(lambda: data.sum(), device, 10)
    return data.numel() * 4 / seconds


def gemm_peak(device: str, dtype: torch.dtype) -> float:
    """FLOP/s of the fastest large matrix product this device runs in `dtype`."""
    n = 8192 if device == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = 2 * n**3 / median_time(lambda: a @ b, device, 10)
    probe = torch.nn.Linear(4096, 4096, bias=False).to(device=device, dtype=dtype)
    packing = PackedLinears.for_model(probe)
    if packing is not None:
        x = torch.randn(1024, 4096, dtype=dtype)
        with packing:
            best = max(best, 2 * 1024 * 4096**2 / median_time(lambda: probe(x), device, 10))
    return best


def decode_work(model: DetailFlowForImageGeneration, batch: int) -> tuple[int, float]:
    """(bytes that must be read, FLOPs) of one generation of `batch` images on the cached path.

    Bytes: every step reads all linear weights and the keys and values cached so far. FLOPs: the
    linear layers on the entries fed, the head on the positions kept, attention over the cache.
    The sequence lengths come from `embed_sequence`, the one owner of the layout.
    """
    config = model.config
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    body = sum(m.weight.numel() for m in linear if m is not model.lm_head)
    head = model.lm_head.weight.numel()
    element = model.lm_head.weight.element_size()
    rows = 2 * batch  # guided: conditional and null-class rows
    label = torch.zeros(1, dtype=torch.long, device=model.device)
    bytes_read, flops, fed_so_far, done = 0, 0.0, 0, 0
    for length in model.prefix_lengths():
        codes = torch.zeros(1, done, dtype=torch.long, device=model.device)
        sequence = model.model.embed_sequence(codes, label).shape[1]
        fed, new = sequence - fed_so_far, length - done
        bytes_read += (body + head) * element + kv_cache_bytes(config, rows, sequence, model.dtype)
        flops += 2 * rows * (fed * body + new * head)
        flops += 4 * rows * fed * sequence * config.hidden_size * config.num_hidden_layers  # scores, values
        fed_so_far, done = sequence, length
    return bytes_read, flops


def run(args):
    device, dtype = args.device, getattr(torch, args.dtype)
    model = build_model(args.shape, device, dtype)
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    bandwidth, peak = read_bandwidth(device), gemm_peak(device, dtype)
    print(
        f"device: {name}; {args.shape}, {args.dtype}; read bandwidth {bandwidth / 1e9:.1f} GB/s, "
        f"GEMM peak {peak / 1e9:.0f} GFLOP/s; packed linear weights: {PackedLinears.applies(model)}",
        flush=True,
    )
    variants = {"fast": model}
    if args.int8:
        variants["int8"] = int8_model(model)
    for batch in args.batches:
        labels = torch.arange(batch, device=device) % 1000
        reference_run = partial(model.generate, labels, guidance_scale=1.5, use_cache=False, generator=seeded(device))
        reference = median_time(reference_run, device, args.repeats)
        bytes_read, flops = decode_work(model, batch)
        floors = {"bandwidth": bytes_read / bandwidth, "compute": flops / peak}
        print(
            f"batch {batch:3d}: reference {reference:8.3f} s ({batch / reference:7.2f} images/s); floors: "
            f"bandwidth {floors['bandwidth']:.3f} s, compute {floors['compute']:.3f} s",
            flush=True,
        )
        for label, variant in variants.items():
            for compile in (False, True) if args.compile and label == "fast" else (args.compile,):
                run_once = partial(
                    variant.generate, labels, guidance_scale=1.5, compile=compile, generator=seeded(device)
                )
                first = time.perf_counter()
                run_once()  # packing / compilation happen here
                synchronize(device)
                first = time.perf_counter() - first
                seconds = median_time(run_once, device, args.repeats, warmup=False)
                print(
                    f"  {label}{' compile' if compile else ''}: {seconds:8.3f} s  {batch / seconds:8.2f} images/s  "
                    f"{reference / seconds:5.2f}x the reference  {seconds / floors['bandwidth']:6.2f}x the "
                    f"bandwidth floor  {seconds / floors['compute']:5.2f}x the compute floor  "
                    f"(first call {first:.1f} s)",
                    flush=True,
                )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="gpt-l")
    parser.add_argument("--compile", action="store_true", help="also time compile=True (always on CPU runs)")
    parser.add_argument("--int8", action="store_true", help="also time the torchao int8 weight-only model")
    parser.add_argument("--batches", type=int, nargs="+", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.batches is None:
        args.batches = [1, 2, 8] if args.device == "cpu" else [1, 8, 64]
    if args.device == "cpu":
        args.compile = True
    torch.set_grad_enabled(False)
    run(args)


if __name__ == "__main__":
    main()
