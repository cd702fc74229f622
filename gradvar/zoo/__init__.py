"""Reference models and datasets for examples, tests and benchmarks.

Models: ``MODELS`` / :func:`build_model` (``"mlp1"``, ``"mlp2"``, ``"mlp4"``, ``"cnn"``,
``"vit"``, ``"transformer"`` or ``"module:factory"``). Data: ``DATASETS`` /
:func:`load_dataset` (``"digits"``, ``"fashion-mnist"``, ``"synthetic"`` or ``"module:fn"``)
and the seeded :func:`augment` transform.
"""

from gradvar.zoo.data import (
    DATASETS,
    FASHION_MNIST_DEFAULT_DIR,
    FASHION_MNIST_ENV,
    augment,
    digits,
    fashion_mnist,
    load_dataset,
    synthetic,
)
from gradvar.zoo.models import (
    MODELS,
    build_model,
    mlp,
    mlp_widths,
    model_from_spec,
    small_cnn,
    tiny_transformer,
    tiny_vit,
)
from gradvar.zoo.specs import resolve_callable

__all__ = [
    "DATASETS",
    "FASHION_MNIST_DEFAULT_DIR",
    "FASHION_MNIST_ENV",
    "MODELS",
    "augment",
    "build_model",
    "digits",
    "fashion_mnist",
    "load_dataset",
    "mlp",
    "mlp_widths",
    "model_from_spec",
    "resolve_callable",
    "small_cnn",
    "synthetic",
    "tiny_transformer",
    "tiny_vit",
]
