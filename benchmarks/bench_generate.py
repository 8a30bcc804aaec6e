"""Time the KV-cached generate() against the original's recompute sampler, in one process.

Same random GPT-B-sized weights for both (12 layers, 768 wide, 12 heads; 128 tokens, groups of 8,
8192 codes, 1000 classes), CFG 1.5, top_k 0. Per batch size it prints both medians, the speedup,
tokens/s, peak memory, and the floor: the same chunks through bare cached forward passes with no
sampling. The last line is the batch-8 speedup.

    python benchmarks/bench_generate.py                       # CPU, batches 1, 8, 32
    python benchmarks/bench_generate.py --device cuda --dtype bfloat16 --compile
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from functools import partial

import torch

from detailflow_hf import DetailFlowARConfig, DetailFlowForImageGeneration
from detailflow_hf.models.modeling_ar import CachedStepper


def build_model(device: str, dtype: torch.dtype) -> DetailFlowForImageGeneration:
    torch.manual_seed(0)
    config = DetailFlowARConfig(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        vocab_size=8192,
        num_tokens=128,
        group_size=8,
        num_classes=1000,
    )
    model = DetailFlowForImageGeneration(config)
    torch.nn.init.normal_(model.lm_head.weight, std=0.02)  # the zero init would make every draw uniform
    return model.to(device=device, dtype=dtype).eval()


def synchronize(device: str):
    if device == "cuda":
        torch.cuda.synchronize()


class PeakMemory:
    """Peak memory of a block: CUDA allocator peak, or sampled process RSS above its start on CPU."""

    def __init__(self, device: str):
        self.device, self.peak = device, 0

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            import psutil

            self.process, self.running = psutil.Process(), True
            self.start = self.process.memory_info().rss
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss - self.start)
            time.sleep(0.002)

    def __exit__(self, *exc):
        if self.device == "cuda":
            self.peak = torch.cuda.max_memory_allocated() - self.start
        else:
            self.running = False
            self.thread.join()


def median_time(fn, device: str, repeats: int) -> tuple[float, int]:
    fn()  # warm-up
    synchronize(device)
    times, peak = [], 0
    for _ in range(repeats):
        with PeakMemory(device) as memory:
            start = time.perf_counter()
            fn()
            synchronize(device)
            times.append(time.perf_counter() - start)
        peak = max(peak, memory.peak)
    return statistics.median(times), peak


def bare_cached_passes(model: DetailFlowForImageGeneration, labels: torch.LongTensor, codes: torch.LongTensor):
    """The fast path's forward passes on fixed codes: no guidance, no sampling, no callback."""
    steps = model.prefix_lengths()
    stepper = CachedStepper(model, labels, steps[-1], compile=False)
    done = 0
    for length in steps:
        stepper(codes[:, :done], length - done)
        done = length


def run_cpu(args):
    model = build_model("cpu", torch.float32)
    speedups = {}
    for batch in args.batches:
        labels = torch.arange(batch) % 1000
        gen = torch.Generator().manual_seed(0)
        reference_run = partial(model.generate, labels, guidance_scale=1.5, generator=gen, use_cache=False)
        reference, ref_mem = median_time(reference_run, "cpu", args.repeats)
        fast, fast_mem = median_time(
            partial(model.generate, labels, guidance_scale=1.5, generator=gen), "cpu", args.repeats
        )
        codes = torch.randint(0, 8192, (batch, 128), generator=gen)
        cfg_labels = torch.cat([labels, torch.full_like(labels, 1000)])
        floor, _ = median_time(partial(bare_cached_passes, model, cfg_labels, codes), "cpu", args.repeats)
        speedups[batch] = reference / fast
        print(
            f"batch {batch:3d}: reference {reference:7.3f} s  fast {fast:7.3f} s  speedup: {reference / fast:.2f}x  "
            f"tokens/s {batch * 128 / fast:9.1f}  peak memory ref {ref_mem / 2**20:7.1f} MiB fast "
            f"{fast_mem / 2**20:7.1f} MiB  "
            f"floor {floor:7.3f} s  fast/floor {fast / floor:.2f}x",
            flush=True,
        )
    if 8 in speedups:
        print(f"batch-8 speedup: {speedups[8]:.2f}x")


def run_accelerator(args):
    dtype = getattr(torch, args.dtype)
    model = build_model(args.device, dtype)
    name = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    print(f"device: {name}, dtype {args.dtype}, compile {args.compile}")
    for batch, label in ((1, "latency"), (args.throughput_batch, "throughput")):
        labels = torch.arange(batch, device=args.device) % 1000
        gen = torch.Generator(args.device).manual_seed(0)
        model.generate(labels, generator=gen, compile=args.compile)  # compile / warm-up
        reference_run = partial(model.generate, labels, generator=gen, use_cache=False)
        reference, _ = median_time(reference_run, args.device, args.repeats)
        fast_run = partial(model.generate, labels, generator=gen, compile=args.compile)
        fast, memory = median_time(fast_run, args.device, args.repeats)
        print(
            f"{label} batch {batch}: reference {reference * 1000:8.1f} ms  fast {fast * 1000:8.1f} ms  "
            f"speedup: {reference / fast:.2f}x  images/s {batch / fast:8.1f}  peak memory {memory / 2**20:.0f} MiB",
            flush=True,
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--throughput-batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    if args.device == "cpu":
        run_cpu(args)
    else:
        run_accelerator(args)


if __name__ == "__main__":
    main()
