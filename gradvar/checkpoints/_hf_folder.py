"""Hugging Face Trainer ``checkpoint-N/`` folders (and ``save_pretrained`` folders).

The weights are ``model.safetensors``, or shards ``model-00001-of-00003.safetensors`` listed
in ``model.safetensors.index.json`` (its ``weight_map``: tensor name -> shard file), or the
older ``pytorch_model.bin`` (possibly sharded with ``pytorch_model.bin.index.json``). The step
and epoch come from ``trainer_state.json`` (``global_step``, ``epoch``), else from the folder
name ``checkpoint-N``. Everything else in the folder (``optimizer.pt``, ``scheduler.pt``,
``rng_state.pth``, ``training_args.bin``, ``config.json``, tokenizer files) is not weights and
is never read as such.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from gradvar.checkpoints._common import StateDict, read_json_object, torch_load
from gradvar.checkpoints._reader import Reader
from gradvar.checkpoints._safetensors_file import load_tensors
from gradvar.checkpoints._weights import split_weights
from gradvar.errors import CheckpointError

__all__ = ["HFFolder", "is_hf_folder", "is_hf_weight_file"]

_SINGLE = ("model.safetensors", "pytorch_model.bin")
_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
TRAINER_STATE = "trainer_state.json"


def is_hf_weight_file(name: str) -> bool:
    """True for the weight files a Hugging Face folder holds (single or a shard)."""
    return bool(re.fullmatch(r"(model|pytorch_model)(-\d+-of-\d+)?\.(safetensors|bin)", name))


def is_hf_folder(folder: Path) -> bool:
    """True if ``folder`` holds Hugging Face weight files (single or sharded with an index)."""
    return folder.is_dir() and any((folder / name).is_file() for name in (*_SINGLE, *_INDEXES))


class HFFolder(Reader):
    """A Trainer checkpoint folder; its records name is the folder (``checkpoint-500``)."""

    layout = "hf-trainer"

    def _index(self) -> tuple[Path, dict[str, str]] | None:
        for name in _INDEXES:
            path = self.path / name
            if path.is_file():
                weight_map = read_json_object(path).get("weight_map")
                if not isinstance(weight_map, dict) or not weight_map:
                    raise CheckpointError(f"{path} has no 'weight_map' (tensor name -> shard)")
                return path, {str(k): str(v) for k, v in weight_map.items()}
        return None

    @property
    def files(self) -> tuple[Path, ...]:
        index = self._index()
        if index is not None:
            shards = sorted(set(index[1].values()))
            missing = [s for s in shards if not (self.path / s).is_file()]
            if missing:
                raise CheckpointError(
                    f"{index[0]} lists shard files that are missing from {self.path}: {missing}"
                )
            return tuple(self.path / s for s in shards)
        for name in _SINGLE:
            if (self.path / name).is_file():
                return (self.path / name,)
        raise CheckpointError(f"no Hugging Face weight file in {self.path}")

    def metadata(self) -> dict[str, Any]:
        if self.weights != "model":
            raise CheckpointError(
                f"{self.path} is a Hugging Face folder with one set of weights; "
                f"weights={self.weights!r} does not apply"
            )
        files = self.files  # checks that every shard is there
        meta: dict[str, Any] = {"layout": self.layout + (" (sharded)" if len(files) > 1 else "")}
        if files[0].suffix == ".safetensors":
            from gradvar.checkpoints._safetensors_file import read_header

            for shard in files:
                read_header(shard)  # a damaged shard fails now, not mid-analysis
        else:
            for shard in files:
                split_weights(torch_load(shard, mmap=True), shard)
        state_file = self.path / TRAINER_STATE
        if state_file.is_file():
            state = read_json_object(state_file)
            for key in ("global_step", "epoch"):
                if isinstance(state.get(key), (int, float)):
                    meta[key] = state[key]
        return meta

    def load(self) -> StateDict:
        state: StateDict = {}
        for shard in self.files:
            if shard.suffix == ".safetensors":
                part = load_tensors(shard)
            else:
                part = split_weights(torch_load(shard, mmap=False), shard)[0]
            clash = sorted(set(part) & set(state))
            if clash:
                raise CheckpointError(f"shards of {self.path} repeat tensors {clash[:5]}")
            state.update(part)
        index = self._index()
        if index is not None:
            missing = sorted(set(index[1]) - set(state))
            if missing:
                raise CheckpointError(f"{index[0]} lists tensors no shard holds: {missing[:5]}")
        return state
