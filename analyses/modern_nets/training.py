"""One training run of analyses/modern_nets (a worker process), and the solo timing the driver
plans with. The data, the networks and the recipe are in config.py; run.py drives."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from config import FULL, QUICK

from gradvar import recipe
from gradvar.train import train
from gradvar.zoo import augment, build_model, load_dataset

VR = {
    "baseline": "none",
    "svrg": "svrg",
    "alpha-svrg": "alpha-svrg",
    "alpha-svrg-fitted": "alpha-svrg",
}


def augment_shift_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random shift of up to 2 pixels (zero padded) and a horizontal flip with p = 0.5."""
    return augment(x, generator, max_shift=2, flip=True)


def load(cfg: dict) -> tuple[torch.utils.data.TensorDataset, torch.utils.data.TensorDataset]:
    train_set = load_dataset("fashion-mnist", split="train", n=cfg["n_train"], seed=0)
    test_set = load_dataset("fashion-mnist", split="test", n=cfg["n_test"], seed=0)
    return train_set, test_set  # x [N, 1, 28, 28] in [0, 1], y [N]


def model_for(cfg: dict, net: str, seed: int) -> torch.nn.Module:
    spec = cfg["nets"][net]
    return build_model(spec["name"], seed=seed, **spec["kwargs"]).to(cfg["device"])


# ----------------------------------------------------------------------------- worker
def worker(spec: dict) -> dict:
    """Train one (net, method, seed) run into spec["run_dir"]; write and return result.json."""
    cfg = QUICK if spec["quick"] else FULL
    torch.set_num_threads(1)
    torch.set_float32_matmul_precision("high")  # TF32 matmuls on the GPU, for all methods
    train_set, test_set = load(cfg)
    model = model_for(cfg, spec["net"], spec["seed"])
    steps_per_epoch = len(train_set) // cfg["batch_size"]
    log = {}
    if spec.get("log_alpha"):
        log = {
            "alpha_log_every": max(1, steps_per_epoch // cfg["alpha_log_per_epoch"]),
            "alpha_log_batches": cfg["alpha_log_batches"],
        }
    t0 = time.perf_counter()
    train(
        model,
        train_set,
        run_dir=spec["run_dir"],
        optimizer="adamw",
        recipe="official",  # lr 4e-3, wd 0.05 (not biases/1-D), warmup + cosine to 1e-6
        epochs=spec["epochs"],
        batch_size=cfg["batch_size"],
        seed=spec["seed"],
        vr=VR[spec["method"]],
        alpha=spec.get("alpha", cfg["alpha0"]),
        # "constant": min_lr = the base lr, so after the warmup the cosine term is flat
        min_lr=recipe.DEFAULT_LR["adamw"] if spec["lr"] == "constant" else recipe.MIN_LR,
        transform=augment_shift_flip,
        progress=False,
        model_spec={**cfg["nets"][spec["net"]], "seed": spec["seed"]},
        data_spec={"name": "fashion-mnist", "n": cfg["n_train"], "seed": 0},
        **log,
    )
    wall = time.perf_counter() - t0
    model.eval()
    x, y = (t.to(cfg["device"]) for t in test_set.tensors)
    with torch.no_grad():
        logits = torch.cat([model(x[i : i + 1000]) for i in range(0, len(y), 1000)])
    result = {
        **{k: spec[k] for k in ("net", "method", "lr", "seed", "epochs")},
        "wall_s": round(wall, 2),
        "test_loss": float(F.cross_entropy(logits, y)),
        "test_acc": float((logits.argmax(1) == y).double().mean()),
        "params": sum(p.numel() for p in model.parameters()),
    }
    Path(spec["run_dir"], "result.json").write_text(json.dumps(result))
    return result


# ----------------------------------------------------------------------------- calibration
def calibrate(cfg: dict, steps: int = 20) -> dict[str, float]:
    """Seconds per training pass (forward, backward, AdamW step; batch 128) of each net, solo."""
    x = torch.rand(cfg["batch_size"], 1, 28, 28, device=cfg["device"])
    y = torch.randint(10, (cfg["batch_size"],), device=cfg["device"])
    out = {}
    for net in cfg["nets"]:
        model = model_for(cfg, net, 0)
        opt = recipe.official_optimizer(model, "adamw")
        for i in range(2 * steps):
            if i == steps:
                if cfg["device"] == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        if cfg["device"] == "cuda":
            torch.cuda.synchronize()
        out[net] = (time.perf_counter() - t0) / steps
    return out


def passes_per_epoch(method: str, steps: int, cfg: dict, log_alpha: bool) -> float:
    """Training passes of one epoch: 1 per step (+2 for h, +1 per step for the snapshot pass
    of the SVRG variants), a third of a pass per step for the full-pass train loss, and the
    alpha* log's 2 passes per logged batch."""
    total = steps * (1 if method == "baseline" else 4) + steps / 3
    if log_alpha:
        total += 2 * cfg["alpha_log_batches"] * cfg["alpha_log_per_epoch"]
    return total
