"""The official recipe: parameter groups, optimizers, the warmup + cosine schedule, train()."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from gradvar import recipe
from gradvar.errors import InvalidArgumentError
from gradvar.train import read_metrics, train
from gradvar.zoo import build_model, load_dataset


def _official_values(base: float, final: float, total: int, warmup: int) -> np.ndarray:
    """The reference code's cosine_scheduler written out: linspace warmup, then cosine."""
    warm = np.linspace(0.0, base, warmup) if warmup > 0 else np.array([])
    iters = np.arange(total - warmup)
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / len(iters)))
    return np.concatenate((warm, cosine))


class WithSkip(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(1, 4, 3))  # 3-D, exempt only through the hook
        self.fc = nn.Linear(3, 2)
        self.norm = nn.LayerNorm(2)

    def no_weight_decay(self) -> set[str]:
        return {"pos"}


def test_param_groups_exempt_biases_1d_tensors_and_the_models_skip_list() -> None:
    groups = recipe.param_groups(WithSkip(), 0.05)
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    assert groups[0]["param_names"] == ["fc.weight"]
    assert groups[1]["param_names"] == ["pos", "fc.bias", "norm.weight", "norm.bias"]


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_official_optimizer_defaults(name: str) -> None:
    opt = recipe.official_optimizer(WithSkip(), name)
    assert opt.defaults["lr"] == recipe.DEFAULT_LR[name]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    if name == "sgd":
        assert isinstance(opt, torch.optim.SGD)
        assert opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.9
    else:
        assert isinstance(opt, torch.optim.AdamW) and opt.defaults["eps"] == 1e-8
    with pytest.raises(InvalidArgumentError, match="optimizer='lion'"):
        recipe.official_optimizer(WithSkip(), "lion")


@pytest.mark.parametrize("total,warmup", [(50, 8), (20, 0), (7, 1)])
def test_warmup_cosine_matches_the_reference_schedule(total: int, warmup: int) -> None:
    expected = _official_values(4e-3, 1e-6, total, warmup)
    model = WithSkip()
    opt = recipe.official_optimizer(model, "adamw")
    scheduler = recipe.WarmupCosine(opt, total, warmup)
    seen = []
    for _ in range(total):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        scheduler.step()
    assert np.allclose(np.array(seen)[:, 0], expected, rtol=0, atol=1e-15)
    assert np.allclose(np.array(seen)[:, 1], expected, rtol=0, atol=1e-15)  # same for no-decay
    assert recipe.lr_at(list(range(total)), 4e-3, total, warmup) == pytest.approx(expected)
    # resumed from a saved optimizer at step 5: the same values from there
    state = opt.state_dict()
    fresh = recipe.official_optimizer(WithSkip(), "adamw")
    fresh.load_state_dict(state)
    resumed = recipe.WarmupCosine(fresh, total, warmup, last_epoch=4)
    assert resumed.get_last_lr()[0] == pytest.approx(expected[5])


def test_default_warmup_is_the_codes_fraction() -> None:
    assert recipe.default_warmup_steps(300) == 50
    with pytest.raises(InvalidArgumentError, match="warmup_steps=10"):
        recipe.WarmupCosine(recipe.official_optimizer(WithSkip(), "sgd"), 10, 10)


def test_train_with_the_official_recipe(tmp_path: Path) -> None:
    model = build_model("mlp2", seed=0, in_features=64, num_classes=10)
    data = load_dataset("digits")
    result = train(model, data, run_dir=tmp_path, optimizer="sgd", recipe="official", epochs=2,
                   progress=False)  # fmt: skip
    config = json.loads((tmp_path / "run.json").read_text())
    total = result.steps
    assert config["recipe"] == "official"
    assert config["optimizer"]["nesterov"] and config["optimizer"]["lr"] == 0.05
    assert config["lr_schedule"] == {"kind": "warmup-cosine", "warmup_steps": round(total / 6),
                                     "min_lr": 1e-6}  # fmt: skip
    # the plain-SGD default of the same call would refuse without lr
    with pytest.raises(InvalidArgumentError, match="lr is required"):
        train(model, data, run_dir=tmp_path / "b", epochs=1, progress=False)
    assert math.isfinite(result.epoch_losses[-1]) and result.epoch_losses[1] < 2.3
    assert len([r for r in read_metrics(tmp_path) if r[2] == "train_loss"]) == total


def test_cli_train_official_recipe_and_svrg_optimal(tmp_path: Path) -> None:
    from gradvar.cli import main

    args = ["train", "--model", "mlp1", "--data", "digits", "--epochs", "1", "--quiet"]
    assert main([*args, "--recipe", "official", "--optimizer", "adamw", "--vr", "svrg-optimal",
                 "--alpha-log-every", "5", "--alpha-log-batches", "3",
                 "--out", str(tmp_path / "a")]) == 0  # fmt: skip
    config = json.loads((tmp_path / "a" / "run.json").read_text())
    assert config["optimizer"]["lr"] == 4e-3 and config["vr"] == "svrg-optimal"
    assert any(m == "alpha_star_mean_ref" for _, _, m, _ in read_metrics(tmp_path / "a"))
    assert main([*args, "--out", str(tmp_path / "b")]) == 0  # plain keeps its defaults
    plain = json.loads((tmp_path / "b" / "run.json").read_text())["optimizer"]
    assert plain == {"name": "sgd", "lr": 0.05, "weight_decay": 0.0, "momentum": 0.0}
