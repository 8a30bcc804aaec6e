"""DetailFlow coarse-to-fine autoregressive image generation for the Hugging Face ecosystem."""

from pathlib import Path

from transformers import AutoConfig, AutoModel

from .loading import load_generator, load_pipeline, load_tokenizer
from .models.configuration_ar import DetailFlowARConfig
from .models.modeling_ar import DetailFlowARModel, DetailFlowForImageGeneration, DetailFlowGenerationOutput
from .models.schedule import ResolutionSchedule
from .models.tokenizer import DetailFlowEncoderOutput, DetailFlowTokenizer
from .pipelines.pipeline_detailflow import DetailFlowPipeline

AutoConfig.register("detailflow_ar", DetailFlowARConfig, exist_ok=True)
AutoModel.register(DetailFlowARConfig, DetailFlowForImageGeneration, exist_ok=True)

__version__ = "0.2.0"

_EMBEDDED = Path(__file__).resolve().parent / "default_model"
# A pipeline folder shipped inside the package (None until one is embedded).
DEFAULT_MODEL: str | None = str(_EMBEDDED) if (_EMBEDDED / "model_index.json").is_file() else None

__all__ = [
    "DEFAULT_MODEL",
    "DetailFlowARConfig",
    "DetailFlowARModel",
    "DetailFlowEncoderOutput",
    "DetailFlowForImageGeneration",
    "DetailFlowGenerationOutput",
    "DetailFlowPipeline",
    "DetailFlowTokenizer",
    "ResolutionSchedule",
    "load_generator",
    "load_pipeline",
    "load_tokenizer",
]
