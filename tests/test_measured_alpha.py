"""AlphaSVRG(alpha="measured"): the per-layer α it measures equals α*_L computed the slow,
obvious way from the same (g, h) pairs; resume mid-interval is bit-exact; cache mode equals
recompute mode; clamp=(0, 0) is the base optimizer bit for bit."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from gradvar._utils import capture_rng, restore_rng
from gradvar.errors import InvalidArgumentError, OptimizerStateError
from gradvar.optim import AlphaSVRG
from gradvar.schedules import Constant, Linear, Measured, as_schedule, from_dict

F64 = torch.float64
Batch = tuple[Tensor, Tensor]
loss_fn = F.cross_entropy


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Dropout(0.3), nn.Linear(10, 3)).to(F64)


def make_data(num_batches: int = 5, batch: int = 8, seed: int = 1) -> list[Batch]:
    gen = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(batch, 6, generator=gen, dtype=F64),
            torch.randint(0, 3, (batch,), generator=gen),
        )
        for _ in range(num_batches)
    ]


def train(
    model: nn.Module, opt: AlphaSVRG, data: list[Batch], steps: int, *, cache: bool = False
) -> None:
    for _ in range(steps):
        if opt.snapshot_due:
            opt.refresh_snapshot(model, data, loss_fn, cache=cache)
        index = (opt.step_count - opt.snapshot_step) % len(data)
        x, y = data[index]
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        if cache:
            opt.use_cached(index)
        else:
            with opt.at_snapshot(model):
                loss_fn(model(x), y).backward()
        opt.step()


def layer_of(name: str, layers: str) -> str:
    return {"parameter": name, "module": name.rpartition(".")[0], "model": "__all__"}[layers]


def train_by_hand(
    model: nn.Module, data: list[Batch], cfg: Measured, *, steps: int, interval: int, lr: float
) -> list[dict[str, float]]:
    """The slow reference: a deep copy holds θ̃, every pair is kept, and before each step
    α_L = clamp((n·ΣCov/ΣVar + s·prior)/(n + s)) with Cov_k = Σ_j w_j g_jk (h_jk − μ̃_k)/n over
    the interval's earlier pairs j (w_j = decay**age); then p ← p − lr (g − α_L (h − μ̃))."""
    names = [n for n, _ in model.named_parameters()]
    layers = sorted({layer_of(n, cfg.layers) for n in names})
    used: list[dict[str, float]] = []
    snapshot, mean, pairs = model, {}, []
    for t in range(steps):
        if t % interval == 0:
            snapshot = copy.deepcopy(model)
            outer = capture_rng()
            mean = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
            for x, y in data:
                snapshot.zero_grad()
                loss_fn(snapshot(x), y).backward()
                for n, p in snapshot.named_parameters():
                    mean[n] += p.grad / len(data)
            restore_rng(outer)
            pairs = []
        alphas = {}
        for layer in layers:
            members = [n for n in names if layer_of(n, cfg.layers) == layer]
            weights = [cfg.decay ** (len(pairs) - 1 - j) for j in range(len(pairs))]
            n = sum(weights)
            cov = sum(
                w * ((g[m] * (h[m] - mean[m])).sum())
                for w, (g, h) in zip(weights, pairs)
                for m in members
            )
            var = sum(
                w * ((h[m] - mean[m]) ** 2).sum()
                for w, (g, h) in zip(weights, pairs)
                for m in members
            )
            prior = float(cfg.prior(t))
            alpha = (
                prior
                if n == 0
                else (n * float(cov / var) + cfg.shrinkage * prior) / (n + cfg.shrinkage)
            )
            alphas[layer] = min(max(alpha, cfg.clamp[0]), cfg.clamp[1])
        used.append(alphas)
        x, y = data[t % interval % len(data)]
        before = capture_rng()
        model.zero_grad()
        loss_fn(model(x), y).backward()
        after = capture_rng()
        restore_rng(before)
        snapshot.zero_grad()
        loss_fn(snapshot(x), y).backward()
        restore_rng(after)
        g = {n: p.grad.clone() for n, p in model.named_parameters()}
        h = {n: p.grad.clone() for n, p in snapshot.named_parameters()}
        pairs.append((g, h))
        with torch.no_grad():
            for n, p in model.named_parameters():
                a = alphas[layer_of(n, cfg.layers)]
                p -= lr * (g[n] - a * (h[n] - mean[n]))
    return used


@pytest.mark.parametrize(
    "cfg",
    [
        Measured(prior=Constant(0.5), shrinkage=2.0, clamp=(-5.0, 5.0)),
        Measured(prior=Linear(0.9, total_steps=14, hold=5), shrinkage=0.0, layers="module"),
        Measured(shrinkage=3.0, decay=0.7, layers="model", clamp=(0.2, 0.95)),
    ],
    ids=["per_parameter", "per_module", "whole_model_decay"],
)
def test_measured_alpha_equals_the_offline_alpha_star_of_the_same_pairs(cfg: Measured) -> None:
    data, steps, interval, lr = make_data(), 14, 5, 0.3
    reference, model = make_model(), make_model()
    torch.manual_seed(7)
    expected = train_by_hand(reference, data, cfg, steps=steps, interval=interval, lr=lr)
    opt = AlphaSVRG(
        torch.optim.SGD(model.parameters(), lr=lr),
        cfg,
        snapshot_interval=interval,
        named_parameters=model.named_parameters(),
    )
    torch.manual_seed(7)
    train(model, opt, data, steps)
    log = opt.alpha_log()
    assert len(log) == steps * len(expected[0])
    got: dict[int, dict[str, float]] = {}
    for row in log:
        got.setdefault(row["step"], {})[row["layer"]] = row["alpha"]
        assert row["snapshot_step"] == row["step"] // interval * interval
    for t in range(steps):
        assert got[t] == pytest.approx(expected[t], rel=1e-10, abs=1e-12), t
    values = [a for row in expected[1:] for a in row.values()]
    assert len({round(v, 6) for v in values}) > 3, "alpha never moved: the test cannot fail"
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def test_resume_mid_interval_is_bit_exact() -> None:
    data = make_data()
    model = make_model()
    opt = AlphaSVRG(torch.optim.AdamW(model.parameters(), lr=1e-2), "measured", snapshot_interval=5)
    torch.manual_seed(3)
    train(model, opt, data, 8)  # snapshot at 5; step 8 is mid-interval with 3 pairs measured
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    opt.alpha_log(clear=True)
    torch.manual_seed(11)
    train(model, opt, data, 6)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = make_model(seed=99)
    resumed.load_state_dict(saved["model"])
    opt2 = AlphaSVRG(torch.optim.AdamW(resumed.parameters(), lr=1.0), alpha=0.1)
    opt2.load_state_dict(saved["opt"])
    assert opt2.schedules == (Measured(),)
    torch.manual_seed(11)
    train(resumed, opt2, data, 6)
    for p, q in zip(resumed.parameters(), model.parameters()):
        assert torch.equal(p, q)
    assert opt2.alpha_log() == opt.alpha_log()
    assert {r["pairs"] for r in opt2.alpha_log() if r["step"] == 8} == {3.0}


def test_cache_mode_equals_recompute_mode_bit_for_bit() -> None:
    data = make_data()
    models, logs = [], []
    for cache in (False, True):
        model = make_model()
        opt = AlphaSVRG(
            torch.optim.SGD(model.parameters(), lr=0.2), "measured", snapshot_interval=5
        )
        torch.manual_seed(5)
        train(model, opt, data, 12, cache=cache)
        models.append(model)
        logs.append(opt.alpha_log())
    for p, q in zip(*(m.parameters() for m in models)):
        assert torch.equal(p, q)
    assert logs[0] == logs[1]


def test_clamp_to_zero_is_the_base_optimizer_bit_for_bit() -> None:
    data = make_data()
    reference, model = make_model(), make_model()
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.2, momentum=0.9)
    opt = AlphaSVRG(
        torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9),
        Measured(clamp=(0.0, 0.0)),
        snapshot_interval=5,
    )
    torch.manual_seed(2)
    train(model, opt, data, 9)
    torch.manual_seed(2)
    for t in range(9):  # the snapshot passes and h leave the global RNGs as g left them
        x, y = data[t % 5]
        ref_opt.zero_grad()
        loss_fn(reference(x), y).backward()
        ref_opt.step()
    for p, q in zip(model.parameters(), reference.parameters()):
        assert torch.equal(p, q)
    assert {r["alpha"] for r in opt.alpha_log()} == {0.0}


def test_gradient_accumulation_in_recompute_mode_is_refused_with_the_fix() -> None:
    data = make_data()
    model = make_model()
    opt = AlphaSVRG(torch.optim.SGD(model.parameters(), lr=0.1), "measured")
    opt.refresh_snapshot(model, data, loss_fn)
    opt.zero_grad()
    for x, y in data[:2]:
        opt.mark_batch()
        loss_fn(model(x), y).backward()
        if opt._folded:
            with pytest.raises(OptimizerStateError, match="cache=True"):
                with opt.at_snapshot(model):
                    pass
            return
        with opt.at_snapshot(model):
            loss_fn(model(x), y).backward()
    raise AssertionError("the second at_snapshot was not refused")


def test_measured_is_a_schedule_that_round_trips_and_checks_its_arguments() -> None:
    cfg = Measured(prior=Linear(0.75, 100, hold=10), shrinkage=4, clamp=[0.1, 0.9], decay=0.5)
    assert from_dict(cfg.to_dict()) == cfg
    assert as_schedule("measured") == Measured()
    assert cfg(0) == 0.75 and cfg.at(95, 5) == Linear(0.75, 100, hold=10)(95)
    for bad, match in [
        ({"shrinkage": -1}, "shrinkage=-1"),
        ({"clamp": (1.0, 0.0)}, r"clamp=\(1.0, 0.0\)"),
        ({"decay": 1.5}, "decay=1.5"),
        ({"layers": "block"}, "layers='block'"),
    ]:
        with pytest.raises(InvalidArgumentError, match=match):
            Measured(**bad)
