"""``run.json``: the run's model factory, data, loss, seed, unit and snapshot interval."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gradvar._files import atomic_path
from gradvar.errors import CheckpointError, InvalidArgumentError

__all__ = ["RUN_CONFIG", "write_run_config", "read_run_config"]

RUN_CONFIG = "run.json"


def write_run_config(run_dir: str | os.PathLike[str], config: Mapping[str, Any]) -> Path:
    """Atomically write ``run_dir/run.json`` (model, data, loss, seed, snapshot interval, ...)."""
    try:
        text = json.dumps(dict(config), indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(
            f"run config must be plain JSON (str, numbers, lists, dicts): {exc}"
        ) from exc
    with atomic_path(Path(run_dir) / RUN_CONFIG) as tmp:
        Path(tmp).write_text(text)
    return Path(run_dir) / RUN_CONFIG


def read_run_config(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``run_dir/run.json`` as a dict, or ``{}`` if the run has none."""
    path = Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}; fix or delete it") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(config).__name__}")
    return config
