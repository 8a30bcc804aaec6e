"""The decoding steps of [`DetailFlowForImageGeneration.generate`]: run the model on what a step
needs, combine guidance and sample the next tokens. `model` is always that generator (not imported
here: it imports this module).

- [`RecomputeStepper`] is the reference: the whole sequence again at every step, as the original.
- [`CachedStepper`] feeds only what a static KV cache has not seen. With `compile=True` its step
  (forward, guidance, sampling) is one `torch.compile`d graph per chunk shape, CUDA graphs on GPU.
- [`PackedLinears`] makes the cached path's linear layers use weights pre-packed for oneDNN's
  GEMM on x86 CPUs, where small-row products (a few images, one group of tokens) are several times
  faster than the default BLAS call; the packed copies are made once and reused until a weight
  changes.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import threading
import types
import weakref
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from transformers import PreTrainedModel
from transformers.cache_utils import StaticCache

from .sampling import SamplingParams, apply_guidance

try:  # a requirement of this package; code exported to a Hub repo may run without it (then no packing)
    import psutil
except ImportError:
    psutil = None

logger = logging.getLogger(__name__)

PACKING_ROWS = 4
"""The row count oneDNN lays the packed weights out for (any count runs; this one measured best)."""

COMPILED_STEPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""model -> {key: [`CompiledDecoding`]}, see [`compiled_decoding`]."""

PACKED_LINEARS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""model -> its [`PackedLinears`]. Kept beside the model, not in it: a copy or pickle of the model never
carries them (oneDNN's packed tensors cannot be copied), and they go with the model."""


def next_tokens(
    logits: torch.Tensor, sampler: SamplingParams, scale: torch.Tensor | None, uniforms: torch.Tensor | None
) -> tuple[torch.LongTensor, torch.Tensor]:
    """One step's logits `(rows, new, vocab)` -> ids `(batch, new)` and whether every logit was finite.

    With a `scale` the rows are `[cond; uncond]` and combine as `u + s (c - u)`; then `sampler`
    picks (arg-max, or the draw at `uniforms` `(batch, new)`). The finiteness flag (a 0-d bool
    tensor, not read here: no host synchronisation) lets `generate` refuse a NaN/inf run at the end.
    """
    if scale is not None:
        logits = apply_guidance(logits, scale)
    return sampler.sample(logits, uniforms), torch.isfinite(logits).all()


def decode_step(
    model: PreTrainedModel,
    sampler: SamplingParams,
    embeds: torch.Tensor,
    position_ids: torch.LongTensor,
    cache: StaticCache,
    new: int,
    scale: torch.Tensor | None,
    uniforms: torch.Tensor | None,
) -> tuple[torch.LongTensor, torch.Tensor]:
    """Feed `embeds` `(rows, chunk, hidden)` at `position_ids` against `cache`; the `new` next ids (and
    the finiteness flag of [`next_tokens`])."""
    return next_tokens(step_logits(model, embeds, position_ids, cache, new), sampler, scale, uniforms)


def step_logits(
    model: PreTrainedModel, embeds: torch.Tensor, position_ids: torch.LongTensor, cache: StaticCache, new: int
) -> torch.Tensor:
    """Feed `embeds` `(rows, chunk, hidden)` at `position_ids` against `cache`; the last `new` logits
    `(rows, new, vocab)`."""
    return model(inputs_embeds=embeds, position_ids=position_ids, cache=cache, logits_to_keep=new).logits


class RecomputeStepper:
    """Reference step: run the whole sequence again and keep the last `new` logits (as the original)."""

    def __init__(self, model: PreTrainedModel, labels: torch.LongTensor, sampler: SamplingParams):
        self.model, self.labels, self.sampler = model, labels, sampler

    def __call__(self, codes, new: int, scale=None, uniforms=None) -> tuple[torch.LongTensor, torch.Tensor]:
        """The `new` ids after `codes` `(batch, k)`; `scale`/`uniforms` and the flag as in [`next_tokens`]."""
        prefix = codes.repeat(self.labels.shape[0] // codes.shape[0], 1)
        logits = self.model(input_ids=prefix, class_labels=self.labels, logits_to_keep=new).logits
        return next_tokens(logits, self.sampler, scale, uniforms)

    def reset(self):
        """Nothing is kept between steps."""

    def close(self):
        """Nothing is held."""


class CachedStepper:
    """Fast step: feed only the entries of the sequence the static KV cache has not seen.

    Each call embeds the sequence of the codes so far (`embed_sequence`, the one layout) and feeds
    its unseen tail: the class token; then each new code of the causal prefix; then `x_{c-1}` with
    the `g - 1` special tokens; then each finished group. Each chunk ends with exactly the
    positions that predict the next tokens. After `reset()` the next call feeds the whole sequence
    at once (a prefill) and continues from there.

    With `compile=True` the chunks of plain decoding (1 or `g` entries, each predicting as many
    tokens) run the compiled [`decode_step`]; anything else (a prefill) runs eagerly. If the
    compiled step's cache is in use by another generation (another thread, or a callback that
    generates), this one decodes eagerly on a cache of its own. Linear layers use
    [`PackedLinears`] where it applies. `close()` releases the compiled step.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        labels: torch.LongTensor,
        sampler: SamplingParams,
        compile: bool = False,
    ):
        self.model, self.labels, self.sampler = model, labels, sampler
        self.packing = PackedLinears.for_model(model) or contextlib.nullcontext()
        self.compiled = compiled_decoding(model, labels.shape[0], sampler) if compile else None
        if self.compiled is not None and not self.compiled.lock.acquire(blocking=False):
            logger.info("the compiled step is in use by another generation; decoding eagerly")
            self.compiled = None
        try:
            if self.compiled is not None:
                self.cache = self.compiled.cache
                self.reset()  # it may hold an earlier generation's entries
            else:
                self.cache, self.position = new_static_cache(model, labels.shape[0]), 0  # allocated empty
        except BaseException:
            self.close()
            raise

    def reset(self):
        """Forget every cached entry; the next call feeds the whole sequence."""
        self.position = 0
        self.cache.reset()

    def close(self):
        """Release the compiled step (and its cache) for the next generation."""
        if self.compiled is not None:
            self.compiled.lock.release()
            self.compiled = None

    def _unseen(self, codes: torch.LongTensor) -> tuple[torch.Tensor, torch.LongTensor]:
        """The entries the cache lacks `(rows, chunk, hidden)` and their positions `(1, chunk)`."""
        codes = codes.repeat(self.labels.shape[0] // codes.shape[0], 1)
        # contiguous: a compiled step is specialised on strides, and the view's would change every step
        embeds = self.model.model.embed_sequence(codes, self.labels)[:, self.position :].contiguous()
        positions = torch.arange(self.position, self.position + embeds.shape[1], device=embeds.device)[None]
        self.position += embeds.shape[1]
        return embeds, positions

    def logits(self, codes: torch.LongTensor, new: int) -> torch.Tensor:
        """Eager: feed what the cache lacks of `codes` `(batch, k)`; the last `new` logits `(rows, new, vocab)`."""
        embeds, positions = self._unseen(codes)
        with self.packing:
            return step_logits(self.model, embeds, positions, self.cache, new)

    def __call__(self, codes, new: int, scale=None, uniforms=None) -> tuple[torch.LongTensor, torch.Tensor]:
        """The `new` ids after `codes` `(batch, k)`; `scale`/`uniforms` and the flag as in [`next_tokens`]."""
        embeds, positions = self._unseen(codes)
        chunk = embeds.shape[1]
        with self.packing:
            if self.compiled is not None and chunk == new:  # plain decoding (1 or g entries), not a prefill
                return self.compiled(embeds, positions, new, scale, uniforms)
            return decode_step(self.model, self.sampler, embeds, positions, self.cache, new, scale, uniforms)


def new_static_cache(model: PreTrainedModel, rows: int) -> StaticCache:
    """A KV cache for `rows` full sequences (`num_tokens` entries: the class token, `N - g` codes and
    `g - 1` specials), allocated now, after checking that the memory is there."""
    config = model.config
    size = kv_cache_bytes(config, rows, config.num_tokens, model.dtype)
    free = free_memory(model.device)
    if free is not None and size > free:
        raise ValueError(
            f"the KV cache for {rows} sequences (one per image, two with guidance) needs "
            f"{size / 2**30:.2f} GiB, but only {free / 2**30:.2f} GiB is free on {model.device}; "
            "generate fewer images at once."
        )
    cache = StaticCache(config=config, max_cache_len=config.num_tokens)
    cache.early_initialization(rows, config.num_key_value_heads, config.head_dim, model.dtype, model.device)
    return cache


def kv_cache_bytes(config, rows: int, length: int, dtype: torch.dtype) -> int:
    """Bytes of the keys and values of `rows` sequences of `length` entries over all layers."""
    per_entry = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim
    return rows * length * per_entry * dtype.itemsize


def free_memory(device: torch.device) -> int | None:
    """Bytes free for new tensors on `device`, where it can be told (CPU with psutil; CUDA, counting
    what PyTorch's caching allocator holds unused); `None` elsewhere."""
    if device.type == "cpu" and psutil is not None:
        return psutil.virtual_memory().available
    if device.type == "cuda":
        return (
            torch.cuda.mem_get_info(device)[0]
            + torch.cuda.memory_reserved(device)
            - torch.cuda.memory_allocated(device)
        )
    return None


class CompiledDecoding:
    """A compiled [`decode_step`] with its static cache (static addresses for CUDA graphs) and a lock:
    one generation at a time uses them."""

    def __init__(self, model: PreTrainedModel, rows: int, sampler: SamplingParams):
        self.cache = new_static_cache(model, rows)
        self.lock = threading.Lock()
        self.graphed = model.device.type == "cuda"
        mode = "reduce-overhead" if self.graphed else None
        self.step = torch.compile(own_copy(decode_step), fullgraph=True, dynamic=False, mode=mode)
        self.owner, self.sampler = weakref.ref(model), sampler  # the store must not keep its own key alive

    def __call__(self, embeds, position_ids, new, scale, uniforms):
        """[`decode_step`] on this entry's cache: `embeds` `(rows, chunk, hidden)` -> ids `(batch, new)`, flag."""
        if self.graphed:
            torch.compiler.cudagraph_mark_step_begin()
        return self.step(self.owner(), self.sampler, embeds, position_ids, self.cache, new, scale, uniforms)


_STORE_LOCK = threading.Lock()

MAX_COMPILED_PER_MODEL = 4
"""How many compiled steps (each with its KV cache) a model keeps; the least recently used goes first."""


def compiled_decoding(model: PreTrainedModel, rows: int, sampler: SamplingParams) -> CompiledDecoding:
    """The model's [`CompiledDecoding`] for this batch and these settings, made on first use.

    Keyed by (rows, device, dtype, the sampling settings the step reads, whether it guides): each key compiles
    two graphs (chunks of 1 and `g` entries) and reuses them; neither the guidance scale (a tensor
    input, so gradual guidance) nor `num_tokens` (the cache holds full sequences) recompiles. Up to
    [`MAX_COMPILED_PER_MODEL`] keys are kept; an evicted key compiles again when next used.
    """
    # the step reads the sampling settings, not the guidance ones (the scale is an input); greedy reads none
    settings = replace(sampler, guidance_scale=1.0, gradual_guidance=False) if sampler.do_sample else None
    key = (rows, model.device, model.dtype, settings, sampler.guided)
    with _STORE_LOCK:
        store = COMPILED_STEPS.setdefault(model, collections.OrderedDict())
        entry = store.get(key)
        if entry is not None:
            store.move_to_end(key)
            return entry
        while len(store) >= MAX_COMPILED_PER_MODEL:
            store.popitem(last=False)  # a generation still using it keeps it until it ends
        entry = store[key] = CompiledDecoding(model, rows, sampler)
        return entry


_copies = itertools.count()


def own_copy(function: types.FunctionType) -> types.FunctionType:
    """`function` with a code object of its own.

    Dynamo keeps compiled graphs per code object, at most `recompile_limit` (8) of them, and fails
    a `fullgraph` compile beyond that; each [`compiled_decoding`] key compiles its own copy, so any
    number of keys coexist and none evicts another.
    """
    code = function.__code__.replace(co_name=f"{function.__name__}_{next(_copies)}")
    return types.FunctionType(code, function.__globals__, code.co_name, function.__defaults__, function.__closure__)


def packed_linear_eager(
    input: torch.Tensor, packed_weight: torch.Tensor, bias: torch.Tensor | None, out_features: int
) -> torch.Tensor:
    """`F.linear(input, weight, bias)` `(..., in) -> (..., out)` with `weight` pre-packed for oneDNN."""
    flat = input.reshape(-1, input.shape[-1])
    output = torch.ops.mkldnn._linear_pointwise(flat, packed_weight, bias, "none", [], "")
    return output.reshape(*input.shape[:-1], out_features)


def _registered_packed_linear():
    """[`packed_linear_eager`] as a registered op, so that compiled graphs call it as one opaque kernel.

    Ops are global: the namespace comes from this module's name, and an op already registered by an
    earlier import of the same module (a reload) is reused, so that a second copy of this file (the
    code exported beside a Hub model, loaded next to this package) imports cleanly.
    """
    namespace = __name__.replace(".", "_")
    try:
        return getattr(torch.ops, namespace).packed_linear
    except AttributeError:
        op = torch.library.custom_op(f"{namespace}::packed_linear", packed_linear_eager, mutates_args=())

        @op.register_fake
        def _(input, packed_weight, bias, out_features):
            return input.new_empty(*input.shape[:-1], out_features)

        return op


packed_linear = _registered_packed_linear()


class PackedLinears(TorchFunctionMode):
    """While active, `F.linear` on one of the model's float32 weights runs oneDNN's packed GEMM.

    Made by [`PackedLinears.for_model`], which decides where it applies and keeps one per model.
    The packed copies cost as much memory as the linear weights again (GPT-L: 1.3 GB).
    """

    def __init__(self, packed: dict[torch.Tensor, torch.Tensor], fingerprint: tuple[tuple, torch.Tensor]):
        super().__init__()
        self.packed, self.fingerprint = packed, fingerprint

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            weight = args[1] if len(args) > 1 else kwargs.get("weight")
            packed = self.packed.get(weight)  # tensors hash by identity
            if packed is not None:
                bias = args[2] if len(args) > 2 else kwargs.get("bias")
                # compiled graphs need the registered op; eager calls skip its dispatch (~50 us a call)
                linear = packed_linear if torch.compiler.is_compiling() else packed_linear_eager
                return linear(args[0] if args else kwargs["input"], packed, bias, weight.shape[0])
        return func(*args, **kwargs)

    @staticmethod
    def applies(model: nn.Module) -> bool:
        """Float32 on an x86 CPU with AVX2 or AVX-512 and oneDNN: where packing was measured to win."""
        parameter = next(model.parameters())
        return (
            parameter.device.type == "cpu"
            and parameter.dtype == torch.float32
            and torch.backends.mkldnn.is_available()
            and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
        )

    @classmethod
    def for_model(cls, model: nn.Module) -> PackedLinears | None:
        """The model's packed linears, (re)made when any weight changed since; `None` where packing
        does not apply or there is not enough free memory for the copies.

        A change is seen through each weight's identity, storage and version counter (every in-place
        operation on the weight) and through a sample of its values (writes through `.data`, which
        PyTorch does not count, as peft's adapter merge does: such an update changes every value).
        """
        if psutil is None or not cls.applies(model):
            PACKED_LINEARS.pop(model, None)  # e.g. moved to another device or dtype: drop the copies
            return None
        weights = [  # plain float32 weights only: quantized ones (tensor subclasses) keep their own kernels
            module.weight
            for module in model.modules()
            if isinstance(module, nn.Linear)
            and type(module.weight.data) is torch.Tensor
            and module.weight.dtype == torch.float32
        ]
        fingerprint = (tuple((id(w), w.data_ptr(), w._version) for w in weights), value_sample(weights))
        current = PACKED_LINEARS.get(model)
        if (
            current is not None
            and current.fingerprint[0] == fingerprint[0]
            and torch.equal(current.fingerprint[1], fingerprint[1])
        ):
            return current
        PACKED_LINEARS.pop(model, None)  # release stale copies before making new ones
        needed = sum(w.numel() * w.element_size() for w in weights)
        if needed > free_memory(torch.device("cpu")) // 2:
            logger.info("not packing the linear weights: %d MiB needed, too little free memory", needed >> 20)
            return None
        packed = {w: torch.ops.mkldnn._reorder_linear_weight(w.detach(), PACKING_ROWS) for w in weights}
        PACKED_LINEARS[model] = cls(packed, fingerprint)
        return PACKED_LINEARS[model]


def value_sample(weights: list[torch.Tensor]) -> torch.Tensor:
    """`(len(weights),)` int64: the bits of at least 1024 values of each weight (every 4099th in large
    ones), summed exactly.

    Under 1 ms for GPT-L's 1.3 GB, where summing every value takes ~170 ms on 2 cores. It sees any
    update that changes most values (a merged low-rank adapter, an optimizer step through `.data`);
    a `.data` write to a few values it may miss (in-place writes to the weight itself bump its
    version and are always seen).
    """
    samples = []
    for w in weights:
        flat = w.detach().reshape(-1)
        stride = max(1, min(4099, flat.numel() // 1024))
        samples.append(flat[::stride].view(torch.int32).sum(dtype=torch.int64))
    return torch.stack(samples)


__all__ = [
    "CachedStepper",
    "CompiledDecoding",
    "PackedLinears",
    "RecomputeStepper",
    "compiled_decoding",
    "decode_step",
    "next_tokens",
]
