"""``gradvar analyze`` and ``gradvar series``: probe a run's checkpoints, or list them as read."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Mapping
from typing import Any

from gradvar._factories import call_user, cpu_threads, load_data, resolve
from gradvar.errors import GradvarError, InvalidArgumentError

__all__ = ["cmd_analyze", "cmd_series", "json_arg", "infer_model_kwargs", "loss_from", "threads"]

DEFAULT_N = 1024


def json_arg(text: str | None) -> dict[str, Any]:
    """A JSON object given on the command line (``--model-kwargs '{"hidden": 64}'``)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgumentError(f"expected a JSON object, got {text!r} ({exc.msg})") from exc
    if not isinstance(value, dict):
        raise InvalidArgumentError(f"expected a JSON object, got {text!r}")
    return value


def threads(requested: int | None) -> str:
    """Set torch's CPU thread count (see :func:`gradvar._factories.cpu_threads`); say how."""
    import torch

    count, why = cpu_threads(requested)
    torch.set_num_threads(count)
    return f"{count} CPU thread{'s' if count > 1 else ''} ({why})"


def infer_model_kwargs(name: str, x: Any, y: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Fill input size and class count of the reference models from the data."""
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


def loss_from(spec: str) -> Callable[..., Any]:
    """``cross_entropy`` | ``mse`` | ``MODULE:FN`` | ``./file.py:FN``."""
    import torch.nn.functional as F

    if spec in ("cross_entropy", "ce"):
        return F.cross_entropy
    if spec in ("mse", "mse_loss"):
        return F.mse_loss
    return resolve(spec, "--loss")


def data_spec(spec: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """``--data`` (or run.json's data) as a spec dict."""
    if spec is None:
        raise InvalidArgumentError(
            "no data given: pass --data NAME|MODULE:FN|./file.py:FN (run.json names none)"
        )
    return {"name": spec} if isinstance(spec, str) else dict(spec)


def _model_factory(args: argparse.Namespace, config: Mapping[str, Any], x: Any, y: Any):
    from torch import nn

    from gradvar.zoo import MODELS, build_model, model_from_spec

    if args.model and args.model in MODELS:
        kwargs = infer_model_kwargs(args.model, x, y, json_arg(args.model_kwargs))
        return lambda: build_model(args.model, **kwargs)
    if args.model:
        fn, kwargs = resolve(args.model, "--model"), json_arg(args.model_kwargs)

        def build() -> nn.Module:
            model = call_user(fn, "--model", args.model, **kwargs)
            if not isinstance(model, nn.Module):
                raise InvalidArgumentError(
                    f"--model {args.model!r} returned a {type(model).__name__}; the contract is "
                    "FN(**model_kwargs) -> torch.nn.Module"
                )
            return model

        return build
    if config.get("model"):
        return lambda: model_from_spec(config["model"])
    raise InvalidArgumentError(
        f"{args.run_dir} has no run.json model spec; pass --model NAME|MODULE:FN|./file.py:FN "
        "(FN(**model_kwargs) returns the nn.Module the checkpoints belong to)"
    )


def _series(args: argparse.Namespace):
    from gradvar.checkpoints import CheckpointSeries

    return CheckpointSeries(
        args.run_dir,
        snapshot_interval=args.snapshot_every,
        snapshot=args.snapshot,
        pairing=args.pairing,
        weights=args.weights,
    )


def _inputs(args: argparse.Namespace, config: Mapping[str, Any]):
    n = args.n if args.n is not None else DEFAULT_N
    x, y, note = load_data(
        data_spec(args.data or config.get("data")), n=n, explicit_n=args.n is not None
    )
    return x, y, note


def _print_series(series, prefixes: Mapping[str, str] | None) -> None:
    import pandas as pd

    table = pd.DataFrame(series.describe())
    if prefixes is not None:
        table["prefix stripped"] = [prefixes.get(c, "") or "-" for c in table["checkpoint"]]
    table["epoch"] = table["epoch"].map(lambda e: "-" if e is None or pd.isna(e) else f"{e:g}")
    table["snapshot_step"] = table["snapshot_step"].map(lambda s: "-" if s is None else str(s))
    print(table.rename(columns={"snapshot_step": "snapshot"}).to_string(index=False))
    print(f"pairing: {series.pairing}: {series.pairing_note}")
    for note in series.notes:
        print(f"note: {note}")
    for name, reason in series.skipped:
        print(f"skipped {name}: {reason}")


def cmd_series(args: argparse.Namespace) -> int:
    """List the checkpoints as read: file, layout, step (and where from), epoch, snapshot."""
    threads(getattr(args, "threads", None))
    series = _series(args)
    prefixes = None
    try:
        x, y, _ = _inputs(args, series.run_config)
        model = _model_factory(args, series.run_config, x, y)()
    except GradvarError as exc:
        print(f"(no key-prefix column: the model cannot be built here: {exc})")
    else:
        from gradvar.checkpoints import match_keys

        prefixes = {
            c.name: match_keys(model, c.load(), prefix=args.strip_prefix)[1] for c in series
        }
    _print_series(series, prefixes)
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    """Probe every checkpoint; print the pairing, what was skipped, and a last-step summary."""
    if args.dry_run:
        return cmd_series(args)
    if not args.out:
        raise InvalidArgumentError("--out FILE is required (or --dry-run to list the series)")
    from gradvar.analysis import analyze
    from gradvar.records import off_snapshot

    thread_note = threads(args.threads)
    series = _series(args)
    x, y, data_note = _inputs(args, series.run_config)
    model_fn = _model_factory(args, series.run_config, x, y)
    config = series.run_config
    unit: str | int = args.unit if args.unit == "sample" else _int_unit(args.unit)
    run = args.run or series.path.resolve().name
    probe_configs: list[dict[str, Any]] = []
    records = analyze(
        series,
        model_fn,
        (x, y),
        loss_from(args.loss or config.get("loss", "cross_entropy")),
        out=args.out,
        run=run,
        alphas=[float(a) for a in args.alphas.split(",")],
        resume=not args.restart,
        progress=not args.quiet,
        device=args.device,
        strip_prefix=args.strip_prefix,
        unit=unit,
        layers=None if args.layers == "param" else args.layers,
        batchnorm=args.batchnorm,
        chunk_size=args.chunk_size,
        top_eigenvalue=args.top_eigenvalue,
        seed=args.seed,
        skip_nonfinite=args.skip_nonfinite,
        on_result=lambda result, *_: probe_configs.append(result.config),
    )
    mine = records[(records["run"] == run) & (records["unit"] == str(unit))]
    print(
        f"run {run}: {mine['checkpoint'].nunique()} checkpoints, {len(mine)} records "
        f"({data_note}, {thread_note}) -> {args.out}"
    )
    print(f"pairing: {series.pairing}: {series.pairing_note}")
    for note in series.notes:
        print(f"note: {note}")
    for name, reason in series.skipped:
        print(f"skipped {name}: {reason}")
    _print_prefixes(args.out, run, str(unit))
    if probe_configs:
        _print_routes(probe_configs[-1])
    pool = off_snapshot(mine)
    if pool.empty:
        print("no checkpoint away from its snapshot: ρ and α* were not measured")
        pool = mine
    last = pool[pool["step"] == pool["step"].max()]
    if not last.empty:
        snapshot = last["snapshot_step"].iloc[0]
        against = (
            "no snapshot"
            if snapshot is None or str(snapshot) == "<NA>"
            else (f"snapshot at step {snapshot}")
        )
        print(f"at step {int(last['step'].iloc[0])} ({against}):")
        _print_summary(last)
    return 0


def _int_unit(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise InvalidArgumentError(
            f"--unit must be 'sample' or a positive mini-batch size, got {text!r}"
        )
    return int(text)


def _print_prefixes(out: str, run: str, unit: str) -> None:
    from pathlib import Path

    from gradvar._resume import read_sidecar

    entry = read_sidecar(Path(out))["runs"].get(run, {}).get("units", {}).get(unit, {})
    prefixes = sorted({c.get("prefix", "") for c in entry.get("checkpoints", {}).values()} - {""})
    if prefixes:
        print(f"keys: stripped the prefix {', '.join(map(repr, prefixes))} to match the model")


def _print_routes(config: Mapping[str, Any]) -> None:
    """How each parameter's per-example gradients were computed (rule, vmap or loop)."""
    routes: dict[str, str] = config.get("routes", {})
    counts: dict[str, int] = {}
    for route in routes.values():
        counts[route] = counts.get(route, 0) + 1
    print("routes: " + ", ".join(f"{r} {c}" for r, c in sorted(counts.items())))
    for name, reason in config.get("route_reasons", {}).items():
        print(f"  {name} -> {routes.get(name)}: {reason}")


def _print_summary(frame) -> None:
    wanted = ["m2_total_variance", "rho_mean", "alpha_star_mean", "alpha_star_layer"]
    part = frame[frame["metric"].isin(wanted) & frame["alpha"].isna()]
    if part.empty:
        return
    table = part.pivot_table(index="layer", columns="metric", values="value", sort=False)
    print(table[[c for c in wanted if c in table]].to_string(float_format=lambda v: f"{v:.4g}"))
