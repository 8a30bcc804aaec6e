"""DetailFlow generator: a LlamaGen-style class-conditional GPT with group-parallel decoding
(docs/algorithm.md §3-§5).

Sequence for class `y` and codes `x_0 .. x_{L-1}` (`c` = causal_num, `g` = group_size), built in
one place, [`DetailFlowARModel.embed_sequence`]:

    L <  c:  [cls(y), x_0 .. x_{L-1}]                                     length 1 + L
    L >= c:  [cls(y), x_0 .. x_{c-1}, S_0 .. S_{g-2}, x_c .. x_{L-1}]     length L + g

Position 0 predicts `x_0`, positions `1 .. c-1` predict one code each, and from position `c` on
each block of `g` positions predicts the next group. Attention is token-causal over the first `c`
positions and block-causal (bidirectional inside a block) after. RoPE is 2D over a
`(N/g) x g` grid, with zero angles *and zero magnitude* on the class token, as in the original.

Generation runs every step through [`DetailFlowForImageGeneration.forward`]: the reference path
recomputes the whole sequence each step (as the original sampler), the fast path feeds only the
entries the KV cache has not seen (both in `decoding.py`). Sampling defaults live in the model's
`generation_config`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationConfig, GenerationMixin
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import PreTrainedModel
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaMLP, LlamaRMSNorm
from transformers.utils import ModelOutput, can_return_tuple
from transformers.utils.output_capturing import capture_outputs

from .configuration_ar import DetailFlowARConfig
from .decoding import CachedStepper, RecomputeStepper
from .sampling import SamplingParams
from .schedule import prefix_lengths


@dataclass
class DetailFlowGenerationOutput(ModelOutput):
    """Output of [`DetailFlowForImageGeneration.generate`].

    Args:
        sequences (`torch.LongTensor` of shape `(batch, num_tokens)`): generated token ids.
    """

    sequences: torch.LongTensor | None = None


def rope_2d_table(config: DetailFlowARConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin `(1 + num_tokens, head_dim)` in the `rotate_half` layout, float32.

    Code position `m` sits at grid cell `(m // g, m % g)`; the first quarter of the frequencies
    rotates by the row, the second by the column. Row 0 (class token) is all zeros, not identity.
    """
    half, quarter = config.head_dim // 2, config.head_dim // 4
    base = config.rope_parameters["rope_theta"]
    freqs = 1.0 / (base ** (torch.arange(0, half, 2)[:quarter].float() / half))
    cells = torch.arange(config.num_tokens)
    rows, cols = cells // config.group_size, cells % config.group_size
    angles = torch.cat([torch.outer(rows, freqs), torch.outer(cols, freqs)], dim=-1)
    zero = torch.zeros(1, half)
    cos, sin = torch.cat([zero, angles.cos()]), torch.cat([zero, angles.sin()])
    return torch.cat([cos, cos], dim=-1), torch.cat([sin, sin], dim=-1)


def block_sequence_ids(config: DetailFlowARConfig) -> torch.LongTensor:
    """`(1 + num_tokens,)` attention blocks of the sequence: -1 (causal) for the first `c` positions
    (class token included), then `position // g` (bidirectional inside a block)."""
    positions = torch.arange(config.num_tokens + 1)
    return torch.where(positions < config.causal_num, -1, positions // config.group_size)


class DetailFlowRotaryEmbedding(nn.Module):
    """Looks up the fixed 2D RoPE table by sequence position."""

    def __init__(self, config: DetailFlowARConfig):
        super().__init__()
        self.config = config
        cos, sin = rope_2d_table(config)
        self.cos = nn.Buffer(cos, persistent=False)
        self.sin = nn.Buffer(sin, persistent=False)

    def forward(self, hidden_states: torch.Tensor, position_ids: torch.LongTensor):
        """`position_ids` (batch, seq) -> (cos, sin), each (batch, seq, head_dim) in the hidden dtype."""
        dtype = hidden_states.dtype
        return self.cos[position_ids].to(dtype), self.sin[position_ids].to(dtype)


class DetailFlowDecoderLayer(GradientCheckpointingLayer):
    """Llama pre-norm block plus the original's residual and FFN dropouts."""

    def __init__(self, config: DetailFlowARConfig, layer_idx: int):
        super().__init__()
        self.self_attn = LlamaAttention(config=config, layer_idx=layer_idx)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.residual_dropout = nn.Dropout(config.residual_dropout)
        self.ffn_dropout = nn.Dropout(config.ffn_dropout)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> torch.Tensor:
        attn_output, _ = self.self_attn(
            hidden_states=self.input_layernorm(hidden_states),
            position_embeddings=position_embeddings,
            attention_mask=attention_mask,
            cache=cache,
            **kwargs,
        )
        hidden_states = hidden_states + self.residual_dropout(attn_output)
        mlp_output = self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states + self.ffn_dropout(mlp_output)


class DetailFlowPreTrainedModel(PreTrainedModel):
    config: DetailFlowARConfig
    config_class = DetailFlowARConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["DetailFlowDecoderLayer"]
    _skip_keys_device_placement = ["cache"]
    _supports_sdpa = True
    _supports_attention_backend = True
    _can_record_outputs = {"hidden_states": DetailFlowDecoderLayer, "attentions": LlamaAttention}

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, DetailFlowRotaryEmbedding):
            cos, sin = rope_2d_table(module.config)
            init.copy_(module.cos, cos)
            init.copy_(module.sin, sin)
        elif isinstance(module, DetailFlowARModel):
            init.copy_(module.block_ids, block_sequence_ids(module.config))
        elif module is getattr(self, "lm_head", None):
            init.zeros_(module.weight)  # the original zero-initialises its output head


class DetailFlowARModel(DetailFlowPreTrainedModel):
    """Embeddings, group-causal Llama blocks and the final norm (no head)."""

    def __init__(self, config: DetailFlowARConfig):
        super().__init__(config)
        # Row `num_classes` is the null class of classifier-free guidance.
        self.class_embedding = nn.Embedding(config.num_classes + 1, config.hidden_size)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.special_embeddings = nn.Embedding(config.group_size - 1, config.hidden_size)
        self.token_dropout = nn.Dropout(config.token_dropout)
        self.layers = nn.ModuleList(
            [DetailFlowDecoderLayer(config, layer_idx) for layer_idx in range(config.num_hidden_layers)]
        )
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = DetailFlowRotaryEmbedding(config)
        self.block_ids = nn.Buffer(block_sequence_ids(config), persistent=False)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Module):
        self.embed_tokens = value

    def embed_sequence(self, input_ids: torch.LongTensor, class_labels: torch.LongTensor) -> torch.Tensor:
        """Build the input sequence `(batch, seq, hidden)` from codes `(batch, L)` and labels `(batch,)`.

        This is the only place that knows the layout (see the module docstring). In training, labels
        are replaced by the null class with probability `class_dropout_prob`.
        """
        if self.training and self.config.class_dropout_prob > 0:
            drop = torch.rand(class_labels.shape, device=class_labels.device) < self.config.class_dropout_prob
            class_labels = torch.where(drop, self.config.null_class_id, class_labels)
        class_token = self.class_embedding(class_labels).unsqueeze(1)
        codes = self.embed_tokens(input_ids)
        c = self.config.causal_num
        if input_ids.shape[1] < c:
            return torch.cat([class_token, codes], dim=1)
        special = self.special_embeddings.weight.unsqueeze(0).expand(codes.shape[0], -1, -1)
        return torch.cat([class_token, codes[:, :c], special.to(codes.dtype), codes[:, c:]], dim=1)

    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        class_labels: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """Run the blocks over a sequence, or over the part of it a `cache` has not seen.

        Args:
            input_ids: codes `(batch, L)`; with `class_labels` `(batch,)` they form the sequence.
            inputs_embeds: entries of the sequence `(batch, seq, hidden)` instead (e.g. the tail of
                `embed_sequence` that a cache lacks).
            position_ids: sequence positions `(batch, seq)`; default: right after the cached ones.
            cache: a `Cache` extended in place (decoding).
            output_hidden_states / output_attentions: also return the embeddings and every layer's
                output (`num_hidden_layers + 1` tensors `(batch, seq, hidden)`, the last normalised) /
                the attention weights (eager attention only).

        Returns:
            `last_hidden_state` `(batch, seq, hidden)`, normalised, and `cache`.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids (with class_labels) or inputs_embeds.")
        if inputs_embeds is None:
            inputs_embeds = self.embed_sequence(input_ids, class_labels)
        hidden_states = self.token_dropout(inputs_embeds)
        if position_ids is None:
            past = cache.get_seq_length() if cache is not None else 0
            position_ids = torch.arange(past, past + hidden_states.shape[1], device=hidden_states.device)[None]
        mask = create_causal_mask(
            config=self.config,
            inputs_embeds=hidden_states,
            attention_mask=None,
            cache=cache,
            position_ids=position_ids,
            block_sequence_ids=self.block_ids.expand(hidden_states.shape[0], -1),
        )
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        for layer in self.layers:
            hidden_states = layer(
                hidden_states,
                attention_mask=mask,
                position_embeddings=position_embeddings,
                cache=cache,
                **kwargs,
            )
        return BaseModelOutputWithPast(last_hidden_state=self.norm(hidden_states), cache=cache)


class DetailFlowForImageGeneration(DetailFlowPreTrainedModel, GenerationMixin):
    """The DetailFlow class-conditional generator: [`DetailFlowARModel`] plus an untied output head.

    Its `generate` is DetailFlow's own (group-parallel decoding with classifier-free guidance); the
    `GenerationMixin` base gives it a `generation_config`, saved as `generation_config.json` and
    loaded with the weights, which holds the model's sampling defaults.
    """

    def __init__(self, config: DetailFlowARConfig):
        super().__init__(config)
        self.model = DetailFlowARModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def _check_labels(self, class_labels, allow_null: bool) -> torch.LongTensor:
        labels = torch.as_tensor(class_labels, device=self.device)
        if labels.ndim == 0:
            labels = labels[None]
        if labels.ndim != 1 or torch.is_floating_point(labels) or labels.numel() == 0:
            raise ValueError(f"class_labels must be a non-empty 1-D sequence of integer ids, got {class_labels!r}.")
        high = self.config.num_classes + (1 if allow_null else 0)
        bad = labels[(labels < 0) | (labels >= high)]
        if bad.numel():
            raise ValueError(
                f"class id {bad[0].item()} is out of range; expected 0 <= id < {self.config.num_classes}"
                + (f" (or {self.config.num_classes}, the null class)." if allow_null else ".")
            )
        return labels.long()

    def _check_codes(self, input_ids: torch.LongTensor):
        n, g, c = self.config.num_tokens, self.config.group_size, self.config.causal_num
        if (
            input_ids.ndim != 2
            or (input_ids.shape[1] >= c and input_ids.shape[1] + g > n + 1)
            or input_ids.shape[1] > n
        ):
            raise ValueError(
                f"input_ids must be (batch, L) codes with L <= {n - g + 1} (num_tokens - group_size + 1), "
                f"got shape {tuple(input_ids.shape)}."
            )
        self._check_id_range(input_ids, "input_ids")

    def _check_id_range(self, ids: torch.LongTensor, name: str):
        """Every id in the codebook, `[0, vocab_size)`; the error names `name` and the span found."""
        vocab = self.config.vocab_size
        if ids.numel() and (ids.min() < 0 or ids.max() >= vocab):
            raise ValueError(f"{name} span [{ids.min().item()}, {ids.max().item()}]; expected ids in [0, {vocab}).")

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        class_labels: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        logits_to_keep: int = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Logits for the sequence built from `input_ids` and `class_labels` (or for `inputs_embeds`).

        Args:
            input_ids: codes `(batch, L)`; training feeds `z[:, :N - g]`.
            class_labels: `(batch,)` ids in `[0, num_classes]` (`num_classes` = null class).
            labels: target codes `(batch, seq)`; for training, all `N` codes `z`.
            inputs_embeds, position_ids, cache: decoding against a cache (see [`DetailFlowARModel.forward`]).
            logits_to_keep: only the last this many positions get logits (0: all).

        Returns:
            `logits` `(batch, seq, vocab)` in float32 (`seq` = `L + g` once `L >= causal_num`, else
            `1 + L`), `cache`, with `labels` the `loss` = mean cross-entropy over every position, and
            the recorded `hidden_states`/`attentions` when asked for.
        """
        if inputs_embeds is None:
            self._check_codes(input_ids)
            class_labels = self._check_labels(class_labels, allow_null=True)
        outputs = self.model(
            input_ids=input_ids,
            class_labels=class_labels,
            inputs_embeds=inputs_embeds,
            position_ids=position_ids,
            cache=cache,
            **kwargs,
        )
        hidden = outputs.last_hidden_state
        logits = self.lm_head(hidden[:, -logits_to_keep:] if logits_to_keep else hidden).float()
        loss = None
        if labels is not None:
            if labels.shape != logits.shape[:2]:
                raise ValueError(
                    f"labels of shape {tuple(labels.shape)} do not match the logits {tuple(logits.shape[:2])}."
                )
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    # -- generation ---------------------------------------------------------------------------------
    def sampling_params(self, generation_config: GenerationConfig | None = None, **arguments) -> SamplingParams:
        """The checked sampling settings a call would use: the `arguments` that are not `None`, then
        `generation_config` (default: `self.generation_config`), then DetailFlow's defaults."""
        return SamplingParams.resolve(generation_config or self.generation_config, **arguments)

    def prefix_lengths(self, num_tokens: int | None = None) -> tuple[int, ...]:
        """Token counts after each decoding step, up to `num_tokens` (a valid prefix; default all)."""
        return prefix_lengths(self.config.num_tokens, self.config.group_size, self.config.causal_num, stop=num_tokens)

    @torch.no_grad()
    def generate(
        self,
        class_labels,
        guidance_scale: float | None = None,
        gradual_guidance: bool | None = None,
        do_sample: bool | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        generation_config: GenerationConfig | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_tokens: int | None = None,
        prefix_ids: torch.LongTensor | None = None,
        callback: Callable[[int, torch.LongTensor], torch.LongTensor | None] | None = None,
        interrupt: Callable[[], bool] | None = None,
        use_cache: bool = True,
        compile: bool = False,
        return_dict: bool = False,
    ) -> torch.LongTensor | DetailFlowGenerationOutput:
        """Generate token ids for `class_labels` (ids in `[0, num_classes)`), coarse to fine.

        The first `causal_num` tokens come one at a time, then `group_size` at a time. With
        `guidance_scale > 1` the conditional and null-class halves run in one batch and combine as
        `u + s (c - u)`; `gradual_guidance` lowers `s` linearly over the groups (the token-by-token
        prefix keeps `s`). Sampling: `/ temperature`, top-k (`top_k=1` is greedy), top-p, then one
        draw per position from uniforms drawn before decoding starts (see
        [`SamplingParams.draw_uniforms`]); `do_sample=False` takes the arg-max.

        Args:
            guidance_scale, gradual_guidance, do_sample, temperature, top_k, top_p: `None` (default)
                takes the value of `generation_config`, else of `self.generation_config` (the model's
                `generation_config.json`), else the original sampler's (see [`SamplingParams`]).
            num_tokens: stop after this many tokens (any prefix length of the schedule; default all).
            prefix_ids: `(batch, k)` ids to continue from (e.g. an encoded image's first `k` tokens), `k`
                0 or a valid prefix length; the result starts with exactly these. The cached path
                feeds them in one forward (a prefill), then decodes the rest of the schedule as usual.
            callback: called after every decoding step as `callback(step, tokens)` with the ids so far
                `(batch, k)`, `k` running through the valid prefix lengths (`step` is the index of
                `k` in the schedule). It may return a tensor of the same shape: those ids then replace
                the tokens so far (the cache is rebuilt if needed).
            interrupt: called after every step; when it returns `True`, generation stops there and the
                ids so far (a valid prefix) are returned.
            generator: one `torch.Generator`, or one per image. With a list, each image draws from
                its own stream, so its tokens do not depend on the rest of the batch (up to the
                last bits of the logits, which can differ between batch sizes and, rarely, flip a draw).
                Every decoding path draws the same numbers for the same position, so the reference,
                cached and compiled paths sample alike.
            use_cache: decode against a KV cache (fast, default); `False` recomputes the whole
                prefix at every step as the original does (the reference path). On an x86 CPU in
                float32 the cached path runs its linear layers on weights pre-packed for oneDNN (a
                copy as large as the weights, made on first use and kept until a weight changes).
            compile: with the cache, run each step (forward, guidance and sampling) as one
                `torch.compile`d graph (CUDA graphs on GPU), compiled once per (batch, device, dtype,
                sampling settings) and reused for any `num_tokens`; the model keeps its 4 most
                recently used; the first call of each pays the compilation.

        Returns:
            `(batch, num_tokens)` long ids, or a [`DetailFlowGenerationOutput`] with `return_dict=True`.
        """
        if hasattr(self, "_hf_hook"):  # accelerate offload hooks only fire on forward(): place the model first
            self._hf_hook.pre_forward(self)
        params = self.sampling_params(
            generation_config,
            guidance_scale=guidance_scale,
            gradual_guidance=gradual_guidance,
            do_sample=do_sample,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
        )
        labels = self._check_labels(class_labels, allow_null=False)
        steps = self.prefix_lengths(num_tokens)
        codes = self._check_prefix_ids(prefix_ids, labels.shape[0], steps[-1])
        uniforms = params.draw_uniforms(generator, labels.shape[0], self.config.num_tokens, self.device)
        scales = None
        if params.guided:
            labels = torch.cat([labels, torch.full_like(labels, self.config.null_class_id)])
            scales = torch.tensor([self._guidance_scale(params, length) for length in steps], device=self.device)
        if use_cache:
            stepper = CachedStepper(self, labels, params, compile=compile)
        elif compile:
            raise ValueError("compile=True compiles the cached path; it cannot be combined with use_cache=False.")
        else:
            stepper = RecomputeStepper(self, labels, params)
        finite = torch.ones((), dtype=torch.bool, device=self.device)
        try:
            for step, length in enumerate(steps):
                done = codes.shape[1]
                if length <= done:
                    continue  # given by prefix_ids
                if hasattr(self, "_hf_hook"):  # a callback may have run another offloaded model (a decoder)
                    self._hf_hook.pre_forward(self)
                new_ids, step_finite = stepper(
                    codes,
                    length - done,
                    scale=None if scales is None else scales[step],
                    uniforms=None if uniforms is None else uniforms[:, done:length],
                )
                finite = finite & step_finite  # now: a CUDA graph's outputs are overwritten by its next replay
                codes = torch.cat([codes, new_ids], dim=1)
                if callback is not None and (replaced := callback(step, codes)) is not None:
                    codes = self._replace_codes(codes, replaced, stepper, seen=done)
                if interrupt is not None and interrupt():
                    break
        finally:
            stepper.close()
        if not bool(finite):  # after the loop: decoding itself never waits for the device
            raise ValueError(
                "the generator produced NaN or infinite logits (overflowing weights or dtype?); its tokens "
                "would be meaningless."
            )
        return DetailFlowGenerationOutput(sequences=codes) if return_dict else codes

    def _guidance_scale(self, params: SamplingParams, length: int) -> float:
        """Guidance of the step reaching `length` tokens: the plain scale for the causal prefix, the
        group's under gradual guidance."""
        g, c = self.config.group_size, self.config.causal_num
        if length <= c:
            return params.guidance_scale
        return params.guidance_for_group(length // g - 1, self.config.num_tokens // g)

    def _check_prefix_ids(self, prefix_ids, batch: int, num_tokens: int) -> torch.LongTensor:
        """`prefix_ids` as `(batch, k)` long ids on the model's device (`None`: `k = 0`)."""
        if prefix_ids is None:
            return torch.zeros(batch, 0, dtype=torch.long, device=self.device)
        lengths = [0, *self.prefix_lengths()]
        if (
            not isinstance(prefix_ids, torch.Tensor)
            or prefix_ids.ndim != 2
            or torch.is_floating_point(prefix_ids)
            or prefix_ids.shape[0] != batch
        ):
            shape = tuple(prefix_ids.shape) if isinstance(prefix_ids, torch.Tensor) else type(prefix_ids).__name__
            raise ValueError(
                f"prefix_ids must be integer ids of shape ({batch}, k), one row per class label; got {shape}."
            )
        k = prefix_ids.shape[1]
        if k not in lengths:
            raise ValueError(f"prefix_ids hold {k} tokens, not a valid prefix length; expected one of {lengths}.")
        if k > num_tokens:
            raise ValueError(f"prefix_ids hold {k} tokens, more than num_tokens={num_tokens}.")
        self._check_id_range(prefix_ids, "prefix_ids")
        return prefix_ids.to(self.device, torch.long)

    def _replace_codes(self, codes: torch.LongTensor, replaced, stepper, seen: int) -> torch.LongTensor:
        """Take a callback's ids for the tokens so far; the cache has seen the first `seen` of `codes`
        (the step's new ids are fed next step), and is rebuilt only if the callback changed those."""
        if (
            not isinstance(replaced, torch.Tensor)
            or replaced.shape != codes.shape
            or torch.is_floating_point(replaced)
        ):
            raise ValueError(
                f"the callback returned {type(replaced).__name__} "
                f"{tuple(replaced.shape) if isinstance(replaced, torch.Tensor) else ''}; expected "
                "integer ids of shape "
                f"{tuple(codes.shape)} (or None to keep the tokens)."
            )
        self._check_id_range(replaced, "the callback's tokens")
        replaced = replaced.to(codes.device, torch.long)
        if not torch.equal(replaced[:, :seen], codes[:, :seen]):
            stepper.reset()
        return replaced


__all__ = [
    "DetailFlowARModel",
    "DetailFlowForImageGeneration",
    "DetailFlowGenerationOutput",
    "DetailFlowPreTrainedModel",
]
