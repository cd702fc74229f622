"""Metric 3 beyond a one-chunk probe: the stored-blocks Gram route and Lanczos passes.

A mixin of :class:`gradvar.probe.Probe` (it uses the probe's chunking and engine): exact Gram
matrices from the blocks a :class:`~gradvar.spectrum.GramStore` kept, the Gram matrix of its
subsample, or Lanczos — one more pass over the data per iteration, every layer and the whole
model advanced together.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from gradvar.errors import InvalidArgumentError
from gradvar.spectrum import GramStore, Lanczos
from gradvar.stats import GradientSums

__all__ = ["TopEigenvalues"]


class TopEigenvalues:
    """Metric-3 routes for :class:`~gradvar.probe.Probe` (see the module docstring)."""

    def _top_eigenvalues(
        self,
        sums: GradientSums,
        store: GramStore,
        batches: Iterable[Any],
        current: tuple,
        rank: int,
        world: int,
    ) -> tuple[dict[str | None, float] | None, str]:
        if self.top_eigenvalue == "none":
            return None, "none"
        if self.top_eigenvalue != "lanczos" and store.blocks and not store.overflowed:
            return store.top_eigenvalues(self.groups), "gram"
        if self.top_eigenvalue == "auto" and store.blocks:
            exact = store.n == sums.n  # the subsample is every sample
            return store.top_eigenvalues(self.groups), "gram" if exact else "gram-subsample"
        if self.top_eigenvalue == "gram" and world == 1:
            raise InvalidArgumentError(
                f"top_eigenvalue='gram' needs the gradient blocks of all {sums.n} samples in "
                f"memory, over gram_max_samples={self.gram_max_samples} or gram_max_bytes="
                f"{self.gram_max_bytes}; raise those or use top_eigenvalue='lanczos'"
            )
        return self._lanczos(sums, batches, current, rank, world), "lanczos"

    def _lanczos(
        self, sums: GradientSums, batches: Iterable[Any], current: tuple, rank: int, world: int
    ) -> dict[str | None, float]:
        """Top eigenvalues by Lanczos; each iteration is one more pass over the data.

        C v = (1/n) Σ_i g_i ⟨g_i, v⟩ − ḡ ⟨ḡ, v⟩, all problems (each layer and the whole model)
        advanced together in the same pass.
        """
        problems: dict[str | None, list[str]] = {**self.groups, None: list(self.param_names)}
        sizes = {p: math.prod(shape) for p, shape in sums.shapes.items()}
        solvers = {
            key: Lanczos(
                sum(sizes[p] for p in names),
                max_iter=self.lanczos_max_iter,
                tol=self.lanczos_tol,
                seed=self.seed,
            )
            for key, names in problems.items()
        }
        n = sums.tensors["n"]
        mean = {p: sums.get("g", p) / n for p in self.param_names}
        iteration = 0
        while not all(s.done for s in solvers.values()):
            iteration += 1
            active = {k: s for k, s in solvers.items() if not s.done}
            vecs = {k: self._split(s.vector, problems[k], sizes) for k, s in active.items()}
            acc = {k: {p: torch.zeros_like(v) for p, v in vecs[k].items()} for k in active}
            for index, x, y in self._chunks(batches, rank, world, f"lanczos {iteration}"):
                g, _, _ = self._blocks(index, x, y, current, None)
                for k in active:
                    coef = sum(g[p].dots(vecs[k][p]) for p in problems[k])
                    for p in problems[k]:
                        acc[k][p] += g[p].weighted_sum(coef).reshape(-1)
            for k, solver in active.items():
                flat = torch.cat([acc[k][p] for p in problems[k]])
                if world > 1:
                    import torch.distributed as dist

                    dist.all_reduce(flat)
                gbar = torch.cat([mean[p] for p in problems[k]])
                v = solver.vector.to(flat.device)
                solver.feed((flat / n - gbar * (gbar @ v)).cpu())
        return {k: s.value for k, s in solvers.items()}

    def _split(self, flat: Tensor, names: list[str], sizes: dict[str, int]) -> dict[str, Tensor]:
        out, offset = {}, 0
        for p in names:
            out[p] = flat[offset : offset + sizes[p]].to(self._device())
            offset += sizes[p]
        return out
