"""A small ConvNeXt (Liu et al., 2022), the family of the paper's ConvNeXt-F, scaled to 28×28.

Stem: a ``stem``×``stem`` conv with stride ``stem`` and a channel LayerNorm. Each stage but the
first starts with LayerNorm + 2×2 stride-2 conv; each block is the ConvNeXt block

    x + γ ⊙ Linear(GELU(Linear(LN(dwconv7×7(x)))))   (pointwise layers on channels-last),

with layer scale γ initialised to ``layer_scale``. Head: global mean pool, LayerNorm, Linear.
No stochastic depth (the paper's small-data runs use none by default). Parameter names are
``stem.conv.weight``, ``stages.1.blocks.0.dwconv.weight``, ``head.weight``...
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from gradvar._utils import check_positive
from gradvar.errors import InvalidArgumentError

__all__ = ["ConvNeXtBlock", "TinyConvNeXt", "tiny_convnext"]


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channel axis of ``[B, C, H, W]`` (ConvNeXt's "channels_first" LN)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """dwconv 7×7 → LN → Linear(C, 4C) → GELU → Linear(4C, C) → ×γ, plus the residual."""

    def __init__(self, dim: int, mlp_ratio: int = 4, layer_scale: float = 1e-6) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_ratio * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(mlp_ratio * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)  # [B, H, W, C]
        y = self.fc2(self.act(self.fc1(self.norm(y)))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


class Stage(nn.Module):
    """Optional downsampling (LN + 2×2 stride-2 conv) followed by ``depth`` blocks."""

    def __init__(self, in_dim: int, dim: int, depth: int, downsample: bool, layer_scale: float):
        super().__init__()
        self.down = (
            nn.Sequential(ChannelNorm(in_dim), nn.Conv2d(in_dim, dim, 2, stride=2))
            if downsample
            else nn.Identity()
        )
        self.blocks = nn.Sequential(
            *(ConvNeXtBlock(dim, layer_scale=layer_scale) for _ in range(depth))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.down(x))


class TinyConvNeXt(nn.Module):
    """Stem, stages of ConvNeXt blocks (halving the side between stages), pooled LN head."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        dims: Sequence[int],
        depths: Sequence[int],
        stem: int,
        layer_scale: float,
    ) -> None:
        super().__init__()
        if len(dims) != len(depths) or not dims:
            raise InvalidArgumentError(
                f"dims and depths need one entry per stage, got dims={list(dims)}, "
                f"depths={list(depths)}"
            )
        for name, values in (("dims", dims), ("depths", depths)):
            for v in values:
                check_positive(name, v)
        check_positive("stem", stem)
        self.stem = nn.Sequential()
        self.stem.add_module("conv", nn.Conv2d(in_channels, dims[0], stem, stride=stem))
        self.stem.add_module("norm", ChannelNorm(dims[0]))
        self.stages = nn.ModuleList(
            Stage(dims[max(i - 1, 0)], dim, depth, i > 0, layer_scale)
            for i, (dim, depth) in enumerate(zip(dims, depths))
        )
        self.norm = nn.LayerNorm(dims[-1])
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # [B, dims[0], H/stem, W/stem]
        for stage in self.stages:
            x = stage(x)
        return self.head(self.norm(x.mean(dim=(2, 3))))  # [B, classes]


def tiny_convnext(
    in_channels: int = 1,
    num_classes: int = 10,
    dims: Sequence[int] = (32, 64, 128),
    depths: Sequence[int] = (2, 2, 2),
    stem: int = 2,
    layer_scale: float = 1e-6,
    image_size: int | None = None,
) -> TinyConvNeXt:
    """A ConvNeXt for small images: 28×28 → 14 → 7 → 3 with the defaults (≈ 0.45 M params).

    ``image_size``, if given, is checked: each stage after the first halves the side, so the
    stem's output side must be at least ``2 ** (len(dims) - 1)``.
    """
    if image_size is not None and image_size // stem < 2 ** (len(dims) - 1):
        raise InvalidArgumentError(
            f"image_size={image_size} with stem={stem} is too small for {len(dims)} stages; "
            "use fewer stages or a smaller stem"
        )
    return TinyConvNeXt(in_channels, num_classes, dims, depths, stem, layer_scale)
