"""Benchmark the routing service: wrk against /v1/route and a constant Litestar endpoint, plus in-process latency.

    python bench/bench_serve.py [--duration 20] [--connections 8] [--workers 2]

Starts the service with `smartrouter serve` (uvicorn workers sharing outcomes; promoted model,
or the static rules when none is promoted) on a free port with a throw-away decision-log folder, runs
wrk for ``--duration`` seconds at ``--connections`` against POST /v1/route with a realistic
body (order ids vary per request, so A/B arms and exploration behave as in production), then
the same load against POST /v1/constant (same body, decoded, constant answer: the framework's
floor), and prints decisions/s, p50/p95/p99 and the ratio. Finally it times 10,000 in-process
decisions (`Router.decide`, no HTTP). Targets: >= 2,000 decisions/s, HTTP p99 <= 10 ms,
in-process p99 <= 1 ms, no non-2xx answer; the script exits 1 when any is missed (bench/_targets.py).
Needs `wrk` (Debian: apt-get install -y wrk).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _targets import Targets  # noqa: E402  (bench/ is the script's folder, first on sys.path)

# The service mounts its benchmark-only routes (/v1/constant) only when this is set to 1.
BENCH_ROUTES_ENV = "SMARTROUTER_BENCH_ROUTES"

BODY = {
    "order_id": "ORD-000001", "user_id": "U-4411", "payment_id": "PAY-1", "amount": 2350.5, "currency": "MXN",
    "card_bin": "415231", "card_brand": "VISA", "card_type": "CREDIT", "card_country": "MX", "card_level": "GOLD",
    "bank": "BANORTE", "mci_msi_type": "CIT", "avs_checked": True, "num_attempts_order": 1,
    "order_country_code": "MX", "is_returning_customer": True, "user_recency_days": 41.0, "user_frequency": 6,
    "user_monetary": 9800.0, "fraud_rate_cohort": "LOW", "browsing_minutes": 7.5, "flight_type": "DOMESTIC",
    "days_to_departure": 21, "passengers": 2, "fare_class": "CLASSIC", "channel": "WEB", "device": "DESKTOP",
    "browser": "CHROME",
}

LUA = r"""
local counter = 0
local head, tail = %s, %s
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  counter = counter + 1
  return wrk.format("POST", "%s", nil, head .. counter .. tail)
end
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lua(path: str) -> str:
    text = json.dumps(BODY)
    head, tail = text.split('"ORD-000001"')
    return LUA % (json.dumps(head + '"ORD-'), json.dumps('"' + tail), path)


def wait_ready(url: str, server: subprocess.Popen, workers: int, seconds: float = 300) -> dict[int, dict]:
    """Every worker answering /readyz, sharing outcomes and done seeding its online features."""
    seen: dict[int, dict] = {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError("the service exited during start-up")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
                ready = json.loads(r.read())
            seen[ready["worker"]] = ready
        except OSError:
            time.sleep(0.2)
            continue
        done = [w for w, rd in seen.items() if rd["online_features"] != "seeding" and rd["peers"] == workers - 1]
        if len(done) >= workers:
            return seen
        time.sleep(0.05)
    raise RuntimeError(f"{workers} workers were not all ready in {seconds:.0f} s (seen: {sorted(seen)})")


def stop_server(server: subprocess.Popen) -> None:
    """SIGTERM (the service drains and exits), SIGKILL after 30 s."""
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def run_wrk_full(url: str, path: str, duration: int, connections: int, threads: int) -> dict:
    """wrk with p50/p95/p99 in one run (a done() hook prints p95)."""
    lua = _lua(path) + r"""
done = function(summary, latency, requests)
  io.write(string.format("PCTL %.4f %.4f %.4f\n", latency:percentile(50.0) / 1000.0,
    latency:percentile(95.0) / 1000.0, latency:percentile(99.0) / 1000.0))
end
"""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(lua)
        script = fh.name
    try:
        out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "-s", script, url],
                             capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(script)
    p50, p95, p99 = (float(x) for x in re.search(r"PCTL ([\d.]+) ([\d.]+) ([\d.]+)", out).groups())
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    total = int(re.search(r"(\d+) requests in", out).group(1))
    return {"rps": rps, "p50": p50, "p95": p95, "p99": p99, "requests": total,
            "non_2xx": int(non2xx.group(1)) if non2xx else 0}


def in_process(n: int = 10_000) -> dict:
    """Router.decide latency without HTTP, on the same model/rules the service would use."""
    from smartrouter.cli.serve import import_app_module

    app = import_app_module().create_app(poll=False, seed_features=False)
    svc = app.state.service
    from serve.app import PAYMENT_FIELD_COLUMNS, RouteRequest  # the same field mapping as the handler
    import msgspec

    req = msgspec.json.decode(json.dumps(BODY).encode(), type=RouteRequest)
    base = {col: getattr(req, f) for f, col in PAYMENT_FIELD_COLUMNS.items()}
    lat = []
    for i in range(n + 500):
        p = dict(base, ORDER_ID=f"ORD-{i}")
        t0 = time.perf_counter()
        svc.router.decide(p)
        lat.append((time.perf_counter() - t0) * 1000.0)
    lat = sorted(lat[500:])
    return {"n": n, "p50": lat[n // 2], "p99": lat[int(n * 0.99)], "model_version": svc.holder.version,
            "rules_source": svc.rules_source}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=int, default=20)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2, help="wrk threads")
    ap.add_argument("--workers", type=int, default=None,
                    help="service workers (default: SMARTROUTER_WORKERS or 2, as `smartrouter serve`)")
    ap.add_argument("--in-process-calls", type=int, default=10_000)
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        print("bench_serve: wrk not found; install it (Debian: apt-get install -y wrk)", file=sys.stderr)
        return 2
    from smartrouter.config import load_settings

    workers = args.workers or load_settings().workers
    port = _free_port()
    state = tempfile.mkdtemp(prefix="smartrouter-bench-")
    env = dict(os.environ, SMARTROUTER_STATE_DIR=state, SMARTROUTER_PORT=str(port), **{BENCH_ROUTES_ENV: "1"})
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    # the same command an operator runs (`smartrouter serve`), so the benchmark measures what ships
    cmd = [sys.executable, "-m", "smartrouter", "serve", "--workers", str(workers), "--port", str(port),
           "--host", "127.0.0.1", "--log-level", "warning"]
    server = subprocess.Popen(cmd, env=env, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        # every worker must be up, sharing outcomes, and done seeding its online features from the
        # warehouse (a background replay of 28 days): measure the steady state, not start-up.
        # A fresh connection per probe lands on a random worker; wait until each has said so.
        try:
            seen = wait_ready(url, server, workers)
        except RuntimeError as exc:
            print(f"bench_serve: {exc}", file=sys.stderr)
            return 1
        ready = next(iter(seen.values()))
        print(f"service: {url} workers={workers} serving={ready['serving']} model={ready['model_version']} "
              f"rules={ready['rules_source']} online_features={ready['online_features']}")
        run_wrk_full(url, "/v1/route", 2, args.connections, args.threads)  # warm-up
        route = run_wrk_full(url, "/v1/route", args.duration, args.connections, args.threads)
        const = run_wrk_full(url, "/v1/constant", args.duration, args.connections, args.threads)
    finally:
        stop_server(server)
    inproc = in_process(args.in_process_calls)
    shutil.rmtree(state, ignore_errors=True)
    print(f"\nwrk {args.duration}s, {args.connections} connections, {args.threads} threads, POST bodies of "
          f"{len(json.dumps(BODY))} bytes, {workers} service worker(s)")
    print(f"{'endpoint':<14}{'req/s':>10}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'non-2xx':>9}")
    for name, r in (("/v1/route", route), ("/v1/constant", const)):
        print(f"{name:<14}{r['rps']:>10.0f}{r['p50']:>9.2f}{r['p95']:>9.2f}{r['p99']:>9.2f}{r['non_2xx']:>9}")
    print(f"ratio route/constant throughput: {route['rps'] / const['rps']:.2f}")
    print(f"in-process decide (model={inproc['model_version']}, rules={inproc['rules_source']}): "
          f"p50 {inproc['p50'] * 1000:.0f} us, p99 {inproc['p99'] * 1000:.0f} us over {inproc['n']} calls")
    return verdict(route, inproc).report()


def verdict(route: dict, inproc: dict) -> Targets:
    """The stated targets against the /v1/route load and the in-process decisions."""
    t = Targets("bench_serve")
    t.at_least("/v1/route throughput", route["rps"], 2000, "req/s")
    t.at_most("/v1/route p99", route["p99"], 10, "ms")
    t.at_most("/v1/route non-2xx answers", route["non_2xx"], 0)
    t.at_most("in-process decide p99", inproc["p99"], 1.0, "ms")
    return t


if __name__ == "__main__":
    sys.exit(main())
