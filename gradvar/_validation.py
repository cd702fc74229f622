"""Checks of the data a probe is given, before any gradient is computed.

Each failure is an :class:`~gradvar.errors.InvalidArgumentError` that names the bad value and
the fix, in place of a raw error from deep inside torch (or silent NaNs):

- no data at all, or fewer than 2 samples (variance needs two; a unit of b examples makes
  ``n // b`` samples), or a mini-batch ``unit`` larger than the number of examples;
- batches that are not ``(inputs, targets)`` tensor pairs, or whose inputs and targets
  disagree on the number of examples;
- floating-point inputs of another dtype than the model's parameters (float64 data into a
  float32 model);
- for classification losses (cross entropy, NLL): float targets of shape [N] (class indices
  must be integers; class probabilities have the output's shape), and class indices outside
  ``[0, C)`` for the model's C outputs (``-100``, the default ``ignore_index``, is allowed).

In-memory data (a pair, or a list/tuple of pairs) is checked whole; any other iterable
(a DataLoader) through its first batch, and its size through ``len(loader.dataset)`` when
there is one, so the check never costs an extra pass over the data.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from gradvar.errors import InvalidArgumentError

__all__ = ["check_probe_data", "is_classification_loss"]

_CLASSIFICATION_NAMES = {"cross_entropy", "nll_loss", "CrossEntropyLoss", "NLLLoss"}
_IGNORE_INDEX = -100


def is_classification_loss(loss_fn: Callable[..., Any]) -> bool:
    """True for ``F.cross_entropy``, ``F.nll_loss`` and their ``nn`` modules (also partials)."""
    target = loss_fn.func if isinstance(loss_fn, functools.partial) else loss_fn
    name = getattr(target, "__name__", None) or type(target).__name__
    return name in _CLASSIFICATION_NAMES


def _pairs(data: Any) -> tuple[list[tuple[Any, Any]], bool, int | None]:
    """(batches to inspect, whether that is all of the data, known total examples or None)."""
    if (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and all(isinstance(t, Tensor) for t in data)
    ):
        return [(data[0], data[1])], True, None
    if isinstance(data, (list, tuple)):
        return [_pair(b, i) for i, b in enumerate(data)], True, None
    dataset = getattr(data, "dataset", None)
    total = len(dataset) if dataset is not None and hasattr(dataset, "__len__") else None
    first = next(iter(data), None)
    return ([] if first is None else [_pair(first, 0)]), False, total


def _pair(batch: Any, index: int) -> tuple[Any, Any]:
    if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
        raise InvalidArgumentError(
            f"batch {index} is a {type(batch).__name__}, not an (inputs, targets) pair; "
            "give data as (x, y) tensors or an iterable (DataLoader) of such pairs"
        )
    return batch[0], batch[1]


def _param_dtype(model: nn.Module) -> torch.dtype | None:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), None)


def _output_classes(model: nn.Module, x: Tensor) -> int | None:
    """The model's number of outputs on one example (eval mode, no grad, state restored)."""
    modes = {m: m.training for m in model.modules()}  # each module's own, restored exactly
    device = next(model.parameters()).device
    try:
        model.eval()
        with torch.no_grad():
            out = model(x[:1].to(device))
    except Exception:  # the probe itself reports a model that fails on its input
        return None
    finally:
        for module, training in modes.items():
            module.training = training
    return int(out.shape[-1]) if isinstance(out, Tensor) and out.dim() >= 2 else None


def check_probe_data(
    model: nn.Module,
    loss_fn: Callable[..., Any],
    data: Any,
    *,
    unit_size: int | None = None,
) -> int | None:
    """Raise InvalidArgumentError for unusable ``data`` (see the module docstring).

    Returns the number of examples when it is known (None for a loader without a length).
    """
    batches, complete, total = _pairs(data)
    if not batches:
        raise InvalidArgumentError(
            "data is empty: no (inputs, targets) batch to probe; pass at least 2 examples"
        )
    dtype = _param_dtype(model)
    classify = is_classification_loss(loss_fn)
    classes: int | None = None
    examples = 0
    for index, (x, y) in enumerate(batches):
        where = "data" if len(batches) == 1 else f"batch {index}"
        if not isinstance(x, Tensor) or not isinstance(y, Tensor):
            raise InvalidArgumentError(
                f"{where}: inputs and targets must be tensors, got {type(x).__name__} and "
                f"{type(y).__name__}; convert with torch.as_tensor"
            )
        if x.dim() == 0 or y.dim() == 0 or x.shape[0] != y.shape[0]:
            raise InvalidArgumentError(
                f"{where}: inputs {tuple(x.shape)} and targets {tuple(y.shape)} must share their "
                "first (example) dimension"
            )
        examples += int(x.shape[0])
        if x.is_floating_point() and dtype is not None and x.dtype != dtype:
            raise InvalidArgumentError(
                f"{where}: inputs are {x.dtype} but the model's parameters are {dtype}; convert "
                f"the inputs (x.to({dtype})) or the model (model.to({x.dtype}))"
            )
        if classify:
            classes = _check_labels(model, x, y, where, classes)
    examples = total if not complete and total is not None else examples if complete else None
    if examples is not None:
        _check_count(examples, unit_size)
    return examples


def _check_labels(model: nn.Module, x: Tensor, y: Tensor, where: str, classes: int | None) -> int:
    if y.is_floating_point() and y.dim() == 1:
        raise InvalidArgumentError(
            f"{where}: targets are {y.dtype} class labels of shape {tuple(y.shape)}; cross "
            "entropy needs integer class indices (y.long()) or class probabilities of the "
            "output's shape [N, C]"
        )
    if not y.is_floating_point() and y.dtype != torch.int64:
        raise InvalidArgumentError(
            f"{where}: class labels are {y.dtype}; cross entropy needs torch.int64 class "
            "indices: convert with y.long()"
        )
    if classes is None:
        classes = _output_classes(model, x)
    if y.is_floating_point() or classes is None or y.numel() == 0:
        return classes or 0
    valid = y[y != _IGNORE_INDEX]
    if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= classes):
        bad = valid[(valid < 0) | (valid >= classes)]
        raise InvalidArgumentError(
            f"{where}: class labels must lie in [0, {classes}) for a model with {classes} "
            f"outputs, got labels {sorted({int(v) for v in bad[:5]})} (min {int(valid.min())}, "
            f"max {int(valid.max())}); relabel the data to 0..{classes - 1} or build the model "
            "with more classes"
        )
    return classes


def _check_count(examples: int, unit_size: int | None) -> None:
    if examples == 0:
        raise InvalidArgumentError("data is empty (0 examples); pass at least 2 examples")
    if unit_size is not None and unit_size > examples:
        raise InvalidArgumentError(
            f"unit={unit_size} is larger than the data ({examples} examples): a mini-batch "
            f"unit needs at least 2 mini-batches; use unit <= {max(1, examples // 2)} or more "
            "data"
        )
    samples = examples if unit_size is None else examples // unit_size
    if samples < 2:
        noun = "examples" if unit_size is None else f"mini-batches of {unit_size}"
        raise InvalidArgumentError(
            f"{samples} {noun} to probe (n={examples}); variance needs at least 2 samples: "
            + (
                "give at least 2 examples"
                if unit_size is None
                else f"give at least {2 * unit_size} examples or a smaller unit"
            )
        )
