"""AlphaSVRG conformance: alpha = 0 is the base optimizer bit for bit, alpha = 1 / 0.5 match a
hand-written (alpha-)SVRG loop, every LR scheduler attaches, state_dict resumes exactly, cache
mode equals recompute mode, and GradScaler / clipping / accumulation / autocast / compile work.

Tiny float64 models; the DDP check lives in test_optim_ddp.py.
"""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Callable

import pytest
import torch
import torch._dynamo.testing
from torch import Tensor, nn
from torch.nn import functional as F
from torch.optim import lr_scheduler as sched

from gradvar._utils import capture_rng, restore_rng
from gradvar.errors import (
    GradvarError,
    InvalidArgumentError,
    MemoryBudgetError,
    NonFiniteGradientError,
)
from gradvar.optim import AlphaSVRG, variance_reduce_
from gradvar.schedules import Constant, Double, Linear, PerLayer

F64 = torch.float64
Batch = tuple[Tensor, Tensor]
loss_fn = F.cross_entropy


def make_model(*, dropout: float = 0.3, batchnorm: bool = True, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(6, 10)]
    if batchnorm:
        layers.append(nn.BatchNorm1d(10))
    layers += [nn.Tanh(), nn.Dropout(dropout), nn.Linear(10, 3)]
    return nn.Sequential(*layers).to(F64)


def make_data(num_batches: int = 4, batch: int = 8, seed: int = 1) -> list[Batch]:
    gen = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(batch, 6, generator=gen, dtype=F64),
            torch.randint(0, 3, (batch,), generator=gen),
        )
        for _ in range(num_batches)
    ]


def grads(model: nn.Module) -> list[Tensor]:
    return [p.grad.detach().clone() for p in model.parameters()]


def assert_equal(a: nn.Module | list[Tensor], b: nn.Module | list[Tensor]) -> None:
    xs = list(a.state_dict().values()) if isinstance(a, nn.Module) else a
    ys = list(b.state_dict().values()) if isinstance(b, nn.Module) else b
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        assert torch.equal(x, y), (x - y).abs().max()


def svrg_step(model: nn.Module, opt: AlphaSVRG, x: Tensor, y: Tensor) -> None:
    """One recompute-mode step: g, then h at the snapshot, then the corrected base step."""
    opt.zero_grad()
    loss_fn(model(x), y).backward()
    with opt.at_snapshot(model):
        loss_fn(model(x), y).backward()
    opt.step()


def train_svrg(model: nn.Module, opt: AlphaSVRG, data: list[Batch], steps: int) -> None:
    for _ in range(steps):
        if opt.snapshot_due:
            opt.refresh_snapshot(model, data, loss_fn)
        svrg_step(model, opt, *data[opt.step_count % len(data)])


def train_by_hand(
    model: nn.Module, data: list[Batch], *, steps: int, alpha: float, interval: int, lr: float
) -> None:
    """The textbook loop: a deep copy holds θ̃; v = g − α (h − μ̃); p ← p − lr v."""
    snapshot: nn.Module = model
    mean: list[Tensor] = []
    for t in range(steps):
        if t % interval == 0:
            snapshot = copy.deepcopy(model)
            outer = capture_rng()
            mean = [torch.zeros_like(p) for p in model.parameters()]
            for x, y in data:
                snapshot.zero_grad()
                loss_fn(snapshot(x), y).backward()
                mean = [m + p.grad for m, p in zip(mean, snapshot.parameters())]
            mean = [m / len(data) for m in mean]
            restore_rng(outer)
        x, y = data[t % len(data)]
        before = capture_rng()
        model.zero_grad()
        loss_fn(model(x), y).backward()
        after = capture_rng()
        restore_rng(before)  # same dropout masks for h
        snapshot.zero_grad()
        loss_fn(snapshot(x), y).backward()
        restore_rng(after)
        with torch.no_grad():
            for p, s, m in zip(model.parameters(), snapshot.parameters(), mean):
                p -= lr * (p.grad - alpha * (s.grad - m))


# ---------------------------------------------------------------- alpha = 0 is the base optimizer

BASES: dict[str, Callable[[nn.Module], torch.optim.Optimizer]] = {
    "sgd": lambda m: torch.optim.SGD(m.parameters(), lr=0.1),
    "sgd_momentum": lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, nesterov=True),
    "adamw": lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1),
}


@pytest.mark.parametrize("with_snapshot", [False, True], ids=["plain", "with_snapshot_calls"])
@pytest.mark.parametrize("base", list(BASES))
def test_alpha_zero_is_the_base_optimizer_bit_for_bit(base: str, with_snapshot: bool) -> None:
    data = make_data()
    reference, model = make_model(), make_model()
    ref_opt = BASES[base](reference)
    opt = AlphaSVRG(BASES[base](model), alpha=0.0, snapshot_interval=4)
    torch.manual_seed(5)
    for t in range(20):
        x, y = data[t % len(data)]
        ref_opt.zero_grad()
        loss_fn(reference(x), y).backward()
        ref_opt.step()
    torch.manual_seed(5)
    for t in range(20):
        x, y = data[t % len(data)]
        if with_snapshot and opt.snapshot_due:  # must not disturb RNG, buffers or grads
            opt.refresh_snapshot(model, data, loss_fn)
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        if with_snapshot:
            with opt.at_snapshot(model):
                loss_fn(model(x), y).backward()
        opt.step()
    assert_equal(model, reference)  # parameters and BatchNorm buffers
    assert opt.step_count == 20


# ---------------------------------------------------------------- against the hand-written loop


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_matches_hand_written_alpha_svrg_with_dropout(alpha: float) -> None:
    data = make_data()
    reference, model = make_model(), make_model()
    torch.manual_seed(7)
    train_by_hand(reference, data, steps=12, alpha=alpha, interval=4, lr=0.2)
    opt = AlphaSVRG(torch.optim.SGD(model.parameters(), lr=0.2), alpha, snapshot_interval=4)
    torch.manual_seed(7)
    train_svrg(model, opt, data, 12)
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13, msg=name)
    assert not torch.equal(model[0].weight, make_model()[0].weight)


def test_replaying_the_wrong_rng_state_breaks_the_identity() -> None:
    """The control for the exact-identity test below: other dropout masks ⇒ v ≠ μ̃."""
    data = make_data()
    model = make_model()
    opt = AlphaSVRG(torch.optim.SGD(model.parameters(), lr=0.2), 1.0)
    opt.refresh_snapshot(model, data, loss_fn)
    opt.zero_grad()
    loss_fn(model(data[0][0]), data[0][1]).backward()
    opt.mark_batch()  # recorded after the forward: h would see other masks
    with opt.at_snapshot(model):
        loss_fn(model(data[0][0]), data[0][1]).backward()
    opt.apply_correction()
    assert any(not torch.equal(p.grad, m) for p, m in zip(model.parameters(), opt.mean_grad))


def test_right_after_snapshot_v_is_exactly_the_mean_gradient() -> None:
    """θ = θ̃ and the same masks ⇒ h = g bitwise ⇒ v = g − (g − μ̃) = μ̃ exactly (alpha = 1)."""
    data = make_data()
    model = make_model()
    opt = AlphaSVRG(torch.optim.SGD(model.parameters(), lr=0.1), alpha=1.0)
    opt.refresh_snapshot(model, data, loss_fn)
    x, y = data[2]
    opt.zero_grad()
    loss_fn(model(x), y).backward()
    with opt.at_snapshot(model):
        loss_fn(model(x), y).backward()
    opt.apply_correction()
    assert_equal(grads(model), list(opt.mean_grad))


def test_refresh_snapshot_computes_mean_and_leaves_the_model_alone() -> None:
    data = make_data()
    model = make_model()
    opt = AlphaSVRG(torch.optim.SGD(model.parameters(), lr=0.1), alpha=1.0)
    model.eval()
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    before_grads = [p.grad for p in model.parameters()]
    before_state = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    opt.refresh_snapshot(model, data, loss_fn)
    assert all(p.grad is g for p, g in zip(model.parameters(), before_grads))
    assert_equal(list(model.state_dict().values()), list(before_state.values()))
    assert not model.training
    assert torch.equal(torch.get_rng_state(), rng)
    assert opt.snapshot_step == 0
    assert_equal(list(opt.snapshot), [p.detach() for p in model.parameters()])
    mean = list(opt.mean_grad)  # the RNG is back, so the same masks again:
    opt.refresh_snapshot(model, data, loss_fn, loss_scale=2.0**20, device="cpu")
    assert_equal(list(opt.mean_grad), mean)  # power-of-two scaling is exact
    with pytest.raises(NonFiniteGradientError, match="parameter #0 .* check the loss"):
        opt.refresh_snapshot(model, data, lambda out, y: loss_fn(out, y) * float("nan"))
    assert_equal(list(opt.mean_grad), mean)
    # μ̃ by hand: train mode, the same masks (the pass starts from the same RNG state)
    work = copy.deepcopy(model).train()
    sums = [torch.zeros_like(p) for p in work.parameters()]
    for x, y in data:
        work.zero_grad()
        loss_fn(work(x), y).backward()
        sums = [s + p.grad for s, p in zip(sums, work.parameters())]
    for m, s in zip(opt.mean_grad, sums):
        torch.testing.assert_close(m, s / len(data), rtol=1e-13, atol=1e-15)


def test_at_snapshot_restores_weights_buffers_rng_and_folds_h() -> None:
    data = make_data()
    model = make_model()
    opt = AlphaSVRG(torch.optim.SGD(model.parameters(), lr=0.1), alpha=0.25)
    opt.refresh_snapshot(model, data, loss_fn)
    svrg_step(model, opt, *data[0])  # θ ≠ θ̃ from here on
    x, y = data[1]
    opt.zero_grad()
    start = capture_rng()
    loss_fn(model(x), y).backward()
    g = grads(model)
    state, rng = copy.deepcopy(model.state_dict()), torch.get_rng_state()
    with opt.at_snapshot(model):
        assert_equal([p.detach() for p in model.parameters()], list(opt.snapshot))
        assert torch.equal(torch.get_rng_state(), start.torch_cpu)
        loss_fn(model(x), y).backward()
        h = grads(model)
    assert_equal(list(model.state_dict().values()), list(state.values()))
    assert torch.equal(torch.get_rng_state(), rng)
    for p, gi, hi in zip(model.parameters(), g, h):
        torch.testing.assert_close(p.grad, gi - 0.25 * hi, rtol=1e-14, atol=1e-16)


# ---------------------------------------------------------------- alpha per group / per layer


def test_alpha_per_param_group() -> None:
    data = make_data()
    model = make_model(batchnorm=False)
    base = torch.optim.SGD(
        [{"params": model[0].parameters()}, {"params": model[3].parameters()}], lr=0.1
    )
    opt = AlphaSVRG(base, alpha=[0.0, 1.0])
    opt.refresh_snapshot(model, data, loss_fn)
    opt.zero_grad()
    loss_fn(model(data[0][0]), data[0][1]).backward()
    g = grads(model)
    with opt.at_snapshot(model):
        loss_fn(model(data[0][0]), data[0][1]).backward()
    opt.apply_correction()
    assert opt.current_alpha() == [0.0, 0.0, 1.0, 1.0]
    assert_equal(grads(model)[:2], g[:2])  # alpha = 0: untouched
    assert_equal(grads(model)[2:], list(opt.mean_grad)[2:])  # alpha = 1 at the snapshot


@pytest.mark.parametrize("naming", ["argument", "named_base"])
def test_per_layer_alpha_by_parameter_name(naming: str) -> None:
    model = make_model(batchnorm=False)
    alpha = PerLayer({"3.weight": Constant(1.0), "0.bias": Linear(0.5, 10)}, default=0.0)
    if naming == "argument":
        opt = AlphaSVRG(
            torch.optim.SGD(model.parameters(), lr=0.1),
            alpha,
            named_parameters=model.named_parameters(),
        )
    else:
        opt = AlphaSVRG(torch.optim.SGD(model.named_parameters(), lr=0.1), alpha)
    assert opt.current_alpha() == [0.0, 0.5, 1.0, 0.0]
    opt.refresh_snapshot(model, make_data(), loss_fn)
    sd = opt.state_dict()
    assert sd["alpha_svrg"]["alpha"] == [alpha.to_dict()]


def test_within_interval_decay_follows_the_actual_snapshot() -> None:
    """Double/Fitted decay from the last snapshot: after an irregular refresh at step 3 the
    sawtooth restarts there, not at the next multiple of hold."""
    data = make_data()
    model = make_model()
    opt = AlphaSVRG(
        torch.optim.SGD(model.parameters(), lr=0.1), Double(Constant(1.0), hold=5, inner_end=0.0)
    )
    opt.refresh_snapshot(model, data, loss_fn)
    for t in range(3):
        assert opt.current_alpha()[0] == 1.0 - t / 4
        svrg_step(model, opt, *data[t])
    opt.refresh_snapshot(model, data, loss_fn)
    assert opt.current_alpha()[0] == 1.0
    svrg_step(model, opt, *data[3])
    assert opt.current_alpha()[0] == 0.75  # position 1 after the snapshot at step 3


# ---------------------------------------------------------------- LR schedulers

SCHEDULERS: dict[str, Callable[[torch.optim.Optimizer], object]] = {
    "StepLR": lambda o: sched.StepLR(o, step_size=3, gamma=0.5),
    "MultiStepLR": lambda o: sched.MultiStepLR(o, milestones=[2, 5], gamma=0.5),
    "ExponentialLR": lambda o: sched.ExponentialLR(o, gamma=0.8),
    "CosineAnnealingLR": lambda o: sched.CosineAnnealingLR(o, T_max=8),
    "LambdaLR": lambda o: sched.LambdaLR(o, lambda t: 1.0 / (t + 1)),
    "MultiplicativeLR": lambda o: sched.MultiplicativeLR(o, lambda t: 0.9),
    "OneCycleLR": lambda o: sched.OneCycleLR(o, max_lr=0.5, total_steps=12),
    "LinearLR": lambda o: sched.LinearLR(o, start_factor=0.25, total_iters=5),
    "ConstantLR": lambda o: sched.ConstantLR(o, factor=0.5, total_iters=3),
    "CyclicLR": lambda o: sched.CyclicLR(
        o, base_lr=0.01, max_lr=0.1, step_size_up=3, cycle_momentum=False
    ),
    "PolynomialLR": lambda o: sched.PolynomialLR(o, total_iters=8, power=2.0),
    "ReduceLROnPlateau": lambda o: sched.ReduceLROnPlateau(o, patience=1, factor=0.5),
    "SequentialLR": lambda o: sched.SequentialLR(
        o, [sched.ConstantLR(o, factor=0.5, total_iters=2), sched.ExponentialLR(o, 0.9)], [2]
    ),
    "ChainedScheduler": lambda o: sched.ChainedScheduler(
        [sched.StepLR(o, step_size=2, gamma=0.5), sched.ExponentialLR(o, gamma=0.95)]
    ),
    "CosineAnnealingWarmRestarts": lambda o: sched.CosineAnnealingWarmRestarts(o, T_0=3),
}


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_lr_scheduler_attaches_and_drives_the_base(name: str) -> None:
    """Alpha = 0 with at_snapshot calls: parameters equal plain SGD's only if the base stepped
    with the lr the scheduler set on the wrapper."""
    data = make_data()
    models = [make_model(batchnorm=False), make_model(batchnorm=False)]
    plain = torch.optim.SGD(models[0].parameters(), lr=0.1, momentum=0.9)
    wrapped = AlphaSVRG(torch.optim.SGD(models[1].parameters(), lr=0.1, momentum=0.9), 0.0)
    wrapped.refresh_snapshot(models[1], data, loss_fn)
    lrs: list[list[float]] = [[], []]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "lr_scheduler.step() before optimizer.step()"
        for model, opt, history in zip(models, (plain, wrapped), lrs):
            scheduler = SCHEDULERS[name](opt)
            torch.manual_seed(0)
            for t in range(12):
                x, y = data[t % len(data)]
                opt.zero_grad()
                loss_fn(model(x), y).backward()
                if opt is wrapped:
                    with wrapped.at_snapshot(model):
                        loss_fn(model(x), y).backward()
                opt.step()
                if isinstance(scheduler, sched.ReduceLROnPlateau):
                    scheduler.step(1.0)
                else:
                    scheduler.step()
                stepping = wrapped.base if opt is wrapped else plain
                history.append(stepping.param_groups[0]["lr"])
    assert lrs[0] == lrs[1]
    assert len(set(lrs[1])) > 1, "the scheduler never changed the lr"
    assert_equal(models[1], models[0])


# ---------------------------------------------------------------- checkpoints


def test_state_dict_round_trip_mid_interval_is_bit_exact() -> None:
    data = make_data()
    model = make_model()
    schedule = Linear(0.75, total_steps=12, hold=4)
    opt = AlphaSVRG(
        torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1),
        schedule,
        snapshot_interval=4,
    )
    torch.manual_seed(3)
    train_svrg(model, opt, data, 7)  # snapshot at step 4; step 7 is mid-interval
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    torch.manual_seed(11)
    train_svrg(model, opt, data, 5)  # refreshes at step 8
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = make_model(seed=99)
    resumed.load_state_dict(saved["model"])
    opt2 = AlphaSVRG(torch.optim.AdamW(resumed.parameters(), lr=1.0), alpha=0.1)
    opt2.load_state_dict(saved["opt"])
    assert (opt2.step_count, opt2.snapshot_step, opt2.snapshot_interval) == (7, 4, 4)
    assert opt2.schedules == (schedule,)
    torch.manual_seed(11)
    train_svrg(resumed, opt2, data, 5)
    assert_equal(resumed, model)
    assert opt2.snapshot_step == 8


def test_plain_optimizer_state_dict_is_refused_with_the_fix() -> None:
    model = make_model()
    opt = AlphaSVRG(torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(InvalidArgumentError, match=r"opt\.base\.load_state_dict"):
        opt.load_state_dict(torch.optim.SGD(model.parameters(), lr=0.1).state_dict())


# ---------------------------------------------------------------- closure, clipping, accumulation


def test_closure_equals_explicit_loop() -> None:
    data = make_data()
    models = [make_model(), make_model()]
    opts = [AlphaSVRG(torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9), 0.5) for m in models]
    for model, opt in zip(models, opts):
        opt.refresh_snapshot(model, data, loss_fn)
    model, opt = models[1], opts[1]

    def closure_for(x: Tensor, y: Tensor) -> Callable[[], Tensor]:
        def closure() -> Tensor:
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            with opt.at_snapshot(model):
                loss_fn(model(x), y).backward()
            return loss

        return closure

    torch.manual_seed(2)
    for t in range(6):
        svrg_step(models[0], opts[0], *data[t % 4])
    torch.manual_seed(2)
    for t in range(6):
        assert isinstance(opt.step(closure_for(*data[t % 4])), Tensor)
    assert_equal(models[1], models[0])


def test_apply_correction_lets_clipping_see_v_and_is_not_applied_twice() -> None:
    data = make_data()
    model = make_model()
    opt = AlphaSVRG(torch.optim.SGD(model.parameters(), lr=0.1), 0.5)
    opt.refresh_snapshot(model, data, loss_fn)
    svrg_step(model, opt, *data[0])
    opt.zero_grad()
    loss_fn(model(data[1][0]), data[1][1]).backward()
    with opt.at_snapshot(model):
        loss_fn(model(data[1][0]), data[1][1]).backward()
    folded = grads(model)  # g − α h
    opt.apply_correction()
    v = grads(model)
    for f, vi, m in zip(folded, v, opt.mean_grad):
        torch.testing.assert_close(vi, f + 0.5 * m, rtol=1e-15, atol=1e-17)
    norm = float(torch.linalg.vector_norm(torch.cat([t.flatten() for t in v])))
    nn.utils.clip_grad_norm_(model.parameters(), max_norm=norm / 4)
    clipped = grads(model)
    for c, vi in zip(clipped, v):  # clipping scaled v, not g
        torch.testing.assert_close(c, vi * (norm / 4) / (norm + 1e-6))
    with pytest.raises(GradvarError, match="already"):
        opt.apply_correction()
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()  # steps on the clipped v: no second correction
    for p, b, c in zip(model.parameters(), before, clipped):
        torch.testing.assert_close(p.detach(), b - 0.1 * c, rtol=1e-15, atol=1e-17)


def test_gradient_accumulation_equals_the_full_batch() -> None:
    data = make_data(batch=8)
    models = [make_model(batchnorm=False, dropout=0.0) for _ in range(2)]
    opts = [AlphaSVRG(torch.optim.SGD(m.parameters(), lr=0.3), 0.75) for m in models]
    for model, opt in zip(models, opts):
        opt.refresh_snapshot(model, data, loss_fn)
    for t in range(5):
        x, y = data[t % 4]
        svrg_step(models[0], opts[0], x, y)
        opt, model = opts[1], models[1]
        opt.zero_grad()
        for part in (slice(0, 4), slice(4, 8)):
            opt.mark_batch()
            (loss_fn(model(x[part]), y[part]) / 2).backward()
            with opt.at_snapshot(model):
                (loss_fn(model(x[part]), y[part]) / 2).backward()
        opt.step()
    for a, b in zip(models[1].parameters(), models[0].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------- mixed precision


def test_grad_scaler_matches_unscaled_training_and_skips_inf_steps() -> None:
    data = [(x.float(), y) for x, y in make_data()]
    models = [make_model().float(), make_model().float()]
    opts = [AlphaSVRG(torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9), 0.5) for m in models]
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    for model, opt in zip(models, opts):
        torch.manual_seed(6)
        opt.refresh_snapshot(model, data, loss_fn)
    for i, (model, opt) in enumerate(zip(models, opts)):
        torch.manual_seed(6)
        for t in range(6):
            x, y = data[t % 4]
            scale: Callable[[Tensor], Tensor] = scaler.scale if i else (lambda loss: loss)
            opt.zero_grad()
            scale(loss_fn(model(x), y)).backward()
            with opt.at_snapshot(model):
                scale(loss_fn(model(x), y)).backward()
            if i:
                scaler.unscale_(opt)
            opt.apply_correction()
            nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.5)
            if i:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
    assert scaler.get_scale() == 2.0**12
    for a, b in zip(models[1].state_dict().values(), models[0].state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    # an inf in h reaches .grad, so the scaler sees it and skips the step
    model, opt = models[1], opts[1]
    before = copy.deepcopy(model)
    opt.zero_grad()
    scaler.scale(loss_fn(model(data[0][0]), data[0][1])).backward()
    with opt.at_snapshot(model):
        scaler.scale(loss_fn(model(data[0][0]), data[0][1])).backward()
        model[0].weight.grad[0, 0] = float("inf")
    scaler.step(opt)
    scaler.update()
    assert opt.step_count == 6
    assert scaler.get_scale() == 2.0**11
    assert_equal(list(model.parameters()), list(before.parameters()))  # the step was skipped


def test_bf16_autocast_works_and_keeps_the_exact_identity() -> None:
    data = [(x.float(), y) for x, y in make_data()]
    model = make_model().float()
    opt = AlphaSVRG(torch.optim.AdamW(model.parameters(), lr=1e-3), alpha=1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        opt.refresh_snapshot(model, data, loss_fn)
        opt.zero_grad()
        loss_fn(model(data[0][0]), data[0][1]).backward()
        with opt.at_snapshot(model):
            loss_fn(model(data[0][0]), data[0][1]).backward()
        opt.apply_correction()
        assert_equal(grads(model), list(opt.mean_grad))
        opt.step()
        for t in range(1, 4):
            svrg_step(model, opt, *data[t])
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


def test_bf16_parameters_accumulate_the_mean_in_float32() -> None:
    data = [(x.bfloat16(), y) for x, y in make_data()]
    model = make_model(batchnorm=False, dropout=0.0).bfloat16()
    opt = AlphaSVRG(torch.optim.SGD(model.parameters(), lr=0.1), 0.5)
    opt.refresh_snapshot(model, data, loss_fn)
    assert all(m.dtype == torch.bfloat16 for m in opt.mean_grad)
    svrg_step(model, opt, *data[0])
    assert opt.step_count == 1


# ---------------------------------------------------------------- compile


def test_compiled_correction_is_one_graph_across_alpha_values() -> None:
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounter()
    schedule = Linear(0.75, total_steps=20, hold=4)

    def corrected(step: Tensor, g: list[Tensor], h: list[Tensor], mu: list[Tensor]) -> list[Tensor]:
        g = [t.clone() for t in g]
        variance_reduce_(g, h, mu, schedule(step))
        return g

    compiled = torch.compile(corrected, backend=counter, fullgraph=True)
    gen = torch.Generator().manual_seed(0)
    g, h, mu = ([torch.randn(3, 4, generator=gen, dtype=F64) for _ in range(2)] for _ in range(3))
    for step in (0, 5, 9, 13, 19):
        out = compiled(torch.tensor(step, dtype=F64), g, h, mu)
        expected = [gi - schedule(step) * (hi - mi) for gi, hi, mi in zip(g, h, mu)]
        for o, e in zip(out, expected):
            torch.testing.assert_close(o, e, rtol=1e-14, atol=1e-15)
    assert counter.frame_count == 1


# ---------------------------------------------------------------- cache mode


def loader(seed: int = 0) -> torch.utils.data.DataLoader:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(40, 6, generator=gen, dtype=F64)
    y = torch.randint(0, 3, (40,), generator=gen)
    data = torch.utils.data.TensorDataset(x, y)
    return torch.utils.data.DataLoader(data, batch_size=8, shuffle=True, drop_last=True)


def test_cache_mode_equals_recompute_mode_bit_for_bit() -> None:
    """refresh_snapshot leaves the global RNG as it was, so the epoch that follows replays the
    snapshot pass's shuffle and dropout masks: cached h_i is the recomputed h bit for bit."""
    data = loader()
    models = [make_model(), make_model()]
    opts = [AlphaSVRG(torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9), 0.5) for m in models]
    for cache, model, opt in zip((False, True), models, opts):
        torch.manual_seed(8)
        for _ in range(3):
            opt.refresh_snapshot(model, data, loss_fn, cache=cache)
            assert opt.num_cached == (len(data) if cache else 0)
            for i, (x, y) in enumerate(data):
                opt.zero_grad()
                loss_fn(model(x), y).backward()
                if cache:
                    opt.use_cached(i)
                else:
                    with opt.at_snapshot(model):
                        loss_fn(model(x), y).backward()
                opt.step()
    assert_equal(models[1], models[0])
    assert opts[1].step_count == 15
    resumed = AlphaSVRG(torch.optim.SGD(make_model().parameters(), lr=0.1, momentum=0.9))
    resumed.load_state_dict(opts[1].state_dict())
    assert resumed.num_cached == len(data)


def test_cache_memory_estimate_is_checked_before_filling() -> None:
    model = make_model()
    opt = AlphaSVRG(torch.optim.SGD(model.parameters(), lr=0.1), 0.5)
    data = make_data(num_batches=4)
    per_batch = sum(p.numel() for p in model.parameters()) * 8
    calls = []

    def counting_loss(out: Tensor, y: Tensor) -> Tensor:
        calls.append(1)
        return loss_fn(out, y)

    with pytest.raises(MemoryBudgetError, match=rf"4 batches × {per_batch:,} bytes") as info:
        opt.refresh_snapshot(model, data, counting_loss, cache=True, max_cache_bytes=1000)
    assert "max_cache_bytes=1,000" in str(info.value) and "cache=False" in str(info.value)
    assert not calls and opt.snapshot is None
    # a generator has no len(): the budget is checked while filling
    with pytest.raises(MemoryBudgetError, match=r"2 batches"):
        opt.refresh_snapshot(model, iter(data), loss_fn, cache=True, max_cache_bytes=per_batch + 1)
    opt.refresh_snapshot(model, data, loss_fn, cache=True, max_cache_bytes=4 * per_batch)
    assert opt.num_cached == 4


# ---------------------------------------------------------------- errors name the fix


def test_errors_name_the_value_and_the_fix() -> None:
    model = make_model()
    data = make_data()
    base = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(InvalidArgumentError, match=r"alpha has 2 values .* 1 param groups"):
        AlphaSVRG(base, alpha=[0.5, 0.5])
    with pytest.raises(InvalidArgumentError, match="torch.optim.Optimizer"):
        AlphaSVRG(model, 0.5)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="snapshot_interval=0"):
        AlphaSVRG(base, 0.5, snapshot_interval=0)
    with pytest.raises(InvalidArgumentError, match="named_parameters=model.named_parameters"):
        AlphaSVRG(base, PerLayer({"0.weight": 1.0}, default=0.5))
    opt = AlphaSVRG(base, 0.5, snapshot_interval=2)
    opt.zero_grad()
    with pytest.raises(GradvarError, match=r"call opt\.refresh_snapshot"):
        with opt.at_snapshot(model):
            pass
    with pytest.raises(InvalidArgumentError, match="not parameters of model"):
        opt.refresh_snapshot(nn.Linear(2, 2), data, loss_fn)
    opt.refresh_snapshot(model, data, loss_fn)
    loss_fn(model(data[0][0]), data[0][1]).backward()
    with pytest.raises(GradvarError, match="no snapshot gradient h"):
        opt.step()
    with pytest.raises(GradvarError, match="use_cached needs cache mode"):
        opt.use_cached(0)
    opt.zero_grad()
    with opt.at_snapshot(model):
        loss_fn(model(data[0][0]), data[0][1]).backward()
    with pytest.raises(GradvarError, match=r"mark_batch\(\) before every micro-batch"):
        with opt.at_snapshot(model):
            pass
    opt.step()
    svrg_step(model, opt, *data[1])
    assert opt.snapshot_due
    with pytest.raises(GradvarError, match="snapshot is 2 steps old but snapshot_interval=2"):
        svrg_step(model, opt, *data[2])
    opt.zero_grad()
    opt.refresh_snapshot(model, data, loss_fn, cache=True)
    with pytest.raises(InvalidArgumentError, match=r"index must be in \[0, 4\).*index=4"):
        opt.use_cached(4)


def test_add_param_group_takes_its_alpha_and_needs_a_new_snapshot() -> None:
    model = make_model(batchnorm=False)
    opt = AlphaSVRG(torch.optim.SGD(model[0].parameters(), lr=0.1), alpha=[0.5])
    with pytest.raises(InvalidArgumentError, match="'alpha': 0.5"):
        opt.add_param_group({"params": model[3].parameters()})
    data = make_data()
    opt.refresh_snapshot(model, data, loss_fn)
    opt.add_param_group({"params": model[3].parameters(), "alpha": 1.0})
    assert opt.current_alpha() == [0.5, 0.5, 1.0, 1.0]
    opt.zero_grad()
    with pytest.raises(GradvarError, match="param groups changed"):
        with opt.at_snapshot(model):
            pass
    opt.refresh_snapshot(model, data, loss_fn)
    svrg_step(model, opt, *data[0])


def test_coordinate_alpha_matches_hand_written_per_coordinate_svrg() -> None:
    """v = g − α A ⊙ (h − μ̃) with a per-coordinate A, against a hand-written loop."""
    import copy

    import torch.nn.functional as F

    from gradvar.errors import InvalidArgumentError as _Invalid
    from gradvar.optim import AlphaSVRG as _AlphaSVRG

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))
    model = model.double()
    reference = copy.deepcopy(model)
    data = [(torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 3, (8,))) for _ in range(4)]
    coord = {n: torch.rand_like(p) * 2 - 0.5 for n, p in model.named_parameters()}
    opt = _AlphaSVRG(
        torch.optim.SGD(model.parameters(), lr=0.1),
        alpha=0.7,
        named_parameters=model.named_parameters(),
    )
    opt.set_coordinate_alpha(coord)
    opt.refresh_snapshot(model, data, F.cross_entropy)
    snapshot = copy.deepcopy(reference)
    mean = [torch.zeros_like(p) for p in reference.parameters()]
    for x, y in data:
        snapshot.zero_grad()
        F.cross_entropy(snapshot(x), y).backward()
        for m, p in zip(mean, snapshot.parameters()):
            m += p.grad / len(data)
    for x, y in data:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        with opt.at_snapshot(model):
            F.cross_entropy(model(x), y).backward()
        opt.step()
        reference.zero_grad()
        snapshot.zero_grad()
        F.cross_entropy(reference(x), y).backward()
        F.cross_entropy(snapshot(x), y).backward()
        with torch.no_grad():
            for (name, p), s, m in zip(reference.named_parameters(), snapshot.parameters(), mean):
                p -= 0.1 * (p.grad - 0.7 * coord[name] * (s.grad - m))
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    restored = _AlphaSVRG(
        torch.optim.SGD(model.parameters(), lr=0.1),
        alpha=0.7,
        named_parameters=model.named_parameters(),
    )
    restored.load_state_dict(opt.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(restored._coordinate_alpha, opt._coordinate_alpha))
    with pytest.raises(_Invalid, match="shape"):
        opt.set_coordinate_alpha({"0.weight": torch.ones(2)})
    with pytest.raises(_Invalid, match="needs parameter names"):
        _AlphaSVRG(torch.optim.SGD(model.parameters(), lr=0.1)).set_coordinate_alpha(coord)
