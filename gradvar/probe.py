"""Probe: per-sample gradients at two weight sets → streaming sums → per-layer metrics.

    probe = gradvar.Probe(model, F.cross_entropy)
    result = probe.run(loader, snapshot=snapshot_state_dict)
    result.to_frame()        # tidy records (DESIGN.md), one row per (layer, metric, alpha)

For every chunk of the data the current weights θ and the snapshot weights θ̃ see the same
examples with the same randomness (dropout masks), seeded by the chunk's index so that every
checkpoint of a run, and every extra pass, sees the same draws (common random numbers).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from gradvar._data import as_batches, chunk_rng, rechunk
from gradvar._layers import LayerSpec, group_parameters
from gradvar.blocks import GradBlock
from gradvar.errors import InvalidArgumentError, NonFiniteGradientError
from gradvar.grads import GradientEngine, check_policy, frozen_batchnorm, population_stats
from gradvar.grads._loss import LossFn
from gradvar.metrics import all_metrics
from gradvar.records import METRICS, WHOLE_MODEL, to_frame
from gradvar.spectrum import GramStore, Lanczos
from gradvar.stats import GradientSums

__all__ = ["Probe", "ProbeResult"]

_TOP_EIGEN_MODES = ("auto", "gram", "lanczos", "none")


def _unit_label(unit: str | int) -> tuple[str, int | None]:
    if unit == "sample":
        return "sample", None
    if isinstance(unit, str) and unit.isdigit():
        unit = int(unit)
    if isinstance(unit, int) and not isinstance(unit, bool) and unit >= 1:
        return str(unit), unit
    raise InvalidArgumentError(
        f"unit must be 'sample' or a positive mini-batch size, got unit={unit!r}"
    )


@dataclass
class ProbeResult:
    """One probe run: ``values[(layer, metric, alpha or None)]`` and the sums behind them."""

    values: dict[tuple[str, str, float | None], float]
    sums: GradientSums
    unit: str
    config: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        """Number of samples (examples, or mini-batches for a mini-batch unit)."""
        return self.sums.n

    def value(self, metric: str, layer: str = WHOLE_MODEL, alpha: float | None = None) -> float:
        """One value, e.g. ``result.value("alpha_star_mean", layer="0.weight")``."""
        for (lay, met, a), v in self.values.items():
            if lay == layer and met == metric and (alpha is None or a == alpha):
                return v
        known = sorted({m for _, m, _ in self.values})
        raise KeyError(
            f"no value for metric={metric!r} layer={layer!r} alpha={alpha}; metrics: {known}"
        )

    def optimal_alpha(self, clamp: tuple[float, float] | None = (-2.0, 2.0)) -> dict[str, Tensor]:
        """Per-coordinate α*_k = Cov_k(g, h) / (Var_k(h) + 1e-24) for every parameter.

        The paper's estimator (clamped like the reference code), shaped like each parameter;
        usable as a per-coordinate alpha (``AlphaSVRG.set_coordinate_alpha``).
        """
        if not self.sums.paired:
            raise InvalidArgumentError("optimal_alpha needs a paired run (pass snapshot=)")
        n = self.sums.tensors["n"]
        out = {}
        for name, shape in self.sums.shapes.items():
            mean_g, mean_h = self.sums.get("g", name) / n, self.sums.get("h", name) / n
            var_h = (self.sums.get("h2", name) / n - mean_h**2).clamp_min(0)
            cov = self.sums.get("gh", name) / n - mean_g * mean_h
            alpha = cov / (var_h + 1e-24)
            out[name] = (alpha.clamp(*clamp) if clamp is not None else alpha).reshape(shape)
        return out

    def to_frame(self, **meta: Any) -> pd.DataFrame:
        """Records in DESIGN.md's format; ``meta`` overrides run/checkpoint/step/epoch/..."""
        info = {**self.meta, **meta}
        rows = [
            {
                "run": info.get("run"),
                "checkpoint": info.get("checkpoint"),
                "step": info.get("step"),
                "epoch": info.get("epoch"),
                "snapshot_step": info.get("snapshot_step"),
                "layer": layer,
                "metric": metric,
                "value": value,
                "n": self.n,
                "unit": self.unit,
                "alpha": math.nan if alpha is None else alpha,
            }
            for (layer, metric, alpha), value in self.values.items()
        ]
        return to_frame(rows)

    def table(self) -> pd.DataFrame:
        """Layer × metric table (``vr_*`` columns suffixed with ``@alpha``) for reading."""
        frame = self.to_frame()
        label = frame["metric"].where(
            frame["alpha"].isna(), frame["metric"] + "@" + frame["alpha"].astype(str)
        )
        order = list(dict.fromkeys(frame["layer"]))
        table = frame.assign(metric=label).pivot(index="layer", columns="metric", values="value")
        rank = {m: i for i, m in enumerate(METRICS)}
        columns = sorted(dict.fromkeys(label), key=lambda c: (rank.get(c.split("@")[0], 99), c))
        return table.loc[order, columns]

    def _repr_html_(self) -> str:
        return self.table()._repr_html_()  # type: ignore[operator]


class Probe:
    """Per-layer gradient variance, snapshot correlation and optimal alpha of a model.

    Args:
        model: any ``nn.Module``; its current parameters are θ.
        loss_fn: ``loss_fn(outputs, targets)`` like ``F.cross_entropy``; evaluated per example.
        unit: ``"sample"`` (per-example gradients) or b (mini-batch gradients of b
            consecutive examples, the paper's unit).
        layers: None (one layer per parameter), ``"module"``, or {name: regex | [names]}.
        params: parameter names to measure (default: all requiring grad).
        batchnorm: ``"eval"`` | ``"replace"`` | ``"refuse"`` (see :mod:`gradvar.grads`).
        mode: ``"train"`` (dropout active; the paper's setting) or ``"eval"``.
        chunk_size: samples per chunk; bounds peak memory independently of n. Default
            (None): 256, or 4096 on a GPU when every parameter is in closed form (nothing
            per-example is materialised there, and fewer chunks mean less host overhead).
        closed_form: use the exact ``nn.Linear`` closed forms where they apply.
        top_eigenvalue: ``"auto"`` (Gram matrix within the budgets, else Lanczos passes),
            ``"gram"``, ``"lanczos"``, or ``"none"``.
        alphas: alphas at which ``vr_variance`` is reported.
        seed: seeds each chunk's randomness (dropout) identically at every checkpoint.
        skip_nonfinite: drop samples with NaN/Inf gradients (counted) instead of raising.
        transform: ``transform(inputs, generator) -> inputs`` applied to every chunk (e.g.
            ``gradvar.zoo.augment``), its generator seeded by ``seed`` and the chunk's index:
            both weight sets, every pass and every checkpoint see the same augmentation.
        distributed: split chunks across ``torch.distributed`` ranks and all-reduce the sums
            (``"auto"``: when a process group is initialised).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        unit: str | int = "sample",
        layers: LayerSpec = None,
        *,
        params: Sequence[str] | None = None,
        batchnorm: str = "eval",
        mode: str = "train",
        chunk_size: int | None = None,
        closed_form: bool = True,
        top_eigenvalue: str = "auto",
        gram_max_samples: int = 4096,
        gram_max_bytes: int = 1 << 30,
        lanczos_max_iter: int = 40,
        lanczos_tol: float = 1e-6,
        alphas: Iterable[float] = (1.0,),
        seed: int = 0,
        skip_nonfinite: bool = False,
        transform: Callable[[Tensor, torch.Generator], Tensor] | None = None,
        progress: bool | None = None,
        distributed: bool | str = "auto",
    ) -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.unit, self.unit_size = _unit_label(unit)
        check_policy(model, batchnorm)
        if mode not in ("train", "eval"):
            raise InvalidArgumentError(f"mode must be 'train' or 'eval', got mode={mode!r}")
        if top_eigenvalue not in _TOP_EIGEN_MODES:
            raise InvalidArgumentError(
                f"top_eigenvalue must be one of {_TOP_EIGEN_MODES}, got {top_eigenvalue!r}"
            )
        if chunk_size is not None and chunk_size < 1:
            raise InvalidArgumentError(f"chunk_size must be positive, got chunk_size={chunk_size}")
        named = dict(model.named_parameters())
        self.param_names = (
            list(params) if params is not None else [n for n, p in named.items() if p.requires_grad]
        )
        unknown = [n for n in self.param_names if n not in named]
        if unknown:
            raise InvalidArgumentError(f"params {unknown} are not parameters of the model")
        self.groups = group_parameters(self.param_names, layers)
        self.batchnorm, self.mode = batchnorm, mode
        self.engine = GradientEngine(
            model, loss_fn, self.param_names, unit_size=self.unit_size, closed_form=closed_form
        )
        if chunk_size is None:
            all_closed = len(self.engine.closed_form_params) == len(self.param_names)
            on_gpu = next(model.parameters()).is_cuda
            chunk_size = 4096 if (all_closed and on_gpu and self.unit_size is None) else 256
        multiple = self.unit_size or 1
        self.chunk = max(multiple, chunk_size - chunk_size % multiple)
        self.top_eigenvalue = top_eigenvalue
        self.gram_max_samples, self.gram_max_bytes = gram_max_samples, gram_max_bytes
        self.lanczos_max_iter, self.lanczos_tol = lanczos_max_iter, lanczos_tol
        self.alphas = [float(a) for a in alphas]
        self.seed, self.skip_nonfinite, self.progress = seed, skip_nonfinite, progress
        self.transform = transform
        self.distributed = distributed

    # ------------------------------------------------------------------ public
    def run(
        self,
        data: Any,
        snapshot: Mapping[str, Tensor] | nn.Module | None = None,
        *,
        alphas: Iterable[float] | None = None,
        **meta: Any,
    ) -> ProbeResult:
        """Measure the model on ``data`` (a DataLoader/iterable of (x, y), or one (x, y) pair).

        ``snapshot``: a state_dict or module with the snapshot weights θ̃ (omit for metrics of
        the current gradients only). ``meta`` (run, checkpoint, step, epoch, snapshot_step) is
        carried into the records.
        """
        named = dict(self.model.named_parameters())
        batches = as_batches(data)
        if iter(batches) is batches:  # a one-shot iterator: extra passes (Lanczos, BatchNorm
            batches = list(batches)  # 'replace') must see the same batches again
        from gradvar._validation import check_probe_data  # bad data: a named error, no work

        check_probe_data(self.model, self.loss_fn, batches, unit_size=self.unit_size)
        current = self._weights(self.model)
        paired = snapshot is not None
        snap = self._weights(snapshot) if paired else None
        rank, world = self._rank_world()
        with self._modes():
            if self.batchnorm == "replace":
                current = self._replace_stats(current, batches)
                snap = self._replace_stats(snap, batches) if snap else None
            sums = GradientSums(
                {p: named[p].shape for p in self.param_names},
                self.groups,
                paired=paired,
                device=self._device(),
            )
            use_gram = self.top_eigenvalue in ("auto", "gram") and world == 1
            store = GramStore(
                self.gram_max_bytes if use_gram else -1,
                self.gram_max_samples if use_gram else -1,
            )
            for index, x, y in self._chunks(batches, rank, world, "probe"):
                g, h, dropped = self._blocks(index, x, y, current, snap)
                sums.update(g, h)
                sums.add_nonfinite(dropped)
                if use_gram:
                    store.add(g)
            if world > 1:
                sums.all_reduce()
            top, method = self._top_eigenvalues(sums, store, batches, current, rank, world)
        values = all_metrics(
            sums,
            alphas=self.alphas if alphas is None else alphas,
            top_eigenvalues=top,
            whole_model=WHOLE_MODEL,
            eps=torch.finfo(named[self.param_names[0]].dtype).eps,
        )
        if self.skip_nonfinite:
            values[(WHOLE_MODEL, "nonfinite_skipped", None)] = float(sums.tensors["nonfinite"])
        config = {
            "batchnorm": self.batchnorm,
            "mode": self.mode,
            "unit": self.unit,
            "closed_form": self.engine.closed_form_params,
            "top_eigenvalue": method,
            "seed": self.seed,
            "chunk_size": self.chunk,
            "world_size": world,
        }
        return ProbeResult(values, sums, self.unit, config, meta)

    # ------------------------------------------------------------------ internals
    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _rank_world(self) -> tuple[int, int]:
        import torch.distributed as dist

        on = dist.is_available() and dist.is_initialized()
        if self.distributed is True and not on:
            raise InvalidArgumentError(
                "distributed=True but torch.distributed is not initialised; call "
                "init_process_group first (or run under torchrun)"
            )
        if self.distributed and on:
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def _weights(self, source: Mapping[str, Tensor] | nn.Module) -> tuple[dict, dict]:
        state = source.state_dict() if isinstance(source, nn.Module) else dict(source)
        own_params = dict(self.model.named_parameters())
        missing = [n for n in own_params if n not in state]
        if missing:
            raise InvalidArgumentError(
                f"weights are missing parameters {missing[:8]}"
                + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
            )
        device = self._device()
        params = {n: state[n].detach().to(device, p.dtype) for n, p in own_params.items()}
        buffers = {
            n: (state[n] if n in state else b).detach().to(device)
            for n, b in self.model.named_buffers()
        }
        for n, p in params.items():
            if p.shape != own_params[n].shape:
                raise InvalidArgumentError(
                    f"parameter {n!r} has shape {tuple(p.shape)} in the given weights but "
                    f"{tuple(own_params[n].shape)} in the model"
                )
        return params, buffers

    def _replace_stats(self, weights: tuple[dict, dict], batches: Iterable[Any]) -> tuple:
        params, buffers = weights
        device = self._device()
        inputs = [x.to(device) for x, _ in rechunk(batches, self.chunk, self.unit_size or 1)]
        return params, population_stats(self.model, params, buffers, inputs)

    @contextlib.contextmanager
    def _modes(self) -> Iterator[None]:
        was = {name: m.training for name, m in self.model.named_modules()}
        self.model.train(self.mode == "train")
        try:
            with frozen_batchnorm(self.model):
                yield
        finally:
            for name, m in self.model.named_modules():
                m.training = was[name]

    def _chunks(
        self, batches: Iterable[Any], rank: int, world: int, desc: str
    ) -> Iterator[tuple[int, Tensor, Tensor]]:
        total = None
        with contextlib.suppress(TypeError):
            total = len(batches)  # type: ignore[arg-type]
        bar = tqdm(
            batches,
            total=total,
            desc=f"gradvar {desc}",
            unit="batch",
            leave=False,
            disable=True
            if (self.progress is False or rank != 0)
            else (None if self.progress is None else False),
        )
        device = self._device()
        for index, (x, y) in enumerate(rechunk(bar, self.chunk, self.unit_size or 1)):
            if index % world != rank:
                continue
            if self.transform is not None:
                generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
                x = self.transform(x, generator)
            yield index, x.to(device), y.to(device)

    def _blocks(
        self, index: int, x: Tensor, y: Tensor, current: tuple, snap: tuple | None
    ) -> tuple[dict[str, GradBlock], dict[str, GradBlock] | None, int]:
        rng = chunk_rng(self.seed, index)
        g = self.engine.blocks(*current, x, y, rng)
        h = self.engine.blocks(*snap, x, y, rng) if snap is not None else None
        keep = self._finite(g, "current", index)
        if h is not None:
            keep &= self._finite(h, "snapshot", index)
        dropped = int((~keep).sum())
        if dropped:
            g = {k: b.select(keep) for k, b in g.items()}
            h = {k: b.select(keep) for k, b in h.items()} if h is not None else None
        return g, h, dropped

    def _finite(self, blocks: Mapping[str, GradBlock], which: str, index: int) -> Tensor:
        keep = None
        for name, block in blocks.items():
            ok = block.finite()
            if not self.skip_nonfinite and not bool(ok.all()):
                bad = int((~ok).nonzero()[0, 0]) + index * (self.chunk // (self.unit_size or 1))
                what = "example" if self.unit_size is None else f"mini-batch of {self.unit}"
                raise NonFiniteGradientError(
                    f"non-finite gradient in layer {name!r} at {what} {bad} ({which} weights); "
                    "check the data and loss, or pass skip_nonfinite=True to drop such samples "
                    "(they are counted in the records as 'nonfinite_skipped')"
                )
            keep = ok if keep is None else keep & ok
        assert keep is not None
        return keep

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
