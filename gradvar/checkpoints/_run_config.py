"""``run.json``: the run's model factory, data, loss, seed, unit and snapshot interval."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gradvar._files import atomic_path
from gradvar.checkpoints._common import read_json_object
from gradvar.errors import InvalidArgumentError

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
    return read_json_object(path, fix="; fix or delete it")
