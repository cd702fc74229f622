"""Exact identities, invariances, merging, policies and errors of the probe."""

from __future__ import annotations

import math

import pytest
import reference
import torch
import torch.nn.functional as F
from architectures import make, perturbed
from hypothesis import given, settings
from hypothesis import strategies as st

from gradvar import Probe
from gradvar._utils import capture_rng
from gradvar.errors import InvalidArgumentError, NonFiniteGradientError, UnsupportedModelError
from gradvar.grads import GradientEngine
from gradvar.stats import GradientSums


@pytest.mark.parametrize("arch", ["mlp", "cnn", "transformer", "dropout"])
def test_snapshot_equal_current_gives_rho_one_alpha_one(arch: str) -> None:
    model, x, y = make(arch)
    result = Probe(model, F.cross_entropy, chunk_size=10).run((x, y), snapshot=model)
    for layer in [*result.sums.groups, "__all__"]:
        assert result.value("rho_mean", layer) == pytest.approx(1.0, abs=1e-9)
        assert result.value("alpha_star_mean", layer) == pytest.approx(1.0, abs=1e-9)
        assert result.value("alpha_star_layer", layer) == pytest.approx(1.0, abs=1e-9)
        m2 = result.value("m2_total_variance", layer)
        assert result.value("vr_variance", layer, alpha=1.0) == pytest.approx(0.0, abs=1e-12 * m2)


def test_vr_variance_is_minimised_at_alpha_star_layer() -> None:
    model, x, y = make("mlp")
    snapshot = perturbed(model, 0.1)
    result = Probe(model, F.cross_entropy).run((x, y), snapshot=snapshot)
    a = result.value("alpha_star_layer")
    best = Probe(model, F.cross_entropy, alphas=(a, a - 0.05, a + 0.05)).run((x, y), snapshot)
    v = [best.value("vr_variance", alpha=t) for t in (a, a - 0.05, a + 0.05)]
    assert v[0] < v[1] and v[0] < v[2]
    rho = result.value("rho_layer")
    assert v[0] == pytest.approx(result.value("m2_total_variance") * (1 - rho**2), rel=1e-9)


@settings(max_examples=8, deadline=None)
@given(st.integers(1, 30), st.sampled_from(["mlp", "cnn"]))
def test_chunking_never_changes_results(chunk: int, arch: str) -> None:
    model, x, y = make(arch)
    snapshot = perturbed(model)
    one = Probe(model, F.cross_entropy, chunk_size=64).run((x, y), snapshot)
    many = Probe(model, F.cross_entropy, chunk_size=chunk).run((x, y), snapshot)
    for key, value in one.values.items():
        assert math.isclose(many.values[key], value, rel_tol=1e-9, abs_tol=1e-14), key


@settings(max_examples=6, deadline=None)
@given(st.integers(1, 23))
def test_merged_sums_equal_one_pass(split: int) -> None:
    model, x, y = make("cnn")
    snapshot = perturbed(model)
    names = [n for n, _ in model.named_parameters()]
    engine = GradientEngine(model, F.cross_entropy, names)
    cur = ({k: v.detach() for k, v in model.named_parameters()}, {})
    snap = ({k: snapshot[k] for k in names}, {})
    shapes = {k: v.shape for k, v in model.named_parameters()}
    groups = {"all": names}

    def sums_of(xs, ys):
        s = GradientSums(shapes, groups, paired=True)
        state = capture_rng()
        s.update(engine.blocks(*cur, xs, ys, state), engine.blocks(*snap, xs, ys, state))
        return s

    whole = sums_of(x, y)
    merged = sums_of(x[:split], y[:split]).merge(sums_of(x[split:], y[split:]))
    for key, value in whole.tensors.items():
        torch.testing.assert_close(merged.tensors[key], value, rtol=1e-12, atol=1e-14)


def test_loader_batches_equal_one_tensor_pair() -> None:
    model, x, y = make("mlp")
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=5)
    a = Probe(model, F.cross_entropy, chunk_size=64).run((x, y)).values
    b = Probe(model, F.cross_entropy, chunk_size=64, progress=False).run(loader).values
    for key, value in a.items():
        assert math.isclose(b[key], value, rel_tol=1e-10, abs_tol=1e-14), key


def test_batchnorm_policies() -> None:
    model, x, y = make("batchnorm")
    with pytest.raises(UnsupportedModelError, match="batchnorm='eval'"):
        Probe(model, F.cross_entropy, batchnorm="refuse")
    with pytest.raises(InvalidArgumentError, match="batchnorm="):
        Probe(model, F.cross_entropy, batchnorm="freeze")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # eval: BatchNorm uses the running statistics.
    result = Probe(model, F.cross_entropy).run((x, y))
    model.eval()
    rows = reference.loop_grads(model, F.cross_entropy, x, y)
    expected = reference.stats(reference.flat(rows, list(rows)), None)
    assert result.value("m2_total_variance") == pytest.approx(expected["m2_total_variance"])
    assert result.config["batchnorm"] == "eval"
    # replace: running statistics := the probed data's population mean and biased variance.
    replaced = Probe(model, F.cross_entropy, batchnorm="replace", chunk_size=7).run((x, y))
    bn = model[1]
    with torch.no_grad():
        z = model[0](x)
        bn.running_mean.copy_(z.mean(0))
        bn.running_var.copy_(z.var(0, unbiased=False))
    rows = reference.loop_grads(model, F.cross_entropy, x, y)
    expected = reference.stats(reference.flat(rows, list(rows)), None)
    assert replaced.value("m2_total_variance") == pytest.approx(expected["m2_total_variance"])
    assert replaced.config["batchnorm"] == "replace"
    model.load_state_dict(before)
    assert not math.isclose(replaced.value("m2_total_variance"), result.value("m2_total_variance"))
    for k, v in model.state_dict().items():  # the probe never touched the buffers
        assert torch.equal(v, before[k])


def test_nonfinite_gradient_is_named_or_skipped() -> None:
    model, x, y = make("mlp")
    x = x.clone()
    x[7, 2] = float("inf")
    with pytest.raises(NonFiniteGradientError, match=r"layer '0\.weight' at example 7"):
        Probe(model, F.cross_entropy, chunk_size=5).run((x, y))
    result = Probe(model, F.cross_entropy, chunk_size=5, skip_nonfinite=True).run((x, y))
    assert result.n == x.shape[0] - 1
    assert result.value("nonfinite_skipped") == 1
    keep = torch.arange(x.shape[0]) != 7
    clean = Probe(model, F.cross_entropy).run((x[keep], y[keep]))
    assert result.value("m2_total_variance") == pytest.approx(clean.value("m2_total_variance"))


def test_records_have_the_design_columns() -> None:
    model, x, y = make("mlp")
    result = Probe(model, F.cross_entropy, unit=4).run((x, y), snapshot=perturbed(model))
    frame = result.to_frame(run="r", checkpoint="c", step=3, epoch=0.5, snapshot_step=0)
    assert list(frame.columns[:11]) == [
        "run",
        "checkpoint",
        "step",
        "epoch",
        "snapshot_step",
        "layer",
        "metric",
        "value",
        "n",
        "unit",
        "alpha",
    ]
    assert set(frame["unit"]) == {"4"} and set(frame["n"]) == {6}
    assert frame.loc[frame.metric == "vr_variance", "alpha"].notna().all()
    assert frame.loc[frame.metric == "m2_total_variance", "alpha"].isna().all()
    assert frame.duplicated(["layer", "metric", "alpha"]).sum() == 0


def test_bad_arguments_name_the_value() -> None:
    model, x, y = make("mlp")
    with pytest.raises(InvalidArgumentError, match="unit='batch'"):
        Probe(model, F.cross_entropy, unit="batch")
    with pytest.raises(InvalidArgumentError, match="chunk_size=0"):
        Probe(model, F.cross_entropy, chunk_size=0)
    with pytest.raises(InvalidArgumentError, match="layer 'x' matches no parameter"):
        Probe(model, F.cross_entropy, layers={"x": "nothing.*"})
    with pytest.raises(InvalidArgumentError, match="missing parameters"):
        Probe(model, F.cross_entropy).run((x, y), snapshot={"0.weight": model[0].weight})


def test_optimal_alpha_per_coordinate_matches_rows_estimator() -> None:
    from gradvar.metrics import optimal_alpha

    model, x, y = make("cnn")
    snapshot = perturbed(model)
    result = Probe(model, F.cross_entropy, chunk_size=5).run((x, y), snapshot=snapshot)
    got = result.optimal_alpha()
    rows_g = reference.loop_grads(model, F.cross_entropy, x, y)
    rows_h = reference.loop_grads(model, F.cross_entropy, x, y, state=snapshot)
    for name, alpha in got.items():
        expected = optimal_alpha(rows_g[name], rows_h[name]).reshape(alpha.shape)
        torch.testing.assert_close(alpha, expected, rtol=1e-7, atol=1e-9)
    with pytest.raises(InvalidArgumentError, match="paired"):
        Probe(model, F.cross_entropy).run((x, y)).optimal_alpha()


def test_one_shot_iterator_gives_the_same_lanczos_result() -> None:
    model, x, y = make("mlp")
    batches = [(x[i : i + 6], y[i : i + 6]) for i in range(0, 24, 6)]
    probe = Probe(model, F.cross_entropy, top_eigenvalue="lanczos", lanczos_tol=1e-10)
    from_list = probe.run(batches).value("m3_top_eigenvalue")
    from_generator = probe.run(b for b in batches).value("m3_top_eigenvalue")
    assert from_generator == pytest.approx(from_list, rel=1e-9)


def test_transform_is_seeded_per_chunk_and_shared_by_both_weight_sets() -> None:
    from gradvar.zoo import augment

    model, x, y = make("cnn")
    snapshot = perturbed(model)
    probe = Probe(model, F.cross_entropy, chunk_size=8, transform=augment, seed=3)
    first = probe.run((x, y), snapshot=snapshot)
    again = probe.run((x, y), snapshot=snapshot)
    assert first.values == again.values  # the same augmentation every time
    # by hand: augment each chunk with the generator the probe documents, then no transform
    pieces = [
        augment(x[i : i + 8], torch.Generator().manual_seed(3 * 1_000_003 + i // 8))
        for i in range(0, 24, 8)
    ]
    by_hand = Probe(model, F.cross_entropy, chunk_size=8, seed=3).run(
        (torch.cat(pieces), y), snapshot=snapshot
    )
    for key, value in by_hand.values.items():
        assert math.isclose(first.values[key], value, rel_tol=1e-10, abs_tol=1e-14), key
    plain = Probe(model, F.cross_entropy, chunk_size=8, seed=3).run((x, y), snapshot=snapshot)
    assert plain.value("m2_total_variance") != first.value("m2_total_variance")
