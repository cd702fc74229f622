"""The probe and the optimizer on a CUDA device (skipped where there is none, e.g. in CI).

Run on a GPU machine: ``python -m pytest tests/test_cuda.py`` (results in BENCHMARKS.md).
"""

from __future__ import annotations

import copy
import math

import pytest
import reference
import torch
import torch.nn.functional as F
from architectures import make, perturbed

from gradvar import AlphaSVRG, Probe

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")


def _on(device, model, x, y, snapshot):
    return (
        model.to(device),
        x.to(device),
        y.to(device),
        {k: v.to(device) for k, v in snapshot.items()},
    )


@pytest.mark.parametrize("arch", ["mlp", "cnn", "transformer", "dropout"])
def test_probe_on_cuda_matches_the_backward_loop_on_cuda(arch: str) -> None:
    model, x, y = make(arch)
    model, x, y, snapshot = _on(CUDA, model, x, y, perturbed(model))
    result = Probe(model, F.cross_entropy, chunk_size=64, alphas=(1.0,)).run(
        (x, y), snapshot=snapshot
    )
    rows_g = reference.loop_grads(model, F.cross_entropy, x, y)
    rows_h = reference.loop_grads(model, F.cross_entropy, x, y, state=snapshot)
    names = list(rows_g)
    expected = reference.stats(
        reference.flat(rows_g, names).cpu(),
        reference.flat(rows_h, names).cpu(),
        segments=reference.sizes(rows_g, names),
    )
    table = result.table()
    for metric in [
        "m1_cosine",
        "m2_total_variance",
        "m3_top_eigenvalue",
        "rho_mean",
        "alpha_star_mean",
        "alpha_star_layer",
        "vr_variance@1.0",
    ]:
        got = float(table.loc["__all__", metric])
        assert math.isclose(got, expected[metric], rel_tol=1e-7, abs_tol=1e-12), (metric, got)


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_cuda_equals_cpu_without_randomness(arch: str) -> None:
    model, x, y = make(arch)
    snapshot = perturbed(model)
    cpu = Probe(model, F.cross_entropy, chunk_size=8).run((x, y), snapshot=snapshot)
    gpu_model, gx, gy, gsnap = _on(CUDA, copy.deepcopy(model), x, y, snapshot)
    gpu = Probe(gpu_model, F.cross_entropy).run((gx, gy), snapshot=gsnap)  # auto chunk
    for key, value in cpu.values.items():
        assert math.isclose(gpu.values[key], value, rel_tol=1e-9, abs_tol=1e-13), key


def test_alpha_zero_is_sgd_bit_for_bit_and_alpha_half_matches_by_hand_on_cuda() -> None:
    torch.manual_seed(0)
    model, x, y = make("dropout")
    model = model.to(CUDA)
    batches = [(x[i : i + 8].to(CUDA), y[i : i + 8].to(CUDA)) for i in range(0, 24, 8)]
    plain = copy.deepcopy(model)
    wrapped = AlphaSVRG(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), alpha=0.0)
    base = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9)
    wrapped.refresh_snapshot(model, batches, F.cross_entropy)
    for step in range(6):
        xb, yb = batches[step % 3]
        torch.manual_seed(step)
        wrapped.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        with wrapped.at_snapshot(model):
            F.cross_entropy(model(xb), yb).backward()
        wrapped.step()
        torch.manual_seed(step)
        base.zero_grad()
        F.cross_entropy(plain(xb), yb).backward()
        base.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), plain.parameters()))

    # alpha = 0.5 against a hand-written loop, on a model without dropout (refresh_snapshot
    # runs in train mode; dropout replay on CUDA is checked by the identity test below).
    model, x, y = make("mlp")
    model = model.to(CUDA)
    batches = [(x[i : i + 8].to(CUDA), y[i : i + 8].to(CUDA)) for i in range(0, 24, 8)]
    snapshot_model = copy.deepcopy(model)
    opt = AlphaSVRG(torch.optim.SGD(model.parameters(), lr=0.1), alpha=0.5)
    opt.refresh_snapshot(model, batches, F.cross_entropy)
    mean = [torch.zeros_like(p) for p in model.parameters()]
    for xb, yb in batches:
        snapshot_model.zero_grad()
        F.cross_entropy(snapshot_model(xb), yb).backward()
        for m, p in zip(mean, snapshot_model.parameters()):
            m += p.grad / len(batches)
    by_hand = copy.deepcopy(model)
    for xb, yb in batches:
        opt.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        with opt.at_snapshot(model):
            F.cross_entropy(model(xb), yb).backward()
        opt.step()
        by_hand.zero_grad()
        snapshot_model.zero_grad()
        F.cross_entropy(by_hand(xb), yb).backward()
        F.cross_entropy(snapshot_model(xb), yb).backward()
        with torch.no_grad():
            for p, s, m in zip(by_hand.parameters(), snapshot_model.parameters(), mean):
                p -= 0.1 * (p.grad - 0.5 * (s.grad - m))
    for a, b in zip(model.parameters(), by_hand.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_dropout_replay_on_cuda_gives_v_equal_to_mean_gradient_at_the_snapshot() -> None:
    """θ = θ̃ right after a refresh, same dropout masks ⇒ h = g ⇒ v = μ̃ exactly at α = 1."""
    model, x, y = make("dropout")
    model = model.to(CUDA)
    batches = [(x[i : i + 8].to(CUDA), y[i : i + 8].to(CUDA)) for i in range(0, 24, 8)]
    opt = AlphaSVRG(torch.optim.SGD(model.parameters(), lr=0.1), alpha=1.0)
    opt.refresh_snapshot(model, batches, F.cross_entropy)
    xb, yb = batches[1]
    opt.zero_grad()
    F.cross_entropy(model(xb), yb).backward()
    with opt.at_snapshot(model):
        F.cross_entropy(model(xb), yb).backward()
    opt.apply_correction()
    for p, mean in zip(model.parameters(), opt.mean_grad):
        torch.testing.assert_close(p.grad, mean, rtol=0, atol=1e-15)


@pytest.mark.parametrize("arch", ["vit", "resnet", "gpt", "lstm", "shared_weight"])
def test_rules_on_cuda_match_the_backward_loop(arch: str) -> None:
    from modern import make_modern, token_loss

    model, x, y = make_modern(arch)
    loss = token_loss if arch == "gpt" else F.cross_entropy
    model, x, y, snapshot = _on(CUDA, model, x, y, perturbed(model, scale=0.05))
    result = Probe(model, loss, chunk_size=5).run((x, y), snapshot=snapshot)
    assert result.config["routes"] != {} and "vmap" not in (
        v for k, v in result.config["routes"].items() if not k.startswith("rnn.")
    )
    model.eval() if arch == "resnet" else None
    rows_g = reference.loop_grads(model, loss, x, y)
    rows_h = reference.loop_grads(model, loss, x, y, state=snapshot)
    names = list(rows_g)
    expected = reference.stats(
        reference.flat(rows_g, names).cpu(),
        reference.flat(rows_h, names).cpu(),
        segments=reference.sizes(rows_g, names),
    )
    for metric in ("m1_cosine", "m2_total_variance", "rho_mean", "alpha_star_layer"):
        got = result.value(metric)
        assert math.isclose(got, expected[metric], rel_tol=1e-7, abs_tol=1e-12), (metric, got)


def _real_model(name: str):
    if name == "resnet18":
        import torchvision

        return torchvision.models.resnet18(num_classes=10), torch.randn(6, 3, 32, 32)
    if name == "vit":
        timm = pytest.importorskip("timm")
        model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32,
                                  patch_size=8, num_classes=10, depth=2)  # fmt: skip
        return model, torch.randn(6, 3, 32, 32)
    raise KeyError(name)


@pytest.mark.parametrize("name", ["resnet18", "vit"])
def test_real_models_rules_equal_vmap_on_cuda(name: str) -> None:
    """torchvision/timm models (on the GPU machine): every statistic from the per-layer
    rules equals the vmap-only route, in float64, and no parameter fell back to vmap."""
    pytest.importorskip("torchvision" if name == "resnet18" else "timm")
    torch.manual_seed(0)
    model, x = _real_model(name)
    model = model.double().to(CUDA).eval()
    x, y = x.double().to(CUDA), torch.randint(0, 10, (6,), device=CUDA)
    snapshot = perturbed(model, scale=0.01)
    fast = Probe(model, F.cross_entropy).run((x, y), snapshot=snapshot)
    slow = Probe(model, F.cross_entropy, closed_form=False).run((x, y), snapshot=snapshot)
    assert "vmap" not in fast.config["routes"].values(), fast.config["route_reasons"]
    for key, value in slow.values.items():
        assert math.isclose(fast.values[key], value, rel_tol=1e-7, abs_tol=1e-12), key


def test_real_gpt2_rules_match_the_backward_loop_on_cuda() -> None:
    pytest.importorskip("transformers")
    from test_rules_real import tiny_gpt2

    model, x, y, loss = tiny_gpt2()
    model, x, y, snapshot = _on(CUDA, model, x, y, perturbed(model, scale=0.05))
    result = Probe(model, loss).run((x, y), snapshot=snapshot)
    assert "vmap" not in result.config["routes"].values(), result.config["route_reasons"]
    rows_g = reference.loop_grads(model, loss, x, y)
    rows_h = reference.loop_grads(model, loss, x, y, state=snapshot)
    names = list(rows_g)
    expected = reference.stats(
        reference.flat(rows_g, names).cpu(), reference.flat(rows_h, names).cpu(),
        segments=reference.sizes(rows_g, names),
    )
    for metric in ("m2_total_variance", "rho_mean", "alpha_star_layer", "m1_cosine"):
        got = result.value(metric)
        assert math.isclose(got, expected[metric], rel_tol=1e-7, abs_tol=1e-12), (metric, got)
