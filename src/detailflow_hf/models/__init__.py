"""The two DetailFlow models and the generator's configuration."""

from .configuration_ar import DetailFlowARConfig
from .modeling_ar import DetailFlowForImageGeneration
from .tokenizer import DetailFlowTokenizer

__all__ = ["DetailFlowARConfig", "DetailFlowForImageGeneration", "DetailFlowTokenizer"]
