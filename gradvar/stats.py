"""Mergeable streaming sufficient statistics of per-sample gradients (METHOD.md §3).

For every parameter tensor p and samples i = 1..n (current gradient g_i, snapshot gradient
h_i on the same sample), :class:`GradientSums` accumulates, in float64,

    n,  Σ g,  Σ g⊙g,  Σ h,  Σ h⊙h,  Σ g⊙h,

and, for the directional metric (metric 1), the sum of unit vectors Σ_i g_i / ‖g_i‖ where the
norm is taken over each layer (group of parameters) and over the whole model, together with
the count of samples whose norm is non-zero. Every field is a plain sum, so two accumulators
merge by addition and ranks combine with one ``all_reduce(SUM)`` — exactly, not approximately.

Raw float64 sums are used (not Welford) precisely because they are additive across chunks and
ranks; the variance Σg²/n − (Σg/n)² then loses about 16 − log10(1 + GSNR_k) digits, which is
ample for gradients (GSNR rarely exceeds 1e6).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from gradvar.blocks import DenseBlock, GradBlock, paired_moments, recomputes
from gradvar.blocks.moments import sum_sq_columns
from gradvar.errors import InvalidArgumentError

__all__ = ["GradientSums"]

_F64 = torch.float64


class GradientSums:
    """Sufficient statistics of per-sample gradients, grouped into layers.

    ``shapes``: parameter name → shape. ``groups``: layer name → parameter names (a layer is
    a group of coordinates; by default one parameter each). ``paired``: whether snapshot
    gradients h are accumulated as well.
    """

    def __init__(
        self,
        shapes: Mapping[str, Sequence[int]],
        groups: Mapping[str, Sequence[str]],
        *,
        paired: bool,
        device: torch.device | str = "cpu",
    ) -> None:
        self.shapes = {k: torch.Size(v) for k, v in shapes.items()}
        self.groups = {k: list(v) for k, v in groups.items()}
        for layer, names in self.groups.items():
            missing = [p for p in names if p not in self.shapes]
            if missing:
                raise InvalidArgumentError(f"layer {layer!r} names unknown parameters {missing}")
        self.paired = paired
        self.tensors: dict[str, Tensor] = {}
        layout: list[tuple[str, torch.Size]] = [
            ("n", torch.Size()), ("n_dir_model", torch.Size()), ("nonfinite", torch.Size())
        ]  # fmt: skip
        kinds = ["g", "g2", "dir_model"] + (["h", "h2", "gh"] if paired else [])
        for kind in kinds:  # kind-major: one kind of consecutive parameters is one slice
            layout += [(f"{kind}/{p}", shape) for p, shape in self.shapes.items()]
        for layer, names in self.groups.items():
            layout.append((f"n_dir/{layer}", torch.Size()))
            layout += [(f"dir/{layer}/{p}", self.shapes[p]) for p in names]
        # One allocation for every sum (views into it): cheap to create, and all_reduce is
        # a single call on it.
        total = sum(shape.numel() for _, shape in layout)
        self._flat = torch.zeros(total, dtype=_F64, device=device)
        offset = 0
        for key, shape in layout:
            size = shape.numel()
            self.tensors[key] = self._flat[offset : offset + size].view(shape)
            offset += size

    # ---------------------------------------------------------------- accumulation
    def update(
        self,
        current: Mapping[str, GradBlock],
        snapshot: Mapping[str, GradBlock] | None = None,
        *,
        materialise_bytes: int = 0,
        check_finite: bool = False,
        grams: dict[str, Tensor] | None = None,
    ) -> bool:
        """Add the samples of one chunk: blocks of g (and of h on the same samples).

        With ``check_finite`` nothing is added when any of the chunk's moments is not finite
        (a NaN or Inf in some sample's gradient), and False is returned — one host sync for
        the whole chunk; the caller then finds the sample. Otherwise returns True.

        The norms ‖g_i‖ (for the directional sums) are needed before the moments, so a block
        that recomputes its gradients on every read (a convolution's) would be formed twice;
        up to ``materialise_bytes`` of such blocks are formed once and kept for the chunk.
        Memory then peaks at that budget plus one layer's slab, never all layers' rows.
        With ``grams`` (a dict to fill), each parameter's n×n Gram matrix of g is formed from
        the same slabs as its moments (metric 3 of a one-chunk probe at no second pass).
        """
        if self.paired and snapshot is None:
            raise InvalidArgumentError("these sums are paired; update() needs snapshot blocks")
        t = self.tensors
        current = dict(current)
        budget = materialise_bytes
        for p, block in current.items():
            size = block.n * max(1, math.prod(block.shape)) * 4
            if recomputes(block) and size <= budget:
                current[p] = DenseBlock(block.rows())
                budget -= size
        n = next(iter(current.values())).n
        small = self._packable(current, snapshot)
        pack = _Pack(current, snapshot, small, n) if len(small) > 1 else None
        norms_sq = {p: b.norms_sq() for p, b in current.items()}
        adds: list[tuple[Tensor, Tensor]] = []  # (sum, this chunk's part), added at the end
        model_w = _inverse_norms(torch.stack(list(norms_sq.values())).sum(0))
        adds.append((t["n_dir_model"], (model_w > 0).sum().to(_F64)))
        layer_ws: dict[str, list[tuple[str, Tensor]]] = {p: [] for p in current}
        layers = list(self.groups)
        stacked = torch.stack(
            [torch.stack([norms_sq[p] for p in self.groups[lay]]).sum(0) for lay in layers]
        )
        all_layer_w = _inverse_norms(stacked)  # [layers, n], one kernel for every layer
        counts = (all_layer_w > 0).sum(1).to(t["n"].dtype)
        adds += [(t[f"n_dir/{lay}"], c) for lay, c in zip(layers, counts.unbind())]
        for layer, layer_w in zip(layers, all_layer_w.unbind()):
            for p in self.groups[layer]:
                layer_ws[p].append((layer, layer_w))
        ones = torch.ones_like(model_w)
        if pack is not None:
            adds += pack.moments(self, ones, model_w, [layer_ws[p][0] for p in small])
            if grams is not None:
                grams.update(pack.grams())
        for p, g in current.items():
            if pack is not None and p in pack.names:
                continue
            # rows: Σ g, Σ g/‖g‖_model, Σ g/‖g‖_layer for each layer holding p — one read of g
            weights = torch.stack([ones, model_w, *(w for _, w in layer_ws[p])])
            h = snapshot[p] if (snapshot is not None and self.paired) else None
            m = paired_moments(g, h, weights, gram=grams is not None)
            if grams is not None and m.gram is not None:
                grams[p] = m.gram
            adds += [(t[f"g/{p}"], m.weighted[0]), (t[f"g2/{p}"], m.g2),
                     (t[f"dir_model/{p}"], m.weighted[1])]  # fmt: skip
            for row, (layer, _) in enumerate(layer_ws[p], start=2):
                adds.append((t[f"dir/{layer}/{p}"], m.weighted[row]))
            if h is not None:
                adds += [(t[f"h/{p}"], m.h), (t[f"h2/{p}"], m.h2), (t[f"gh/{p}"], m.gh)]
        targets, parts = [a for a, _ in adds], [b for _, b in adds]
        if check_finite:
            norms = torch.stack(torch._foreach_norm(parts))
            if not bool(torch.isfinite(norms).all()):  # the chunk's one host sync
                return False
        torch._foreach_add_(targets, parts)
        t["n"] += n
        return True

    def _packable(
        self, current: Mapping[str, GradBlock], snapshot: Mapping[str, GradBlock] | None
    ) -> list[str]:
        """Small dense parameters (biases, norm weights) in exactly one layer: their moments
        are taken together, one kernel per moment instead of one per parameter."""
        in_layers: dict[str, int] = {}
        for names in self.groups.values():
            for p in names:
                in_layers[p] = in_layers.get(p, 0) + 1
        return [
            p
            for p, b in current.items()
            if isinstance(b, DenseBlock)
            and math.prod(b.shape) <= _PACK_MAX_COORDS
            and in_layers.get(p) == 1
            and (snapshot is None or not self.paired or isinstance(snapshot[p], DenseBlock))
        ]

    def add_nonfinite(self, count: int) -> None:
        """Count samples dropped because their gradient was not finite."""
        self.tensors["nonfinite"] += count

    # ---------------------------------------------------------------- combination
    def merge(self, other: GradientSums) -> GradientSums:
        """Add ``other``'s sums into these (in place) and return self. Exact."""
        if self.tensors.keys() != other.tensors.keys():
            raise InvalidArgumentError("cannot merge sums over different parameters or layers")
        for key, value in other.tensors.items():
            self.tensors[key] += value.to(self.tensors[key].device)
        return self

    def all_reduce(self, group: object | None = None) -> GradientSums:
        """Sum these statistics over all ranks of ``torch.distributed`` (in place)."""
        import torch.distributed as dist

        dist.all_reduce(self._flat, op=dist.ReduceOp.SUM, group=group)
        return self

    def state_dict(self) -> dict[str, object]:
        """Plain tensors and the layout, for saving and reloading."""
        return {
            "shapes": {k: list(v) for k, v in self.shapes.items()},
            "groups": self.groups,
            "paired": self.paired,
            "tensors": {k: v.clone() for k, v in self.tensors.items()},
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, object]) -> GradientSums:
        """Inverse of :meth:`state_dict`."""
        sums = cls(state["shapes"], state["groups"], paired=bool(state["paired"]))  # type: ignore[arg-type]
        for k, v in state["tensors"].items():  # type: ignore[union-attr]
            sums.tensors[k].copy_(v.to(_F64).reshape(sums.tensors[k].shape))
        return sums

    # ---------------------------------------------------------------- views
    @property
    def n(self) -> int:
        """Number of samples accumulated."""
        return int(self.tensors["n"].item())

    def tensors_on_host(self, keys: Sequence[str]) -> dict[str, float]:
        """Scalar fields as Python floats, in one device→host transfer."""
        values = torch.stack([self.tensors[k].reshape(()) for k in keys]).tolist()
        return dict(zip(keys, values))

    def get(self, kind: str, param: str) -> Tensor:
        """Flattened float64 sum of ``kind`` (g, g2, h, h2, gh, dir_model) for ``param``."""
        return self.tensors[f"{kind}/{param}"].reshape(-1)

    def flat(self, kind: str, params: Sequence[str]) -> Tensor:
        """:meth:`get` of ``params`` side by side: a view when they are consecutive (the
        layout is kind-major), else a copy."""
        first, last = self.get(kind, params[0]), self.get(kind, params[-1])
        start = first.data_ptr() - self._flat.data_ptr()
        end = last.data_ptr() - self._flat.data_ptr() + last.numel() * last.element_size()
        width = sum(self.shapes[p].numel() for p in params)
        if end - start == width * first.element_size():
            offset = start // first.element_size()
            return self._flat[offset : offset + width]
        return torch.cat([self.get(kind, p) for p in params])


_PACK_MAX_COORDS = 1 << 16


class _Pack:
    """The rows of many small dense blocks side by side, ``[n, Σ d_p]``, with per-segment
    norms; accumulates every moment of all of them with one kernel per moment."""

    def __init__(
        self,
        current: dict[str, GradBlock],
        snapshot: Mapping[str, GradBlock] | None,
        names: list[str],
        n: int,
    ) -> None:
        self.names = names
        self.shapes = [current[p].shape for p in names]
        self.sizes = [math.prod(s) for s in self.shapes]
        rows = torch.cat([current[p].rows().reshape(n, -1) for p in names], 1)
        device = rows.device
        lengths = torch.tensor(self.sizes, device=device)
        self.segment = torch.repeat_interleave(torch.arange(len(names), device=device), lengths)
        per = torch.zeros(n, len(names), dtype=rows.dtype, device=device)
        per.index_add_(1, self.segment, rows * rows)  # short segments: few atomics collide
        for j, p in enumerate(names):  # the blocks' norms, from one reduction
            block = current[p]
            assert isinstance(block, DenseBlock)
            block._norms_sq = per[:, j].to(_F64)
        self.g = rows.to(_F64)
        self.h = None
        if snapshot is not None:
            self.h = torch.cat([snapshot[p].rows().reshape(n, -1) for p in names], 1).to(_F64)

    def grams(self) -> dict[str, Tensor]:
        """Each packed parameter's n×n Gram matrix of g."""
        pieces = self.g.split(self.sizes, dim=1)
        return {p: piece @ piece.T for p, piece in zip(self.names, pieces)}

    def moments(
        self, sums: GradientSums, ones: Tensor, model_w: Tensor, layers: list[tuple[str, Tensor]]
    ) -> list[tuple[Tensor, Tensor]]:
        """(sum tensor, this chunk's part) for every moment of every packed parameter."""
        t, names = sums.tensors, self.names
        g = self.g
        both = torch.stack([ones, model_w]) @ g
        layer_w = torch.stack([w for _, w in layers])  # [params, n]
        own = (g * layer_w.T[:, self.segment]).sum(0)
        targets = {
            "g": [t[f"g/{p}"] for p in names],
            "dir_model": [t[f"dir_model/{p}"] for p in names],
            "dir": [t[f"dir/{layer}/{p}"] for (layer, _), p in zip(layers, names)],
            "g2": [t[f"g2/{p}"] for p in names],
        }
        values = {
            "g": both[0],
            "dir_model": both[1],
            "dir": own,
            "g2": sum_sq_columns(g),
        }
        if self.h is not None and sums.paired:
            h = self.h
            values.update(
                h=h.sum(0),
                h2=sum_sq_columns(h),
                gh=torch.linalg.vecdot(g, h, dim=0),
            )
            for kind in ("h", "h2", "gh"):
                targets[kind] = [t[f"{kind}/{p}"] for p in names]
        out: list[tuple[Tensor, Tensor]] = []
        for kind, vector in values.items():
            pieces = [p.reshape(s) for p, s in zip(vector.split(self.sizes), self.shapes)]
            out += list(zip(targets[kind], pieces))
        return out


def _inverse_norms(norms_sq: Tensor) -> Tensor:
    """1/‖g_i‖ where the norm is positive, else 0 (a zero gradient has no direction)."""
    norms = norms_sq.sqrt()
    return torch.where(norms > 0, 1.0 / norms.clamp_min(torch.finfo(_F64).tiny), 0.0)
