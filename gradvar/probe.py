"""Probe: per-sample gradients at two weight sets → streaming sums → per-layer metrics.

    probe = gradvar.Probe(model, F.cross_entropy)
    result = probe.run(loader, snapshot=snapshot_state_dict)
    result.to_frame()        # tidy records (README "Records"), one row per (layer, metric, alpha)

For every chunk of the data the current weights θ and the snapshot weights θ̃ see the same
examples with the same randomness (dropout masks), seeded by the chunk's index so that every
checkpoint of a run, and every extra pass, sees the same draws (common random numbers).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from gradvar._chunking import default_chunk, free_bytes, materialise_bytes
from gradvar._data import as_batches, chunk_rng, rechunk
from gradvar._layers import LayerSpec, group_parameters
from gradvar._nonfinite import finite_samples
from gradvar._probe_m3 import TopEigenvalues
from gradvar.blocks import GradBlock
from gradvar.errors import InvalidArgumentError, NonFiniteGradientError
from gradvar.grads import GradientEngine, check_policy, frozen_batchnorm, population_stats
from gradvar.grads._loss import LossFn
from gradvar.metrics import all_metrics
from gradvar.records import WHOLE_MODEL
from gradvar.result import ProbeResult
from gradvar.spectrum import GramStore, blocks_nbytes, top_eigenvalues_from_grams
from gradvar.stats import GradientSums

__all__ = ["Probe", "ProbeResult"]

_OOM_ERRORS: tuple[type[BaseException], ...] = (torch.cuda.OutOfMemoryError,)


def _split_rng(seed: int, index: int, path: tuple[int, ...]) -> Any:
    """The random state of part ``path`` of chunk ``index`` after out-of-memory splits."""
    code = 0
    for bit in path:
        code = code * 2 + 1 + bit
    return chunk_rng(seed * 7_919 + code, index)


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


class Probe(TopEigenvalues):
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
            (None): 256 on CPU; on a GPU 1024, or, when every parameter is an ``nn.Linear``'s
            (per-example gradients stay factored), what a quarter of the free memory holds
            (4096–65536, see :func:`gradvar._chunking.default_chunk`). A chunk that runs out
            of memory is split in two and retried (``config["oom_splits"]`` counts it).
        closed_form: use the per-layer rules (:mod:`gradvar.grads.rules`) where they apply;
            False sends every parameter through ``vmap``. The route each parameter took is
            ``result.config["routes"]`` (reasons for fallbacks in ``"route_reasons"``).
        top_eigenvalue: metric 3. ``"auto"`` (default): the exact Gram matrix of all samples
            when their blocks fit ``gram_max_bytes``/``gram_max_samples``, else the exact Gram
            matrix of a subsample (the first chunk's first ``gram_subsample`` samples) — the
            estimator and its sample count are in ``config`` and in the records as
            ``m3_samples``. ``"gram"`` (exact or an error), ``"lanczos"`` (matrix-free, one
            pass over the data per iteration), or ``"none"``.
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
        gram_max_samples: int = 1024,
        gram_max_bytes: int = 1 << 30,
        gram_subsample: int = 64,
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
            device = next(model.parameters()).device
            chunk_size = default_chunk(model, unit_size=self.unit_size, free=free_bytes(device))
        multiple = self.unit_size or 1
        self.chunk = max(multiple, chunk_size - chunk_size % multiple)
        self.top_eigenvalue = top_eigenvalue
        self.gram_max_samples, self.gram_max_bytes = gram_max_samples, gram_max_bytes
        self.gram_subsample = gram_subsample
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
                self.gram_subsample if self.top_eigenvalue == "auto" else 0,
            )
            self._oom_splits = 0
            budget = self._materialise_bytes()
            # one chunk: every Gram matrix comes from the moments' own slabs, no second pass
            fused: dict[str, Tensor] | None = {} if use_gram and self._one_chunk(batches) else None
            updates, fused_n = 0, 0
            for index, x, y in self._chunks(batches, rank, world, "probe"):
                for g, h, dropped in self._split_on_oom(index, x, y, current, snap):
                    sums.add_nonfinite(dropped)
                    if next(iter(g.values())).n == 0:
                        continue  # every sample of the chunk was dropped as non-finite
                    check = not self.skip_nonfinite  # skipping checked (and dropped) already
                    grams = fused if (fused is not None and updates == 0) else None
                    if grams is not None and blocks_nbytes(g) > self.gram_max_bytes:
                        fused = grams = None  # over the Gram budget: the store subsamples
                    if not sums.update(
                        g, h, materialise_bytes=budget, check_finite=check, grams=grams
                    ):
                        self._raise_nonfinite(g, h, index)
                    updates += 1
                    if use_gram and fused is None:
                        store.add(g)
                    elif grams is not None:
                        fused_n = next(iter(g.values())).n
                    del g, h
            if world > 1:
                sums.all_reduce()
            if sums.n < 2:
                raise InvalidArgumentError(
                    f"the probe needs at least 2 samples to measure a variance, got n={sums.n} "
                    f"(unit={self.unit!r}); pass more data"
                    + ("" if self.unit_size is None else " or a smaller unit")
                )
            if fused and (updates == 1 or self.top_eigenvalue == "auto"):
                top = top_eigenvalues_from_grams(fused, self.groups)
                method = "gram" if fused_n == sums.n else "gram-subsample"  # subsample: split
            else:
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
        m3_samples = (fused_n or store.n) if method.startswith("gram") else sums.n
        if top is not None:
            values[(WHOLE_MODEL, "m3_samples", None)] = float(m3_samples)
        config = {
            "batchnorm": self.batchnorm,
            "mode": self.mode,
            "unit": self.unit,
            "routes": dict(self.engine.routes),
            "route_reasons": dict(self.engine.reasons),
            "closed_form": self.engine.closed_form_params,
            "top_eigenvalue": method,
            "top_eigenvalue_samples": m3_samples if top is not None else 0,
            "oom_splits": self._oom_splits,
            "seed": self.seed,
            "chunk_size": self.chunk,
            "world_size": world,
        }
        return ProbeResult(values, sums, self.unit, config, meta)

    # ------------------------------------------------------------------ internals
    def _one_chunk(self, batches: Any) -> bool:
        """Whether the data is one (inputs, targets) pair that fits one chunk and the Gram
        budget, so that metric 3 can be taken from the moments' own slabs."""
        if not (isinstance(batches, list) and len(batches) == 1):
            return False
        n = batches[0][0].shape[0] // (self.unit_size or 1)
        return 2 <= batches[0][0].shape[0] <= self.chunk and n <= self.gram_max_samples

    def _materialise_bytes(self) -> int:
        """How much of a chunk's recomputed blocks to hold at once (see GradientSums.update)."""
        return materialise_bytes(free_bytes(self._device()))

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

    def _split_on_oom(
        self,
        index: int,
        x: Tensor,
        y: Tensor,
        current: tuple,
        snap: tuple | None,
        path: tuple[int, ...] = (),
    ) -> Iterator[tuple[dict[str, GradBlock], dict[str, GradBlock] | None, int]]:
        """The chunk's blocks; a chunk that runs out of memory is split in two and retried.

        Halves draw their randomness from states derived from the chunk's index and their
        position, so a split run is reproducible (its dropout masks differ from an unsplit
        one's; ``config["oom_splits"]`` says it happened).
        """
        rng = chunk_rng(self.seed, index) if not path else _split_rng(self.seed, index, path)
        try:
            g, h, dropped = self._blocks(index, x, y, current, snap, rng)
        except _OOM_ERRORS:
            multiple = self.unit_size or 1
            half = (x.shape[0] // multiple // 2) * multiple
            if half < multiple:
                raise
            if x.is_cuda:
                torch.cuda.empty_cache()
            self._oom_splits += 1
            yield from self._split_on_oom(index, x[:half], y[:half], current, snap, (*path, 0))
            yield from self._split_on_oom(index, x[half:], y[half:], current, snap, (*path, 1))
            return
        yield g, h, dropped

    def _blocks(
        self,
        index: int,
        x: Tensor,
        y: Tensor,
        current: tuple,
        snap: tuple | None,
        rng: Any = None,
    ) -> tuple[dict[str, GradBlock], dict[str, GradBlock] | None, int]:
        rng = chunk_rng(self.seed, index) if rng is None else rng
        g = self.engine.blocks(*current, x, y, rng)
        h = self.engine.blocks(*snap, x, y, rng) if snap is not None else None
        if not self.skip_nonfinite:  # checked on the chunk's moments (GradientSums.update)
            return g, h, 0
        keep = self._finite(g, h, index)
        dropped = int((~keep).sum())
        if dropped:
            g = {k: b.select(keep) for k, b in g.items()}
            h = {k: b.select(keep) for k, b in h.items()} if h is not None else None
        return g, h, dropped

    def _raise_nonfinite(
        self,
        current: Mapping[str, GradBlock],
        snapshot: Mapping[str, GradBlock] | None,
        index: int,
    ) -> None:
        finite_samples(current, snapshot, self._where(index), skip=False)  # raises, by name
        raise NonFiniteGradientError(
            f"the moments of chunk {index} are not finite although every gradient is: a "
            "float64 overflow (gradients above ~1e150); rescale the loss"
        )

    def _finite(
        self,
        current: Mapping[str, GradBlock],
        snapshot: Mapping[str, GradBlock] | None,
        index: int,
    ) -> Tensor:
        return finite_samples(current, snapshot, self._where(index), skip=self.skip_nonfinite)

    def _where(self, index: int) -> tuple[int, str]:
        """(index of the chunk's first sample, what a sample is) for error messages."""
        what = "example" if self.unit_size is None else f"mini-batch of {self.unit}"
        return index * (self.chunk // (self.unit_size or 1)), what
