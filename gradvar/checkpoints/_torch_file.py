"""``torch.save`` files: plain state_dicts, dicts under the usual keys, PyTorch Lightning ``.ckpt``.

A Lightning checkpoint is a dict with ``state_dict`` (the LightningModule's weights, usually
under a ``model.`` prefix that :func:`~gradvar.checkpoints.match_keys` strips), ``epoch``,
``global_step`` and ``pytorch-lightning_version``; gradvar's own files hold ``model``,
``step``, ``epoch`` and ``snapshot_step``. Objects pickled beside the weights (Lightning's
``hyper_parameters``) are not loaded (:mod:`._inert`); their globals are in the metadata as
``not_loaded``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gradvar.checkpoints._common import StateDict, torch_load
from gradvar.checkpoints._inert import unloaded_names
from gradvar.checkpoints._reader import Reader
from gradvar.checkpoints._weights import split_weights

__all__ = ["TorchFile", "TORCH_SUFFIXES"]

TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")


class TorchFile(Reader):
    """A ``torch.save``d state_dict or dict of weights and scalars (``.pt/.pth/.ckpt/.bin``)."""

    layout = "torch"

    @property
    def files(self) -> tuple:
        return (self.path,)

    def metadata(self) -> dict[str, Any]:
        obj = torch_load(self.path, mmap=True)
        _, meta, key = split_weights(obj, self.path, self.weights)
        if isinstance(obj, Mapping) and "pytorch-lightning_version" in obj:
            meta["layout"] = "lightning"
        if unloaded := unloaded_names(obj):  # e.g. Lightning's hyper_parameters' Namespace
            meta["not_loaded"] = ", ".join(unloaded)
        meta.setdefault("layout", "torch" if not key else f"torch[{key}]")
        return meta

    def load(self) -> StateDict:
        return split_weights(torch_load(self.path, mmap=False), self.path, self.weights)[0]

    def optimizer_state(self) -> dict[str, Any] | None:
        obj = torch_load(self.path, mmap=False)
        return obj.get("optimizer") if isinstance(obj, Mapping) else None
