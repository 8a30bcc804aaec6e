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

import contextlib
import itertools
import logging
import types
import weakref

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
"""model -> {key: (static cache, compiled step)}, see [`compiled_decoding`]."""

PACKED_LINEARS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""model -> its [`PackedLinears`]. Kept beside the model, not in it: a copy or pickle of the model never
carries them (oneDNN's packed tensors cannot be copied), and they go with the model."""


def next_tokens(
    logits: torch.Tensor, sampler: SamplingParams, scale: torch.Tensor | None, uniforms: torch.Tensor | None
) -> torch.LongTensor:
    """One step's logits `(rows, new, vocab)` -> ids `(batch, new)`.

    With a `scale` the rows are `[cond; uncond]` and combine as `u + s (c - u)`; then `sampler`
    picks (arg-max, or the draw at `uniforms` `(batch, new)`).
    """
    if scale is not None:
        logits = apply_guidance(logits, scale)
    return sampler.sample(logits, uniforms)


def decode_step(
    model: PreTrainedModel,
    sampler: SamplingParams,
    embeds: torch.Tensor,
    position_ids: torch.LongTensor,
    cache: StaticCache,
    new: int,
    scale: torch.Tensor | None,
    uniforms: torch.Tensor | None,
) -> torch.LongTensor:
    """Feed `embeds` `(rows, chunk, hidden)` at `position_ids` against `cache`; return the `new` next ids."""
    logits = model(inputs_embeds=embeds, position_ids=position_ids, cache=cache, logits_to_keep=new).logits
    return next_tokens(logits, sampler, scale, uniforms)


class RecomputeStepper:
    """Reference step: run the whole sequence again and keep the last `new` logits (as the original)."""

    def __init__(self, model: PreTrainedModel, labels: torch.LongTensor, sampler: SamplingParams):
        self.model, self.labels, self.sampler = model, labels, sampler

    def __call__(self, codes, new: int, scale=None, uniforms=None) -> torch.LongTensor:
        """The `new` ids after `codes` `(batch, k)`; `scale`/`uniforms` as in [`next_tokens`]."""
        prefix = codes.repeat(self.labels.shape[0] // codes.shape[0], 1)
        logits = self.model(input_ids=prefix, class_labels=self.labels, logits_to_keep=new).logits
        return next_tokens(logits, self.sampler, scale, uniforms)

    def reset(self):
        """Nothing is kept between steps."""


class CachedStepper:
    """Fast step: feed only the entries of the sequence the static KV cache has not seen.

    Each call embeds the sequence of the codes so far (`embed_sequence`, the one layout) and feeds
    its unseen tail: the class token; then each new code of the causal prefix; then `x_{c-1}` with
    the `g - 1` special tokens; then each finished group. Each chunk ends with exactly the
    positions that predict the next tokens. After `reset()` the next call feeds the whole sequence
    at once (a prefill) and continues from there.

    With `compile=True` the two chunk shapes of plain decoding (1 and `g` entries) run the compiled
    [`decode_step`]; a prefill runs eagerly. Linear layers use [`PackedLinears`] where it applies.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        labels: torch.LongTensor,
        num_tokens: int,
        sampler: SamplingParams,
        compile: bool = False,
        guided: bool = False,
    ):
        self.model, self.labels, self.sampler = model, labels, sampler
        self.packing = PackedLinears.for_model(model) or contextlib.nullcontext()
        self.compiled = None
        if compile:
            self.cache, self.compiled = compiled_decoding(model, labels.shape[0], num_tokens, sampler, guided)
        else:
            self.cache = new_static_cache(model, labels.shape[0], num_tokens)
        self.graphed = self.compiled is not None and model.device.type == "cuda"
        self.reset()

    def reset(self):
        self.position = 0
        self.cache.reset()

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
            outputs = self.model(inputs_embeds=embeds, position_ids=positions, cache=self.cache, logits_to_keep=new)
        return outputs.logits

    def __call__(self, codes, new: int, scale=None, uniforms=None) -> torch.LongTensor:
        """The `new` ids after `codes` `(batch, k)`; `scale`/`uniforms` as in [`next_tokens`]."""
        if self.compiled is None or self._chunk(codes) not in (1, self.model.config.group_size):
            return next_tokens(self.logits(codes, new), self.sampler, scale, uniforms)
        embeds, positions = self._unseen(codes)
        if self.graphed:
            torch.compiler.cudagraph_mark_step_begin()
        with self.packing:
            return self.compiled(embeds, positions, self.cache, new, scale, uniforms)

    def _chunk(self, codes: torch.LongTensor) -> int:
        """How many entries the next call feeds (the sequence length of `codes` minus what is cached)."""
        c, g = self.model.config.causal_num, self.model.config.group_size
        length = 1 + codes.shape[1] + (g - 1 if codes.shape[1] >= c else 0)
        return length - self.position


def new_static_cache(model: PreTrainedModel, rows: int, num_tokens: int) -> StaticCache:
    """A KV cache for `rows` sequences stopping after `num_tokens` tokens, allocated now.

    Stopping after `k` tokens feeds exactly `k` entries: the class token, `k - g` codes, `g - 1`
    specials. Allocated outside any compiled region, so that its buffers keep static addresses
    (CUDA graphs).
    """
    config = model.config
    cache = StaticCache(config=config, max_cache_len=num_tokens)
    cache.early_initialization(rows, config.num_key_value_heads, config.head_dim, model.dtype, model.device)
    return cache


def compiled_decoding(model: PreTrainedModel, rows: int, num_tokens: int, sampler: SamplingParams, guided: bool):
    """A static cache and a compiled [`decode_step`] for this shape and these settings, made once.

    Keyed by (rows, num_tokens, device, dtype, sampling settings, guided): each key compiles two
    graphs (chunks of 1 and `g` entries) on first use and a long run never recompiles; the guidance
    scale is a tensor input, so gradual guidance does not recompile either. CUDA gets CUDA graphs
    (`reduce-overhead`); other devices plain inductor.
    """
    settings = (sampler.do_sample, sampler.temperature, sampler.top_k, sampler.top_p)  # what the step reads
    key = (rows, num_tokens, model.device, model.dtype, settings, guided)
    store = COMPILED_STEPS.setdefault(model, {})
    if key not in store:
        mode = "reduce-overhead" if model.device.type == "cuda" else None
        step = torch.compile(own_copy(decode_step), fullgraph=True, dynamic=False, mode=mode)
        owner = weakref.ref(model)  # the store must not keep its own key alive

        def compiled(embeds, position_ids, cache, new, scale, uniforms):
            return step(owner(), sampler, embeds, position_ids, cache, new, scale, uniforms)

        store[key] = (new_static_cache(model, rows, num_tokens), compiled)
    return store[key]


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


packed_linear = torch.library.custom_op("detailflow_hf::packed_linear", packed_linear_eager, mutates_args=())
"""[`packed_linear_eager`] as a registered op: compiled graphs call it as one opaque kernel."""


@packed_linear.register_fake
def _(input, packed_weight, bias, out_features):
    return input.new_empty(*input.shape[:-1], out_features)


class PackedLinears(TorchFunctionMode):
    """While active, `F.linear` on one of the model's float32 weights runs oneDNN's packed GEMM.

    Made by [`PackedLinears.for_model`], which decides where it applies and keeps one per model.
    The packed copies cost as much memory as the linear weights again (GPT-L: 1.3 GB).
    """

    def __init__(self, packed: dict[torch.Tensor, torch.Tensor], fingerprint: tuple):
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
        does not apply or there is not enough free memory for the copies."""
        if psutil is None or not cls.applies(model):
            return None
        weights = [  # plain float32 weights only: quantized ones (tensor subclasses) keep their own kernels
            module.weight
            for module in model.modules()
            if isinstance(module, nn.Linear)
            and type(module.weight.data) is torch.Tensor
            and module.weight.dtype == torch.float32
        ]
        fingerprint = tuple((id(w), w.data_ptr(), w._version) for w in weights)
        current = PACKED_LINEARS.get(model)
        if current is not None and current.fingerprint == fingerprint:
            return current
        PACKED_LINEARS.pop(model, None)  # release stale copies before making new ones
        needed = sum(w.numel() * w.element_size() for w in weights)
        if needed > psutil.virtual_memory().available // 2:
            logger.info("not packing the linear weights: %d MiB needed, too little free memory", needed >> 20)
            return None
        packed = {w: torch.ops.mkldnn._reorder_linear_weight(w.detach(), PACKING_ROWS) for w in weights}
        PACKED_LINEARS[model] = cls(packed, fingerprint)
        return PACKED_LINEARS[model]


__all__ = ["CachedStepper", "PackedLinears", "RecomputeStepper", "compiled_decoding", "decode_step", "next_tokens"]
