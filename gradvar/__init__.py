"""gradvar: measure the variance of neural-network gradients and turn it into better training.

Public surface (everything else lives in its module)::

    gradvar.per_sample_grads   per-example gradients of any nn.Module (torch.func)
    gradvar.Probe              per-layer variance, snapshot correlation, optimal alpha
    gradvar.ProbeResult        its result; .to_frame() gives the tidy records
    gradvar.analyze            a probe over every checkpoint of a saved run
    gradvar.CheckpointSeries   a run directory of checkpoints, with snapshot pairing
    gradvar.Monitor            a probe every k steps while training (plain loops; see
                               gradvar.callbacks for Lightning and Hugging Face)
    gradvar.AlphaSVRG          alpha-SVRG as a torch.optim.Optimizer wrapping any base one
    gradvar.schedules          alpha schedules (Constant, Linear, ..., Fitted)
    gradvar.fit_schedule       fit a schedule to measured alpha*
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "per_sample_grads": "gradvar.grads",
    "Probe": "gradvar.probe",
    "ProbeResult": "gradvar.probe",
    "analyze": "gradvar.analysis",
    "CheckpointSeries": "gradvar.checkpoints",
    "Monitor": "gradvar.monitor",
    "AlphaSVRG": "gradvar.optim",
    "fit_schedule": "gradvar.fit",
}

__all__ = [*_EXPORTS, "schedules", "__version__"]


def __getattr__(name: str) -> Any:
    # Imported on first use so that `import gradvar` stays light (no torch for fit-only use).
    if name == "schedules":
        return importlib.import_module("gradvar.schedules")
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gradvar' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
