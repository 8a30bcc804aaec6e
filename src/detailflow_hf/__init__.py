"""DetailFlow coarse-to-fine autoregressive image generation for the Hugging Face ecosystem."""

from transformers import AutoConfig, AutoModel

from .models.configuration_ar import DetailFlowARConfig
from .models.modeling_ar import DetailFlowARModel, DetailFlowForImageGeneration, DetailFlowGenerationOutput
from .models.tokenizer import DetailFlowEncoderOutput, DetailFlowTokenizer
from .pipelines.pipeline_detailflow import DetailFlowPipeline
from .schedule import ResolutionSchedule

AutoConfig.register("detailflow_ar", DetailFlowARConfig, exist_ok=True)
AutoModel.register(DetailFlowARConfig, DetailFlowForImageGeneration, exist_ok=True)

__version__ = "0.1.0"

__all__ = [
    "DetailFlowARConfig",
    "DetailFlowARModel",
    "DetailFlowEncoderOutput",
    "DetailFlowForImageGeneration",
    "DetailFlowGenerationOutput",
    "DetailFlowPipeline",
    "DetailFlowTokenizer",
    "ResolutionSchedule",
]
