#!/usr/bin/env python
"""What measuring while training costs: gradvar.Monitor, the Lightning and Hugging Face
callbacks, and AlphaSVRG's measured alpha, each against the same loop without it.

Setup: MLP 784-256-256-10 (ReLU, 269,322 parameters) trained with SGD on synthetic
Fashion-MNIST-shaped data, batch 128; probe set 512 examples, per-example unit (the Probe's
defaults). All on the CPU unless ``--device``.

    loop        ``--steps`` × (zero_grad, forward+backward, step)                  reference
    monitor@k   the same + ``monitor.step()`` (Monitor(every=k)), k in ``--every``
    auto        the same with Monitor(every="auto") (max_overhead 0.1; first probe at step 20)
    svrg        AlphaSVRG(alpha=Linear(...)), recompute mode, one snapshot per 100 steps
    measured    the same with alpha="measured"                                    vs svrg
    lightning   lightning.Trainer.fit(max_steps) without / with LightningMonitor(every="auto")
    hf          transformers.Trainer.train(max_steps) without / with HuggingFaceMonitor

Timing: ``--repeat`` interleaved rounds (each round runs every variant once, order rotated),
the ratio to the reference is taken within each round; the table gives the median and range
of ``time / reference − 1`` (the overhead an outside clock sees) and the median of
``Monitor.overhead`` (probe seconds / training seconds, what the monitor reports and logs).

Usage::

    THP_MEM_ALLOC_ENABLE=1 OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_monitor.py \\
        --out benchmarks/results_monitor_cpu.json
    .venv/bin/python benchmarks/bench_monitor.py --quick      # smoke run, < 1 min
"""

from __future__ import annotations

import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # must precede `import torch`

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gradvar import AlphaSVRG, Monitor  # noqa: E402
from gradvar.schedules import Linear  # noqa: E402

BATCH, PROBE_EXAMPLES, INTERVAL = 128, 512, 100


def make_model(device: str) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 256),
        nn.ReLU(),
        nn.Linear(256, 256),
        nn.ReLU(),
        nn.Linear(256, 10),
    ).to(device)


def make_data(steps: int, device: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(INTERVAL * BATCH, 1, 28, 28, generator=gen)
    y = (x.flatten(1)[:, :10].argmax(1) + torch.randint(0, 2, (len(x),), generator=gen)) % 10
    batches = [(x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, len(x), BATCH)]
    return [(a.to(device), b.to(device)) for a, b in batches]


def probe_set() -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(PROBE_EXAMPLES, 1, 28, 28, generator=gen)
    return [(x, torch.randint(0, 10, (PROBE_EXAMPLES,), generator=gen))]


# ---------------------------------------------------------------- plain-loop variants


def loop(steps: int, device: str, every: int | str | None) -> dict[str, float]:
    model, data = make_model(device), make_data(steps, device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    monitor = Monitor(model, F.cross_entropy, probe_set(), every=every) if every else None
    start = time.perf_counter()
    for t in range(steps):
        x, y = data[t % len(data)]
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if monitor is not None:
            monitor.step()
    _sync(device)
    out = {"seconds": time.perf_counter() - start}
    if monitor is not None:
        out.update(
            reported=monitor.overhead,
            probes=monitor.num_probes,
            every=monitor.every,
            seconds_per_probe=monitor.probe_seconds / max(monitor.num_probes, 1),
        )
    return out


def svrg(steps: int, device: str, alpha: Any) -> dict[str, float]:
    model, data = make_model(device), make_data(steps, device)
    opt = AlphaSVRG(
        torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
        alpha,
        snapshot_interval=INTERVAL,
        named_parameters=model.named_parameters(),
    )
    start = time.perf_counter()
    for t in range(steps):
        if opt.snapshot_due:
            opt.refresh_snapshot(model, data, F.cross_entropy)
        x, y = data[t % len(data)]
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        with opt.at_snapshot(model):
            F.cross_entropy(model(x), y).backward()
        opt.step()
    _sync(device)
    return {"seconds": time.perf_counter() - start}


# ---------------------------------------------------------------- trainer variants


def lightning_fit(steps: int, device: str, with_monitor: bool) -> dict[str, float]:
    import lightning.pytorch as pl

    from gradvar.callbacks import LightningMonitor

    class Lit(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = make_model("cpu")

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return F.cross_entropy(self(batch[0]), batch[1])

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    callbacks = [LightningMonitor(probe_set(), F.cross_entropy)] if with_monitor else []
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="gpu" if device == "cuda" else "cpu",
        devices=1,
        logger=False,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    loader = _loader()
    start = time.perf_counter()
    trainer.fit(Lit(), loader)
    out = {"seconds": time.perf_counter() - start}
    if with_monitor:
        monitor = callbacks[0].monitor
        out.update(reported=monitor.overhead, probes=monitor.num_probes, every=monitor.every)
    return out


def hf_train(steps: int, device: str, with_monitor: bool) -> dict[str, float]:
    import transformers

    from gradvar.callbacks import HuggingFaceMonitor

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = make_model("cpu")

        def forward(self, pixels: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
            logits = self.net(pixels)
            loss = None if labels is None else F.cross_entropy(logits, labels)
            return {"loss": loss, "logits": logits}

    class Data(torch.utils.data.Dataset):
        def __init__(self) -> None:
            self.x, self.y = _tensors()

        def __len__(self) -> int:
            return len(self.y)

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {"pixels": self.x[i], "labels": self.y[i]}

    callbacks = [HuggingFaceMonitor(probe_set(), F.cross_entropy)] if with_monitor else []
    args = transformers.TrainingArguments(
        output_dir="/tmp/gradvar-bench-hf",
        max_steps=steps,
        per_device_train_batch_size=BATCH,
        learning_rate=0.05,
        report_to=[],
        logging_strategy="no",
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=device != "cuda",
        dataloader_num_workers=0,
    )
    trainer = transformers.Trainer(
        model=Model(), args=args, train_dataset=Data(), callbacks=callbacks
    )
    start = time.perf_counter()
    trainer.train()
    out = {"seconds": time.perf_counter() - start}
    if with_monitor:
        monitor = callbacks[0].monitor
        out.update(reported=monitor.overhead, probes=monitor.num_probes, every=monitor.every)
    return out


def _tensors() -> tuple[torch.Tensor, torch.Tensor]:
    data = make_data(0, "cpu")
    return torch.cat([x for x, _ in data]), torch.cat([y for _, y in data])


def _loader() -> torch.utils.data.DataLoader:
    x, y = _tensors()
    dataset = torch.utils.data.TensorDataset(x, y)
    return torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, drop_last=True)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------- driver


def interleaved(
    variants: dict[str, Callable[[], dict[str, float]]], reference: str, repeat: int
) -> dict[str, list[dict[str, float]]]:
    for run in variants.values():  # warm-up
        run()
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(repeat):
        order = names[r % len(names) :] + names[: r % len(names)]
        results = {name: variants[name]() for name in order}
        for name, result in results.items():
            result["ratio"] = result["seconds"] / results[reference]["seconds"]
            rounds[name].append(result)
    return rounds


def summarise(section: str, rounds: dict[str, list[dict[str, float]]], reference: str) -> list[str]:
    lines = []
    for name, results in rounds.items():
        if name == reference:
            seconds = statistics.median(r["seconds"] for r in results)
            lines.append(f"| {section} | {name} (reference) | {seconds:.3f} s | – | – | – | – |")
            continue
        over = [r["ratio"] - 1 for r in results]
        reported = [r["reported"] for r in results if "reported" in r]
        probes = [r["probes"] for r in results if "probes" in r]
        every = [r["every"] for r in results if "every" in r]
        lines.append(
            f"| {section} | {name} | {statistics.median(r['seconds'] for r in results):.3f} s "
            f"| {100 * statistics.median(over):+.1f} % [{100 * min(over):+.1f}, "
            f"{100 * max(over):+.1f}] "
            f"| {f'{100 * statistics.median(reported):.1f} %' if reported else '–'} "
            f"| {statistics.median(probes) if probes else '–'} "
            f"| {every[-1] if every else '–'} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--trainer-steps", type=int, default=1000)
    parser.add_argument("--every", default="10,50,200")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sections", default="loop,svrg,lightning,hf")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.trainer_steps, args.repeat, args.every = 60, 40, 1, "20"
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    steps, device = args.steps, args.device
    sections = args.sections.split(",")
    everies = [int(k) for k in args.every.split(",")]
    started = time.perf_counter()
    results: dict[str, Any] = {}
    table = [
        "| section | variant | time (median) | overhead, outside clock: median [range] "
        "| Monitor.overhead | probes | k (last) |",
        "|---|---|---|---|---|---|---|",
    ]
    if "loop" in sections:
        variants = {"loop": lambda: loop(steps, device, None)}
        for k in everies:
            variants[f"monitor@{k}"] = lambda k=k: loop(steps, device, k)
        variants["auto"] = lambda: loop(steps, device, "auto")
        results["loop"] = interleaved(variants, "loop", args.repeat)
        table += summarise("plain loop", results["loop"], "loop")
    if "svrg" in sections:
        variants = {
            "svrg": lambda: svrg(steps, device, Linear(0.75, steps, hold=INTERVAL)),
            "measured": lambda: svrg(steps, device, "measured"),
        }
        results["svrg"] = interleaved(variants, "svrg", args.repeat)
        table += summarise("AlphaSVRG", results["svrg"], "svrg")
    trainer_steps = args.trainer_steps
    if "lightning" in sections:
        variants = {
            "fit": lambda: lightning_fit(trainer_steps, device, False),
            "fit+LightningMonitor(auto)": lambda: lightning_fit(trainer_steps, device, True),
        }
        results["lightning"] = interleaved(variants, "fit", args.repeat)
        table += summarise("Lightning", results["lightning"], "fit")
    if "hf" in sections:
        variants = {
            "train": lambda: hf_train(trainer_steps, device, False),
            "train+HuggingFaceMonitor(auto)": lambda: hf_train(trainer_steps, device, True),
        }
        results["hf"] = interleaved(variants, "train", args.repeat)
        table += summarise("transformers", results["hf"], "train")
    print("\n".join(table))
    meta = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.processor() or platform.machine(),
        "load_average": os.getloadavg(),
        "wall_seconds": time.perf_counter() - started,
    }
    print(f"\nwall {meta['wall_seconds']:.0f} s; load average {meta['load_average']}")
    if args.out is not None:
        args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
