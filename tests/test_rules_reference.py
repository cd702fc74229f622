"""The per-layer engine against the float64 per-example backward() loop on imitations of the
networks users bring (ViT, ResNet, GPT-2, GRU/LSTM), the tying cases, GroupNorm and a frozen
layer — every statistic, per example and per mini-batch, and the route each parameter took."""

from __future__ import annotations

import math

import pytest
import reference
import torch
import torch.nn.functional as F
from architectures import perturbed
from modern import make_modern, token_loss

from gradvar import Probe
from gradvar._utils import capture_rng
from gradvar.grads import GradientEngine

PAIRED = [
    "m1_cosine", "m2_total_variance", "m3_top_eigenvalue", "grad_norm_sq", "gns_simple",
    "gsnr_mean", "rho_mean", "rho_layer", "alpha_star_mean", "alpha_star_layer",
    "alpha_star_mean_ref", "vr_variance@1.0", "vr_variance_ratio@1.0",
]  # fmt: skip

EXPECTED_ROUTES = {
    "vit": {"cls_token": "direct", "pos_embed": "direct", "gamma": "direct",
            "patch_embed.weight": "conv", "norm1.weight": "layer_norm", "qkv.weight": "linear"},
    "resnet": {"conv1.weight": "conv", "bn1.weight": "batch_norm",
               "layer2.downsample.1.bias": "batch_norm", "fc.weight": "linear"},
    "gpt": {"wte.weight": "embedding+linear", "wpe.weight": "embedding",
            "c_attn.weight": "conv1d-transformers", "ln_f.bias": "layer_norm"},
    "gru": {"rnn.weight_ih_l0": "vmap", "head.weight": "linear"},
    "lstm_bi2": {"rnn.weight_hh_l1_reverse": "vmap"},
    "linear_twice": {"lin.weight": "linear", "lin.bias": "linear"},
    "shared_weight": {"a.weight": "linear", "b.bias": "linear"},
    "conv_groupnorm": {"conv2.weight": "conv", "gn.weight": "group_norm"},
    "frozen": {"2.weight": "linear"},
}  # fmt: skip


def _loss(arch: str):
    return token_loss if arch == "gpt" else F.cross_entropy


def _trainable(model) -> list[str]:
    return [k for k, p in model.named_parameters() if p.requires_grad]


@pytest.mark.parametrize("arch", list(EXPECTED_ROUTES))
@pytest.mark.parametrize("unit", ["sample", 3])
def test_every_statistic_matches_backward_loop(arch: str, unit) -> None:
    model, x, y = make_modern(arch)
    snapshot = perturbed(model, scale=0.05)
    loss = _loss(arch)
    result = Probe(model, loss, unit=unit).run((x, y), snapshot=snapshot)
    for name, route in EXPECTED_ROUTES[arch].items():
        assert result.config["routes"][name] == route, (name, result.config["route_reasons"])
    model.eval() if arch == "resnet" else None  # BatchNorm policy 'eval' in the reference
    b = None if unit == "sample" else unit
    names = _trainable(model)
    rows_g = reference.loop_grads(model, loss, x, y, unit=b, params=names)
    rows_h = reference.loop_grads(model, loss, x, y, state=snapshot, unit=b, params=names)
    expected = reference.stats(
        reference.flat(rows_g, names),
        reference.flat(rows_h, names),
        alphas=(1.0,),
        segments=reference.sizes(rows_g, names),
    )
    table = result.table()
    for metric in PAIRED:
        got = float(table.loc["__all__", metric])
        assert math.isclose(got, expected[metric], rel_tol=1e-7, abs_tol=1e-12), (metric, got)


@pytest.mark.parametrize("arch", ["vit", "resnet", "gpt", "conv_groupnorm", "shared_weight"])
def test_rule_blocks_equal_vmap_rows(arch: str) -> None:
    model, x, y = make_modern(arch)
    model.eval() if arch == "resnet" else None
    names = _trainable(model)
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())
    state = capture_rng()
    fast = GradientEngine(model, _loss(arch), names).blocks(params, buffers, x, y, state)
    slow = GradientEngine(model, _loss(arch), names, closed_form=False)
    slow_blocks = slow.blocks(params, buffers, x, y, state)
    for name in names:
        torch.testing.assert_close(
            fast[name].rows(), slow_blocks[name].rows(), rtol=1e-9, atol=1e-12
        )


def test_an_uncounted_use_is_caught_and_falls_back() -> None:
    """A weight owned by a Linear but also used through F.linear elsewhere (a tied head
    written by hand): the rule alone would miss a use; verification sends it to vmap."""

    class HandTied(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp = torch.nn.Linear(4, 4)
            self.head = torch.nn.Linear(4, 3)

        def forward(self, x):
            h = torch.tanh(self.inp(x))
            return self.head(h + F.linear(h, self.inp.weight))

    model = HandTied().double()
    x = torch.randn(9, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (9,))
    result = Probe(model, F.cross_entropy).run((x, y))
    assert result.config["routes"]["inp.weight"] == "vmap"
    assert "disagreed" in result.config["route_reasons"]["inp.weight"]
    rows = reference.loop_grads(model, F.cross_entropy, x, y)
    names = list(rows)
    expected = reference.stats(
        reference.flat(rows, names), None, segments=reference.sizes(rows, names)
    )
    got = float(result.table().loc["__all__", "m2_total_variance"])
    assert math.isclose(got, expected["m2_total_variance"], rel_tol=1e-9)


def test_user_rule_is_used_for_their_module() -> None:
    from gradvar.blocks import DenseBlock
    from gradvar.grads import Rule, register_rule
    from gradvar.grads.rules._base import _USER

    class Scale(torch.nn.Module):  # y = x * s, s per feature
        def __init__(self) -> None:
            super().__init__()
            self.s = torch.nn.Parameter(torch.ones(4))

        def forward(self, x):
            return x * self.s

    class ScaleRule(Rule):
        name = "scale"
        params = ("s",)

        def blocks(self, module, call, n):
            return {"s": DenseBlock(call.grad * call.args[0])}

    register_rule(Scale, ScaleRule())
    try:
        model = torch.nn.Sequential(
            torch.nn.Linear(3, 4), Scale(), torch.nn.Tanh(), torch.nn.Linear(4, 2)
        ).double()
        x = torch.randn(7, 3, dtype=torch.float64)
        y = torch.randint(0, 2, (7,))
        result = Probe(model, F.cross_entropy).run((x, y))
        assert result.config["routes"]["1.s"] == "scale"
        rows = reference.loop_grads(model, F.cross_entropy, x, y)
        expected = reference.stats(rows["1.s"].double(), None)
        got = float(result.table().loc["1.s", "m2_total_variance"])
        assert math.isclose(got, expected["m2_total_variance"], rel_tol=1e-9)
    finally:
        _USER.clear()


def test_out_of_memory_chunk_is_split_and_retried(monkeypatch) -> None:
    model, x, y = make_modern("vit")
    probe = Probe(model, F.cross_entropy, chunk_size=12)
    real = probe.engine.blocks

    def flaky(params, buffers, inputs, targets, rng=None):
        if inputs.shape[0] > 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(params, buffers, inputs, targets, rng)

    monkeypatch.setattr(probe.engine, "blocks", flaky)
    result = probe.run((x, y), snapshot=perturbed(model, scale=0.05))
    assert result.config["oom_splits"] == 3 and result.n == 12  # 12 → 6+6 → 3+3+3+3
    whole = Probe(model, F.cross_entropy).run((x, y), snapshot=perturbed(model, scale=0.05))
    for metric in ("m2_total_variance", "alpha_star_layer", "rho_mean"):
        assert math.isclose(result.value(metric), whole.value(metric), rel_tol=1e-9)


def test_nonfinite_names_layer_and_example_through_rules() -> None:
    from gradvar.errors import NonFiniteGradientError

    model, x, y = make_modern("conv_groupnorm")
    x = x.clone()
    x[5, 0, 3] = float("nan")
    with pytest.raises(NonFiniteGradientError, match=r"example 5 \(current weights\)"):
        Probe(model, F.cross_entropy).run((x, y))


def test_empty_data_and_single_sample_are_named_errors() -> None:
    from gradvar.errors import InvalidArgumentError

    model, x, y = make_modern("frozen")
    with pytest.raises(InvalidArgumentError, match="empty.*at least 2"):
        Probe(model, F.cross_entropy).run((x[:0], y[:0]))
    with pytest.raises(InvalidArgumentError, match="at least 2"):
        Probe(model, F.cross_entropy).run((x[:1], y[:1]))
    # data that shrinks to nothing after the checks (here: skipped non-finite samples) is
    # caught after the pass, still by name
    bad = x[:3].clone()
    bad[:, 0] = float("nan")
    with pytest.raises(InvalidArgumentError, match="at least 2 samples"):
        Probe(model, F.cross_entropy, skip_nonfinite=True).run((bad, y[:3]))


@pytest.mark.parametrize("chunk_size", [6, None])  # two chunks; one (Gram fused with moments)
def test_subsampled_top_eigenvalue_is_stated_and_exact_for_the_subsample(
    chunk_size: int | None,
) -> None:
    model, x, y = make_modern("vit", n=12)
    probe = Probe(
        model, F.cross_entropy, chunk_size=chunk_size, gram_max_bytes=1, gram_subsample=5
    )
    result = probe.run((x, y))
    assert result.config["top_eigenvalue"] == "gram-subsample"
    assert result.config["top_eigenvalue_samples"] == 5 and result.value("m3_samples") == 5
    rows = reference.loop_grads(model, F.cross_entropy, x[:5], y[:5])
    names = list(rows)
    sub = reference.stats(reference.flat(rows, names), None, segments=reference.sizes(rows, names))
    assert math.isclose(result.value("m3_top_eigenvalue"), sub["m3_top_eigenvalue"], rel_tol=1e-7)


@pytest.mark.parametrize("arch", ["resnet", "vit", "gpt", "linear_twice", "shared_weight"])
def test_chunks_after_the_verified_first_equal_one_chunk(arch: str) -> None:
    """Chunks after the first differentiate to the captured outputs only (or to the weights
    where an output was modified in place, as in the ResNet): the same statistics."""
    model, x, y = make_modern(arch)
    snapshot = perturbed(model, scale=0.05)
    one = Probe(model, _loss(arch)).run((x, y), snapshot=snapshot)
    many = Probe(model, _loss(arch), chunk_size=4).run((x, y), snapshot=snapshot)
    for key, value in one.values.items():
        if key[1] in ("m3_top_eigenvalue", "m3_samples"):
            continue  # exact Gram over all chunks vs the one chunk: equal, but tested elsewhere
        assert math.isclose(many.values[key], value, rel_tol=1e-9, abs_tol=1e-13), key


def test_instance_norm_with_running_stats_falls_under_the_batchnorm_policy() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3), torch.nn.InstanceNorm2d(3, affine=True, track_running_stats=True),
        torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 3),
    ).double()  # fmt: skip
    with torch.no_grad():  # non-trivial running statistics
        model(torch.randn(8, 1, 6, 6, dtype=torch.float64) * 2 + 1)
    before = model[1].running_mean.clone()
    x = torch.randn(10, 1, 6, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (10,))
    result = Probe(model, F.cross_entropy).run((x, y), snapshot=perturbed(model, scale=0.05))
    assert result.config["routes"]["1.weight"] == "instance_norm"
    assert torch.equal(model[1].running_mean, before)  # the probe never updates them
    model.eval()
    rows = reference.loop_grads(model, F.cross_entropy, x, y)
    names = list(rows)
    expected = reference.stats(
        reference.flat(rows, names), None, segments=reference.sizes(rows, names)
    )
    assert math.isclose(
        result.value("m2_total_variance"), expected["m2_total_variance"], rel_tol=1e-9
    )


def test_batchnorm_without_running_stats_is_refused_by_name() -> None:
    from gradvar.errors import UnsupportedModelError

    model = torch.nn.Sequential(
        torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4, track_running_stats=False)
    )
    with pytest.raises(UnsupportedModelError, match=r"\['1'\].*track_running_stats=True"):
        Probe(model, F.cross_entropy)


def test_float32_model_at_gsnr_1e4_matches_the_float64_loop_to_1e_6() -> None:
    """README "Precision": a float32 model with a sequence Linear (T > 1: per-example
    gradients formed by a float32 batched matmul) and a 2-D Linear head (float64 products of
    its float32 factors), high mean and low variance (GSNR ≈ 5e2 … 4e4): every layer's
    statistics within 1e-6 relative of the float64 per-example loop on a float64 copy."""
    torch.manual_seed(0)

    class Seq(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(4, 6)
            self.head = torch.nn.Linear(6, 1)

        def forward(self, x):
            return self.head(torch.tanh(self.proj(x)).mean(1))

    def loss(out, target):
        return ((out - target - 3.0) ** 2).mean()

    model, n = Seq(), 64
    x = 1.0 + 0.1 * torch.randn(n, 5, 4)  # nearly identical examples: a high mean gradient
    y = torch.zeros(n, 1)
    snapshot = {k: v + 1e-3 * torch.randn_like(v) for k, v in model.state_dict().items()}
    result = Probe(model, loss).run((x, y), snapshot=snapshot)
    exact = Seq().double()
    exact.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    x64, y64 = x.double(), y.double()
    snap64 = {k: v.double() for k, v in snapshot.items()}
    g = reference.loop_grads(exact, loss, x64, y64)
    h = reference.loop_grads(exact, loss, x64, y64, state=snap64)
    table = result.table()
    gsnr = [float(table.loc[k, "gsnr_mean"]) for k in g]
    assert min(gsnr) > 300 and max(gsnr) < 1e5 and 3e3 < sorted(gsnr)[2] < 3e4
    for name in g:
        expected = reference.stats(g[name].reshape(n, -1), h[name].reshape(n, -1), alphas=(1.0,))
        for metric in ("m2_total_variance", "grad_norm_sq", "rho_layer", "alpha_star_layer"):
            got = float(table.loc[name, metric])
            assert math.isclose(got, expected[metric], rel_tol=1e-6), (name, metric, got)
        # vr = Var(g) − 2 Cov + Var(h) cancels when θ̃ ≈ θ: relative to its terms' size
        scale = 4 * expected["m2_total_variance"]
        got = float(table.loc[name, "vr_variance@1.0"])
        assert abs(got - expected["vr_variance@1.0"]) <= 1e-6 * scale, (name, got)


class PackedLSTM(torch.nn.Module):
    """Variable-length sequences: zero-padded inputs, lengths from the padding, packed."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = torch.nn.LSTM(3, 4, batch_first=True)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x):
        lengths = (x.abs().sum(-1) > 0).sum(1).cpu()
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, True, enforce_sorted=False)
        _, (h, _) = self.rnn(packed)
        return self.head(h[-1])


def test_packed_variable_length_sequences_go_through_the_loop_exactly() -> None:
    torch.manual_seed(0)
    model = PackedLSTM().double()
    x = torch.randn(7, 5, 3, dtype=torch.float64)
    for i, length in enumerate([5, 2, 4, 1, 3, 5, 2]):
        x[i, length:] = 0
    y = torch.randint(0, 3, (7,))
    result = Probe(model, F.cross_entropy).run((x, y), snapshot=perturbed(model, scale=0.05))
    routes = result.config["routes"]
    assert routes["rnn.weight_ih_l0"] == "loop" and routes["head.weight"] == "linear"
    assert "vmap failed" in result.config["route_reasons"]["rnn.weight_ih_l0"]
    rows = reference.loop_grads(model, F.cross_entropy, x, y)
    names = list(rows)
    expected = reference.stats(
        reference.flat(rows, names), None, segments=reference.sizes(rows, names)
    )
    for metric in ("m2_total_variance", "m1_cosine", "m3_top_eigenvalue"):
        assert math.isclose(result.value(metric), expected[metric], rel_tol=1e-9), metric


def test_convnext_channels_first_norm_depthwise_conv_and_layer_scale_are_rules() -> None:
    """gradvar.zoo's ConvNeXt (not written for the engine): depthwise 7×7 convolutions, a
    channels-first LayerNorm subclass, layer-scale γ — every parameter by a rule, and every
    statistic equal to the vmap-only route."""
    from gradvar.zoo import build_model

    model = build_model("convnext", seed=0).double().eval()
    x = torch.randn(5, 1, 28, 28, dtype=torch.float64)
    y = torch.randint(0, 10, (5,))
    snapshot = perturbed(model, scale=0.01)
    fast = Probe(model, F.cross_entropy).run((x, y), snapshot=snapshot)
    assert "vmap" not in fast.config["routes"].values(), fast.config["route_reasons"]
    slow = Probe(model, F.cross_entropy, closed_form=False).run((x, y), snapshot=snapshot)
    for key, value in slow.values.items():
        assert math.isclose(fast.values[key], value, rel_tol=1e-9, abs_tol=1e-13), key


def test_modules_without_rules_fall_back_exactly_with_reasons() -> None:
    """nn.TransformerEncoderLayer (MultiheadAttention), PReLU and Bilinear: vmap for those
    parameters, rules for the rest, the same statistics as vmap everywhere."""

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(20, 8)
            self.layer = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
            self.act = torch.nn.PReLU()
            self.bil = torch.nn.Bilinear(8, 8, 3)

        def forward(self, tokens):
            h = self.act(self.layer(self.emb(tokens))).mean(1)
            return self.bil(h, h)

    torch.manual_seed(0)
    model = Encoder().double().eval()
    x, y = torch.randint(0, 20, (6, 5)), torch.randint(0, 3, (6,))
    fast = Probe(model, F.cross_entropy).run((x, y))
    routes, reasons = fast.config["routes"], fast.config["route_reasons"]
    assert routes["layer.linear1.weight"] == "linear" and routes["emb.weight"] == "embedding"
    for name in ("layer.self_attn.in_proj_weight", "act.weight", "bil.weight"):
        assert routes[name] == "vmap" and reasons[name]
    slow = Probe(model, F.cross_entropy, closed_form=False).run((x, y))
    for key, value in slow.values.items():
        assert math.isclose(fast.values[key], value, rel_tol=1e-9, abs_tol=1e-13), key
