"""The paper's α* protocol against a slow obvious reference, and along training runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradvar import paper_alpha
from gradvar.errors import InvalidArgumentError
from gradvar.train import read_metrics, train
from gradvar.zoo import build_model, load_dataset


def _reference(model: nn.Module, batches, snapshot: dict[str, torch.Tensor]):
    """Per-batch gradients by plain autograd on two model copies; α*, clamp, both means."""
    current = model
    other = build_model("mlp2", in_features=64, num_classes=10, dropout=0.3)
    other.load_state_dict(snapshot)
    g_rows, h_rows = [], []
    for i, (x, y) in enumerate(batches):
        for net, rows in ((current, g_rows), (other, h_rows)):
            net.train()
            net.zero_grad()
            torch.manual_seed(100 + i)
            F.cross_entropy(net(x), y).backward()
            rows.append(torch.cat([p.grad.reshape(-1).double() for p in net.parameters()]))
    g, h = torch.stack(g_rows), torch.stack(h_rows)  # [n, d]
    cov = ((g - g.mean(0)) * (h - h.mean(0))).mean(0)
    var_h = ((h - h.mean(0)) ** 2).mean(0)
    alpha = (cov / (var_h + 1e-24)).clamp(-2, 2)
    defined = var_h > 1e-12 * (h**2).mean(0)
    return alpha, float(alpha.mean()), float(alpha[defined].mean()), int(defined.sum())


def test_minibatch_alpha_star_matches_the_reference_with_dropout() -> None:
    x, y = load_dataset("digits", n=640).tensors
    batches = [(x[i : i + 64], y[i : i + 64]) for i in range(0, 640, 64)]  # 10 batches
    snap_model = build_model("mlp2", seed=1, in_features=64, num_classes=10, dropout=0.3)
    snapshot = {k: v.clone() for k, v in snap_model.state_dict().items()}
    model = build_model("mlp2", seed=1, in_features=64, num_classes=10, dropout=0.3)
    with torch.no_grad():  # move the weights away from the snapshot
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    result = paper_alpha.minibatch_alpha_star(model, F.cross_entropy, batches, snapshot, seed=100)
    assert not model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    alpha, mean_ref, mean, n_defined = _reference(model, batches, snapshot)
    mine = torch.cat([a.reshape(-1) for a in result.alpha.values()])
    assert result.n == 10
    assert torch.allclose(mine, alpha, atol=1e-5)
    assert result.mean_ref == pytest.approx(mean_ref, abs=1e-6)
    assert result.mean == pytest.approx(mean, abs=1e-6)
    # dead / always-zero-pixel coordinates: digits has constant-zero pixels, so they differ
    assert sum(int(d.sum()) for d in result.defined.values()) == n_defined < mine.numel()
    assert result.mean_ref < result.mean


def test_at_the_snapshot_alpha_is_one_and_errors_name_the_fix() -> None:
    model = build_model("mlp2", seed=0, in_features=64, num_classes=10)
    x, y = load_dataset("digits", n=256).tensors
    batches = [(x[i : i + 64], y[i : i + 64]) for i in range(0, 256, 64)]
    same = paper_alpha.minibatch_alpha_star(model, F.cross_entropy, batches, model.state_dict())
    assert same.mean == pytest.approx(1.0)  # θ = θ̃: α* = 1 wherever defined
    assert same.mean_ref < 1.0  # the plain mean counts the 0/0 coordinates as 0
    ones = paper_alpha.MinibatchAlphaStar.at_snapshot(dict(model.named_parameters()))
    assert ones.mean == ones.mean_ref == 1.0
    with pytest.raises(InvalidArgumentError, match="snapshot lacks"):
        paper_alpha.minibatch_alpha_star(model, F.cross_entropy, batches, {})
    assert paper_alpha.interval_indices(10, 4) == [0, 2, 5, 7]
    assert paper_alpha.interval_indices(3, 8) == [0, 1, 2]


@pytest.mark.parametrize("vr", ["none", "svrg-optimal"])
def test_train_logs_the_protocol(tmp_path: Path, vr: str) -> None:
    model = build_model("mlp2", seed=0, in_features=64, num_classes=10)
    result = train(model, load_dataset("digits"), run_dir=tmp_path, recipe="official",
                   optimizer="sgd", epochs=2, vr=vr, alpha_log_every=4, alpha_log_batches=6,
                   progress=False)  # fmt: skip
    rows = read_metrics(tmp_path)
    ref = [(s, v) for s, _, m, v in rows if m == "alpha_star_mean_ref"]
    own = [(s, v) for s, _, m, v in rows if m == "alpha_star_mean"]
    spe = result.steps_per_epoch  # 11: logged at positions 0, 4, 8 of each epoch
    assert [s for s, _ in ref] == [0, 4, 8, spe, spe + 4, spe + 8]
    assert ref[0][1] == own[0][1] == 1.0 and ref[3][1] == 1.0  # forced at the snapshots
    assert all(r < o for (_, r), (_, o) in zip(ref, own) if r != 1.0)  # 0/0 pixels count as 0
    assert all(0.0 < v < 1.0 for _, v in own if v != 1.0)


def test_svrg_optimal_needs_an_interval() -> None:
    with pytest.raises(InvalidArgumentError, match="alpha_log_every"):
        train(build_model("mlp1", in_features=64, num_classes=10), load_dataset("digits"),
              run_dir="/nonexistent", recipe="official", epochs=1, vr="svrg-optimal")  # fmt: skip
