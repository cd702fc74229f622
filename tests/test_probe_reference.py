"""Every probe statistic against the per-example backward() loop, on several architectures."""

from __future__ import annotations

import math

import pytest
import reference
import torch.nn.functional as F
from architectures import make, perturbed

from gradvar import Probe

ARCHS = ["mlp", "cnn", "transformer", "dropout"]
METRICS_SINGLE = [
    "m1_cosine",
    "m2_total_variance",
    "m3_top_eigenvalue",
    "grad_norm_sq",
    "gns_simple",
    "gsnr_mean",
]
METRICS_PAIRED = METRICS_SINGLE + [
    "rho_mean",
    "rho_layer",
    "alpha_star_mean",
    "alpha_star_layer",
    "alpha_star_mean_ref",
    "vr_variance@0.5",
    "vr_variance_ratio@0.5",
    "vr_variance@1.0",
    "vr_variance_ratio@1.0",
]


def _probe_values(result, layer: str) -> dict[str, float]:
    table = result.table()
    return {c: float(table.loc[layer, c]) for c in table.columns if c.split("@")[0] != "nonfinite"}


def _compare(result, rows_g, rows_h, metrics, groups):
    for layer, names in groups.items():
        expected = reference.stats(
            reference.flat(rows_g, names),
            None if rows_h is None else reference.flat(rows_h, names),
            alphas=(0.5, 1.0),
            segments=reference.sizes(rows_g, names),
        )
        got = _probe_values(result, layer)
        for metric in metrics:
            if metric == "alpha_star_mean_ref" and "in_proj_bias" in names:
                continue  # attention key biases: exact gradient 0, 0/0 rounding noise in float64
            e, g = expected[metric], got[metric]
            assert math.isclose(g, e, rel_tol=1e-7, abs_tol=1e-12), (layer, metric, g, e)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("unit", ["sample", 4])
def test_paired_statistics_match_backward_loop(arch: str, unit) -> None:
    model, x, y = make(arch)
    snapshot = perturbed(model)
    probe = Probe(model, F.cross_entropy, unit=unit, chunk_size=64, alphas=(0.5, 1.0))
    result = probe.run((x, y), snapshot=snapshot)
    b = None if unit == "sample" else unit
    model.train()
    rows_g = reference.loop_grads(model, F.cross_entropy, x, y, unit=b)
    rows_h = reference.loop_grads(model, F.cross_entropy, x, y, state=snapshot, unit=b)
    names = list(rows_g)
    groups = {k: [k] for k in names} | {"__all__": names}
    _compare(result, rows_g, rows_h, METRICS_PAIRED, groups)
    assert result.n == (x.shape[0] if b is None else x.shape[0] // b)


@pytest.mark.parametrize("arch", ["mlp", "transformer"])
def test_grouped_layers_and_lanczos_match_reference(arch: str) -> None:
    model, x, y = make(arch)
    probe = Probe(
        model,
        F.cross_entropy,
        layers="module",
        chunk_size=7,
        top_eigenvalue="lanczos",
        lanczos_tol=1e-10,
    )
    result = probe.run((x, y))
    assert result.config["top_eigenvalue"] == "lanczos"
    # chunk_size=7 makes several chunks; no dropout here, so the reference can use one pass.
    rows = reference.loop_grads(model, F.cross_entropy, x, y)
    _compare(result, rows, None, METRICS_SINGLE, {**probe.groups, "__all__": list(rows)})


def test_routes_are_recorded_and_attention_projections_fall_back() -> None:
    model, x, y = make("transformer")
    result = Probe(model, F.cross_entropy).run((x, y))
    routes = result.config["routes"]
    assert routes["embed.weight"] == "embedding" and routes["norm.weight"] == "layer_norm"
    assert routes["proj.weight"] == routes["head.weight"] == "linear"
    # MultiheadAttention uses its packed projection and out_proj through F.linear inside its
    # own code: no module call to hook, so those go through vmap, with the reason recorded.
    for name in ("attn.in_proj_weight", "attn.out_proj.weight"):
        assert routes[name] == "vmap" and result.config["route_reasons"][name]
    mlp, _, _ = make("mlp")
    assert len(Probe(mlp, F.cross_entropy).engine.closed_form_params) == 6


def test_mean_reduction_never_matters() -> None:
    model, x, y = make("mlp")
    a = Probe(model, F.cross_entropy).run((x, y)).values
    b = Probe(model, lambda o, t: F.cross_entropy(o, t, reduction="sum")).run((x, y)).values
    for key, value in a.items():
        assert math.isclose(value, b[key], rel_tol=1e-10, abs_tol=1e-14), key


def test_eval_mode_disables_dropout() -> None:
    model, x, y = make("dropout")
    result = Probe(model, F.cross_entropy, mode="eval").run((x, y))
    model.eval()
    rows = reference.loop_grads(model, F.cross_entropy, x, y)
    names = list(rows)
    _compare(result, rows, None, METRICS_SINGLE, {"__all__": names})
    assert model.training is False  # the probe restored the mode it found
