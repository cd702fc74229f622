"""The per-layer engine on the networks users train, against two plain forward+backward passes
and against peers, in one run: time and peak memory per method, as ratios.

    # GPU (torchvision, timm, transformers; Opacus and BackPACK carried as wheels):
    python benchmarks/bench_engine.py --out results.json
    # this CPU (the MLP and gradvar.zoo's ViT-style net):
    THP_MEM_ALLOC_ENABLE=1 python benchmarks/bench_engine.py --cpu --threads 1

Methods, each measuring both weight sets (θ and a snapshot θ̃) on the same n examples:
- ``baseline``: two plain forward + mean-loss backward passes (the cost of two gradients);
- ``gradvar``: ``Probe(...).run`` with default settings, every metric (metric 3 by ``auto``);
- ``gradvar-none``: the same with ``top_eigenvalue="none"``;
- ``vmap``: hand-written ``torch.func.vmap(grad)`` per-example gradients (chunks of 256)
  and the five float64 moment sums;
- ``opacus``: Opacus ``GradSampleModule`` per-sample gradients and the same float64 sums;
- ``backpack``: BackPACK ``BatchGrad`` per-sample gradients and the same float64 sums.
A peer that refuses a model (or fails) is reported with its error, not left out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from gradvar import Probe  # noqa: E402

LossFn = Callable[[Tensor, Tensor], Tensor]


def token_loss(logits: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


class Logits(nn.Module):
    """transformers' model output → its logits (a plain tensor for every method)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: Tensor) -> Tensor:
        return self.model(tokens, use_cache=False).logits


def mlp(widths: list[int]) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def build(name: str, device: str) -> tuple[nn.Module, Tensor, Tensor, LossFn]:
    """(model, inputs, targets, loss) for benchmark case ``name``."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    if name.startswith("mlp"):
        n = int(name.split("-")[1])
        model = mlp([784, 512, 512, 512, 10])
        x, y = torch.randn(n, 784, generator=gen), torch.randint(0, 10, (n,), generator=gen)
        loss: LossFn = F.cross_entropy
    elif name == "resnet18":
        import torchvision

        model = torchvision.models.resnet18(num_classes=10)
        x, y = torch.randn(256, 3, 32, 32, generator=gen), torch.randint(0, 10, (256,))
        loss = F.cross_entropy
    elif name == "vit-tiny":
        import timm

        model = timm.create_model(
            "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=4, num_classes=10
        )
        x, y = torch.randn(256, 3, 32, 32, generator=gen), torch.randint(0, 10, (256,))
        loss = F.cross_entropy
    elif name == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        config = GPT2Config(n_layer=4, n_embd=256, n_head=4, vocab_size=8192, n_positions=128,
                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                            bos_token_id=0, eos_token_id=0)  # fmt: skip
        model = Logits(GPT2LMHeadModel(config))
        x = torch.randint(0, 8192, (64, 128), generator=gen)
        y = torch.randint(0, 8192, (64, 128), generator=gen)
        loss = token_loss
    elif name == "vit-style-cpu":
        from gradvar.zoo import build_model

        model = build_model(
            "vit",
            image_size=16,
            patch_size=4,
            in_channels=1,
            dim=64,
            depth=2,
            heads=4,
            num_classes=10,
            seed=0,
        )
        x, y = torch.randn(128, 1, 16, 16, generator=gen), torch.randint(0, 10, (128,))
        loss = F.cross_entropy
    else:
        raise KeyError(name)
    model = model.to(device).eval()  # BatchNorm eval; these models have no dropout active
    return model, x.to(device), y.to(device), loss


def snapshot_of(model: nn.Module) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(1)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen).to(p.device, p.dtype)
        state[name] = state[name] + 0.01 * noise * (p.detach().abs().mean() + 1e-3)
    return state


# ---------------------------------------------------------------------------- methods
def baseline(model, x, y, loss, snap) -> None:
    for _ in range(2):
        model.zero_grad(set_to_none=True)
        loss(model(x), y).backward()


def float64_sums(sums: dict[str, list[Tensor]], name: str, g: Tensor, h: Tensor) -> None:
    g, h = g.reshape(g.shape[0], -1).double(), h.reshape(h.shape[0], -1).double()
    parts = (g.sum(0), (g * g).sum(0), h.sum(0), (h * h).sum(0), (g * h).sum(0))
    if name not in sums:
        sums[name] = list(parts)
    else:
        for acc, part in zip(sums[name], parts):
            acc += part


def vmap_peer(model, x, y, loss, snap, chunk: int = 256) -> None:
    from torch.func import functional_call, grad, vmap

    names = [k for k, p in model.named_parameters() if p.requires_grad]
    buffers = dict(model.named_buffers())
    weights = [{k: v.detach() for k, v in model.named_parameters()},
               {k: snap[k] for k in names}]  # fmt: skip

    def one(params, xi, yi):
        out = functional_call(model, {**params, **buffers}, (xi[None],))
        return loss(out, yi[None])

    per_example = vmap(grad(one), in_dims=(None, 0, 0))
    sums: dict[str, list[Tensor]] = {}
    for start in range(0, x.shape[0], chunk):
        xs, ys = x[start : start + chunk], y[start : start + chunk]
        g, h = (per_example(w, xs, ys) for w in weights)
        for k in names:
            float64_sums(sums, k, g[k], h[k])


def _grad_sample_peer(attribute: str, wrap: Callable[[nn.Module], Any]) -> Callable:
    def run(model, x, y, loss, snap) -> None:
        import copy

        work = copy.deepcopy(model)
        wrapped, run_backward = wrap(work)
        per_set = []
        for state in (model.state_dict(), snap):
            work.load_state_dict(state)
            run_backward(wrapped, x, y, loss)
            per_set.append({k: getattr(p, attribute) for k, p in work.named_parameters()})
            for p in work.parameters():
                setattr(p, attribute, None)
        sums: dict[str, list[Tensor]] = {}
        for k in per_set[0]:
            float64_sums(sums, k, per_set[0][k], per_set[1][k])

    return run


def _opacus(work: nn.Module):
    from opacus import GradSampleModule

    def backward(wrapped, x, y, loss):
        wrapped.train()  # Opacus records activations in train mode only
        wrapped.zero_grad()
        loss(wrapped(x), y).backward()

    return GradSampleModule(work, loss_reduction="mean"), backward


def _backpack(work: nn.Module):
    from backpack import backpack, extend
    from backpack.extensions import BatchGrad

    wrapped = extend(work, use_converter=True)

    def backward(wrapped, x, y, loss):
        lossf = extend(torch.nn.CrossEntropyLoss())
        wrapped.zero_grad()
        with backpack(BatchGrad()):
            out = wrapped(x)
            lossf(out.reshape(-1, out.shape[-1]), y.reshape(-1)).backward()

    return wrapped, backward


def gradvar_method(top: str) -> Callable:
    """One Probe per model, reused across runs as over a run's checkpoints: its first run
    also verifies every rule against autograd (timed separately as ``first_seconds``)."""
    probes: dict[int, Probe] = {}

    def run(model, x, y, loss, snap) -> None:
        if id(model) not in probes:
            probes.clear()
            probes[id(model)] = Probe(model, loss, top_eigenvalue=top, progress=False)
        probes[id(model)].run((x, y), snapshot=snap)

    return run


METHODS = {
    "baseline": baseline,
    "gradvar": gradvar_method("auto"),
    "gradvar-none": gradvar_method("none"),
    "vmap": vmap_peer,
    "opacus": _grad_sample_peer("grad_sample", _opacus),
    "backpack": _grad_sample_peer("grad_batch", _backpack),
}


# ---------------------------------------------------------------------------- timing
def measure(fn: Callable, args: tuple, repeat: int, device: str) -> dict[str, Any]:
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    try:
        start = time.perf_counter()
        fn(*args)  # warm-up (and, for gradvar, the first chunk's route verification)
        sync()
        first = time.perf_counter() - start
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            fn(*args)
            sync()
            times.append(time.perf_counter() - start)
    except Exception as err:  # a peer refusing a model is a result, not a crash
        return {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}
    out: dict[str, Any] = {"seconds": statistics.median(times), "first_seconds": first}
    if device == "cuda":
        out["peak_gib"] = (torch.cuda.max_memory_allocated() - base) / 2**30
    return out


def profile(model, x, y, loss, snap, device: str) -> None:
    """The top operators of one steady-state probe run, by device (or CPU) time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    probe = Probe(model, loss, top_eigenvalue="none", progress=False)
    probe.run((x, y), snapshot=snap)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        probe.run((x, y), snapshot=snap)
        if device == "cuda":
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=14, max_name_column_width=50))


def print_table(results: dict[str, dict[str, Any]]) -> None:
    """Markdown: time ratio to the baseline (peak GiB) per case and method."""
    methods = [m for m in METHODS if m != "baseline"]
    print("| case | " + " | ".join(methods) + " |")
    print("|---" * (len(methods) + 1) + "|")
    for case, row in results.items():
        cells = []
        for m in methods:
            r = row.get(m)
            if r is None:
                cells.append("–")
            elif "error" in r:
                cells.append("fails: " + r["error"].split(":")[0])
            else:
                mem = f", {r['peak_gib']:.1f} GiB" if "peak_gib" in r else ""
                cells.append(f"{r['ratio']:.1f}×{mem}")
        print(f"| {case} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="the CPU cases, on the CPU")
    parser.add_argument("--cases", nargs="*", help="subset of cases")
    parser.add_argument("--methods", nargs="*", help="subset of methods")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="print where gradvar's time goes (torch.profiler) per case",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cpu" if args.cpu or not torch.cuda.is_available() else "cuda"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cases = args.cases or (
        ["mlp-256", "vit-style-cpu"] if device == "cpu"
        else ["mlp-256", "mlp-16384", "resnet18", "vit-tiny", "gpt2"]
    )  # fmt: skip
    if args.quick:
        cases = ["mlp-64"]
    methods = args.methods or list(METHODS)
    results: dict[str, dict[str, Any]] = {}
    for case in cases:
        model, x, y, loss = build(case, device)
        snap = snapshot_of(model)
        results[case] = {}
        for method in methods:
            if device == "cpu" and method in ("opacus", "backpack"):
                continue  # not installed on this CPU (they pull torchvision)
            r = measure(METHODS[method], (model, x, y, loss, snap), args.repeat, device)
            results[case][method] = r
            base = results[case].get("baseline", {}).get("seconds")
            if "seconds" in r and base:
                r["ratio"] = r["seconds"] / base
            print(json.dumps({"case": case, "method": method, **r}), flush=True)
        if args.profile:
            profile(model, x, y, loss, snap, device)
        if "gradvar" in methods:
            probe = Probe(model, loss, progress=False)
            result = probe.run((x, y), snapshot=snap)
            routes = result.config["routes"]
            results[case]["routes"] = {r: sum(v == r for v in routes.values())
                                       for r in set(routes.values())}  # fmt: skip
            results[case]["vmap_params"] = [k for k, v in routes.items() if v == "vmap"]
            results[case]["m3"] = [result.config["top_eigenvalue"],
                                   result.config["top_eigenvalue_samples"]]  # fmt: skip
            print(json.dumps({"case": case, "routes": results[case]["routes"],
                              "vmap": results[case]["vmap_params"][:8],
                              "m3": results[case]["m3"]}), flush=True)  # fmt: skip
        del model, x, y, snap
        if device == "cuda":
            torch.cuda.empty_cache()
        if args.out:  # after every case: a run cut short keeps what it measured
            with open(args.out, "w") as fh:
                json.dump(results, fh, indent=1)
    print_table(results)
    ok = all(not math.isnan(r.get("seconds", 0.0)) for c in results.values()
             for r in c.values() if isinstance(r, dict))  # fmt: skip
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
