"""Training-loop callbacks that run a :class:`gradvar.Monitor` while the trainer trains.

    from gradvar.callbacks import LightningMonitor, HuggingFaceMonitor

Both probe a fixed probe set every k optimizer steps, append the records (the schema of
:func:`gradvar.analyze`) to a records file and send the headline metrics to the trainer's
loggers. Lightning and transformers are optional dependencies (``pip install
gradvar[callbacks]``): each is imported only when its callback is first used.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["LightningMonitor", "HuggingFaceMonitor"]

_MODULES = {
    "LightningMonitor": ("gradvar.callbacks.lightning", "lightning"),
    "HuggingFaceMonitor": ("gradvar.callbacks.huggingface", "transformers"),
}


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module 'gradvar.callbacks' has no attribute {name!r}")
    module, package = _MODULES[name]
    try:
        value = getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] != package:
            raise
        raise ImportError(
            f"gradvar.callbacks.{name} needs the optional dependency {package!r}, which is not "
            f"installed: pip install 'gradvar[callbacks]' (or pip install {package})"
        ) from exc
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
