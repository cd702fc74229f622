"""Closed forms (OuterBlock) against the materialised rows (DenseBlock) and the vmap engine."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from architectures import make
from hypothesis import given, settings
from hypothesis import strategies as st

from gradvar._utils import capture_rng
from gradvar.blocks import DenseBlock, OuterBlock, cat_blocks
from gradvar.grads import GradientEngine, per_sample_grads


def _pair(n: int, out: int, inp: int, seed: int) -> tuple[OuterBlock, DenseBlock]:
    gen = torch.Generator().manual_seed(seed)
    d = torch.randn(n, out, generator=gen, dtype=torch.float64)
    a = torch.randn(n, inp, generator=gen, dtype=torch.float64)
    outer = OuterBlock(d, a)
    return outer, DenseBlock(outer.rows())


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 9), st.integers(1, 6), st.integers(1, 6), st.integers(0, 10_000))
def test_outer_block_reductions_equal_dense(n: int, out: int, inp: int, seed: int) -> None:
    outer, dense = _pair(n, out, inp, seed)
    outer2, dense2 = _pair(n, out, inp, seed + 1)
    gen = torch.Generator().manual_seed(seed + 2)
    w = torch.randn(n, generator=gen, dtype=torch.float64)
    v = torch.randn(out, inp, generator=gen, dtype=torch.float64)
    close = lambda a, b: torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)  # noqa: E731
    close(outer.sum(), dense.sum())
    close(outer.sum_sq(), dense.sum_sq())
    close(outer.sum_cross(outer2), dense.sum_cross(dense2))
    close(outer.norms_sq(), dense.norms_sq())
    close(outer.weighted_sum(w), dense.weighted_sum(w))
    close(outer.dots(v), dense.dots(v))
    close(outer.gram(), dense.gram())
    keep = w > 0
    close(outer.select(keep).sum(), dense.select(keep).sum())
    close(cat_blocks([outer, outer2]).gram(), cat_blocks([dense, dense2]).gram())


def test_engine_closed_form_equals_vmap_on_mlp_both_units() -> None:
    model, x, y = make("mlp")
    names = [n for n, _ in model.named_parameters()]
    params = {k: v.detach() for k, v in model.named_parameters()}
    for unit in (None, 3):
        fast = GradientEngine(model, F.cross_entropy, names, unit_size=unit)
        slow = GradientEngine(model, F.cross_entropy, names, unit_size=unit, closed_form=False)
        assert len(fast.closed_form_params) == 6 and slow.closed_form_params == []
        state = capture_rng()
        a = fast.blocks(params, {}, x, y, state)
        b = slow.blocks(params, {}, x, y, state)
        for name in names:
            torch.testing.assert_close(a[name].rows(), b[name].rows(), rtol=1e-10, atol=1e-12)


def test_reused_linear_sums_its_calls() -> None:
    lin = torch.nn.Linear(4, 4).double()

    class Twice(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = lin

        def forward(self, x):
            return self.lin(torch.tanh(self.lin(x)))

    model = Twice()
    x = torch.randn(5, 4, dtype=torch.float64)
    y = torch.randint(0, 4, (5,))
    engine = GradientEngine(model, F.cross_entropy, ["lin.weight", "lin.bias"])
    blocks = engine.blocks(dict(model.named_parameters()), {}, x, y, capture_rng())
    assert engine.routes == {"lin.weight": "linear", "lin.bias": "linear"}
    ref = per_sample_grads(model, x, y, F.cross_entropy, rules=False)
    torch.testing.assert_close(blocks["lin.weight"].rows(), ref["lin.weight"])
    torch.testing.assert_close(blocks["lin.bias"].rows(), ref["lin.bias"])


def test_per_sample_grads_chunked_matches_loop() -> None:
    model, x, y = make("cnn")
    full = per_sample_grads(model, x, y, F.cross_entropy)
    chunked = per_sample_grads(model, x, y, F.cross_entropy, chunk_size=5)
    for i in range(x.shape[0]):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(full[name][i], p.grad, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(chunked[name][i], p.grad, rtol=1e-10, atol=1e-12)


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 9), st.integers(1, 6), st.integers(1, 6), st.integers(0, 10_000))
def test_fused_moments_equal_separate_reductions(n: int, out: int, inp: int, seed: int) -> None:
    import gradvar.blocks._base as blocks

    outer, dense = _pair(n, out, inp, seed)
    _, dense2 = _pair(n, out, inp, seed + 1)
    gen = torch.Generator().manual_seed(seed)
    weights = torch.randn(3, n, generator=gen, dtype=torch.float64)
    expected = torch.stack([dense.weighted_sum(w) for w in weights])
    old = blocks.CPU_SLAB_BYTES
    blocks.CPU_SLAB_BYTES = 8 * n * 2  # force slabs of a couple of rows
    try:
        for block in (outer, dense):
            sums, squares = block.moments(weights)
            torch.testing.assert_close(sums, expected, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(squares, dense.sum_sq(), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(
            dense.sum_cross(dense2), (dense.rows() * dense2.rows()).sum(0), rtol=1e-10, atol=1e-12
        )
    finally:
        blocks.CPU_SLAB_BYTES = old
    assert torch.equal(dense.finite(), torch.ones(n, dtype=torch.bool))
    bad = dense.rows().clone()
    bad[0, 0, 0] = float("nan")
    assert not bool(DenseBlock(bad).finite()[0])


def test_per_sample_grads_chunks_draw_independent_dropout_masks() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 32), torch.nn.Dropout(0.5), torch.nn.Linear(32, 3)
    ).double()
    x = torch.randn(1, 6, dtype=torch.float64).repeat(8, 1)  # the same example 8 times
    y = torch.zeros(8, dtype=torch.long)
    torch.manual_seed(1)
    rows = per_sample_grads(model, x, y, F.cross_entropy, chunk_size=4)["2.weight"]
    assert not torch.equal(rows[0], rows[4])  # chunk 2 must not reuse chunk 1's masks
    torch.manual_seed(1)
    again = per_sample_grads(model, x, y, F.cross_entropy, chunk_size=4)["2.weight"]
    assert torch.equal(rows, again)  # reproducible from the global seed
