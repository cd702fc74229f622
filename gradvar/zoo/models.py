"""Reference models: the paper's MLP-L, a small CNN, tiny ViT/ConvNeXt and a text transformer.

Every model is small, built only from layers the per-example gradient engine handles
(Linear, Conv2d, LayerNorm, Embedding, optional BatchNorm), and is deterministic given a seed
(``build_model(name, seed=...)``). Parameter names are stable and readable ("fc1.weight",
"blocks.0.attn.qkv.weight") because they become the ``layer`` column of the records.
"""

from __future__ import annotations

import inspect
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import torch
from torch import nn

from gradvar._utils import check_positive, seeded
from gradvar.errors import InvalidArgumentError
from gradvar.zoo.specs import is_callable_spec, resolve_callable

__all__ = [
    "mlp_widths",
    "mlp",
    "small_cnn",
    "tiny_vit",
    "tiny_convnext",
    "tiny_transformer",
    "MODELS",
    "build_model",
    "model_from_spec",
]


def mlp_widths(depth: int, in_features: int, num_classes: int) -> list[int]:
    """Layer widths of the reference MLP-L: ``[D, h_1, ..., h_{L-1}, C]``.

    Hidden widths shrink geometrically with ratio ``r = (C / D) ** (1 / L)``; each width is
    ``int(r * previous)`` (truncation, applied to the previous *rounded* width), which is the
    reference code's rule and gives 3072-733-175-41-10 for MLP-4 on CIFAR-10.
    """
    check_positive("depth", depth)
    check_positive("in_features", in_features)
    check_positive("num_classes", num_classes)
    ratio = (num_classes / in_features) ** (1 / depth)
    widths = [in_features]
    for _ in range(depth - 1):
        widths.append(max(1, int(ratio * widths[-1])))
    return widths + [num_classes]


def mlp(
    depth: int,
    in_features: int,
    num_classes: int,
    hidden: int | Sequence[int] | None = None,
    dropout: float = 0.0,
) -> nn.Sequential:
    """MLP-L: Flatten, (L-1) x [Linear -> ReLU (-> Dropout)], Linear to classes.

    ``hidden=None`` uses the reference geometric widths (:func:`mlp_widths`); an int gives
    every hidden layer that width; a sequence gives the L-1 widths explicitly. ``depth=1`` is
    multinomial logistic regression. Layers are named ``fc1 .. fcL`` whatever ``dropout`` is,
    so checkpoints load across dropout settings.
    """
    if hidden is None:
        widths = mlp_widths(depth, in_features, num_classes)
    else:
        check_positive("depth", depth)
        inner = [hidden] * (depth - 1) if isinstance(hidden, int) else list(hidden)
        if len(inner) != depth - 1:
            raise InvalidArgumentError(
                f"MLP of depth={depth} needs {depth - 1} hidden widths, got hidden={hidden!r}"
            )
        widths = [in_features, *inner, num_classes]
    if not 0.0 <= dropout < 1.0:
        raise InvalidArgumentError(f"dropout must be in [0, 1), got dropout={dropout!r}")
    layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:]), start=1):
        layers[f"fc{i}"] = nn.Linear(fan_in, fan_out)
        if i < depth:
            layers[f"relu{i}"] = nn.ReLU()
            if dropout > 0:
                layers[f"drop{i}"] = nn.Dropout(dropout)
    return nn.Sequential(layers)


def small_cnn(
    in_channels: int,
    num_classes: int,
    image_size: int,
    width: int = 16,
    batch_norm: bool = False,
) -> nn.Sequential:
    """Two 3x3 conv blocks (conv [-> BatchNorm] -> ReLU -> 2x2 max-pool) and a Linear head."""
    check_positive("image_size", image_size)
    if image_size < 4:
        raise InvalidArgumentError(
            f"small_cnn pools twice, so image_size must be >= 4, got {image_size}"
        )
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    channels = [in_channels, width, 2 * width]
    for i in (1, 2):
        layers[f"conv{i}"] = nn.Conv2d(channels[i - 1], channels[i], 3, padding=1)
        if batch_norm:
            layers[f"bn{i}"] = nn.BatchNorm2d(channels[i])
        layers[f"relu{i}"] = nn.ReLU()
        layers[f"pool{i}"] = nn.MaxPool2d(2)
    side = image_size // 4
    layers["flatten"] = nn.Flatten()
    layers["head"] = nn.Linear(2 * width * side * side, num_classes)
    return nn.Sequential(layers)


class Attention(nn.Module):
    """Multi-head self-attention written out (qkv Linear, softmax(QK^T/sqrt(d))V, out Linear).

    Hand-written rather than nn.MultiheadAttention so torch.func transforms and the
    sequence-Linear closed forms see plain Linear layers.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise InvalidArgumentError(f"dim={dim} must be divisible by heads={heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // self.heads), dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(b, t, d)  # [B, T, D]
        return self.proj(out)


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 2) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            OrderedDict(
                fc1=nn.Linear(dim, mlp_ratio * dim),
                act=nn.GELU(),
                fc2=nn.Linear(mlp_ratio * dim, dim),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """Patch embedding (strided conv), learned positions, ``depth`` blocks, mean-pool, head."""

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        in_channels: int,
        num_classes: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: int,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise InvalidArgumentError(
                f"image_size={image_size} must be a multiple of patch_size={patch_size}"
            )
        self.patch = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.pos = nn.Parameter(torch.randn(1, (image_size // patch_size) ** 2, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def no_weight_decay(self) -> set[str]:
        """Parameters the official recipe keeps out of weight decay besides 1-D ones (timm's)."""
        return {"pos"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2) + self.pos  # [B, T, D]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(dim=1))


class TinyTransformer(nn.Module):
    """Token + position embeddings, ``depth`` blocks, LayerNorm, mean-pool, Linear to classes."""

    def __init__(
        self,
        vocab: int,
        seq_len: int,
        dim: int,
        classes: int,
        depth: int,
        heads: int,
        mlp_ratio: int,
    ) -> None:
        super().__init__()
        self.seq_len = seq_len
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(seq_len, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[-1], device=tokens.device)
        x = self.embed(tokens) + self.pos(positions)  # [B, T, D]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(dim=1))


def tiny_vit(
    image_size: int = 28,
    patch_size: int = 7,
    in_channels: int = 1,
    num_classes: int = 10,
    dim: int = 64,
    depth: int = 2,
    heads: int = 4,
    mlp_ratio: int = 2,
) -> TinyViT:
    """A tiny ViT: (image_size/patch_size)^2 tokens of width ``dim``, ``depth`` blocks."""
    return TinyViT(image_size, patch_size, in_channels, num_classes, dim, depth, heads, mlp_ratio)


def tiny_transformer(
    vocab: int,
    seq_len: int,
    dim: int,
    classes: int,
    depth: int = 1,
    heads: int = 4,
    mlp_ratio: int = 2,
) -> TinyTransformer:
    """A tiny sequence classifier over int64 token ids of shape [B, seq_len]."""
    return TinyTransformer(vocab, seq_len, dim, classes, depth, heads, mlp_ratio)


from gradvar.zoo.convnext import tiny_convnext  # noqa: E402  (a model file of its own)

MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp1": partial(mlp, 1),
    "mlp2": partial(mlp, 2),
    "mlp4": partial(mlp, 4),
    "cnn": small_cnn,
    "vit": tiny_vit,
    "convnext": tiny_convnext,
    "transformer": tiny_transformer,
}


def build_model(name: str, *, seed: int | None = None, **kwargs: Any) -> nn.Module:
    """Build a registry model (``MODELS``) or a ``"module:factory"`` one with ``kwargs``.

    With ``seed`` the initialisation is reproducible and the caller's global RNG states are
    left untouched. Arguments are checked against the factory's signature first, so a typo
    names the argument and shows the signature instead of failing deep inside the factory.
    """
    if name in MODELS:
        factory = MODELS[name]
    elif is_callable_spec(name):
        factory = resolve_callable(name)
    else:
        raise InvalidArgumentError(
            f"unknown model {name!r}; choose one of {sorted(MODELS)} or give 'module:factory'"
        )
    try:
        signature: inspect.Signature | None = inspect.signature(factory)
    except ValueError:  # builtins without a signature: the call itself checks
        signature = None
    if signature is not None:
        try:
            signature.bind(**kwargs)
        except TypeError as exc:
            raise InvalidArgumentError(
                f"model {name!r} takes {signature}: {exc}; got {kwargs!r}"
            ) from exc
    if seed is None:
        return factory(**kwargs)
    with seeded(seed):
        return factory(**kwargs)


def model_from_spec(spec: Mapping[str, Any]) -> nn.Module:
    """Build from a run.json model spec: ``{"name": ..., "kwargs": {...}, "seed": ...}``."""
    if "name" not in spec:
        raise InvalidArgumentError(
            "model spec needs a 'name' key, e.g. {'name': 'mlp4', 'kwargs': {...}}; "
            f"got {dict(spec)!r}"
        )
    return build_model(spec["name"], seed=spec.get("seed"), **dict(spec.get("kwargs", {})))
