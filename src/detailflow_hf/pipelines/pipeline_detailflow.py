"""DetailFlowPipeline: class labels -> generator token ids -> tokenizer decode -> images, coarse to fine."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.utils import BaseOutput

from .image_processing import OUTPUT_TYPES, DetailFlowImageProcessor
from .labels import ClassLabels, imagenet_id2label


@dataclass
class DetailFlowPipelineOutput(BaseOutput):
    """Output of [`DetailFlowPipeline`].

    Args:
        images: PIL images, a `(batch, H, W, 3)` array (`"np"`) or a `(batch, 3, H, W)` tensor (`"pt"`), in [0, 1].
        intermediates: with `return_intermediates=True`, one entry per decoding step (each trained
            prefix length), in the same `output_type`, resolutions growing; the last is `images`.
        token_ids: `(batch, num_tokens)` generated ids.
        kept_tokens: with an `image`, how many of its encoded tokens start every sequence (else 0).
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    intermediates: list | None = None
    token_ids: torch.LongTensor | None = None
    kept_tokens: int = 0


def check_compatible(vqvae, transformer):
    """The generator must predict the tokenizer's codes: same vocabulary, token count and grouping."""
    t, g = vqvae.config, transformer.config
    pairs = {
        "vocabulary size": (t.codebook_size, g.vocab_size),
        "number of tokens": (t.num_latent_tokens, g.num_tokens),
        "group size": (t.group_size, g.group_size),
        "causal_num": (vqvae.schedule.causal_num, g.causal_num),
    }
    for name, (tok, gen) in pairs.items():
        if tok != gen:
            raise ValueError(
                f"tokenizer/generator mismatch: {name} is {tok} in the tokenizer but {gen} in the generator."
            )


class DetailFlowPipeline(DiffusionPipeline):
    r"""Class-conditional coarse-to-fine image generation with DetailFlow (arXiv 2505.21473).

    Components:
        vqvae ([`DetailFlowTokenizer`]): decodes any token prefix to the resolution it maps to.
        transformer ([`DetailFlowForImageGeneration`]): predicts the token ids, one group at a time.
        id2label (`dict[int, str]`, *optional*): class names (comma-separated synonyms per id; the string keys
            of `model_index.json` are accepted); default:
            the generator config's `id2label` when it names every class, else ImageNet-1k for 1000
            classes, else ids only.
    """

    model_cpu_offload_seq = "transformer->vqvae"
    _callback_tensor_inputs = ["tokens"]

    def __init__(self, vqvae, transformer, id2label: dict | None = None):
        super().__init__()
        check_compatible(vqvae, transformer)
        self.register_modules(vqvae=vqvae, transformer=transformer)
        if id2label is not None:
            id2label = {int(k): v for k, v in id2label.items()}
        self.image_processor = DetailFlowImageProcessor(vqvae.config.image_size)
        self._set_labels(id2label)

    def _set_labels(self, id2label):
        """The class names: `id2label` when given, else the generator config's `id2label` when it names
        every class, else ImageNet-1k for 1000 classes, else ids only."""
        self.register_to_config(id2label=id2label)
        self.labels = ClassLabels(self._default_id2label(id2label), num_classes=self._generator_config.num_classes)

    @property
    def _generator_config(self):
        transformer = self.transformer
        return (transformer.get_base_model() if hasattr(transformer, "get_base_model") else transformer).config

    def _default_id2label(self, id2label):
        if id2label is not None:
            return id2label
        num_classes = self._generator_config.num_classes
        model_labels = getattr(self._generator_config, "id2label", None) or {}
        if len(model_labels) == num_classes and not all(v == f"LABEL_{k}" for k, v in model_labels.items()):
            return model_labels
        return imagenet_id2label() if num_classes == 1000 else {}

    @property
    def id2label(self) -> dict[int, str]:
        return self.labels.id2label

    def get_label_ids(self, label: int | str | list[int | str]) -> list[int]:
        """Map class names (any synonym, case-insensitive) or ids to ids; raises naming unknown ones."""
        return self.labels.to_ids(label)

    # -- adapters -------------------------------------------------------------------------------------
    def load_adapter(self, adapter: str | os.PathLike, merge: bool = True):
        """Adapt the generator with a LoRA adapter folder or Hub repo saved by `save_adapter`: its
        classes replace the generator's (class names work as for any model), its weights are loaded and,
        with `merge` (default), folded into the generator's own; `merge=False` keeps the peft model
        (`save_adapter` can then write it again). Returns the pipeline."""
        from .adapters import load_adapter

        self.transformer = load_adapter(self.transformer, adapter, merge=merge).eval()
        self._set_labels(None)
        return self

    def save_adapter(self, folder: str | os.PathLike, base_model: str | None = None):
        """Write the generator's adapter (the pipeline must carry an unmerged one: `load_adapter(...,
        merge=False)`, or a generator wrapped by `adapters.add_generator_lora`) with its classes and a
        card naming `base_model`."""
        from .adapters import save_adapter

        if not hasattr(self.transformer, "peft_config"):
            raise ValueError(
                "this pipeline's generator carries no adapter to save; load one with load_adapter(..., merge=False) "
                "or wrap the generator with detailflow_hf.pipelines.adapters.add_generator_lora."
            )
        return save_adapter(self.transformer, folder, base_model=base_model)

    # -- generation -----------------------------------------------------------------------------------
    def prefix_lengths(self, num_tokens: int | None = None) -> list[int]:
        """Token counts after each decoding step, up to `num_tokens` (default: all)."""
        schedule = self.vqvae.schedule
        if num_tokens is None:
            return list(schedule.token_list)
        schedule.check_prefix(num_tokens)
        return [t for t in schedule.token_list if t <= num_tokens]

    def sampling_params(self, **arguments):
        """The checked sampling settings a call would use (`None` arguments: the generator's
        `generation_config`, then DetailFlow's defaults)."""
        return self.transformer.sampling_params(**arguments)

    @property
    def interrupt(self) -> bool:
        """Set `pipe._interrupt = True` (e.g. from `callback_on_step_end`) to stop after the current step."""
        return getattr(self, "_interrupt", False)

    def check_inputs(
        self,
        class_ids,
        num_tokens,
        num_images_per_prompt,
        generator,
        output_type,
        callback_on_step_end_tensor_inputs,
        num_candidates=1,
        kept_tokens=None,
        **sampling,
    ):
        """Raise a `ValueError` naming the first bad argument; returns the resolved sampling settings
        (`sampling`: `guidance_scale`, `top_k`, ... as for `__call__`; `kept_tokens`: how many of an
        input image's tokens are kept, `None` without an image)."""
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type={output_type!r} is not supported; expected one of {list(OUTPUT_TYPES)}.")
        params = self.sampling_params(**sampling)
        if num_tokens is not None:
            self.vqvae.schedule.check_prefix(num_tokens)
        last = num_tokens if num_tokens is not None else self.vqvae.schedule.token_list[-1]
        if kept_tokens is not None and kept_tokens > last:
            raise ValueError(f"keep_tokens={kept_tokens} is more than num_tokens={last}.")
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt={num_images_per_prompt!r} must be an integer >= 1.")
        batch = len(class_ids) * num_images_per_prompt
        if isinstance(generator, (list, tuple)) and len(generator) != batch:
            raise ValueError(
                f"got {len(generator)} generators for {batch} images ({len(class_ids)} labels x "
                f"{num_images_per_prompt} per label); pass one per image or a single one."
            )
        if isinstance(num_candidates, bool) or not isinstance(num_candidates, int) or num_candidates < 1:
            raise ValueError(f"num_candidates={num_candidates!r} must be an integer >= 1.")
        if num_candidates > 1:
            if not kept_tokens:
                raise ValueError(
                    f"num_candidates={num_candidates} picks continuations by how well they keep an input image's "
                    "kept tokens; it needs an image and keep_tokens > 0."
                )
            if kept_tokens == last:
                raise ValueError(
                    f"num_candidates={num_candidates} has no step to choose at: the image's {kept_tokens} kept tokens "
                    f"are all of num_tokens={last}; keep fewer or use num_candidates=1."
                )
            if not params.do_sample or params.top_k == 1:
                raise ValueError(
                    f"num_candidates={num_candidates} needs sampling: greedy decoding draws the same candidate "
                    "every time."
                )
        unknown = [k for k in callback_on_step_end_tensor_inputs or [] if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs {unknown} are not in {self._callback_tensor_inputs}."
            )
        return params

    def auto_keep_tokens(self, short_side: int) -> int:
        """The longest trained prefix whose resolution is at most `short_side` px (0 if none is):
        what an image of that size actually shows (`ResolutionSchedule.tokens_shown`)."""
        return self.vqvae.schedule.tokens_shown(short_side)

    @torch.no_grad()
    def encode_prefix(self, image, keep_tokens: int | None = None) -> torch.LongTensor:
        """The first `keep_tokens` token ids `(batch, k)` of `image` (see `__call__`), resized and
        centre-cropped to the tokenizer's resolution; `None` keeps what the smallest input shows
        (`auto_keep_tokens` of its shorter side)."""
        return self._encode_image(image, keep_tokens)[1]

    def _encode_image(self, image, keep_tokens: int | None) -> tuple[torch.Tensor, torch.LongTensor]:
        """`image` preprocessed `(batch, 3, size, size)` in [-1, 1] (on the execution device), and its
        kept ids `(batch, k)` (see `encode_prefix`)."""
        valid = [0, *self.vqvae.schedule.token_list]
        if keep_tokens is not None and (isinstance(keep_tokens, bool) or keep_tokens not in valid):
            raise ValueError(f"keep_tokens={keep_tokens!r} is not a valid prefix length; expected one of {valid}.")
        pixels, short_sides = self.image_processor.preprocess(image)
        k = self.auto_keep_tokens(min(short_sides)) if keep_tokens is None else keep_tokens
        pixels = pixels.to(self._execution_device)
        ids = self.vqvae.encode(pixels.to(self.vqvae.dtype)).token_ids
        return pixels, ids[:, :k]

    @staticmethod
    def _pair(class_ids: list[int], images: int) -> tuple[list[int], list[int]]:
        """One image for every label, one label for every image, or as many of each: the class ids and,
        for each, the index of its image."""
        if images == len(class_ids):
            return class_ids, list(range(images))
        if images == 1:
            return class_ids, [0] * len(class_ids)
        if len(class_ids) == 1:
            return class_ids * images, list(range(images))
        raise ValueError(
            f"got {images} images for {len(class_ids)} class labels; pass one of either, or as many of each."
        )

    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | str | list[int | str],
        image=None,
        keep_tokens: int | None = None,
        guidance_scale: float | None = None,
        num_tokens: int | None = None,
        gradual_guidance: bool | None = None,
        do_sample: bool | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[..., Any] | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        return_intermediates: bool = False,
        compile: bool = False,
        num_candidates: int = 1,
    ) -> DetailFlowPipelineOutput | tuple:
        r"""Generate images for class ids or names.

        Args:
            class_labels: ids or names (`"golden retriever"`), one or a list.
            image: start from an image instead of from nothing: a PIL image or a list of them, a
                `(batch, H, W, 3)` array or a `(batch, 3, H, W)` tensor with values in [0, 1]. It is
                resized and centre-cropped to the tokenizer's resolution and encoded; its first
                `keep_tokens` ids are kept and the rest is generated under `class_labels` (its own
                class: a variation; another: class transfer). One image goes with every label, one
                label with every image, or as many of each.
            keep_tokens: how much of the image to keep: 0 or a trained prefix length (more keeps more
                of its detail). Default: what the input shows, the longest prefix whose resolution is
                at most the (smallest) input's shorter side, so a thumbnail keeps its coarse image and
                the model adds the detail (detail completion).
            guidance_scale: classifier-free guidance `s` (>= 1; 1 disables it). Default: the model's
                (`pipe.transformer.generation_config`; a converted release carries the value its
                authors evaluate with: 1.45 / 1.5 / 1.32 for DetailFlow-16 / -32 / -64).
            num_tokens: detail level: any trained prefix length (`pipe.prefix_lengths()`); the image
                comes out at the resolution that length maps to. Default: all tokens, full size.
            gradual_guidance: lower the guidance linearly over the parallel groups, as the original option.
            do_sample, temperature, top_k, top_p: sampling (`do_sample=False` or `top_k=1` is greedy).
                Like `guidance_scale`, `None` means the model's generation config.
            num_images_per_prompt: images per label.
            generator: a `torch.Generator`, or one per image (then each image is independent of the batch).
            output_type: `"pil"`, `"np"` or `"pt"`.
            callback_on_step_end: `fn(pipe, step, timestep, callback_kwargs)` after every decoding step,
                with `callback_kwargs["tokens"]` the ids so far `(batch, k)`; `timestep` is the token count
                `k`. As in diffusers, it returns a dict: a `"tokens"` entry replaces the ids so far
                (generation continues from them). With `num_candidates`, it sees each image's chosen
                continuation, one row per image. Setting `pipe._interrupt = True` stops after this
                step: the images are then those of the tokens so far, at their resolution.
            return_intermediates: also return the image decoded after every step (coarse to fine).
            compile: decode with a static cache and a compiled step (worth it for many batches / on GPU).
            num_candidates: with an `image`, keep its coarse image more faithfully: every decoding step
                draws this many continuations per image (one batch) and keeps the one nearest the input
                at the kept prefix's resolution (least mean squared error of the decoded image), mixing
                the candidates' ids position by position where that brings it closer; the next step
                continues from it. 1 (default) samples plainly. Needs sampling and at least one step
                after the kept tokens.

        Returns:
            [`DetailFlowPipelineOutput`] (or a tuple `(images,)`, plus the intermediates when asked).
        """
        class_ids, prefix_ids, pixels = self._labels_and_prefix(
            class_labels, image, keep_tokens, num_images_per_prompt
        )
        kept = 0 if prefix_ids is None else prefix_ids.shape[1]
        params = self.check_inputs(
            class_ids,
            num_tokens,
            num_images_per_prompt,
            generator,
            output_type,
            callback_on_step_end_tensor_inputs,
            guidance_scale=guidance_scale,
            gradual_guidance=gradual_guidance,
            do_sample=do_sample,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            num_candidates=num_candidates,
            kept_tokens=None if prefix_ids is None else kept,
        )
        steps = self.prefix_lengths(num_tokens)
        self._interrupt = False
        n = num_candidates  # rows per image in the generator's batch
        # what candidates are compared with: the input at the kept prefix's resolution
        targets = self.image_processor.resize(pixels, self.vqvae.schedule.decoder_resolution(kept)) if n > 1 else None
        class_ids = [class_id for class_id in class_ids for _ in range(num_images_per_prompt * n)]
        if isinstance(generator, (list, tuple)):  # an image's candidates draw one after another from its generator
            generator = [g for g in generator for _ in range(n)]
        with self.progress_bar(total=len([k for k in steps if k > kept])) as progress:

            def on_step(step: int, tokens: torch.LongTensor):
                """The ids to continue from (`None`: keep them): an image's chosen continuation, then the user's."""
                progress.update()
                chosen = self._combine_candidates(tokens, targets, n) if n > 1 else None
                if callback_on_step_end is not None:
                    shown = tokens if chosen is None else chosen  # one row per image
                    returned = callback_on_step_end(self, step, tokens.shape[1], {"tokens": shown}) or {}
                    if returned.get("tokens") is not None:
                        chosen = self._check_returned_tokens(returned["tokens"], shown)
                if chosen is None:
                    return None
                return chosen.repeat_interleave(n, dim=0)  # every candidate row continues from it

            token_ids = self.transformer.generate(
                torch.tensor(class_ids, device=self._execution_device),
                generation_config=params.to_generation_config(),
                generator=generator,
                num_tokens=steps[-1],
                prefix_ids=None if prefix_ids is None else prefix_ids.repeat_interleave(n, dim=0),
                callback=on_step,
                interrupt=lambda: self.interrupt,
                compile=compile,
            )[::n].contiguous()  # after every step, an image's rows all hold its chosen continuation
        output = self._output(token_ids, output_type, return_intermediates, kept)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (output.images, output.intermediates) if return_intermediates else (output.images,)
        return output

    def _labels_and_prefix(self, class_labels, image, keep_tokens, num_images_per_prompt):
        """Class ids and, with an `image`, its kept prefix ids `(batch * num_images_per_prompt, k)` and its
        preprocessed pixels `(batch * num_images_per_prompt, 3, size, size)` (else `None, None`)."""
        class_ids = self.get_label_ids(class_labels)
        if image is None:
            if keep_tokens is not None:
                raise ValueError("keep_tokens needs an image to keep the tokens of.")
            return class_ids, None, None
        pixels, prefix_ids = self._encode_image(image, keep_tokens)
        class_ids, index = self._pair(class_ids, prefix_ids.shape[0])
        index = torch.tensor(index, device=prefix_ids.device).repeat_interleave(num_images_per_prompt)
        return class_ids, prefix_ids[index], pixels[index]

    def _combine_candidates(self, tokens: torch.LongTensor, targets: torch.Tensor, n: int) -> torch.LongTensor:
        """Per image, the continuation nearest its input that the step's candidates can make.

        `tokens` `(batch * n, k)` holds `n` consecutive candidate rows per image, equal but for the step's
        draws; `targets` `(batch, 3, r, r)` is the input at the kept prefix's resolution. The distance of
        ids to it is the mean squared error of their decoded image resized to `r`. The candidate nearest
        it is taken first; then, greedily one position after another, every other id the candidates drew
        there is tried in its place and the nearest of these kept if it is nearer. A step draws its ids
        independently of each other, so every such mix is a draw the model could make. Decodes `n` rows
        per image plus one per distinct id drawn at a position besides the one in place. Returns
        `(batch, k)`.
        """
        batch, k = tokens.shape[0] // n, tokens.shape[1]
        candidates = tokens.view(batch, n, k)
        device = self._execution_device

        def distances(ids: torch.LongTensor, image: torch.LongTensor) -> torch.Tensor:
            """`(m, k)` ids of images `image` `(m,)` -> their `(m,)` distances to those images' targets."""
            decoded = self.vqvae.decode(ids.to(device)).sample.clamp(-1, 1)
            decoded = self.image_processor.resize(decoded, targets.shape[-1])
            return (decoded - targets[image.to(device)]).pow(2).flatten(1).mean(1).to(tokens.device)

        images = torch.arange(batch, device=tokens.device)
        best_distance, pick = distances(tokens, images.repeat_interleave(n)).view(batch, n).min(1)
        best = candidates[images, pick]
        earlier = torch.ones(n, n, dtype=torch.bool, device=tokens.device).tril(-1)  # [c, d]: d comes before c
        varying = (candidates != candidates[:, :1]).any(1).any(0)  # (k,): where candidates differ (the step's draws)
        for position in varying.nonzero().flatten().tolist():
            drawn = candidates[:, :, position]  # (batch, n)
            repeated = ((drawn[:, :, None] == drawn[:, None, :]) & earlier).any(-1)
            tried = (drawn != best[:, position, None]) & ~repeated  # each other id once
            if not tried.any():
                continue
            image, which = tried.nonzero(as_tuple=True)
            mixes = best[image]
            mixes[:, position] = drawn[image, which]
            distance = torch.full((batch, n), float("inf"), device=tokens.device)
            distance[image, which] = distances(mixes, image)
            nearest, pick = distance.min(1)
            closer = nearest < best_distance
            best[closer, position] = drawn[closer, pick[closer]]
            best_distance = torch.where(closer, nearest, best_distance)
        return best

    @staticmethod
    def _check_returned_tokens(returned, given: torch.LongTensor) -> torch.LongTensor:
        """A callback's `"tokens"` must have the shape of those it was given (the generator checks the ids)."""
        if not isinstance(returned, torch.Tensor) or returned.shape != given.shape:
            got = tuple(returned.shape) if isinstance(returned, torch.Tensor) else type(returned).__name__
            raise ValueError(
                f"callback_on_step_end returned tokens {got}; expected integer ids of shape {tuple(given.shape)}, "
                "the shape it was given."
            )
        return returned

    def _output(self, token_ids, output_type: str, return_intermediates: bool, kept: int) -> DetailFlowPipelineOutput:
        """Decode the final ids and, when asked, every shorter prefix of the schedule (fewer after an interrupt)."""
        images = self.decode(token_ids, output_type=output_type)
        intermediates = None
        if return_intermediates:
            steps = self.prefix_lengths(token_ids.shape[1])
            intermediates = [self.decode(token_ids[:, :k], output_type=output_type) for k in steps[:-1]] + [images]
        return DetailFlowPipelineOutput(
            images=images, intermediates=intermediates, token_ids=token_ids, kept_tokens=kept
        )

    @torch.no_grad()
    def decode(self, token_ids: torch.LongTensor, output_type: str = "pil"):
        """Decode `(batch, k)` ids at the resolution `k` maps to; images in [0, 1] as `output_type`."""
        sample = self.vqvae.decode(token_ids.to(self._execution_device)).sample
        return DetailFlowImageProcessor.postprocess(sample, output_type)
