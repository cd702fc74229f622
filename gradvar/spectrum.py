"""Metric 3: the top eigenvalue of the gradient covariance, never forming the d×d matrix.

    λ_max( (1/n) Σ_i (g_i − ḡ)(g_i − ḡ)ᵀ ) = λ_max( P K P ) / n,   P = I − 11ᵀ/n,

where K_ij = ⟨g_i, g_j⟩ is the n×n Gram matrix. Two routes:

- :class:`GramStore` keeps every chunk's gradient blocks (compact: δ and a for ``nn.Linear``)
  and forms each layer's Gram matrix at the end — exact, one pass, memory ∝ n;
- :class:`Lanczos` is matrix-free: each iteration needs one product C v, which a caller gets
  from one more pass over the data as (1/n) Σ_i g_i ⟨g_i, v⟩ − ḡ⟨ḡ, v⟩ — memory ∝ |θ|.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from gradvar.blocks import GradBlock, cat_blocks

__all__ = [
    "centred_top_eigenvalue",
    "centred_top_eigenvalues",
    "top_eigenvalues_by_squaring",
    "top_eigenvalues_from_grams",
    "blocks_nbytes",
    "GramStore",
    "Lanczos",
]

_F64 = torch.float64
_DENSE_EIG_MAX = 1024
SQUARINGS = 30  # top_eigenvalues_by_squaring: C^(2^30); see its docstring for the error


def _centred(grams: Tensor) -> Tensor:
    """P K P (P = I − 11ᵀ/n) of Gram matrices K ``[..., n, n]``, float64, symmetrised."""
    k = grams.to(_F64)
    row = k.mean(-2, keepdim=True)
    centred = k - row - row.transpose(-1, -2) + k.mean((-2, -1), keepdim=True)
    return (centred + centred.transpose(-1, -2)) / 2


def centred_top_eigenvalue(gram: Tensor) -> float:
    """λ_max of the 1/n covariance from the uncentred Gram matrix K (n×n): λ_max(PKP)/n."""
    n = gram.shape[0]
    if n < 2:
        return float("nan")
    centred = _centred(gram)
    if n <= _DENSE_EIG_MAX:
        top = torch.linalg.eigvalsh(centred)[-1].item()
    else:
        from scipy.sparse.linalg import eigsh

        top = float(eigsh(centred.cpu().numpy(), k=1, which="LA", return_eigenvectors=False)[0])
    return max(top, 0.0) / n


def centred_top_eigenvalues(grams: Tensor) -> list[float]:
    """:func:`centred_top_eigenvalue` of a batch ``[L, n, n]`` of Gram matrices, one host
    transfer where n ≤ 1024: on the CPU one batched ``eigvalsh``; on a GPU (where a batched
    ``eigvalsh`` costs milliseconds per matrix) :func:`top_eigenvalues_by_squaring`."""
    n = grams.shape[-1]
    if n < 2:
        return [float("nan")] * grams.shape[0]
    if n > _DENSE_EIG_MAX:
        return [centred_top_eigenvalue(k) for k in grams]
    centred = _centred(grams)
    if _by_squaring(centred):
        top = top_eigenvalues_by_squaring(centred)
    else:
        top = torch.linalg.eigvalsh(centred)[..., -1]
    return (top.clamp_min(0) / n).tolist()


def _by_squaring(matrices: Tensor) -> bool:
    return matrices.is_cuda


def top_eigenvalues_by_squaring(matrices: Tensor, squarings: int = SQUARINGS) -> Tensor:
    """λ_max of each symmetric positive semi-definite matrix C of a batch ``[B, n, n]``
    (float64), by repeated squaring: a fixed number of batched matrix products, no host sync.

    ``A_0 = C / tr C``, ``A_{k+1} = A_k² / tr A_k²`` ∝ ``C^N`` with ``N = 2^k``; the column
    ``v`` of ``A_K`` at its largest diagonal entry is ∝ ``Σ_j λ_j^N u_j u_j[j*]``, the top
    eigenvector up to terms in ``(λ_j/λ_1)^N``, and the result is the Rayleigh quotient
    ``vᵀCv / vᵀv`` with the original C. It is never above λ_1, and below it by at most
    ``Σ_j (λ_1 − λ_j) (λ_j/λ_1)^{2N} (u_j[j*]/u_1[j*])²`` (relative to that weight): with
    ``N = 2^30`` nothing measurable unless λ_2 is within ~1e-9 of λ_1, and then the error is
    bounded by the gap λ_1 − λ_2 itself. A tied top eigenvalue is exact (v lies in its
    eigenspace); a zero matrix gives 0.
    """
    c = (matrices + matrices.transpose(-1, -2)) / 2
    tiny = torch.finfo(c.dtype).tiny

    def normalised(a: Tensor) -> Tensor:
        trace = torch.diagonal(a, dim1=-2, dim2=-1).sum(-1)
        return a / trace.clamp_min(tiny)[..., None, None]

    a = normalised(c)
    for _ in range(squarings):
        a = normalised(a @ a)
    column = torch.diagonal(a, dim1=-2, dim2=-1).argmax(-1)  # [B]
    v = torch.take_along_dim(a, column[..., None, None].expand(*a.shape[:-1], 1), dim=-1)
    cv = c @ v
    return ((v * cv).sum((-2, -1)) / (v * v).sum((-2, -1)).clamp_min(tiny)).clamp_min(0)


def blocks_nbytes(blocks: Mapping[str, GradBlock]) -> int:
    """What keeping ``blocks`` for metric 3 holds: the measure of the Gram byte budget."""
    return sum(b.nbytes() for b in blocks.values())


class GramStore:
    """Keeps gradient blocks until the end of a pass, within a byte and a sample budget.

    Past the budget it is ``overflowed``: with ``subsample`` > 0 it keeps what it holds, or,
    holding nothing yet, the first ``subsample`` samples of the chunk that overflowed — the
    Gram matrix of that subsample (``n`` samples) then estimates metric 3; with
    ``subsample`` = 0 it drops everything.
    """

    def __init__(self, max_bytes: int, max_samples: int, subsample: int = 0) -> None:
        self.max_bytes = max_bytes
        self.max_samples = max_samples
        self.subsample = subsample
        self.blocks: dict[str, list[GradBlock]] = {}
        self.nbytes = 0
        self.n = 0
        self.overflowed = False

    def add(self, blocks: Mapping[str, GradBlock]) -> None:
        """Keep ``blocks`` (one chunk) while within budget (see the class docstring)."""
        if self.overflowed:
            return
        size = blocks_nbytes(blocks)
        chunk_n = next(iter(blocks.values())).n
        if self.nbytes + size > self.max_bytes or self.n + chunk_n > self.max_samples:
            self.overflowed = True
            if self.subsample <= 0:
                self.blocks.clear()
                self.n = 0
            elif not self.blocks and chunk_n > 0:
                m = min(self.subsample, chunk_n)
                first = next(iter(blocks.values()))
                keep = torch.arange(chunk_n, device=first.device) < m
                self.blocks = {name: [b.select(keep)] for name, b in blocks.items()}
                self.n = m
            return
        for name, block in blocks.items():
            self.blocks.setdefault(name, []).append(block)
        self.nbytes += size
        self.n += chunk_n

    def top_eigenvalues(self, groups: Mapping[str, Sequence[str]]) -> dict[str, float]:
        """λ_max per layer (``groups``) and for the whole model (key ``None``)."""
        grams = {name: cat_blocks(parts).gram() for name, parts in self.blocks.items()}
        return top_eigenvalues_from_grams(grams, groups)


def top_eigenvalues_from_grams(
    grams: Mapping[str, Tensor], groups: Mapping[str, Sequence[str]]
) -> dict[str | None, float]:
    """λ_max per layer (``groups``: sums of its parameters' Gram matrices) and for the whole
    model (key ``None``), by one batched eigendecomposition."""
    keys: list[str | None] = [*groups, None]
    matrices = [sum(grams[p] for p in names) for names in groups.values()]
    matrices.append(sum(grams.values()))
    values = centred_top_eigenvalues(torch.stack(matrices))  # type: ignore[arg-type]
    return dict(zip(keys, values))


class Lanczos:
    """Top eigenvalue of a symmetric PSD operator, one matrix-vector product at a time.

    Lanczos with full reorthogonalisation. Drive it with ``while not l.done:
    l.feed(A @ l.vector)``; ``l.value`` is the current Ritz estimate. Stops when the estimate
    changes by less than ``tol`` relatively, at ``max_iter`` products, or when the Krylov
    space is exhausted (exact).
    """

    def __init__(self, dim: int, *, max_iter: int = 40, tol: float = 1e-6, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        q = torch.randn(dim, generator=gen, dtype=_F64)
        self.basis: list[Tensor] = [q / q.norm()]
        self.alphas: list[float] = []
        self.betas: list[float] = []
        self.dim = dim
        self.max_iter = min(max_iter, dim)
        self.tol = tol
        self.value = float("nan")
        self.done = dim == 0

    @property
    def vector(self) -> Tensor:
        """The vector whose product the operator must supply next."""
        return self.basis[-1]

    def feed(self, product: Tensor) -> None:
        """Take A·vector and advance one step."""
        w = product.to(_F64).reshape(-1).clone()
        q = self.basis[-1]
        self.alphas.append(float(q @ w))
        basis = torch.stack(self.basis)
        for _ in range(2):
            w -= basis.T @ (basis @ w)
        beta = float(w.norm())
        previous = self.value
        self.value = max(float(self._ritz()), 0.0)
        steps = len(self.alphas)
        scale = max(abs(self.value), 1e-300)
        converged = steps > 1 and abs(self.value - previous) <= self.tol * scale
        if converged or steps >= self.max_iter or beta <= 1e-12 * scale:
            self.done = True
            return
        self.betas.append(beta)
        self.basis.append(w / beta)

    def _ritz(self) -> float:
        k = len(self.alphas)
        t = np.diag(self.alphas)
        if k > 1:
            off = np.array(self.betas[: k - 1])
            t += np.diag(off, 1) + np.diag(off, -1)
        return float(np.linalg.eigvalsh(t)[-1])
