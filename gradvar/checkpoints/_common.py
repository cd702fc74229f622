"""Shared pieces of the checkpoint readers: safe loading, scalar metadata, short listings."""

from __future__ import annotations

import hashlib
import json
import pickle
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from gradvar.checkpoints._inert import Unloaded, load_with_stand_ins
from gradvar.errors import CheckpointError

__all__ = [
    "StateDict",
    "listing",
    "scalar_fields",
    "number",
    "torch_load",
    "read_json_object",
    "file_digest",
    "weights_digest",
]

StateDict = dict[str, torch.Tensor]
_SHOWN = 10  # how many names an error lists before "... and N more"


def listing(names: Sequence[Any]) -> str:
    """``[a, b, c, ... and N more]``: at most ten names of a long list."""
    shown = ", ".join(str(n) for n in names[:_SHOWN])
    more = f", ... and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return f"[{shown}{more}]"


def _scalar(value: Any) -> Any:
    """A plain Python value for a metadata field: numbers, strings, 0-d tensors; else None."""
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else None
    if isinstance(value, (bool, int, float, str)):
        return value
    return None


def scalar_fields(obj: Mapping[str, Any], *, skip: str | None = None) -> dict[str, Any]:
    """The scalar entries of a loaded checkpoint dict (step, epoch, versions, ...)."""
    fields = {}
    for key, value in obj.items():
        if key != skip and isinstance(key, str) and (plain := _scalar(value)) is not None:
            fields[key] = plain
    return fields


def number(meta: Mapping[str, Any], key: str, kind: type, where: Any) -> Any:
    """``kind(meta[key])``, or None when absent or empty; CheckpointError if unparsable."""
    value = meta.get(key)
    if value is None or value in ("", "None", "null"):
        return None
    try:
        return kind(float(value)) if kind is int and isinstance(value, str) else kind(value)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{where}: metadata {key}={value!r} is not a {kind.__name__}"
        ) from exc


def _looks_like_text(path: Path) -> bool:
    head = path.read_bytes()[:512] if path.stat().st_size else b""
    if not head:
        return False
    printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in head)
    return printable / len(head) > 0.95


def torch_load(path: Path, *, mmap: bool) -> Any:
    """``torch.load`` restricted to weights; every failure becomes a CheckpointError.

    Objects pickled beside the weights (Lightning's ``hyper_parameters``, a script's ``args``)
    are replaced by inert stand-ins (:mod:`._inert`) instead of refusing the file; a file that
    *is* such an object (a whole pickled ``nn.Module``) is refused.
    """
    use_mmap = False
    try:
        use_mmap = mmap and zipfile.is_zipfile(path)
        return torch.load(path, map_location="cpu", weights_only=True, mmap=use_mmap)
    except pickle.UnpicklingError as exc:
        message = str(exc)
        if "Weights only load failed" not in message or _looks_like_text(path):
            raise CheckpointError(_not_torch_file(path, exc)) from exc
        try:
            obj, _ = load_with_stand_ins(path, mmap=use_mmap)
        except Exception:  # noqa: BLE001 (the refusal below names the first cause)
            obj = None
        if obj is not None and not isinstance(obj, Unloaded):
            return obj
        reason = next((ln.strip() for ln in message.splitlines() if "GLOBAL" in ln), "")
        raise CheckpointError(
            f"refused to load {path}: it is a pickled object, not weights "
            f"({reason or 'rejected by torch.load(weights_only=True)'}). gradvar never executes "
            "pickled code. If the file is yours and trusted, re-save only the weights, e.g. "
            "torch.save(model.state_dict(), path), or a dict of tensors and numbers."
        ) from exc
    except Exception as exc:  # zip, EOF and I/O errors from a damaged file
        raise CheckpointError(_not_torch_file(path, exc)) from exc


def _not_torch_file(path: Path, exc: BaseException) -> str:
    if path.is_file() and _looks_like_text(path):
        return (
            f"cannot read checkpoint {path}: it is a text file, not a torch.save or safetensors "
            "file; move it out of the run folder or give the checkpoint files one at a time"
        )
    first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return (
        f"cannot read checkpoint {path}: corrupt, truncated or not a torch.save file "
        f"({type(exc).__name__}: {first_line})"
    )


def read_json_object(path: Path, *, fix: str = "") -> dict[str, Any]:
    """``path``'s JSON object; a CheckpointError (ending in ``fix``) if unreadable or not one."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}{fix}") from exc
    if not isinstance(value, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(value).__name__}")
    return value


def file_digest(paths: Sequence[Path]) -> str:
    """SHA-256 (first 16 hex digits) of the bytes of ``paths``, in order: a content identity."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()[:16]


def weights_digest(state: Mapping[str, torch.Tensor]) -> str:
    """A digest of the tensors' values that ignores key names (so prefixes do not matter)."""
    parts = []
    for tensor in state.values():
        t = tensor.detach().cpu().contiguous()
        one = hashlib.sha256(str((tuple(t.shape), str(t.dtype))).encode())
        if t.numel():
            one.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        parts.append(one.hexdigest())
    return hashlib.sha256("".join(sorted(parts)).encode()).hexdigest()[:16]
