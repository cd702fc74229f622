"""Small float64 models covering the layer kinds the probe must handle."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class TinyTransformer(nn.Module):
    """Embedding → LayerNorm → self-attention → sequence Linear → mean-pool → classifier."""

    def __init__(self, vocab: int = 11, dim: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.proj = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, tokens: Tensor) -> Tensor:
        h = self.norm(self.embed(tokens))  # [n, T, dim]
        h = h + self.attn(h, h, h, need_weights=False)[0]
        h = torch.tanh(self.proj(h))  # sequence Linear: 3-D input → vmap path
        return self.head(h.mean(1))


def make(name: str, seed: int = 0) -> tuple[nn.Module, Tensor, Tensor]:
    """(model, inputs, targets) for architecture ``name``, float64, deterministic."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    n = 24
    if name == "mlp":
        model = nn.Sequential(
            nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5), nn.Tanh(), nn.Linear(5, 3)
        )
        x = torch.randn(n, 6, generator=gen)
    elif name == "cnn":
        model = nn.Sequential(
            nn.Conv2d(1, 3, 3),
            nn.ReLU(),
            nn.Conv2d(3, 2, 3, stride=2),
            nn.Tanh(),
            nn.Flatten(),
            nn.Linear(8, 3),
        )
        x = torch.randn(n, 1, 7, 7, generator=gen)
    elif name == "transformer":
        model = TinyTransformer()
        x = torch.randint(0, 11, (n, 5), generator=gen)
    elif name == "dropout":
        model = nn.Sequential(
            nn.Linear(6, 10),
            nn.ReLU(),
            nn.Dropout(0.3),
            nn.Linear(10, 6),
            nn.Tanh(),
            nn.Dropout(0.2),
            nn.Linear(6, 3),
        )
        x = torch.randn(n, 6, generator=gen)
    elif name == "batchnorm":
        model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
        x = torch.randn(n, 6, generator=gen)
        with torch.no_grad():  # non-trivial running statistics
            model.train()
            for _ in range(3):
                model(torch.randn(16, 6, generator=gen) * 2 + 1)
    else:
        raise KeyError(name)
    y = torch.randint(0, 3, (n,), generator=gen)
    model = model.double()
    if x.is_floating_point():
        x = x.double()
    return model, x, y


def perturbed(model: nn.Module, scale: float = 0.3, seed: int = 1) -> dict[str, Tensor]:
    """A snapshot state: the model's state with every parameter moved by noise."""
    gen = torch.Generator().manual_seed(seed)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for name, _ in model.named_parameters():
        noise = torch.randn(state[name].shape, generator=gen, dtype=state[name].dtype)
        state[name] = state[name] + scale * noise.to(state[name].device)
    canonical = {id(p): name for name, p in model.named_parameters()}
    for key, value in model.state_dict(keep_vars=True).items():  # tied aliases follow
        if id(value) in canonical and key != canonical[id(value)]:
            state[key] = state[canonical[id(value)]]
    return state
