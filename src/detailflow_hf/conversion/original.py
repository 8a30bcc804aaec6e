"""Conversion of the original DetailFlow release layout to our models.

Release layout (one per model): `<root>/config.json`, `<root>/config.yaml`,
`<root>/checkpoints/<step>.pt` holding `{"model", ["ema"], "steps", "args": argparse.Namespace}`.
Shapes come from the checkpoint tensors wherever they determine them, else from `config.json`;
the `gpt_model` preset of `config.yaml` is only a cross-check.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import pickle
import re
import shutil
import zipfile
from pathlib import Path

import torch
import yaml

from ..models.configuration_ar import LLAMAGEN_SIZES, DetailFlowARConfig
from ..models.modeling_ar import DetailFlowForImageGeneration
from ..models.sampling import SamplingParams
from ..models.tokenizer import RELEASED_DECODER, RELEASED_ENCODER, VISION_KEYS, DetailFlowTokenizer

logger = logging.getLogger(__name__)

# Only what the release pickles beside the tensors.
SAFE_GLOBALS = [argparse.Namespace]
TRAINING_ONLY_PREFIXES = ("repa_model.", "global_token_proj.", "projection.")
TRAINING_ONLY_KEYS = ("quantize.codebook_used",)


class ConversionError(ValueError):
    """A release folder or checkpoint that cannot be converted; the message names the problem."""


# -- reading the release ----------------------------------------------------------------------------
def resolve_source(source: str | os.PathLike, revision: str | None = None) -> Path:
    """A local release folder as is, else a Hub repo id downloaded with `snapshot_download`
    (honours `HF_HUB_OFFLINE` and the cache)."""
    path = Path(source)
    if path.is_dir():
        return path
    if path.exists():
        raise ConversionError(f"{source} is a file; expected a release folder or a Hub repo id.")
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(str(source), revision=revision, allow_patterns=["*.json", "*.yaml", "checkpoints/*"])
        )
    except Exception as error:  # hub errors are many; report the source either way
        raise ConversionError(f"cannot find {source!r} locally or download it from the Hub: {error}") from error


def find_checkpoint(root: Path, checkpoint: str | None = None) -> Path:
    """The named checkpoint, else the newest `checkpoints/*.pt` (highest step in its name)."""
    if checkpoint is not None:
        path = Path(checkpoint) if Path(checkpoint).is_absolute() else root / "checkpoints" / checkpoint
        if not path.is_file():
            raise ConversionError(f"checkpoint {path} does not exist.")
        return path
    candidates = sorted((root / "checkpoints").glob("*.pt"), key=lambda p: (_step_of(p), p.name))
    if not candidates:
        raise ConversionError(f"no checkpoints/*.pt under {root}.")
    return candidates[-1]


def _step_of(path: Path) -> int:
    digits = re.findall(r"\d+", path.stem)
    return int(digits[-1]) if digits else -1


def load_checkpoint(path: Path) -> dict:
    """`torch.load(weights_only=True)` allowing only `argparse.Namespace`; clear errors otherwise."""
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        raise ConversionError(
            f"checkpoint {path} contains a pickled object that is not allow-listed "
            f"({found.group(1) if found else str(error).splitlines()[0]}); only argparse.Namespace is accepted "
            "beside tensors, nothing else is unpickled."
        ) from error
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as error:
        raise ConversionError(f"checkpoint {path} is corrupt or truncated: {error}") from error
    if not isinstance(checkpoint, dict):
        raise ConversionError(f"checkpoint {path} holds a {type(checkpoint).__name__}, expected a dict with 'model'.")
    return checkpoint


def pick_state_dict(checkpoint: dict, path: Path, use_ema: bool) -> dict[str, torch.Tensor]:
    key = "ema" if use_ema else "model"
    if key not in checkpoint:
        raise ConversionError(f"checkpoint {path} has no '{key}' weights (keys: {sorted(checkpoint)}).")
    state = {k.removeprefix("module."): v for k, v in checkpoint[key].items()}
    return state


def read_configs(root: Path) -> tuple[dict, dict]:
    """`config.json` and `config.yaml` of a release folder (the yaml may be absent)."""
    json_path, yaml_path = root / "config.json", root / "config.yaml"
    if not json_path.is_file():
        raise ConversionError(f"{json_path} is missing.")
    try:
        config = json.loads(json_path.read_text())
        extra = yaml.safe_load(yaml_path.read_text()) if yaml_path.is_file() else {}
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ConversionError(f"cannot parse the configs of {root}: {error}") from error
    return config, extra or {}


def _require(config: dict, key: str, where: Path):
    if key not in config:
        raise ConversionError(f"missing config key '{key}' in {where}.")
    return config[key]


def _tensor(state: dict, key: str, path: Path) -> torch.Tensor:
    if key not in state:
        raise ConversionError(f"checkpoint {path} lacks the tensor '{key}'.")
    return state[key]


# -- tokenizer --------------------------------------------------------------------------------------
def tokenizer_config(root: Path, state: dict, ckpt: Path, architecture: dict | None = None) -> dict:
    """`DetailFlowTokenizer` init kwargs from a release folder and its state dict."""
    config, extra = read_configs(root)
    json_path = root / "config.json"
    num_tokens, enc_dim = _tensor(state, "encoder.latent_tokens", ckpt).shape[1:]
    codebook_size, embed_dim = _tensor(state, "quantize.embedding.weight", ckpt).shape
    group_size = extra.get("group_size", _require(config, "group_size", json_path))
    image_size = extra.get("max_image_size", config.get("image_size"))
    if image_size is None:
        raise ConversionError(
            f"missing config key 'max_image_size' in {root / 'config.yaml'} (or 'image_size' in {json_path})."
        )
    if extra and extra.get("content_degradation", "resolution_power") != "resolution_power":
        raise ConversionError(
            f"content_degradation={extra['content_degradation']!r} is not supported; expected 'resolution_power'."
        )
    for key in ("causal_encoder", "causal_decoder"):
        expected = key == "causal_encoder"
        if config.get(key, expected) != expected:
            raise ConversionError(f"{key}={config[key]} is not supported (the release uses {expected}).")

    if architecture:  # shapes given explicitly (releases trained with other SigLIP2 configs, test fixtures)
        vision = {"encoder": dict(RELEASED_ENCODER), "decoder": dict(RELEASED_DECODER)}
        for side in ("encoder", "decoder"):
            vision[side].update(architecture.get(side, {}))
    else:
        vision = {side: builder_vision_spec(config, side, json_path) for side in ("encoder", "decoder")}
    vision["encoder"]["patch_size"] = config.get("enc_patch_size", vision["encoder"]["patch_size"])
    vision["decoder"]["patch_size"] = config.get("dec_patch_size", vision["decoder"]["patch_size"])
    for side in ("encoder", "decoder"):
        _shapes_from_tensors(vision[side], state, side, ckpt, derived=not architecture)
    if vision["encoder"]["hidden_size"] != enc_dim:
        raise ConversionError(
            f"encoder width {vision['encoder']['hidden_size']} does not match the checkpoint ({enc_dim})."
        )
    return {
        "image_size": int(image_size),
        "num_latent_tokens": int(num_tokens),
        "group_size": int(group_size),
        "causal_num": config.get("causal_num"),
        "degradation_power": float(extra.get("degradation_power", 1.5)),
        "codebook_size": int(codebook_size),
        "codebook_embed_dim": int(embed_dim),
        "encoder_config": {k: vision["encoder"][k] for k in VISION_KEYS},
        "decoder_config": {k: vision["decoder"][k] for k in VISION_KEYS},
    }


# SigLIP2 so400m (patch16-naflex), the tower the original's `model_builder.py` starts from.
SO400M = {**RELEASED_ENCODER, "num_hidden_layers": 27}
# `<side>_model` -> layers the builder keeps; a fresh (not pretrained) `siglip2_base` is 768 wide, 12 heads.
BUILDER_LAYERS = {"siglip2_base": 12, "siglip2_large": 16, "siglip2": 27}
FRESH_BASE = {"hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 768 * 4}


def builder_vision_spec(config: dict, side: str, where: Path) -> dict:
    """The SigLIP2 shapes the original's `build_encoder`/`build_decoder` make from `config.json`'s
    `encoder_model`/`enc_pretrained` (`decoder_model`/`dec_pretrained`): a pretrained tower keeps
    so400m's width and heads; a fresh one is only defined for `siglip2_base`. Depth and widths are
    then read from the tensors (and the widths must agree); heads, norms and activation are not in them."""
    short = side[:3]
    model, pretrained = _require(config, f"{side}_model", where), _require(config, f"{short}_pretrained", where)
    if model not in BUILDER_LAYERS:
        raise ConversionError(
            f"{side}_model={model!r} in {where} is not one the original builds; expected one of "
            f"{sorted(BUILDER_LAYERS)}."
        )
    if not isinstance(pretrained, bool):
        raise ConversionError(f"{short}_pretrained={pretrained!r} in {where} must be true or false.")
    if not pretrained and model != "siglip2_base":
        raise ConversionError(
            f"{side}_model={model!r} with {short}_pretrained=false in {where}: the original builder only defines a "
            "fresh siglip2_base tower (768 wide, 12 heads); pass the shapes with --tokenizer-architecture."
        )
    spec = {**SO400M, "num_hidden_layers": BUILDER_LAYERS[model]}
    if not pretrained:
        spec.update(FRESH_BASE)
    return spec


def _shapes_from_tensors(spec: dict, state: dict, side: str, ckpt: Path, derived: bool = False):
    """Width, MLP size, depth and position-table size are in the tensors; heads are not. With
    `derived` (shapes from the builder rules) the widths must agree with the tensors'."""
    prefix = f"{side}.visual_model."
    table = _tensor(state, prefix + "embeddings.position_embedding.weight", ckpt)
    mlp = _tensor(state, prefix + "encoder.layers.0.mlp.fc1.weight", ckpt).shape[0]
    if derived and (table.shape[1], mlp) != (spec["hidden_size"], spec["intermediate_size"]):
        raise ConversionError(
            f"the {side} in {ckpt} is {table.shape[1]} wide with an MLP of {mlp}, but its config builds "
            f"{spec['hidden_size']} / {spec['intermediate_size']}; pass the shapes with --tokenizer-architecture."
        )
    spec["num_patches"], spec["hidden_size"] = table.shape
    spec["intermediate_size"] = mlp
    layers = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"encoder\.layers\.(\d+)\.", k))}
    spec["num_hidden_layers"] = len(layers)
    if spec["hidden_size"] % spec["num_attention_heads"]:
        raise ConversionError(
            f"{side} width {spec['hidden_size']} is not divisible by {spec['num_attention_heads']} heads; "
            "pass the architecture with --tokenizer-architecture."
        )


def convert_tokenizer_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename original tokenizer keys to ours, dropping training-only tensors."""
    converted = {}
    for key, value in state.items():
        if key.startswith(TRAINING_ONLY_PREFIXES) or key in TRAINING_ONLY_KEYS:
            continue
        new = key.replace("visual_model.embeddings.", "").replace("visual_model.encoder.layers.", "layers.")
        new = new.replace("visual_model.post_layernorm.", "post_layernorm.").replace("to_pixel.model.", "to_pixel.")
        converted[new] = value
    return converted


def convert_tokenizer(
    source: str | os.PathLike,
    checkpoint: str | None = None,
    use_ema: bool = False,
    architecture: dict | None = None,
) -> DetailFlowTokenizer:
    """Build a `DetailFlowTokenizer` from a release folder or Hub repo (non-EMA weights by default)."""
    root = resolve_source(source)
    ckpt = find_checkpoint(root, checkpoint)
    state = pick_state_dict(load_checkpoint(ckpt), ckpt, use_ema)
    model = DetailFlowTokenizer(**tokenizer_config(root, state, ckpt, architecture))
    _load_strict(model, convert_tokenizer_state_dict(state), ckpt)
    return model.eval()


# -- generator --------------------------------------------------------------------------------------
def generator_config(root: Path, state: dict, ckpt: Path) -> DetailFlowARConfig:
    """`DetailFlowARConfig` from a release folder: tensors first, then config.json."""
    config, extra = read_configs(root)
    json_path = root / "config.json"
    vocab_size, dim = _tensor(state, "tok_embeddings.weight", ckpt).shape
    num_classes = _tensor(state, "cls_embedding.embedding_table.weight", ckpt).shape[0] - 1
    group_size = _tensor(state, "spe_tok_embeddings.special_embeddings.weight", ckpt).shape[0] + 1
    intermediate = _tensor(state, "layers.0.feed_forward.w1.weight", ckpt).shape[0]
    n_layer = len({int(m.group(1)) for k in state if (m := re.match(r"layers\.(\d+)\.", k))})
    if _require(config, "cls_token_num", json_path) != 1:
        raise ConversionError(
            f"cls_token_num={config['cls_token_num']} is not supported; expected 1 (class-conditional)."
        )
    if _require(config, "group_size", json_path) != group_size:
        raise ConversionError(
            f"config.json group_size={config['group_size']} but the checkpoint has {group_size - 1} special tokens."
        )

    preset = LLAMAGEN_SIZES.get(extra.get("gpt_model"))
    n_head = config.get("n_head")
    if preset is not None and preset[:2] != (dim, n_layer):
        logger.warning(
            "config.yaml names %s (dim %d, %d layers) but the checkpoint has dim %d and %d layers; "
            "using the checkpoint.",
            extra["gpt_model"],
            preset[0],
            preset[1],
            dim,
            n_layer,
        )
    elif n_head is None and preset is not None:
        n_head = preset[2]
    if n_head is None:
        raise ConversionError(f"missing config key 'n_head' in {json_path} (the tensors do not determine it).")
    head_dim = dim // n_head
    qkv_rows = _tensor(state, "layers.0.attention.wqkv.weight", ckpt).shape[0]
    return DetailFlowARConfig(
        vocab_size=int(vocab_size),
        num_tokens=int(_require(config, "block_size", json_path)),
        group_size=int(group_size),
        causal_num=config.get("causal_num"),
        num_classes=int(num_classes),
        class_dropout_prob=float(config.get("class_dropout_prob", 0.1)),
        hidden_size=int(dim),
        intermediate_size=int(intermediate),
        num_hidden_layers=n_layer,
        num_attention_heads=int(n_head),
        num_key_value_heads=int((qkv_rows // head_dim - n_head) // 2),
        rms_norm_eps=float(config.get("norm_eps", 1e-5)),
        rope_parameters={"rope_type": "default", "rope_theta": float(config.get("rope_base", 10000))},
        token_dropout=float(config.get("token_dropout_p", 0.1)),
        residual_dropout=float(config.get("resid_dropout_p", 0.1)),
        ffn_dropout=float(config.get("ffn_dropout_p", 0.1)),
        initializer_range=float(config.get("initializer_range", 0.02)),
    )


def interleaved_to_half_rotary(weight: torch.Tensor, num_heads: int, head_dim: int) -> torch.Tensor:
    """Permute q/k output rows inside each head from adjacent pairs to rotate_half halves:
    `[0, 2, .., hd-2, 1, 3, .., hd-1]`."""
    order = torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])
    return weight.reshape(num_heads, head_dim, -1)[:, order].reshape(num_heads * head_dim, -1)


def convert_generator_state_dict(
    state: dict[str, torch.Tensor], config: DetailFlowARConfig
) -> dict[str, torch.Tensor]:
    """Rename original GPT keys to ours: split `wqkv`, permute q/k for rotate_half, Llama names."""
    hd, heads, kv_heads = config.head_dim, config.num_attention_heads, config.num_key_value_heads
    renames = {
        "cls_embedding.embedding_table.weight": "model.class_embedding.weight",
        "tok_embeddings.weight": "model.embed_tokens.weight",
        "spe_tok_embeddings.special_embeddings.weight": "model.special_embeddings.weight",
        "norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight",
    }
    layer_renames = {
        "attention.wo.weight": "self_attn.o_proj.weight",
        "feed_forward.w1.weight": "mlp.gate_proj.weight",
        "feed_forward.w3.weight": "mlp.up_proj.weight",
        "feed_forward.w2.weight": "mlp.down_proj.weight",
        "attention_norm.weight": "input_layernorm.weight",
        "ffn_norm.weight": "post_attention_layernorm.weight",
    }
    converted = {}
    for key, value in state.items():
        if key in renames:
            converted[renames[key]] = value
            continue
        match = re.match(r"layers\.(\d+)\.(.+)", key)
        if match is None:
            converted[key] = value  # unknown: reported by the strict load
            continue
        prefix, name = f"model.layers.{match.group(1)}.", match.group(2)
        if name == "attention.wqkv.weight":
            q, k, v = value.split([heads * hd, kv_heads * hd, kv_heads * hd], dim=0)
            converted[prefix + "self_attn.q_proj.weight"] = interleaved_to_half_rotary(q, heads, hd)
            converted[prefix + "self_attn.k_proj.weight"] = interleaved_to_half_rotary(k, kv_heads, hd)
            converted[prefix + "self_attn.v_proj.weight"] = v
        else:
            converted[prefix + layer_renames.get(name, name)] = value
    return converted


# Guidance of the release's evaluation scripts, by token count (DetailFlow-16 / -32 / -64); the rest of
# their sampling is the original sampler's default (full distribution, temperature 1, no gradual CFG).
RELEASE_GUIDANCE = {128: 1.45, 256: 1.5, 512: 1.32}


def release_sampling_params(num_tokens: int, **overrides) -> SamplingParams:
    """The sampling the release is evaluated with at `num_tokens` tokens (other counts: the
    original sampler's defaults); `overrides` that are not `None` win."""
    guidance = RELEASE_GUIDANCE.get(num_tokens, SamplingParams.guidance_scale)
    return SamplingParams.resolve(SamplingParams(guidance_scale=guidance).to_generation_config(), **overrides)


def convert_generator(
    source: str | os.PathLike,
    checkpoint: str | None = None,
    use_ema: bool = True,
    sampling: dict | None = None,
) -> DetailFlowForImageGeneration:
    """Build a `DetailFlowForImageGeneration` from a release folder or Hub repo (EMA by default).

    Its `generation_config` holds the release's evaluation sampling (`release_sampling_params`),
    with the non-`None` entries of `sampling` (`guidance_scale`, `top_k`, ...) overriding them.
    """
    root = resolve_source(source)
    ckpt = find_checkpoint(root, checkpoint)
    state = pick_state_dict(load_checkpoint(ckpt), ckpt, use_ema)
    config = generator_config(root, state, ckpt)
    model = DetailFlowForImageGeneration(config)
    _load_strict(model, convert_generator_state_dict(state, config), ckpt)
    model.generation_config = release_sampling_params(config.num_tokens, **(sampling or {})).to_generation_config()
    return model.eval()


# -- both -------------------------------------------------------------------------------------------
def _load_strict(model: torch.nn.Module, state: dict, ckpt: Path):
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong:
        raise ConversionError(
            f"checkpoint {ckpt} does not fit {type(model).__name__}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, wrong shapes {wrong[:5]}."
        )
    model.load_state_dict(state, strict=True)


def convert_release(
    tokenizer_source: str | os.PathLike,
    generator_source: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    *,
    tokenizer_architecture: dict | None = None,
    use_ema: bool = True,
    tokenizer_checkpoint: str | None = None,
    generator_checkpoint: str | None = None,
    sampling: dict | None = None,
):
    """Convert a released tokenizer + generator into a `DetailFlowPipeline` (saved if `output_dir`).

    `use_ema` picks the generator's EMA weights (the release samples with them); the tokenizer uses
    its plain weights, as the release's evaluation does. `sampling` overrides the generation
    defaults written to `transformer/generation_config.json` (see `convert_generator`).
    """
    from ..pipelines.pipeline_detailflow import DetailFlowPipeline

    tokenizer = convert_tokenizer(tokenizer_source, tokenizer_checkpoint, architecture=tokenizer_architecture)
    generator = convert_generator(generator_source, generator_checkpoint, use_ema=use_ema, sampling=sampling)
    pipe = DetailFlowPipeline(vqvae=tokenizer, transformer=generator)
    if output_dir is not None:
        pipe.save_pretrained(output_dir)
    return pipe


def converted_release_dir(
    tokenizer_source: str | os.PathLike,
    generator_source: str | os.PathLike,
    *,
    tokenizer_architecture: dict | None = None,
    use_ema: bool = True,
    cache_dir: str | os.PathLike | None = None,
    force: bool = False,
) -> Path:
    """Convert a release once into a cache folder and return it; later calls with the same sources
    (same Hub commits, or the same local checkpoint files) reuse it. Written atomically: a folder
    from an interrupted conversion is never used."""
    from huggingface_hub import constants

    from .. import __version__

    roots = [resolve_source(tokenizer_source), resolve_source(generator_source)]
    checkpoints = [find_checkpoint(root) for root in roots]
    fingerprint = {
        "sources": [str(root.resolve()) for root in roots],
        "checkpoints": [[str(c.resolve()), c.stat().st_size, c.stat().st_mtime_ns] for c in checkpoints],
        "architecture": tokenizer_architecture,
        "use_ema": use_ema,
        "version": __version__,
    }
    key = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
    base = Path(cache_dir) if cache_dir is not None else Path(constants.HF_HUB_CACHE) / "detailflow_hf" / "converted"
    target = base / key
    if (target / "model_index.json").is_file() and not force:
        return target
    staging = base / f".{key}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    convert_release(roots[0], roots[1], staging, tokenizer_architecture=tokenizer_architecture, use_ema=use_ema)
    (staging / "conversion.json").write_text(json.dumps(fingerprint, indent=1))
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)
    return target


def load_original(
    tokenizer_source: str | os.PathLike,
    generator_source: str | os.PathLike,
    *,
    tokenizer_architecture: dict | None = None,
    use_ema: bool = True,
    cache_dir: str | os.PathLike | None = None,
    force_conversion: bool = False,
    **kwargs,
):
    """A `DetailFlowPipeline` from an original release (Hub repo ids such as `ByteFlow-AI/DetailFlow-16`
    and `ByteFlow-AI/DetailFlow-16-GPT-L`, or local release folders), converted once and cached.

    The conversion lands in `cache_dir` (default: `<HF_HUB_CACHE>/detailflow_hf/converted/<key>`),
    keyed by the resolved sources, so later calls load the cached folder directly; `kwargs` go to
    `DetailFlowPipeline.from_pretrained` (e.g. `dtype`).
    """
    from ..pipelines.pipeline_detailflow import DetailFlowPipeline

    folder = converted_release_dir(
        tokenizer_source,
        generator_source,
        tokenizer_architecture=tokenizer_architecture,
        use_ema=use_ema,
        cache_dir=cache_dir,
        force=force_conversion,
    )
    return DetailFlowPipeline.from_pretrained(folder, **kwargs)
