"""Configuration of the DetailFlow class-conditional generator."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.modeling_rope_utils import RopeParameters

from .schedule import check_config_keys, check_group_layout

# LlamaGen's model sizes, as `gpt_model` names them: (hidden_size, num_hidden_layers, num_attention_heads).
# The release trains GPT-L; the converter cross-checks a release against its name, training presets build them.
LLAMAGEN_SIZES = {
    "GPT-B": (768, 12, 12),
    "GPT-L": (1024, 24, 16),
    "GPT-XL": (1280, 36, 20),
    "GPT-XXL": (1536, 48, 24),
}


def llamagen_size(name: str) -> dict:
    """`DetailFlowARConfig` keyword arguments of a LlamaGen size (`"GPT-L"`, ...)."""
    hidden, layers, heads = LLAMAGEN_SIZES[name]
    return {"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads}


def find_multiple(n: int, k: int) -> int:
    """Smallest multiple of `k` that is >= `n`."""
    return n if n % k == 0 else n + k - n % k


@strict(accept_kwargs=True)
class DetailFlowARConfig(PreTrainedConfig):
    r"""Configuration of [`DetailFlowForImageGeneration`], a LlamaGen-style class-conditional GPT.

    The sequence is `[class token, x_0 .. x_{c-1}, S_0 .. S_{g-2}, x_c ..]`: the first `causal_num`
    codes are predicted one by one, the rest `group_size` at a time (the `g-1` learned special
    tokens pad the first group).

    Args:
        vocab_size: codebook size of the tokenizer.
        num_tokens: `N`, tokens per image (the original `block_size`).
        group_size: `g`, tokens predicted in parallel.
        causal_num: `c`, token-by-token prefix (a multiple of `g`, at most `N - g`); `None` means `group_size`.
        num_classes: number of class labels; the id `num_classes` is the null class of CFG.
        class_dropout_prob: probability of replacing a label by the null class in training.
        hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads,
        head_dim, hidden_act, rms_norm_eps, attention_bias, mlp_bias, attention_dropout:
            the Llama block shapes; `intermediate_size=None` gives the original
            `find_multiple(int(8 * hidden_size / 3), 256)`.
        rope_parameters: `{"rope_type": "default", "rope_theta": 10000.0}`; the 2D RoPE grid is
            `(num_tokens / group_size) x group_size`.
        token_dropout, residual_dropout, ffn_dropout: training-only dropouts of the original.
        initializer_range: std of the normal init.
    """

    model_type = "detailflow_ar"
    keys_to_ignore_at_inference = ["past_key_values"]

    vocab_size: int = 8192
    num_tokens: int = 128
    group_size: int = 8
    causal_num: int | None = None
    num_classes: int = 1000
    class_dropout_prob: float = 0.1
    hidden_size: int = 1024
    intermediate_size: int | None = None
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-5
    rope_parameters: RopeParameters | dict | None = None
    attention_bias: bool = False
    mlp_bias: bool = False
    attention_dropout: float = 0.0
    token_dropout: float = 0.1
    residual_dropout: float = 0.1
    ffn_dropout: float = 0.1
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        if self.causal_num is None:
            self.causal_num = self.group_size
        if self.intermediate_size is None:
            self.intermediate_size = find_multiple(int(2 * 4 * self.hidden_size / 3), 256)
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.rope_parameters is None:
            self.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0}
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Checks run by `@strict` on creation and on load."""
        check_group_layout(self.num_tokens, self.group_size, self.causal_num)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) is not a multiple of num_attention_heads "
                f"({self.num_attention_heads})."
            )
        if self.head_dim % 4:
            raise ValueError(f"head_dim ({self.head_dim}) must be a multiple of 4 for the 2D rotary embedding.")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})."
            )

    # Keys a saved config must carry: defaulting any of them would silently build another model.
    shape_keys = (
        "vocab_size",
        "num_tokens",
        "group_size",
        "num_classes",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
    )

    @classmethod
    def _dict_from_json_file(cls, json_file):
        config_dict = super()._dict_from_json_file(json_file)
        check_config_keys(config_dict, cls.shape_keys, str(json_file), cls.model_type)
        return config_dict

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        check_config_keys(config_dict, cls.shape_keys, f"the {cls.model_type} config", cls.model_type)
        return super().from_dict(config_dict, **kwargs)

    @property
    def null_class_id(self) -> int:
        """Label of the unconditional branch of classifier-free guidance."""
        return self.num_classes


__all__ = ["LLAMAGEN_SIZES", "DetailFlowARConfig", "find_multiple", "llamagen_size"]
