"""Imitations of the networks users bring (timm ViT, torchvision ResNet, GPT-2, recurrent nets)
and the parameter-tying cases, small and float64, for the per-layer engine's tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ViTStyle(nn.Module):
    """Patch Conv2d, cls_token (expand + cat), pos_embed (+), LayerNorm, SDPA attention with a
    fused qkv Linear on [n, T, d], GELU MLP, layer scale (x * gamma), head on the cls token."""

    def __init__(self, img: int = 8, patch: int = 4, dim: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.patch_embed = nn.Conv2d(1, dim, patch, stride=patch)
        tokens = (img // patch) ** 2 + 1
        self.cls_token = nn.Parameter(0.1 * torch.randn(1, 1, dim))
        self.pos_embed = nn.Parameter(0.1 * torch.randn(1, tokens, dim))
        self.norm1, self.norm2, self.norm = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.gamma = nn.Parameter(0.5 + 0.1 * torch.randn(dim))
        self.head = nn.Linear(dim, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # [n, P, d]
        n, _, d = x.shape
        x = torch.cat([self.cls_token.expand(n, -1, -1), x], dim=1) + self.pos_embed
        t = x.shape[1]
        qkv = self.qkv(self.norm1(x)).reshape(n, t, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, t, d)
        x = x + self.proj(attn)
        x = x + self.fc2(F.gelu(self.fc1(self.norm2(x)))) * self.gamma
        return self.head(self.norm(x)[:, 0])


class BasicBlock(nn.Module):
    """torchvision's residual block: in-place ReLU and ``out += identity`` on hooked outputs."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class ResNetStyle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = BasicBlock(4, 4, 1)
        self.layer2 = BasicBlock(4, 6, 2)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x)))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Conv1D(nn.Module):
    """transformers' GPT-2 ``Conv1D``: y = x @ W + b with W [in, out] (``nf`` outputs)."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(0.2 * torch.randn(nx, nf))
        self.bias = nn.Parameter(0.1 * torch.randn(nf))

    def forward(self, x: Tensor) -> Tensor:
        size_out = x.size()[:-1] + (self.nf,)
        return torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight).view(size_out)


class GPTStyle(nn.Module):
    """wte + wpe (position ids [1, T]: broadcast over the batch), LayerNorm, causal attention
    through Conv1D projections, Conv1D MLP, lm_head tied to wte; per-token logits."""

    def __init__(self, vocab: int = 13, dim: int = 8, positions: int = 6, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.wte, self.wpe = nn.Embedding(vocab, dim), nn.Embedding(positions, dim)
        self.ln_1, self.ln_2, self.ln_f = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.c_attn, self.c_proj = Conv1D(3 * dim, dim), Conv1D(dim, dim)
        self.c_fc, self.c_out = Conv1D(2 * dim, dim), Conv1D(dim, 2 * dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, tokens: Tensor) -> Tensor:
        n, t = tokens.shape
        h = self.wte(tokens) + self.wpe(torch.arange(t, device=tokens.device)[None])
        q, k, v = self.c_attn(self.ln_1(h)).split(h.shape[-1], dim=2)
        split = lambda z: z.reshape(n, t, self.heads, -1).transpose(1, 2)  # noqa: E731
        a = F.scaled_dot_product_attention(split(q), split(k), split(v), is_causal=True)
        h = h + self.c_proj(a.transpose(1, 2).reshape(n, t, -1))
        h = h + self.c_out(F.gelu(self.c_fc(self.ln_2(h))))
        return self.lm_head(self.ln_f(h))  # [n, T, vocab]


def token_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean next-token cross-entropy over the tokens (the loss axis of an LM)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


class Recurrent(nn.Module):
    """GRU/LSTM/RNN classifier on the last output, default hx=None."""

    def __init__(self, kind: str, bidirectional: bool = False, layers: int = 1) -> None:
        super().__init__()
        cls = {"gru": nn.GRU, "lstm": nn.LSTM, "rnn": nn.RNN}[kind]
        self.rnn = cls(3, 5, num_layers=layers, batch_first=True, bidirectional=bidirectional)
        self.head = nn.Linear(5 * (2 if bidirectional else 1), 3)

    def forward(self, x: Tensor) -> Tensor:
        out = self.rnn(x)[0]
        return self.head(out[:, -1])


class LinearTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.lin(torch.tanh(self.lin(x))))


class SharedWeight(nn.Module):
    """One weight owned by two Linears (with their own biases)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 6)
        self.b.weight = self.a.weight
        self.head = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.tanh(self.b(torch.relu(self.a(x)))))


class ConvGroupNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 4, 3, padding=1)
        self.gn = nn.GroupNorm(2, 4)
        self.conv2 = nn.Conv1d(4, 4, 3, stride=2, groups=2, padding_mode="reflect", padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv2(torch.relu(self.gn(self.conv(x))))
        return self.head(h.mean(2))


def make_modern(name: str, seed: int = 0, n: int = 12) -> tuple[nn.Module, Tensor, Tensor]:
    """(model, inputs, targets) for architecture ``name``, float64, deterministic."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=gen)
    if name == "vit":
        model, x = ViTStyle(), torch.randn(n, 1, 8, 8, generator=gen)
    elif name == "resnet":
        model, x = ResNetStyle(), torch.randn(n, 2, 6, 6, generator=gen)
        with torch.no_grad():  # non-trivial running statistics, then frozen (policy 'eval')
            model.train()
            for _ in range(3):
                model(torch.randn(8, 2, 6, 6, generator=gen) * 2 + 1)
    elif name == "gpt":
        model = GPTStyle()
        x = torch.randint(0, 13, (n, 6), generator=gen)
        y = torch.randint(0, 13, (n, 6), generator=gen)
    elif name in ("gru", "lstm", "rnn"):
        model, x = Recurrent(name), torch.randn(n, 4, 3, generator=gen)
    elif name == "lstm_bi2":
        model, x = Recurrent("lstm", True, 2), torch.randn(n, 4, 3, generator=gen)
    elif name == "linear_twice":
        model, x = LinearTwice(), torch.randn(n, 6, generator=gen)
    elif name == "shared_weight":
        model, x = SharedWeight(), torch.randn(n, 6, generator=gen)
    elif name == "conv_groupnorm":
        model, x = ConvGroupNorm(), torch.randn(n, 2, 7, generator=gen)
    elif name == "frozen":
        model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
        model[0].requires_grad_(False)
        x = torch.randn(n, 6, generator=gen)
    else:
        raise KeyError(name)
    model = model.double()
    return model, (x.double() if x.is_floating_point() else x), y
