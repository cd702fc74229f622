"""The per-layer engine on transformers' own GPT-2 (built from a config, nothing downloaded):
Conv1D projections, tied wte/lm_head, position ids broadcast over the batch, per-token loss."""

from __future__ import annotations

import math

import pytest
import reference
import torch
import torch.nn.functional as F
from architectures import perturbed
from torch import Tensor, nn

from gradvar import Probe


class Logits(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: Tensor) -> Tensor:
        return self.model(tokens, use_cache=False).logits


def token_loss(logits: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def tiny_gpt2(n: int = 6, seq: int = 8):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=37, n_positions=seq,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=0, eos_token_id=0)  # fmt: skip
    model = Logits(GPT2LMHeadModel(config)).double()
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 37, (n, seq), generator=gen)
    y = torch.randint(0, 37, (n, seq), generator=gen)
    return model, x, y, token_loss


def test_transformers_gpt2_every_route_is_a_rule_and_statistics_match() -> None:
    pytest.importorskip("transformers")
    model, x, y, loss = tiny_gpt2()
    snapshot = perturbed(model, scale=0.05)
    result = Probe(model, loss, unit=2).run((x, y), snapshot=snapshot)
    routes = result.config["routes"]
    assert "vmap" not in routes.values(), result.config["route_reasons"]
    assert routes["model.transformer.wte.weight"] == "embedding+linear"  # tied to lm_head
    assert routes["model.transformer.h.0.attn.c_attn.weight"] == "conv1d-transformers"
    names = list(dict(model.named_parameters()))
    rows_g = reference.loop_grads(model, loss, x, y, unit=2)
    rows_h = reference.loop_grads(model, loss, x, y, state=snapshot, unit=2)
    expected = reference.stats(
        reference.flat(rows_g, names), reference.flat(rows_h, names),
        segments=reference.sizes(rows_g, names),
    )  # fmt: skip
    for metric in ("m1_cosine", "m2_total_variance", "m3_top_eigenvalue", "rho_mean",
                   "alpha_star_mean", "alpha_star_layer", "gsnr_mean"):  # fmt: skip
        got = result.value(metric)
        assert math.isclose(got, expected[metric], rel_tol=1e-7, abs_tol=1e-12), (metric, got)
