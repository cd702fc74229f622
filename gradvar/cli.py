"""The ``gradvar`` command line: demo, train, analyze, fit, plot.

Every subcommand has ``--help``; errors exit with status 2 and one line naming the problem.
Heavy modules are imported inside the subcommands so ``gradvar --help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]


# ---------------------------------------------------------------------------- helpers
def _json_arg(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"expected a JSON object, got {text!r} ({exc.msg})") from exc
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {text!r}")
    return value


def _data_spec(spec: str | Mapping[str, Any] | None) -> dict[str, Any]:
    if spec is None:
        raise ValueError("no data given: pass --data NAME|MODULE:FN (run.json names none)")
    return {"name": spec} if isinstance(spec, str) else dict(spec)


def _load_data(spec: Mapping[str, Any], n: int | None = None, split: str = "train"):
    from gradvar.zoo import load_dataset

    options = {k: v for k, v in spec.items() if k not in ("name", "n", "split", "seed")}
    return load_dataset(
        spec["name"],
        split=spec.get("split", split),
        n=n if n is not None else spec.get("n"),
        seed=int(spec.get("seed", 0)),
        **options,
    )


def _infer_model_kwargs(name: str, dataset: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Fill input size and class count of the reference models from the data."""
    x, y = dataset.tensors[0], dataset.tensors[1]
    classes = int(y.max()) + 1
    out = dict(kwargs)
    if name.startswith("mlp"):
        out.setdefault("in_features", math.prod(x.shape[1:]))
        out.setdefault("num_classes", classes)
    elif name in ("cnn", "vit"):
        out.setdefault("in_channels", x.shape[1] if x.dim() == 4 else 1)
        out.setdefault("num_classes", classes)
        out.setdefault("image_size", x.shape[-1])
    return out


def _loss(spec: str):
    import torch.nn.functional as F

    if spec in ("cross_entropy", "ce"):
        return F.cross_entropy
    if spec in ("mse", "mse_loss"):
        return F.mse_loss
    from gradvar.zoo import resolve_callable

    return resolve_callable(spec)


# ---------------------------------------------------------------------------- commands
def cmd_train(args: argparse.Namespace) -> int:
    from gradvar.train import train
    from gradvar.zoo import build_model

    data_spec = _data_spec(args.data) | ({"n": args.n} if args.n else {})
    dataset = _load_data(data_spec)
    kwargs = _infer_model_kwargs(args.model, dataset, _json_arg(args.model_kwargs))
    model_spec = {"name": args.model, "kwargs": kwargs, "seed": args.seed}
    model = build_model(args.model, seed=args.seed, **kwargs)
    alpha: Any = args.alpha
    try:
        alpha = float(alpha)
    except ValueError:
        pass  # a schedule JSON path
    plain = args.recipe == "plain"
    result = train(
        model,
        dataset,
        run_dir=args.out,
        optimizer=args.optimizer,
        lr=args.lr if args.lr is not None or not plain else 0.05,
        weight_decay=args.weight_decay,
        momentum=args.momentum,
        recipe=args.recipe,
        warmup_steps=args.warmup_steps,
        alpha_log_every=args.alpha_log_every,
        alpha_log_batches=args.alpha_log_batches,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        vr=args.vr,
        alpha=alpha,
        snapshot_interval=args.snapshot_interval,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        progress=not args.quiet,
        model_spec=model_spec,
        data_spec=data_spec,
    )
    print(
        f"trained {result.steps} steps; final epoch train loss "
        f"{result.epoch_losses[-1]:.4f}; {len(result.checkpoint_steps)} checkpoints in "
        f"{result.run_dir}"
    )
    return 0


def _analyze_records(args: argparse.Namespace):
    from gradvar.analysis import analyze
    from gradvar.checkpoints import CheckpointSeries
    from gradvar.zoo import build_model, model_from_spec

    series = CheckpointSeries(
        args.run_dir, snapshot_interval=args.snapshot_interval, snapshot=args.snapshot
    )
    config = series.run_config
    data_spec = _data_spec(args.data or config.get("data"))
    dataset = _load_data(data_spec, n=args.n)
    x, y = dataset.tensors[0], dataset.tensors[1]
    if args.model:
        kwargs = _infer_model_kwargs(args.model, dataset, _json_arg(args.model_kwargs))
        model_fn = lambda: build_model(args.model, **kwargs)  # noqa: E731
    elif config.get("model"):
        model_fn = lambda: model_from_spec(config["model"])  # noqa: E731
    else:
        raise ValueError(f"{args.run_dir} has no run.json model spec; pass --model NAME|MODULE:FN")
    unit: str | int = args.unit if args.unit == "sample" else int(args.unit)
    return analyze(
        series,
        model_fn,
        (x, y),
        _loss(args.loss or config.get("loss", "cross_entropy")),
        out=args.out,
        run=args.run,
        alphas=[float(a) for a in args.alphas.split(",")],
        resume=not args.restart,
        progress=not args.quiet,
        device=args.device,
        unit=unit,
        layers=None if args.layers == "param" else args.layers,
        batchnorm=args.batchnorm,
        chunk_size=args.chunk_size,
        top_eigenvalue=args.top_eigenvalue,
        seed=args.seed,
    )


def cmd_analyze(args: argparse.Namespace) -> int:
    records = _analyze_records(args)
    print(f"{records['checkpoint'].nunique()} checkpoints, {len(records)} records -> {args.out}")
    from gradvar.records import off_snapshot

    # Show the last checkpoint that is not itself a snapshot (there rho = alpha* = 1 exactly).
    pool = off_snapshot(records, or_all=True)
    last = pool[pool["step"] == pool["step"].max()]
    if not last.empty:
        print(
            f"at step {int(last['step'].iloc[0])} (snapshot at step "
            f"{last['snapshot_step'].iloc[0]}):"
        )
        _print_summary(last)
    return 0


def _print_summary(frame) -> None:
    wanted = ["m2_total_variance", "rho_mean", "alpha_star_mean", "alpha_star_layer"]
    part = frame[frame["metric"].isin(wanted) & frame["alpha"].isna()]
    if part.empty:
        return
    table = part.pivot_table(index="layer", columns="metric", values="value", sort=False)
    print(table[[c for c in wanted if c in table]].to_string(float_format=lambda v: f"{v:.4g}"))


def cmd_plot(args: argparse.Namespace) -> int:
    from gradvar.plots import plot_all
    from gradvar.records import read_records
    from gradvar.report import write_report

    records = read_records(args.results)
    figures = plot_all(records, args.out)
    report = write_report(records, args.out, figures=figures) if not args.no_report else None
    print(
        f"{sum(len(v) for v in figures.values())} figure files in {args.out}"
        + (f"; report {report}" if report else "")
    )
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    from gradvar.fit import fit_schedule
    from gradvar.records import read_records
    from gradvar.schedules import save

    records = read_records(args.results)
    if args.run:
        records = records[records["run"] == args.run]
    result = fit_schedule(
        records, kind=args.kind, layer=args.layer, per_layer=args.per_layer, metric=args.metric
    )
    save(result.schedule, args.out)
    table = result.table()
    table["params"] = table["params"].map(
        lambda ps: ", ".join(f"{k}={v:.4g}" for k, v in ps.items()) if isinstance(ps, dict) else ps
    )
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"schedule -> {args.out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Train an MLP on digits with snapshots, analyze every checkpoint, plot, fit, report."""
    out = Path(args.out)
    start = time.perf_counter()
    run_dir = out / "run"
    common = ["--quiet"] if args.quiet else []
    print(f"[1/4] training mlp2 on digits (SGD, {args.epochs} epochs, snapshot every epoch)")
    train_args = (
        "train --model mlp2 --data digits --optimizer sgd --lr 0.3 --batch-size 32 "
        f"--epochs {args.epochs} --checkpoint-every 8 --seed 0"
    ).split()
    resume = ["--resume"] if (run_dir / "run.json").exists() else []
    main([*train_args, "--out", str(run_dir), *common, *resume])
    print("[2/4] analyzing every checkpoint (per-example gradients, 512 examples)")
    records_path = out / "records.parquet"
    main(
        [
            "analyze",
            str(run_dir),
            "--n",
            "512",
            "--run",
            "mlp2-digits-sgd",
            "--out",
            str(records_path),
            *common,
        ]
    )
    print("[3/4] fitting an alpha schedule to the measured alpha*")
    main(["fit", str(records_path), "--out", str(out / "schedule.json")])
    print("[4/4] plotting and writing the report")
    main(["plot", str(records_path), "--out", str(out)])
    print(f"demo done in {time.perf_counter() - start:.0f} s: see {out / 'report.md'}")
    return 0


# ---------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gradvar",
        description="Measure gradient variance, snapshot correlation and the optimal alpha of "
        "alpha-SVRG across a training run's checkpoints.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="train, analyze, fit and report on bundled digits")
    demo.add_argument("--out", default="demo-out", help="output folder (default: demo-out)")
    demo.add_argument("--epochs", type=int, default=8)
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=cmd_demo)

    tr = sub.add_parser("train", help="train a reference model and write a checkpoint series")
    tr.add_argument("--model", default="mlp2", help="mlp1|mlp2|mlp4|cnn|vit or MODULE:FN")
    tr.add_argument("--model-kwargs", help="JSON object of model arguments")
    tr.add_argument("--data", default="digits", help="digits|fashion-mnist|synthetic|MODULE:FN")
    tr.add_argument("--n", type=int, help="use the first N training examples")
    tr.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd")
    tr.add_argument(
        "--recipe",
        choices=["plain", "official"],
        default="plain",
        help="official: the alpha-SVRG code's recipe (Nesterov SGD / AdamW, no decay on "
        "biases and 1-D tensors, warmup + cosine per iteration; gradvar.recipe)",
    )
    tr.add_argument("--lr", type=float, help="default 0.05 (plain); official: SGD 0.05, AdamW 4e-3")
    tr.add_argument("--momentum", type=float, help="SGD momentum (plain only; default 0)")
    tr.add_argument("--weight-decay", type=float, help="default 0 (plain), 0.05 (official)")
    tr.add_argument("--warmup-steps", type=int, help="official: default 1/6 of training")
    tr.add_argument("--epochs", type=int, default=5)
    tr.add_argument("--batch-size", type=int, default=128)
    tr.add_argument("--vr", choices=["none", "svrg", "alpha-svrg", "svrg-optimal"], default="none")
    tr.add_argument(
        "--alpha-log-every",
        type=int,
        help="log the paper's alpha* every N steps of each interval (needed by svrg-optimal)",
    )
    tr.add_argument("--alpha-log-batches", type=int, default=16, help="mini-batches per alpha*")
    tr.add_argument("--alpha", default="0.75", help="alpha0 of the linear decay, or schedule.json")
    tr.add_argument("--snapshot-interval", type=int, help="steps (default: one epoch)")
    tr.add_argument("--checkpoint-every", type=int, help="steps between extra checkpoints")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--resume", action="store_true", help="continue an interrupted run")
    tr.add_argument("--quiet", action="store_true")
    tr.add_argument("--out", required=True, help="run directory")
    tr.set_defaults(func=cmd_train)

    an = sub.add_parser("analyze", help="probe every checkpoint of a run directory")
    an.add_argument("run_dir")
    an.add_argument("--model", help="mlp1|...|MODULE:FN (default: run.json's model)")
    an.add_argument("--model-kwargs", help="JSON object of model arguments")
    an.add_argument("--data", help="digits|fashion-mnist|synthetic|MODULE:FN (default: run.json)")
    an.add_argument("--n", type=int, default=1024, help="examples to probe (default 1024)")
    an.add_argument("--loss", help="cross_entropy|mse|MODULE:FN (default: run.json's)")
    an.add_argument("--unit", default="sample", help="'sample' or a mini-batch size")
    an.add_argument("--layers", default="param", help="'param' (one per tensor) or 'module'")
    an.add_argument("--snapshot-interval", type=int, help="pair with the last multiple of K")
    an.add_argument("--snapshot", help="pair every checkpoint with this file")
    an.add_argument("--batchnorm", choices=["eval", "replace", "refuse"], default="eval")
    an.add_argument("--top-eigenvalue", choices=["auto", "gram", "lanczos", "none"], default="auto")
    an.add_argument("--chunk-size", type=int, help="samples per chunk (default: automatic)")
    an.add_argument("--alphas", default="1.0", help="comma-separated alphas for vr_variance")
    an.add_argument("--seed", type=int, default=0)
    an.add_argument("--device", help="cpu or cuda (default: cpu)")
    an.add_argument("--run", help="run name in the records (default: folder name)")
    an.add_argument("--restart", action="store_true", help="ignore records already in --out")
    an.add_argument("--quiet", action="store_true")
    an.add_argument("--out", required=True, help="records file (.parquet or .csv)")
    an.set_defaults(func=cmd_analyze)

    fi = sub.add_parser("fit", help="fit an alpha schedule to measured alpha*")
    fi.add_argument("results", help="records file")
    fi.add_argument(
        "--kind", default="auto", help="auto|constant|linear|quadratic|geometric|fitted"
    )
    fi.add_argument("--layer", default="__all__")
    fi.add_argument("--per-layer", action="store_true")
    fi.add_argument("--metric", default="alpha_star_mean")
    fi.add_argument("--run", help="use only this run's records")
    fi.add_argument("--out", required=True, help="schedule JSON file")
    fi.set_defaults(func=cmd_fit)

    pl = sub.add_parser("plot", help="figures (PNG, PDF) and a Markdown report from records")
    pl.add_argument("results", help="records file")
    pl.add_argument("--out", required=True, help="output folder")
    pl.add_argument("--no-report", action="store_true")
    pl.set_defaults(func=cmd_plot)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 with one line on stderr for user errors)."""
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    args = build_parser().parse_args(argv)
    from gradvar.errors import GradvarError

    try:
        return int(args.func(args) or 0)
    except (GradvarError, ValueError, FileNotFoundError, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"gradvar {args.command}: error: {message}", file=sys.stderr)
        if argv is not None:  # called programmatically (e.g. by the demo): propagate
            raise
        raise SystemExit(2) from None


if __name__ == "__main__":
    sys.exit(main())
