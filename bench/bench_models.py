"""Benchmark the approval models: training time per family, serving load time and one-payment latency.

Training data: the newest ``runs/*/features.parquet`` (the default world's feature table once a
default run exists), or ``--features PATH``, else a synthetic table of the same size (``--rows``).
Latency: ``ServingModel.score(payment)`` for one payment (all processors, encoding included),
p50/p99 over ``--calls`` calls (target: p99 <= 0.5 ms; exits 1 when missed). Prints one line per
number; ``--json PATH`` also writes them.

    .venv/bin/python bench/bench_models.py [--families logistic,dnn,xgb,ensemble] [--rows 880000] [--calls 10000]
    .venv/bin/python bench/bench_models.py --serving runs/<run>/models/xgb   # an exported folder, no training
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from _targets import Targets  # noqa: E402  (bench/ is the script's folder, first on sys.path)
from smartrouter.config import load_settings  # noqa: E402
from smartrouter.models import FAMILY_NAMES, data, make_model  # noqa: E402
from smartrouter.models.serving import load_serving_model  # noqa: E402
from smartrouter.models.train import FAMILY_MAX_ROWS, _cap_rows  # noqa: E402


def _latest_features() -> Path | None:
    runs = load_settings().runs_dir
    found = sorted(runs.glob("*/features.parquet")) if runs.is_dir() else []
    return found[-1] if found else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", type=Path, default=None, help="feature table (parquet with SPLIT); default: newest run's")
    ap.add_argument("--synthetic", action="store_true", help="ignore run folders, use a synthetic table")
    ap.add_argument("--rows", type=int, default=880_000, help="rows of the synthetic table (default: the default world's size)")
    ap.add_argument("--dims", type=int, default=300, help="encoded features of the synthetic table")
    ap.add_argument("--families", default=",".join(FAMILY_NAMES))
    ap.add_argument("--max-train-rows", type=int, default=None, help="cap the train split (speed)")
    ap.add_argument("--calls", type=int, default=10_000, help="one-payment score calls per family")
    ap.add_argument("--dnn-epochs", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    ap.add_argument("--serving", type=Path, action="append", default=None, help="only time this exported folder (repeatable)")
    args = ap.parse_args(argv)
    if args.serving:
        return _bench_folders(args)

    path = None if args.synthetic else (args.features or _latest_features())
    if path is not None:
        import pandas as pd

        from smartrouter.encoder import FeatureEncoder

        frame = pd.read_parquet(path)
        t0 = time.perf_counter()
        encoder = FeatureEncoder.fit(frame[frame["SPLIT"] == "train"])
        md = data.from_frame(frame, encoder)
        payments = frame[frame["SPLIT"] == "test"].head(1000).to_dict("records")
        source = f"{path} ({len(frame)} rows, encode {time.perf_counter() - t0:.1f} s)"
    else:
        # synthetic() adds three health-rate columns per processor to the generic ones
        md = data.synthetic(args.rows, d=args.dims - 3 * len(data.catalog.PROCESSORS), seed=0, late_processor_rows=args.rows // 100)
        encoder = data.PassthroughEncoder(md.feature_names)
        test = md.part("test")
        payments = [dict(zip(md.feature_names, map(float, x))) for x in test.X[:1000]]
        source = f"synthetic ({args.rows} rows x {md.n_features} features)"
    train, valid = md.part("train"), md.part("valid")
    if args.max_train_rows and len(train) > args.max_train_rows:
        train = train.subset(np.sort(np.random.default_rng(0).choice(len(train), args.max_train_rows, replace=False)))
    print(f"data: {source}; train {len(train)}, valid {len(valid)}; d={md.n_features}")
    out: dict[str, dict[str, float]] = {}
    models: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for fam in args.families.split(","):
            params = {"epochs": args.dnn_epochs} if fam == "dnn" and args.dnn_epochs else {}
            model = make_model(fam, **params)
            if fam == "dnn" and "logistic" in models:
                model.linear_start = models["logistic"]  # as train_all does: the DNN's linear path is this fit
            if fam == "ensemble":
                model.set_members(models)  # as train_all does: its members are the families fitted above
            # the daily run's per-family row caps (XGBoost trains on a sample), so times compare
            model.fit(_cap_rows(train, FAMILY_MAX_ROWS.get(fam), 0), valid)
            models[fam] = model
            folder = model.export(Path(tmp) / fam, encoder.to_spec())
            out[fam] = {"train_seconds": round(model.train_seconds, 2), "artifact_bytes": model.artifact_bytes(folder)}
            out[fam].update(_serving_numbers(folder, payments, args.calls))
            print(f"{fam:9s} " + "  ".join(f"{k}={v}" for k, v in out[fam].items()), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"source": source, "families": out}, indent=1))
    return _verdict(out)


def _serving_numbers(folder: Path, payments: list[dict], calls: int) -> dict[str, float]:
    """Median load time of 5 loads, and one-payment ``score`` p50/p99 over ``calls`` calls."""
    load_serving_model(folder)  # imports warm
    loads = []
    for _ in range(5):
        t0 = time.perf_counter()
        sm = load_serving_model(folder)
        loads.append(time.perf_counter() - t0)
    for p in payments[:200]:
        sm.score(p)  # warm-up
    lat = np.empty(calls)
    for i in range(calls):
        p = payments[i % len(payments)]
        t0 = time.perf_counter()
        sm.score(p)
        lat[i] = time.perf_counter() - t0
    return {
        "load_ms_median": round(float(np.median(loads)) * 1e3, 2),
        "score_p50_ms": round(float(np.percentile(lat, 50)) * 1e3, 4),
        "score_p99_ms": round(float(np.percentile(lat, 99)) * 1e3, 4),
    }


P99_TARGET_MS = 0.5  # one payment, all processors (issue #4)


def _verdict(out: dict[str, dict[str, float]]) -> int:
    """PASS/FAIL per family or folder; the exit code (non-zero when any misses the target)."""
    targets = Targets("bench_models")
    for name, nums in out.items():
        targets.at_most(f"{name}: one-payment score p99", nums["score_p99_ms"], P99_TARGET_MS, "ms")
    return targets.report()


def _bench_folders(args: argparse.Namespace) -> int:
    """Time exported folders only; payments are the test rows of --features / the newest run's table."""
    import pandas as pd

    path = args.features or _latest_features()
    if path is None:
        raise SystemExit("--serving needs payments: pass --features PATH (a features.parquet with SPLIT)")
    frame = pd.read_parquet(path)
    payments = frame[frame["SPLIT"] == "test"].head(1000).to_dict("records")
    out = {}
    print(f"payments: {path}; load average {os.getloadavg()[0]:.2f}")
    for folder in args.serving:
        nums = _serving_numbers(folder, payments, args.calls)
        out[str(folder)] = nums
        print(f"{folder} " + "  ".join(f"{k}={v}" for k, v in nums.items()), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"source": str(path), "folders": out}, indent=1))
    return _verdict(out)


if __name__ == "__main__":
    sys.exit(main())
