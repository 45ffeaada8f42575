"""Benchmark the retry advice: one POST /v1/retry decision in process (body decoded, rules, health,
online features, the retry model priced at every delay bucket and processor), p50/p99 over
``--calls`` declined attempts (target: p99 <= 1 ms; exits 1 when missed).

The service is the real one (`ServiceDeps`, the in-process client the live loop uses) serving a copy
of an exported routing folder that ships a retry model (``<serving>/retry``, written by the train
stage): by default the newest run's ``models/logistic``. Online features start empty (no history
seeding) but are computed on every call, as in production.

    .venv/bin/python bench/bench_retry.py [--serving runs/<run>/models/logistic] [--calls 5000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from _targets import Targets  # noqa: E402  (bench/ is the script's folder, first on sys.path)
from smartrouter import atomic, catalog  # noqa: E402
from smartrouter.config import load_settings  # noqa: E402
from smartrouter.retry.model import RETRY_DIR  # noqa: E402


def _latest_serving() -> Path | None:
    runs = load_settings().runs_dir
    found = sorted(runs.glob(f"*/models/logistic/{RETRY_DIR}")) if runs.is_dir() else []
    return found[-1].parent if found else None


def _bodies(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    codes = [c for c, e in catalog.ERROR_CODES.items() if e.hard_soft == "SOFT"] + ["14", "54"]
    t0 = 1_790_000_000.0
    out = []
    for i in range(n):
        brand = ["VISA", "MASTERCARD"][int(rng.integers(2))]
        cur = ["MXN", "USD"][int(rng.random() < 0.25)]
        elig = catalog.eligible_processors(brand, cur)
        out.append({
            "order_id": f"O{i}", "user_id": f"U{i % 997}", "amount": float(np.round(rng.lognormal(7.5, 0.8), 2)),
            "currency": cur, "card_bin": f"{int(rng.integers(400000, 560000))}", "card_brand": brand,
            "card_type": ["CREDIT", "DEBIT", "PREPAID"][int(rng.integers(3))], "card_country": "MX",
            "num_attempts_order": int(rng.integers(1, 3)), "error_code": codes[int(rng.integers(len(codes)))],
            "processor": elig[int(rng.integers(len(elig)))], "card_retries_24h": 0, "card_retries_30d": int(rng.integers(3)),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t0 + i)),
        })
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--serving", type=Path, default=None, help="exported routing folder with retry/ (default: newest run's logistic)")
    ap.add_argument("--calls", type=int, default=5000)
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args(argv)
    serving = args.serving or _latest_serving()
    if serving is None or not (serving / RETRY_DIR).is_dir():
        print(f"no exported serving folder with a retry model ({serving}); run the daily pipeline first "
              "(`make run`) or pass --serving runs/<run>/models/logistic", file=sys.stderr)
        return 2
    import msgspec

    from smartrouter.cli.serve import import_app_module
    from smartrouter.world.clients import InProcessClient

    app = import_app_module()
    with tempfile.TemporaryDirectory(prefix="bench-retry-") as tmp:
        reg = Path(tmp) / "models"
        shutil.copytree(serving, reg / "v1" / "serving")
        atomic.write_json(reg / "PROMOTED", {"version": "v1", "reason": "bench"})
        settings = load_settings({**os.environ, "SMARTROUTER_REGISTRY_DIR": str(reg), "SMARTROUTER_STATE_DIR": str(Path(tmp) / "state")})
        client = InProcessClient(settings, seed_features=False, poll=False)
        try:
            svc = client.service
            svc.router.features_ready = True  # empty online history, computed on every call
            raws = [msgspec.json.encode(b) for b in _bodies(args.calls + 200, 0)]

            async def one(raw: bytes) -> tuple[float, float, dict]:
                t0, c0 = time.perf_counter(), time.thread_time()
                resp = await app.retry.fn(data=app.decode_body(raw, app.RetryRequest), svc=svc)
                return (time.perf_counter() - t0) * 1000.0, (time.thread_time() - c0) * 1000.0, resp

            loop = client._loop
            for raw in raws[:200]:  # warm-up: the retry model loads on the first advice
                loop.run_until_complete(one(raw))
            ms, cpu, sources = [], [], {}
            for raw in raws[200:]:
                t, c, resp = loop.run_until_complete(one(raw))
                ms.append(t)
                cpu.append(c)
                sources[resp.source] = sources.get(resp.source, 0) + 1
        finally:
            client.close()
    ms = np.array(ms)
    p50, p99 = float(np.percentile(ms, 50)), float(np.percentile(ms, 99))
    # CPU time of the calling thread beside the wall clock: on a shared machine a wall-clock tail far above
    # the CPU tail is the scheduler's (another process held the core), not the advice's
    cpu99 = float(np.percentile(cpu, 99))
    print(f"retry advice in process: {len(ms):,} calls, p50 {p50:.3f} ms, p99 {p99:.3f} ms (CPU p99 {cpu99:.3f} ms), "
          f"sources {sources}")
    if args.json:
        atomic.write_json(args.json, {"calls": len(ms), "p50_ms": p50, "p99_ms": p99, "cpu_p99_ms": cpu99, "sources": sources, "serving": str(serving)})
    targets = Targets("bench_retry")
    targets.check("advice priced by the retry model", sources.get("retry_model", 0) > 0, f"sources {sources}")
    targets.at_most("retry advice p99 in process", p99, 1.0, "ms")
    return targets.report()


if __name__ == "__main__":
    sys.exit(main())
