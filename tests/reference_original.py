"""An independent, deliberately plain re-statement of the original DetailFlow forward passes.

Written from SPEC.md against the *original* state-dict layout (fused `wqkv`, interleaved complex
RoPE, explicit masks, manual attention), so that tests can check our converted models on random
checkpoints of any shape, not only on the one fixture. Also writes random release folders.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml


# -- generator (LlamaGen style) ---------------------------------------------------------------------
def original_gpt_state(dim, n_layer, n_head, n_kv, vocab, num_classes, group, hidden, seed=0):
    g = torch.Generator().manual_seed(seed)
    hd = dim // n_head

    def rnd(*shape, scale=0.3):
        return torch.randn(*shape, generator=g) * scale

    state = {
        "cls_embedding.embedding_table.weight": rnd(num_classes + 1, dim),
        "tok_embeddings.weight": rnd(vocab, dim),
        "spe_tok_embeddings.special_embeddings.weight": rnd(group - 1, dim),
        "norm.weight": 1 + rnd(dim, scale=0.1),
        "output.weight": rnd(vocab, dim),
    }
    for i in range(n_layer):
        p = f"layers.{i}."
        state[p + "attention.wqkv.weight"] = rnd((n_head + 2 * n_kv) * hd, dim, scale=dim**-0.5)
        state[p + "attention.wo.weight"] = rnd(dim, n_head * hd, scale=dim**-0.5)
        state[p + "feed_forward.w1.weight"] = rnd(hidden, dim, scale=dim**-0.5)
        state[p + "feed_forward.w3.weight"] = rnd(hidden, dim, scale=dim**-0.5)
        state[p + "feed_forward.w2.weight"] = rnd(dim, hidden, scale=hidden**-0.5)
        state[p + "attention_norm.weight"] = 1 + rnd(dim, scale=0.1)
        state[p + "ffn_norm.weight"] = 1 + rnd(dim, scale=0.1)
    return state


def _freqs_cis(block_size, group, hd, base):
    half = hd // 2
    freqs = 1.0 / (base ** (torch.arange(0, half, 2)[: half // 2].float() / half))
    rows, cols = block_size // group, group
    fr = torch.outer(torch.arange(rows), freqs)
    fc = torch.outer(torch.arange(cols), freqs)
    grid = torch.cat([fr[:, None, :].expand(-1, cols, -1), fc[None, :, :].expand(rows, -1, -1)], dim=-1)
    cache = torch.stack([grid.cos(), grid.sin()], dim=-1).flatten(0, 1)
    return torch.cat([torch.zeros(1, half, 2), cache])  # class token: zeros


def _rope(x, fc):
    # x (B, S, H, hd): adjacent pairs rotated
    xs = x.float().reshape(*x.shape[:-1], -1, 2)
    fc = fc.view(1, xs.shape[1], 1, xs.shape[3], 2)
    out = torch.stack(
        [xs[..., 0] * fc[..., 0] - xs[..., 1] * fc[..., 1], xs[..., 1] * fc[..., 0] + xs[..., 0] * fc[..., 1]], dim=-1
    )
    return out.flatten(3).type_as(x)


def _rms(x, w, eps):
    return (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * w


def original_gpt_logits(state, cfg, codes, labels):
    """cfg: dict(dim, n_head, n_kv, group, causal, block_size, base, eps)."""
    dim, n_head, n_kv = cfg["dim"], cfg["n_head"], cfg["n_kv"]
    g, c, eps = cfg["group"], cfg["causal"], cfg["eps"]
    hd = dim // n_head
    x = state["tok_embeddings.weight"][codes]
    cls = state["cls_embedding.embedding_table.weight"][labels][:, None]
    if codes.shape[1] >= c:
        spe = state["spe_tok_embeddings.special_embeddings.weight"][None].expand(codes.shape[0], -1, -1)
        h = torch.cat([cls, x[:, :c], spe, x[:, c:]], dim=1)
    else:
        h = torch.cat([cls, x], dim=1)
    s = h.shape[1]
    size = cfg["block_size"] + 1
    full = torch.zeros(size, size, dtype=torch.bool)
    for i in range(size):
        for j in range(size):
            full[i, j] = (j <= i) if i < c else (j // g <= i // g)
    mask = full[:s, :s]
    fc = _freqs_cis(cfg["block_size"], g, hd, cfg["base"])[:s]
    n_layer = len({k.split(".")[1] for k in state if k.startswith("layers.")})
    for i in range(n_layer):
        p = f"layers.{i}."
        a = _rms(h, state[p + "attention_norm.weight"], eps)
        qkv = a @ state[p + "attention.wqkv.weight"].T
        q, k, v = qkv.split([n_head * hd, n_kv * hd, n_kv * hd], dim=-1)
        q = _rope(q.view(*q.shape[:2], n_head, hd), fc)
        k = _rope(k.view(*k.shape[:2], n_kv, hd), fc)
        v = v.view(*v.shape[:2], n_kv, hd)
        k = k.repeat_interleave(n_head // n_kv, dim=2)
        v = v.repeat_interleave(n_head // n_kv, dim=2)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * hd**-0.5
        scores = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        o = torch.einsum("bhqk,bkhd->bqhd", scores, v).reshape(*h.shape[:2], -1)
        h = h + o @ state[p + "attention.wo.weight"].T
        f = _rms(h, state[p + "ffn_norm.weight"], eps)
        ff = F.silu(f @ state[p + "feed_forward.w1.weight"].T) * (f @ state[p + "feed_forward.w3.weight"].T)
        h = h + ff @ state[p + "feed_forward.w2.weight"].T
    return (_rms(h, state["norm.weight"], eps) @ state["output.weight"].T).float()


# -- tokenizer ---------------------------------------------------------------------------------------
def original_tokenizer_state(enc, dec, num_tokens, vocab, embed_dim, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.3):
        return torch.randn(*shape, generator=g) * scale

    def tower(prefix, spec, with_patch):
        d, m, p = spec["hidden_size"], spec["intermediate_size"], spec["patch_size"]
        out = {prefix + "embeddings.position_embedding.weight": rnd(spec["num_patches"], d)}
        if with_patch:
            out[prefix + "embeddings.patch_embedding.weight"] = rnd(d, 3 * p * p, scale=(3 * p * p) ** -0.5)
            out[prefix + "embeddings.patch_embedding.bias"] = rnd(d, scale=0.1)
        for i in range(spec["num_hidden_layers"]):
            lp = f"{prefix}encoder.layers.{i}."
            for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
                out[lp + f"self_attn.{name}.weight"] = rnd(d, d, scale=d**-0.5)
                out[lp + f"self_attn.{name}.bias"] = rnd(d, scale=0.1)
            out[lp + "mlp.fc1.weight"], out[lp + "mlp.fc1.bias"] = rnd(m, d, scale=d**-0.5), rnd(m, scale=0.1)
            out[lp + "mlp.fc2.weight"], out[lp + "mlp.fc2.bias"] = rnd(d, m, scale=m**-0.5), rnd(d, scale=0.1)
            for ln in ("layer_norm1", "layer_norm2"):
                out[lp + f"{ln}.weight"], out[lp + f"{ln}.bias"] = 1 + rnd(d, scale=0.1), rnd(d, scale=0.1)
        out[prefix + "post_layernorm.weight"], out[prefix + "post_layernorm.bias"] = (
            1 + rnd(d, scale=0.1),
            rnd(d, scale=0.1),
        )
        return out

    de, dd, p = enc["hidden_size"], dec["hidden_size"], dec["patch_size"]
    state = {}
    state.update(tower("encoder.visual_model.", enc, True))
    state.update(tower("decoder.visual_model.", dec, False))
    state.update(tower("repa_model.visual_model.", enc, True))
    state.update(
        {
            "encoder.latent_tokens": rnd(1, num_tokens, de),
            "encoder.latent_pos_embed": rnd(1, num_tokens, de),
            "encoder.refined_tokens": rnd(1, num_tokens, de),
            "decoder.mask_token": rnd(1, 1, dd),
            "decoder.latent_pos_embed": rnd(1, num_tokens, dd),
            "decoder.to_pixel.model.weight": rnd(3 * p * p, dd, scale=dd**-0.5),
            "decoder.to_pixel.model.bias": rnd(3 * p * p, scale=0.1),
            "quant_conv.weight": rnd(embed_dim, de, scale=de**-0.5),
            "quant_conv.bias": rnd(embed_dim, scale=0.1),
            "post_quant_conv.weight": rnd(dd, embed_dim),
            "post_quant_conv.bias": rnd(dd, scale=0.1),
            "refine_conv.weight": rnd(de, embed_dim),
            "refine_conv.bias": rnd(de, scale=0.1),
            "quantize.embedding.weight": rnd(vocab, embed_dim),
            "quantize.codebook_used": torch.zeros(65536),
            "global_token_proj.0.weight": rnd(16, embed_dim),
            "global_token_proj.0.bias": rnd(16),
        }
    )
    return state


def _resize_table(table, h, w):
    s = int(math.isqrt(table.shape[0]))
    grid = table.T.reshape(1, -1, s, s)
    grid = F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return grid.reshape(table.shape[1], h * w).T


def _tower(state, prefix, spec, h, additive_mask):
    heads = spec["num_attention_heads"]
    d = h.shape[-1]
    hd = d // heads
    for i in range(spec["num_hidden_layers"]):
        lp = f"{prefix}encoder.layers.{i}."

        def lin(x, name, lp=lp):
            return x @ state[lp + name + ".weight"].T + state[lp + name + ".bias"]

        a = F.layer_norm(
            h, (d,), state[lp + "layer_norm1.weight"], state[lp + "layer_norm1.bias"], spec["layer_norm_eps"]
        )
        q, k, v = (
            lin(a, f"self_attn.{n}").view(*a.shape[:2], heads, hd).transpose(1, 2)
            for n in ("q_proj", "k_proj", "v_proj")
        )
        scores = q @ k.transpose(-1, -2) * hd**-0.5
        if additive_mask is not None:
            scores = scores + additive_mask
        o = (scores.softmax(-1) @ v).transpose(1, 2).reshape(*a.shape)
        h = h + lin(o, "self_attn.out_proj")
        m = F.layer_norm(
            h, (d,), state[lp + "layer_norm2.weight"], state[lp + "layer_norm2.bias"], spec["layer_norm_eps"]
        )
        h = h + lin(F.gelu(lin(m, "mlp.fc1"), approximate="tanh"), "mlp.fc2")
    return F.layer_norm(
        h, (d,), state[prefix + "post_layernorm.weight"], state[prefix + "post_layernorm.bias"], spec["layer_norm_eps"]
    )


def original_encode(state, enc, group, causal, images):
    """-> (quant (B,N,d), ids (B,N))."""
    b, _, hgt, wid = images.shape
    p = enc["patch_size"]
    gh, gw = hgt // p, wid // p
    patches = images.reshape(b, 3, gh, p, gw, p).permute(0, 2, 4, 3, 5, 1).reshape(b, gh * gw, -1)
    pre = "encoder.visual_model."
    x = patches @ state[pre + "embeddings.patch_embedding.weight"].T + state[pre + "embeddings.patch_embedding.bias"]
    x = x + _resize_table(state[pre + "embeddings.position_embedding.weight"], gh, gw)
    z = (state["encoder.latent_tokens"] + state["encoder.latent_pos_embed"]).expand(b, -1, -1)
    n, t = x.shape[1], z.shape[1]
    allowed = torch.ones(n + t, n + t, dtype=torch.bool)
    allowed[:n, n:] = False
    for a in range(t):
        for bb in range(t):
            allowed[n + a, n + bb] = (bb <= a) if a < causal else (bb // group <= a // group)
    mask = torch.zeros(n + t, n + t).masked_fill(~allowed, torch.finfo(torch.float32).min)
    out = _tower(state, pre, enc, torch.cat([x, z], dim=1), mask)[:, n:]
    lat = F.normalize(out @ state["quant_conv.weight"].T + state["quant_conv.bias"], dim=-1)
    book = F.normalize(state["quantize.embedding.weight"], dim=-1)
    ids = torch.cdist(lat.reshape(-1, lat.shape[-1]), book).argmin(-1).reshape(b, t)
    return book[ids], ids


def original_decode(state, dec, quant, t, resolution):
    p = dec["patch_size"]
    gh = resolution // p
    pre = "decoder.visual_model."
    z = quant[:, :t] @ state["post_quant_conv.weight"].T + state["post_quant_conv.bias"]
    z = z + state["decoder.latent_pos_embed"][:, :t]
    queries = (
        state["decoder.mask_token"] + _resize_table(state[pre + "embeddings.position_embedding.weight"], gh, gh)[None]
    )
    h = torch.cat([queries.expand(z.shape[0], -1, -1), z], dim=1)
    out = _tower(state, pre, dec, h, None)[:, : gh * gh]
    pix = out @ state["decoder.to_pixel.model.weight"].T + state["decoder.to_pixel.model.bias"]
    b = pix.shape[0]
    return pix.reshape(b, gh, gh, p, p, 3).permute(0, 5, 1, 3, 2, 4).reshape(b, 3, gh * p, gh * p)


# -- release folders ---------------------------------------------------------------------------------
def write_release(root: Path, state: dict, config: dict, yaml_config: dict, ema: dict | None = None, step: int = 100):
    """Lay out `root` as the release does: config.json, config.yaml, checkpoints/<step>.pt."""
    (root / "checkpoints").mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(config, indent=1))
    (root / "config.yaml").write_text(yaml.safe_dump(yaml_config))
    checkpoint = {"model": state, "steps": step, "args": argparse.Namespace(**yaml_config)}
    if ema is not None:
        checkpoint["ema"] = ema
    torch.save(checkpoint, root / "checkpoints" / f"{step:07d}.pt")
    return root
