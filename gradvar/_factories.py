"""What the command line calls on the user's behalf: data, model and loss factories, threads.

Contracts (also in ``gradvar analyze --help`` and the README):

- ``--data NAME | MODULE:FN | ./file.py:FN``: ``FN(split="train", n=N, seed=S, **options)``
  returns a ``torch.utils.data.Dataset`` of ``(inputs, targets)`` or an ``(inputs,
  targets)`` pair of tensors. FN may accept any subset of ``split``, ``n`` and ``seed``
  (including none); only those it accepts are passed. ``--n N`` is then enforced: the first
  N examples are used when FN returns more, and fewer than N is an error.
- ``--model NAME | MODULE:FN | ./file.py:FN``: ``FN(**model_kwargs)`` returns the
  ``nn.Module`` whose ``state_dict`` the checkpoints hold.
- ``--loss cross_entropy | mse | MODULE:FN | ./file.py:FN``: ``FN(outputs, targets)`` returns
  the mean loss of the batch.

``./file.py:FN`` (any path ending in ``.py``) is imported from that file, no ``PYTHONPATH``
needed; its folder is put first on ``sys.path`` so it can import its neighbours.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from gradvar.errors import InvalidArgumentError

__all__ = ["resolve", "load_data", "cpu_threads", "call_user"]


def _is_file_spec(spec: str) -> bool:
    module = spec.rsplit(":", 1)[0]
    return module.endswith(".py") or "/" in module or os.sep in module


def _import_file(path_text: str, spec: str) -> Any:
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise InvalidArgumentError(f"{spec!r}: no Python file at {str(path)!r}")
    name = f"gradvar_user_{path.stem}_{abs(hash(str(path.resolve()))) % 10**8}"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise InvalidArgumentError(f"{spec!r}: cannot import {path} as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.path.insert(0, str(path.resolve().parent))
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise InvalidArgumentError(
            f"importing {path} (from {spec!r}) failed: {type(exc).__name__}: {exc}"
        ) from exc
    return module


def resolve(spec: str, what: str) -> Callable[..., Any]:
    """The callable named by ``MODULE:FN`` or ``./file.py:FN`` (``what`` names the option)."""
    if spec.count(":") != 1 or not all(part.strip() for part in spec.split(":")):
        raise InvalidArgumentError(
            f"{what} {spec!r} is not a registry name or a 'module:function' / './file.py:function'"
            " spec"
        )
    if not _is_file_spec(spec):
        from gradvar.zoo import resolve_callable

        return resolve_callable(spec)
    path_text, attr = spec.rsplit(":", 1)
    value: Any = _import_file(path_text, spec)
    for part in attr.split("."):
        if not hasattr(value, part):
            raise InvalidArgumentError(f"{what} {spec!r}: {path_text} has no attribute {part!r}")
        value = getattr(value, part)
    if not callable(value):
        raise InvalidArgumentError(f"{what} {spec!r} is a {type(value).__name__}, not callable")
    return value


def call_user(fn: Callable[..., Any], what: str, spec: str, **kwargs: Any) -> Any:
    """``fn(**kwargs)``; a failure inside the user's code becomes one named line."""
    try:
        return fn(**kwargs)
    except InvalidArgumentError:
        raise
    except Exception as exc:
        shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise InvalidArgumentError(
            f"{what} {spec!r} raised {type(exc).__name__}: {exc} (called as {spec}({shown}); set "
            "GRADVAR_TRACEBACK=1 to see where)"
        ) from exc


def _accepted(fn: Callable[..., Any], offered: Mapping[str, Any]) -> dict[str, Any]:
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return dict(offered)
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return dict(offered)
    names = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {k: v for k, v in offered.items() if k in names}


def load_data(
    spec: Mapping[str, Any], *, n: int | None, explicit_n: bool, split: str = "train"
) -> tuple[Any, Any, str]:
    """``(inputs, targets, note)`` for a data spec, with ``n`` enforced (see module docstring)."""
    import torch
    from torch.utils.data import Dataset, TensorDataset

    from gradvar.zoo import DATASETS, load_dataset

    name = str(spec["name"])
    seed = int(spec.get("seed", 0))
    options = {k: v for k, v in spec.items() if k not in ("name", "n", "split", "seed")}
    split = str(spec.get("split", split))
    if name in DATASETS:
        try:
            data: Any = load_dataset(name, split=split, n=n, seed=seed, **options)
        except InvalidArgumentError:
            if explicit_n or n is None:
                raise
            data = load_dataset(name, split=split, n=None, seed=seed, **options)  # all there is
    else:
        fn = resolve(name, "--data")
        offered = {"split": split, "n": n, "seed": seed, **options}
        kwargs = _accepted(fn, offered)
        unknown = sorted(set(options) - set(kwargs))
        if unknown:
            raise InvalidArgumentError(
                f"--data {name!r} does not accept the options {unknown}; its signature is "
                f"{inspect.signature(fn)}"
            )
        data = call_user(fn, "--data", name, **kwargs)
    if (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and all(isinstance(t, torch.Tensor) for t in data)
    ):
        data = TensorDataset(data[0], data[1])
    if not isinstance(data, Dataset):
        raise InvalidArgumentError(
            f"--data {name!r} returned a {type(data).__name__}; the contract is a torch Dataset "
            "of (inputs, targets) or an (inputs, targets) pair of tensors"
        )
    if isinstance(data, TensorDataset):
        x, y = data.tensors[0], data.tensors[1]
    else:
        if len(data) == 0:  # type: ignore[arg-type]
            raise InvalidArgumentError(f"--data {name!r} returned an empty dataset")
        items = [data[i] for i in range(len(data))]  # type: ignore[arg-type]
        x = torch.stack([torch.as_tensor(item[0]) for item in items])
        y = torch.as_tensor([item[1] for item in items])
    available = int(x.shape[0])
    if n is not None and available < n and explicit_n:
        raise InvalidArgumentError(
            f"--n {n} asks for more examples than --data {name!r} gives ({available}); pass "
            f"--n {available} or fewer"
        )
    note = f"{min(available, n) if n is not None else available} examples"
    if n is not None and available > n:
        x, y = x[:n], y[:n]
        if name not in DATASETS and "n" not in _accepted(fn, {"n": n}):
            note += f" (the first {n} of the {available} that --data returned)"
    return x, y, note


def cpu_threads(requested: int | None) -> tuple[int, str]:
    """The torch CPU thread count to use and why: ``--threads``, else ``OMP_NUM_THREADS``,
    else half the CPUs this process may use, at most 4 (small per-example products gain
    little from more threads, and a shared machine loses a lot to oversubscription)."""
    if requested is not None:
        if requested < 1:
            raise InvalidArgumentError(f"--threads must be at least 1, got --threads {requested}")
        return requested, "--threads"
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) >= 1:
        return int(env), "OMP_NUM_THREADS"
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus // 2)), f"default: half of {cpus} CPUs, at most 4"
