"""Checkpoint series on disk: read saved states safely, pair them with snapshots, write them.

A run directory holds ``step-000123.pt`` files (a ``torch.save``d dict with ``model`` = state
dict, ``step``, ``epoch`` and, for alpha-SVRG runs, ``snapshot_step``) or ``.safetensors`` files
with the same fields in their metadata, plus an optional ``run.json``. Any folder of plain
``torch.save(model.state_dict())`` or safetensors files also works; the step is then the last
integer in the file name (``epoch_3.pt`` -> 3, ``ckpt-1200.pt`` -> 1200).

Loading never executes pickled code: ``torch.load(..., weights_only=True)`` and
``safetensors.torch.load_file``. Every file is opened (cheaply, memory-mapped) when the series
is built, so a foreign, corrupt or truncated file fails before any computation starts.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal, overload

import safetensors.torch
import torch
from safetensors import safe_open
from torch import nn

from gradvar._files import atomic_path
from gradvar._utils import check_positive
from gradvar.errors import CheckpointError, InvalidArgumentError

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "RUN_CONFIG",
    "Checkpoint",
    "CheckpointSeries",
    "check_compatible",
    "load_into",
    "save_checkpoint",
    "write_run_config",
    "read_run_config",
]

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors")
RUN_CONFIG = "run.json"
_STATE_KEYS = ("model", "model_state_dict", "state_dict")  # gradvar's, then common conventions
_SHOWN = 10  # how many names an error lists before "... and N more"
StateDict = dict[str, torch.Tensor]


def _listing(names: Sequence[Any]) -> str:
    shown = ", ".join(str(n) for n in names[:_SHOWN])
    return f"[{shown}{f', ... and {len(names) - _SHOWN} more' if len(names) > _SHOWN else ''}]"


def _torch_load(path: Path, *, mmap: bool) -> Any:
    """``torch.load`` restricted to weights; every failure becomes a CheckpointError."""
    try:
        use_mmap = mmap and zipfile.is_zipfile(path)
        return torch.load(path, map_location="cpu", weights_only=True, mmap=use_mmap)
    except pickle.UnpicklingError as exc:
        message = str(exc)
        if "Weights only load failed" not in message:
            raise CheckpointError(f"{path} is corrupt or not a torch.save file: {exc}") from exc
        reason = next((ln.strip() for ln in message.splitlines() if "GLOBAL" in ln), "")
        raise CheckpointError(
            f"refused to load {path}: it contains a pickled object that is not plain weights "
            f"({reason or 'rejected by torch.load(weights_only=True)'}). gradvar never executes "
            "pickled code. If the file is yours and trusted, re-save only the weights, e.g. "
            "torch.save(model.state_dict(), path), or a dict of tensors and numbers."
        ) from exc
    except Exception as exc:  # zip, EOF and I/O errors from a damaged file
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"cannot read checkpoint {path}: corrupt, truncated or not a torch.save file "
            f"({type(exc).__name__}: {first_line})"
        ) from exc


def _split_state(obj: Any, path: Path) -> tuple[StateDict, dict[str, Any]]:
    """Separate the weights from the scalar metadata of a loaded ``.pt`` object."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state_dict or a dict")
    state: Any = None
    for key in _STATE_KEYS:
        if isinstance(obj.get(key), Mapping):
            state = obj[key]
            meta = {k: v for k, v in obj.items() if k != key and isinstance(v, (int, float, str))}
            break
    else:
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            state, meta = obj, {}
    if state is None:
        raise CheckpointError(
            f"no weights found in {path}: expected a state_dict (name -> tensor) or a dict with a "
            f"{' / '.join(map(repr, _STATE_KEYS))} entry; found keys {_listing(list(obj))}"
        )
    odd = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if odd:
        raise CheckpointError(f"state_dict in {path} has non-tensor entries {_listing(odd)}")
    return dict(state), meta


def _read_metadata(path: Path) -> dict[str, Any]:
    """The scalar fields stored beside the weights (header only for safetensors)."""
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as handle:
                return dict(handle.metadata() or {})
        except Exception as exc:
            raise CheckpointError(f"cannot read safetensors checkpoint {path}: {exc}") from exc
    return _split_state(_torch_load(path, mmap=True), path)[1]


def _number(meta: Mapping[str, Any], key: str, kind: type, path: Path) -> Any:
    value = meta.get(key)
    if value is None or value in ("", "None", "null"):
        return None
    try:
        return kind(value)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: metadata {key}={value!r} is not a {kind.__name__}") from exc


def _step_of(path: Path, meta: Mapping[str, Any]) -> int | None:
    """The ``step`` field if the file has one, else the last integer in the file name."""
    step = _number(meta, "step", int, path)
    if step is None:
        found = re.findall(r"\d+", path.stem)
        step = int(found[-1]) if found else None
    return step


@dataclass(frozen=True)
class Checkpoint:
    """One saved training state: its step, epoch, snapshot step, file and scalar metadata."""

    step: int
    epoch: float | None
    snapshot_step: int | None
    path: Path
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Checkpoint:
        """Read ``path``'s metadata (not its weights); the step is the file's ``step`` field,
        else the last integer in its name."""
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"no checkpoint file at {str(path)!r}")
        meta = _read_metadata(path)
        step = _step_of(path, meta)
        if step is None:
            raise CheckpointError(
                f"cannot tell the step of {path}: no 'step' field and no integer in its name; "
                "rename it (e.g. step-000100.pt) or save it with gradvar's save_checkpoint"
            )
        return cls._from_metadata(path, meta, step)

    @classmethod
    def _from_metadata(cls, path: Path, meta: dict[str, Any], step: int) -> Checkpoint:
        epoch = _number(meta, "epoch", float, path)
        return cls(step, epoch, _number(meta, "snapshot_step", int, path), path, meta)

    @property
    def name(self) -> str:
        """The file name, used as the ``checkpoint`` column of the records."""
        return self.path.name

    def load(self) -> StateDict:
        """The weights as a state_dict of CPU tensors (never unpickles arbitrary objects)."""
        if self.path.suffix == ".safetensors":
            try:
                return safetensors.torch.load_file(str(self.path), device="cpu")
            except Exception as exc:
                raise CheckpointError(f"cannot read safetensors file {self.path}: {exc}") from exc
        return _split_state(_torch_load(self.path, mmap=False), self.path)[0]

    def optimizer_state(self) -> dict[str, Any] | None:
        """The ``optimizer`` entry of a ``.pt`` checkpoint (for resuming), or None."""
        if self.path.suffix == ".safetensors":
            return None
        obj = _torch_load(self.path, mmap=False)
        return obj.get("optimizer") if isinstance(obj, Mapping) else None


class CheckpointSeries(Sequence[Checkpoint]):
    """The checkpoints of one run, ordered by step, each paired with its snapshot.

    Pairing (recorded as :attr:`pairing`): ``snapshot=`` (a file or Checkpoint) pairs every
    checkpoint with it ("explicit:PATH"); ``snapshot_interval=K`` pairs step t with the
    checkpoint at the largest multiple of K <= t ("interval:K"); otherwise the files'
    ``snapshot_step`` fields ("metadata"), else run.json's ``snapshot_interval``, else "none".
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        snapshot_interval: int | None = None,
        snapshot: str | os.PathLike[str] | Checkpoint | None = None,
    ) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise CheckpointError(f"checkpoint folder {str(self.path)!r} does not exist")
        run_dir = self.path if self.path.is_dir() else self.path.parent
        files = [self.path] if self.path.is_file() else _checkpoint_files(self.path)
        if not files:
            present = sorted(p.name for p in self.path.iterdir())
            raise CheckpointError(
                f"no checkpoint files ({', '.join('*' + s for s in CHECKPOINT_SUFFIXES)}) in "
                f"{self.path}; it holds {_listing(present) if present else 'nothing'}"
            )
        self.run_config: dict[str, Any] = read_run_config(run_dir)
        self._checkpoints = _open_all(files)
        self._by_step = {c.step: c for c in self._checkpoints}
        self._explicit: Checkpoint | None = None
        self._interval: int | None = None
        self.pairing = self._choose_pairing(snapshot_interval, snapshot)

    def _choose_pairing(
        self, interval: int | None, snapshot: str | os.PathLike[str] | Checkpoint | None
    ) -> str:
        if snapshot is not None and interval is not None:
            raise InvalidArgumentError(
                "give either snapshot= or snapshot_interval=, not both; "
                f"got snapshot={snapshot!r}, snapshot_interval={interval!r}"
            )
        if snapshot is not None:
            self._explicit = (
                snapshot if isinstance(snapshot, Checkpoint) else Checkpoint.open(snapshot)
            )
            return f"explicit:{self._explicit.path}"
        with_meta = [c.snapshot_step is not None for c in self._checkpoints]
        if interval is None and all(with_meta):
            return "metadata"
        interval = interval if interval is not None else self.run_config.get("snapshot_interval")
        if interval is not None:
            if not isinstance(interval, int) or isinstance(interval, bool):
                raise InvalidArgumentError(f"snapshot_interval must be an int, got {interval!r}")
            check_positive("snapshot_interval", interval)
            self._interval = interval
            return f"interval:{interval}"
        if any(with_meta):
            lacking = [c.name for c in self._checkpoints if c.snapshot_step is None]
            raise CheckpointError(
                f"some checkpoints in {self.path} record a snapshot_step and {_listing(lacking)} "
                "do not; pass snapshot_interval= or snapshot= to pair them all one way"
            )
        return "none"

    @property
    def steps(self) -> list[int]:
        """The steps on disk, ascending."""
        return [c.step for c in self._checkpoints]

    def __len__(self) -> int:
        return len(self._checkpoints)

    @overload
    def __getitem__(self, index: int) -> Checkpoint: ...
    @overload
    def __getitem__(self, index: slice) -> list[Checkpoint]: ...
    def __getitem__(self, index: int | slice) -> Checkpoint | list[Checkpoint]:
        return self._checkpoints[index]

    def __repr__(self) -> str:
        steps = _listing(self.steps)
        return f"CheckpointSeries({str(self.path)!r}, steps={steps}, pairing={self.pairing!r})"

    def at_step(self, step: int) -> Checkpoint:
        """The checkpoint saved at ``step``; CheckpointError listing the steps if there is none."""
        if step not in self._by_step:
            raise CheckpointError(
                f"no checkpoint at step {step} in {self.path}; steps: {_listing(self.steps)}"
            )
        return self._by_step[step]

    def snapshot_for(self, checkpoint: Checkpoint | int) -> Checkpoint | None:
        """The snapshot θ̃ that ``checkpoint`` (or a step) pairs with; None if pairing is "none"."""
        current = checkpoint if isinstance(checkpoint, Checkpoint) else self.at_step(checkpoint)
        if self._explicit is not None or self.pairing == "none":
            return self._explicit
        if self._interval is not None:
            target = (current.step // self._interval) * self._interval
        else:
            target = current.snapshot_step
        if target is None or target > current.step:
            raise CheckpointError(
                f"{current.path}: snapshot_step={target} is after its step {current.step}"
            )
        if target not in self._by_step:
            raise CheckpointError(
                f"{current.name} (step {current.step}) pairs with the snapshot at step {target} "
                f"(pairing {self.pairing}), but {self.path} has no checkpoint at step {target}; "
                f"steps on disk: {_listing(self.steps)}. Save a checkpoint at every snapshot, or "
                "pass snapshot_interval= or snapshot= explicitly."
            )
        return self._by_step[target]

    def pairs(self) -> list[tuple[Checkpoint, Checkpoint | None]]:
        """Every (checkpoint, snapshot) pair, resolved up front so a gap fails before any work."""
        return [(c, self.snapshot_for(c)) for c in self._checkpoints]


def _checkpoint_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES and not p.name.startswith(".")
    )  # fmt: skip


def _open_all(files: Iterable[Path]) -> list[Checkpoint]:
    checkpoints, nameless = [], []
    for path in files:
        meta = _read_metadata(path)
        step = _step_of(path, meta)
        if step is None:
            nameless.append(path.name)
        else:
            checkpoints.append(Checkpoint._from_metadata(path, meta, step))
    if nameless:
        raise CheckpointError(
            f"cannot tell the step of {_listing(nameless)}: no 'step' field and no integer in the "
            "file name; rename them (e.g. step-000100.pt) or pass the files one at a time"
        )
    checkpoints.sort(key=lambda c: c.step)
    clashes = [(a.name, b.name) for a, b in zip(checkpoints, checkpoints[1:]) if a.step == b.step]
    if clashes:
        raise CheckpointError(f"several files claim the same step: {_listing(clashes)}; keep one")
    return checkpoints


def check_compatible(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], path: Any = None
) -> None:
    """Raise CheckpointError unless ``state_dict`` has exactly ``model``'s keys and shapes."""
    where = f"checkpoint {path}" if path is not None else "state_dict"
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        hint = ""
        for prefix in ("module.", "_orig_mod."):
            if unexpected and all(
                k.startswith(prefix) and k[len(prefix) :] in expected for k in unexpected
            ):
                hint = (
                    f" The checkpoint's keys carry the prefix {prefix!r} (DistributedDataParallel"
                    " or torch.compile); strip it before loading."
                )
        raise CheckpointError(
            f"{where} does not match the model: {len(missing)} missing key(s) {_listing(missing)}, "
            f"{len(unexpected)} unexpected key(s) {_listing(unexpected)}.{hint} Build the model "
            "with the same factory and arguments as the run that saved it (see run.json)."
        )
    wrong = [
        f"{k}: checkpoint {list(state_dict[k].shape)} vs model {list(v.shape)}"
        for k, v in expected.items()
        if tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if wrong:
        raise CheckpointError(
            f"{where} does not match the model: {len(wrong)} shape mismatch(es) {_listing(wrong)}. "
            "Build the model with the same arguments (widths, classes, input size) as the run."
        )


def load_into(
    model: nn.Module, checkpoint: Checkpoint | str | os.PathLike[str] | Mapping[str, torch.Tensor]
) -> nn.Module:
    """Check ``checkpoint`` against ``model`` (keys, shapes), then load it; returns ``model``."""
    if isinstance(checkpoint, Mapping):
        state, where = checkpoint, None
    else:
        opened = checkpoint if isinstance(checkpoint, Checkpoint) else Checkpoint.open(checkpoint)
        state, where = opened.load(), opened.path
    check_compatible(model, state, where)
    model.load_state_dict(state, strict=True)
    return model


def _atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> Path:
    """Write via a hidden temporary file in the same folder, fsync, then ``os.replace``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    return path


def save_checkpoint(
    run_dir: str | os.PathLike[str],
    model: nn.Module | Mapping[str, torch.Tensor],
    *,
    step: int,
    epoch: float | None = None,
    snapshot_step: int | None = None,
    optimizer: torch.optim.Optimizer | Mapping[str, Any] | None = None,
    format: Literal["pt", "safetensors"] = "pt",
) -> Path:
    """Atomically write ``run_dir/step-{step:06d}.{pt|safetensors}``; returns its path.

    ``optimizer`` (an optimizer or its state_dict) is kept for resuming; only ``.pt`` can hold it.
    """
    check_positive("step", step, allow_zero=True)
    if format not in ("pt", "safetensors"):
        raise InvalidArgumentError(f"format must be 'pt' or 'safetensors', got format={format!r}")
    state = model.state_dict() if isinstance(model, nn.Module) else dict(model)
    fields = {"step": int(step), "epoch": epoch, "snapshot_step": snapshot_step}
    fields = {k: v for k, v in fields.items() if v is not None}
    path = Path(run_dir) / f"step-{step:06d}.{format}"
    if format == "safetensors":
        if optimizer is not None:
            raise InvalidArgumentError(
                "safetensors holds tensors only, so it cannot store optimizer state; "
                "use format='pt' to save optimizer=..."
            )
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
        blob = safetensors.torch.save(tensors, metadata={k: str(v) for k, v in fields.items()})
        return _atomic_write(path, lambda handle: handle.write(blob))
    payload: dict[str, Any] = {"model": state, **fields}
    if optimizer is not None:
        payload["optimizer"] = (
            optimizer.state_dict() if isinstance(optimizer, torch.optim.Optimizer) else optimizer
        )
    return _atomic_write(path, lambda handle: torch.save(payload, handle))


def write_run_config(run_dir: str | os.PathLike[str], config: Mapping[str, Any]) -> Path:
    """Atomically write ``run_dir/run.json`` (model, data, loss, seed, snapshot interval, ...)."""
    try:
        text = json.dumps(dict(config), indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(
            f"run config must be plain JSON (str, numbers, lists, dicts): {exc}"
        ) from exc
    return _atomic_write(Path(run_dir) / RUN_CONFIG, lambda handle: handle.write(text.encode()))


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
