"""The ``gradvar`` command line: demo, train, analyze, series, fit, plot.

Every subcommand has ``--help``; errors exit with status 2 and one line naming the problem.
Heavy modules are imported inside the subcommands so ``gradvar --help`` is instant.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gradvar._cli_analyze import cmd_analyze, cmd_series

__all__ = ["main"]


_DATA_HELP = (
    "NAME (digits|fashion-mnist|synthetic), MODULE:FN or ./file.py:FN; FN(split=, n=, seed=) "
    "returns a Dataset of (inputs, targets) or an (inputs, targets) pair of tensors and may "
    "accept any subset of those keywords"
)
_MODEL_HELP = (
    "NAME (mlp1|mlp2|mlp4|cnn|vit), MODULE:FN or ./file.py:FN; FN(**model_kwargs) returns the "
    "nn.Module the checkpoints belong to"
)
_EPILOG = (
    "Factories given as ./file.py:FN are imported from that file (no PYTHONPATH needed). "
    "User errors print one line and exit with status 2; set GRADVAR_TRACEBACK=1 for a "
    "traceback."
)


# ---------------------------------------------------------------------------- commands
def cmd_train(args: argparse.Namespace) -> int:
    from torch.utils.data import TensorDataset

    from gradvar._cli_analyze import data_spec, infer_model_kwargs, json_arg, threads
    from gradvar._factories import load_data
    from gradvar.train import train
    from gradvar.zoo import build_model

    threads(args.threads)
    spec = data_spec(args.data) | ({"n": args.n} if args.n else {})
    x, y, _ = load_data(spec, n=args.n, explicit_n=args.n is not None)
    dataset = TensorDataset(x, y)
    kwargs = infer_model_kwargs(args.model, x, y, json_arg(args.model_kwargs))
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
        data_spec=spec,
    )
    print(
        f"trained {result.steps} steps; final epoch train loss "
        f"{result.epoch_losses[-1]:.4f}; {len(result.checkpoint_steps)} checkpoints in "
        f"{result.run_dir}"
    )
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from gradvar._resume import read_sidecar
    from gradvar.plots import plot_all
    from gradvar.records import read_records
    from gradvar.report import write_report

    records = read_records(args.results)
    kinds: dict[str, Any] = {}
    for entry in read_sidecar(Path(args.results))["runs"].values():
        kinds.update(entry.get("layer_kinds", {}))
    figures = plot_all(records, args.out, layer_kinds=kinds or None)
    report = (
        write_report(records, args.out, figures=figures, layer_kinds=kinds or None)
        if not args.no_report
        else None
    )
    print(
        f"{sum(len(v) for v in figures.values())} figure files in {args.out}"
        + (f"; report {report}" if report else "")
    )
    return 0


def _run_total_steps(results: str, run: str | None) -> int | None:
    """The run's ``total_steps`` from the records' sidecar (run.json as analyze saw it)."""
    from gradvar._resume import read_sidecar

    runs = read_sidecar(Path(results))["runs"]
    chosen = [runs[run]] if run in runs else list(runs.values()) if run is None else []
    totals = {e.get("run_config", {}).get("total_steps") for e in chosen} - {None}
    return int(totals.pop()) if len(totals) == 1 else None


def cmd_fit(args: argparse.Namespace) -> int:
    from gradvar.errors import InvalidArgumentError
    from gradvar.fit import fit_schedule
    from gradvar.records import off_snapshot, read_records
    from gradvar.schedules import save

    records = read_records(args.results)
    if args.run:
        records = records[records["run"] == args.run]
    measured = off_snapshot(records[records["metric"] == args.metric])
    if measured.empty:
        raise InvalidArgumentError(
            f"{args.results} has no {args.metric} row away from a snapshot (at a snapshot "
            "α* = 1 by construction): nothing to fit. Analyze checkpoints between snapshots "
            "(gradvar analyze --pairing previous, or --snapshot-every STEPS)"
        )
    total_steps = args.total_steps or _run_total_steps(args.results, args.run)
    result = fit_schedule(
        records,
        kind=args.kind,
        layer=args.layer,
        per_layer=args.per_layer,
        metric=args.metric,
        total_steps=total_steps,
    )
    save(result.schedule, args.out)
    table = result.table()
    table["params"] = table["params"].map(
        lambda ps: ", ".join(f"{k}={v:.4g}" for k, v in ps.items()) if isinstance(ps, dict) else ps
    )
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    where = "the run's, from run.json" if total_steps and not args.total_steps else "given"
    steps = f" (total_steps {total_steps}: {where})" if total_steps else ""
    print(f"schedule -> {args.out}{steps}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Train an MLP on digits with snapshots, analyze every checkpoint, plot, fit, report."""
    out = Path(args.out)
    start = time.perf_counter()
    run_dir = out / "run"
    from gradvar._factories import cpu_threads

    count, why = cpu_threads(args.threads)
    common = (["--quiet"] if args.quiet else []) + ["--threads", str(count)]
    print(
        f"[1/4] training mlp2 on digits (SGD, {args.epochs} epochs, snapshot every epoch; "
        f"{count} CPU thread{'s' if count > 1 else ''}: {why})"
    )
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
def _version() -> str:
    try:
        from importlib.metadata import version

        return version("gradvar")
    except Exception:  # not installed: the source tree's
        from gradvar import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gradvar",
        description="Measure gradient variance, snapshot correlation and the optimal alpha of "
        "alpha-SVRG across a training run's checkpoints.",
        epilog=_EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"gradvar {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    cpu = argparse.ArgumentParser(add_help=False)
    cpu.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: OMP_NUM_THREADS if set, else half the CPUs, at most 4)",
    )

    demo = sub.add_parser(
        "demo", parents=[cpu], help="train, analyze, fit and report on bundled digits"
    )
    demo.add_argument("--out", default="demo-out", help="output folder (default: demo-out)")
    demo.add_argument("--epochs", type=int, default=8)
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=cmd_demo)

    tr = sub.add_parser(
        "train", parents=[cpu], help="train a reference model and write a checkpoint series"
    )
    tr.add_argument("--model", default="mlp2", help="mlp1|mlp2|mlp4|cnn|vit or MODULE:FN")
    tr.add_argument("--model-kwargs", help="JSON object of model arguments")
    tr.add_argument("--data", default="digits", help=_DATA_HELP)
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

    series_options = argparse.ArgumentParser(add_help=False)
    series_options.add_argument(
        "run_dir",
        help="run folder (plain files, Lightning checkpoints/, HF checkpoint-N/ folders, "
        "nested), one HF folder, or one file",
    )
    series_options.add_argument("--model", help=_MODEL_HELP + " (default: run.json's model)")
    series_options.add_argument("--model-kwargs", help="JSON object of model arguments")
    series_options.add_argument("--data", help=_DATA_HELP + " (default: run.json's data)")
    series_options.add_argument(
        "--n",
        type=int,
        help=f"examples to probe (default {1024}, or all if fewer); an explicit N larger than "
        "the data is an error, and a data function that returns more is cut to N",
    )
    series_options.add_argument(
        "--snapshot-every",
        "--snapshot-interval",
        dest="snapshot_every",
        type=int,
        metavar="STEPS",
        help="pair step t with the checkpoint at the last multiple of STEPS (optimizer steps)",
    )
    series_options.add_argument("--snapshot", help="pair every checkpoint with this file")
    series_options.add_argument(
        "--pairing",
        choices=["auto", "metadata", "previous", "none"],
        default="auto",
        help="auto (default): the files' snapshot_step, else run.json's interval, else each "
        "checkpoint against the previous one; 'none': no ρ or α*",
    )
    series_options.add_argument(
        "--weights", default="model", help="'model' (usual keys), 'ema', or an exact dict key"
    )
    series_options.add_argument(
        "--strip-prefix", help="key prefix to strip, tried before module./_orig_mod./model."
    )

    an = sub.add_parser(
        "analyze",
        parents=[cpu, series_options],
        help="probe every checkpoint of a run directory",
        epilog=_EPILOG,
    )
    an.add_argument("--loss", help="cross_entropy|mse|MODULE:FN|./file.py:FN (default: run.json)")
    an.add_argument("--unit", default="sample", help="'sample' or a mini-batch size")
    an.add_argument("--layers", default="param", help="'param' (one per tensor) or 'module'")
    an.add_argument("--batchnorm", choices=["eval", "replace", "refuse"], default="eval")
    an.add_argument("--top-eigenvalue", choices=["auto", "gram", "lanczos", "none"], default="auto")
    an.add_argument("--chunk-size", type=int, help="samples per chunk (default: automatic)")
    an.add_argument("--alphas", default="1.0", help="comma-separated alphas for vr_variance")
    an.add_argument("--seed", type=int, default=0)
    an.add_argument("--device", help="cpu or cuda (default: cpu)")
    an.add_argument(
        "--skip-nonfinite",
        action="store_true",
        help="drop samples whose gradient has NaN/Inf (counted in nonfinite_skipped)",
    )
    an.add_argument("--run", help="run name in the records (default: folder name)")
    an.add_argument(
        "--restart", action="store_true", help="recompute this run's rows in --out (others kept)"
    )
    an.add_argument("--dry-run", action="store_true", help="list the series as read, then stop")
    an.add_argument("--quiet", action="store_true")
    an.add_argument("--out", help="records file (.parquet or .csv); required unless --dry-run")
    an.set_defaults(func=cmd_analyze)

    se = sub.add_parser(
        "series",
        parents=[cpu, series_options],
        help="list a run's checkpoints as read: file, layout, step, epoch, snapshot, prefix",
    )
    se.set_defaults(func=cmd_series)

    fi = sub.add_parser("fit", help="fit an alpha schedule to measured alpha*")
    fi.add_argument("results", help="records file")
    fi.add_argument(
        "--kind", default="auto", help="auto|constant|linear|quadratic|geometric|fitted"
    )
    fi.add_argument("--layer", default="__all__")
    fi.add_argument("--per-layer", action="store_true")
    fi.add_argument("--metric", default="alpha_star_mean")
    fi.add_argument("--run", help="use only this run's records")
    fi.add_argument(
        "--total-steps", type=int, help="length of the schedule (default: the run's, if recorded)"
    )
    fi.add_argument("--out", required=True, help="schedule JSON file")
    fi.set_defaults(func=cmd_fit)

    pl = sub.add_parser("plot", help="figures (PNG, PDF) and a Markdown report from records")
    pl.add_argument("results", help="records file")
    pl.add_argument("--out", required=True, help="output folder")
    pl.add_argument("--no-report", action="store_true")
    pl.set_defaults(func=cmd_plot)
    return parser


def _one_line_warnings() -> None:
    def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
        print(f"gradvar: warning: {message}", file=sys.stderr if file is None else file)

    warnings.showwarning = show


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 with one line on stderr for user errors)."""
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    args = build_parser().parse_args(argv)
    from gradvar.errors import GradvarError, NonFiniteGradientError

    if argv is None:
        _one_line_warnings()
        from gradvar.errors import CheckpointWarning

        # the series and analyze summaries list every skipped file with its reason
        warnings.filterwarnings("ignore", category=CheckpointWarning)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # output piped into head & co.: stop quietly
        sys.stderr.close()
        return 0
    except (GradvarError, ValueError, FileNotFoundError, KeyError, ImportError) as exc:
        if os.environ.get("GRADVAR_TRACEBACK") or argv is not None:
            raise  # asked for, or called programmatically (e.g. by the demo): propagate
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        text = " ".join(str(message).split())
        if isinstance(exc, NonFiniteGradientError):
            text += " (on the command line: --skip-nonfinite)"
        print(f"gradvar {args.command}: error: {text}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    sys.exit(main())
