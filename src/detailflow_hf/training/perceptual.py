"""LPIPS-style perceptual loss on a VGG feature stack (docs/algorithm.md §6.3).

    x, y in [-1,1] (B,3,H,W)
      -> shift/scale (the LPIPS ScalingLayer) -> VGG stages, readout after each stage's last ReLU
         (VGG16: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3)
      -> unit-normalise each feature over channels (eps 1e-10) -> squared difference
      -> per stage Dropout(0.5) + 1x1 conv (C -> 1, no bias) -> spatial mean -> sum over stages -> (B,)

The VGG is built from a channel list, so tests use tiny random stacks. Real runs load torchvision/timm
VGG16 conv weights and the LPIPS `vgg.pth` linear heads through `load_vgg16_weights` /
`load_lpips_heads`, from explicit files (read with `weights_only=True`) or a timm model id.
Like the original, the module's Dropout follows `train()`/`eval()` and its parameters are frozen.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

# Conv widths per stage of VGG16 (configuration "D"); a 2x2 max-pool precedes every stage but the first.
VGG16_STAGES: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)


class ScalingLayer(nn.Module):
    """`(x - shift) / scale` per channel: LPIPS' map from [-1,1] to VGG's input statistics."""

    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale


class VGGFeatures(nn.Module):
    """VGG convolution stages; `forward` returns each stage's last ReLU output.

    Args:
        stages: conv widths per stage, e.g. `VGG16_STAGES`. Stage `k > 0` starts with a 2x2 max-pool,
            so inputs need a side of at least `2 ** (len(stages) - 1)`.
    """

    def __init__(self, stages=VGG16_STAGES):
        super().__init__()
        if not stages or any(not s for s in stages):
            raise ValueError(f"VGG stages {stages!r} must be a non-empty list of non-empty channel lists.")
        self.stages = nn.ModuleList()
        in_channels = 3
        for index, widths in enumerate(stages):
            layers: list[nn.Module] = [nn.MaxPool2d(2, 2)] if index else []
            for width in widths:
                layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU()]
                in_channels = width
            self.stages.append(nn.Sequential(*layers))

    @property
    def channels(self) -> list[int]:
        return [stage[-2].out_channels for stage in self.stages]

    def convs(self) -> list[nn.Conv2d]:
        return [m for m in self.modules() if isinstance(m, nn.Conv2d)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B,3,H,W) -> [(B,C_k,H/2^k,W/2^k) for each stage k]."""
        min_side = 2 ** (len(self.stages) - 1)
        if min(x.shape[-2:]) < min_side:
            raise ValueError(
                f"images of size {tuple(x.shape[-2:])} are too small for {len(self.stages)} VGG stages; "
                f"the side must be at least {min_side}."
            )
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class LinearHead(nn.Sequential):
    """LPIPS `NetLinLayer`: Dropout(0.5) then a 1x1 conv to one channel without bias."""

    def __init__(self, channels: int, dropout: float = 0.5):
        super().__init__(nn.Dropout(dropout), nn.Conv2d(channels, 1, 1, bias=False))


def normalize_channels(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Divide `(B,C,H,W)` by its per-position l2 norm over channels (+eps), as LPIPS."""
    return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class PerceptualLoss(nn.Module):
    """LPIPS distance `(B,)` between two image batches in [-1,1]; frozen, heads initialised to 1/C.

    Args:
        stages: VGG conv widths per stage (`VGG16_STAGES` for the real loss).
    """

    def __init__(self, stages=VGG16_STAGES):
        super().__init__()
        self.scaling = ScalingLayer()
        self.net = VGGFeatures(stages)
        self.heads = nn.ModuleList(LinearHead(c) for c in self.net.channels)
        with torch.no_grad():
            for head, channels in zip(self.heads, self.net.channels):
                head[1].weight.fill_(1.0 / channels)  # a plain mean over channels until LPIPS heads load
        self.requires_grad_(False)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """input, target `(B,3,H,W)` -> per-image distance `(B,)`; gradients flow to the images."""
        if input.shape != target.shape:
            raise ValueError(f"input {tuple(input.shape)} and target {tuple(target.shape)} must have the same shape.")
        feats_in = self.net(self.scaling(input))
        feats_tg = self.net(self.scaling(target))
        total = 0.0
        for head, f_in, f_tg in zip(self.heads, feats_in, feats_tg):
            diff = (normalize_channels(f_in) - normalize_channels(f_tg)).pow(2)
            total = total + head(diff).mean(dim=(1, 2, 3))
        return total

    # -- pretrained weights (real runs only; never in tests) ---------------------------------------
    def load_vgg16_weights(self, source: str | Path) -> None:
        """Copy VGG16 conv weights into `net`, in order.

        `source`: a local `.safetensors`/`.pth`/`.pt` state dict with torchvision's `features.<i>.weight`
        / `.bias` keys (read with `weights_only=True`), or a timm model id such as `"vgg16.tv_in1k"`
        (needs timm, imported here only).
        """
        state = _load_state_dict(source)
        indices = sorted({int(k.split(".")[1]) for k in state if k.startswith("features.") and k.endswith(".weight")})
        convs = self.net.convs()
        if len(indices) < len(convs):
            raise ValueError(f"{source} has {len(indices)} feature convs; this VGG needs {len(convs)}.")
        with torch.no_grad():
            for conv, index in zip(convs, indices):
                weight, bias = state[f"features.{index}.weight"], state[f"features.{index}.bias"]
                if weight.shape != conv.weight.shape:
                    raise ValueError(
                        f"features.{index}.weight of {source} has shape {tuple(weight.shape)}, "
                        f"expected {tuple(conv.weight.shape)}."
                    )
                conv.weight.copy_(weight)
                conv.bias.copy_(bias)

    def load_lpips_heads(self, path: str | Path) -> None:
        """Load the LPIPS linear heads (`lin<k>.model.1.weight`, the `vgg.pth` of the LPIPS release)."""
        state = _load_state_dict(path)
        with torch.no_grad():
            for k, head in enumerate(self.heads):
                key = f"lin{k}.model.1.weight"
                if key not in state:
                    raise ValueError(f"{path} lacks {key}; expected the LPIPS v0.1 VGG linear weights.")
                head[1].weight.copy_(state[key].reshape(head[1].weight.shape))


# The released presets' defaults: LPIPS v0.1 VGG heads as torchmetrics ships them in its wheel, and an
# ImageNet VGG16 backbone by timm/Hub id.
LPIPS_HEADS_FROM_TORCHMETRICS = "torchmetrics"
VGG16_TIMM_ID = "timm/vgg16.tv_in1k"


def torchmetrics_lpips_heads() -> Path:
    """The `vgg.pth` LPIPS heads inside the installed torchmetrics (a clear error without it)."""
    import importlib.util

    spec = importlib.util.find_spec("torchmetrics")
    if spec is None or spec.origin is None:
        raise ValueError(
            "the LPIPS heads default to the copy torchmetrics ships: pip install 'detailflow-hf[eval]' "
            "(torchmetrics), or set perceptual_lpips_weights to a vgg.pth file."
        )
    path = Path(spec.origin).parent / "functional" / "image" / "lpips_models" / "vgg.pth"
    if not path.is_file():
        raise ValueError(
            f"this torchmetrics has no LPIPS heads at {path}; set perceptual_lpips_weights to a vgg.pth file."
        )
    return path


def _load_state_dict(source: str | Path) -> dict[str, torch.Tensor]:
    if str(source) == LPIPS_HEADS_FROM_TORCHMETRICS:
        source = torchmetrics_lpips_heads()
    path = Path(source)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    if path.suffix in (".pth", ".pt", ".bin"):
        return torch.load(path, map_location="cpu", weights_only=True)
    if path.exists():
        raise ValueError(f"{path}: expected a .safetensors, .pth, .pt or .bin file.")
    try:
        import timm
    except ImportError as error:
        raise ValueError(
            f"{source!r} is not a local weights file, and loading it as a timm model id needs timm "
            "(pip install timm, with a working torchvision)."
        ) from error
    try:
        return timm.create_model(str(source), pretrained=True).state_dict()
    except Exception as error:  # offline, gated, unknown id: one message naming it
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"cannot load the perceptual network {source!r} ({reason}); download it once online, or set "
            "perceptual_vgg_weights to a local weights file."
        ) from None
