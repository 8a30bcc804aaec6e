"""DetailFlowPipeline: class labels -> generator token ids -> tokenizer decode -> images."""

from __future__ import annotations

import torch
from diffusers.pipelines.pipeline_utils import DiffusionPipeline, ImagePipelineOutput

from ..models.modeling_ar import DetailFlowForImageGeneration
from ..models.tokenizer import DetailFlowTokenizer


class DetailFlowPipeline(DiffusionPipeline):
    r"""Class-conditional coarse-to-fine image generation with DetailFlow.

    Components:
        vqvae ([`DetailFlowTokenizer`]): decodes token prefixes to images.
        transformer ([`DetailFlowForImageGeneration`]): predicts the token ids.
    """

    model_cpu_offload_seq = "transformer->vqvae"

    def __init__(self, vqvae: DetailFlowTokenizer, transformer: DetailFlowForImageGeneration):
        super().__init__()
        self.register_modules(vqvae=vqvae, transformer=transformer)

    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | list[int],
        guidance_scale: float = 1.5,
        gradual_guidance: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        generator: torch.Generator | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """Generate one image per class id.

        Returns:
            `ImagePipelineOutput` whose `images` are PIL images, a `(batch, H, W, 3)` numpy array
            (`"np"`) or a `(batch, 3, H, W)` tensor (`"pt"`), all in [0, 1].
        """
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type={output_type!r} is not supported; expected 'pil', 'np' or 'pt'.")
        if isinstance(class_labels, int):
            class_labels = [class_labels]
        token_ids = self.transformer.generate(
            class_labels,
            guidance_scale=guidance_scale,
            gradual_guidance=gradual_guidance,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            generator=generator,
        )
        sample = self.vqvae.decode(token_ids.to(self.vqvae.device)).sample
        images = (sample / 2 + 0.5).clamp(0, 1)
        if output_type != "pt":
            images = images.permute(0, 2, 3, 1).float().cpu().numpy()
            if output_type == "pil":
                images = self.numpy_to_pil(images)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)
