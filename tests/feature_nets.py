"""Small random feature networks standing in for Inception in the offline tests (importable by
`--feature_extractor tests.feature_nets:tiny_extractor` from the repository root)."""

import torch
from torch import nn


class TinyConvFeatures(nn.Module):
    """uint8 `(batch, 3, H, W)` -> `(batch, 16)` pooled features of two random conv layers."""

    num_features = 16

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images.float() / 127.5 - 1)


class TinyExtractor(nn.Module):
    """`TinyConvFeatures` plus a random 10-class head: `{"pool": (batch, 16), "logits": (batch, 10)}`."""

    def __init__(self, seed: int = 0):
        super().__init__()
        self.features = TinyConvFeatures(seed)
        self.head = nn.Linear(16, 10)
        nn.init.normal_(self.head.weight, std=5.0)  # confident enough that the Inception Score moves

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        pool = self.features(images)
        return {"pool": pool, "logits": self.head(pool)}


def tiny_extractor() -> nn.Module:
    return TinyExtractor().eval()
