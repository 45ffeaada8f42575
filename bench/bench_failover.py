"""Failover under load: kill -9 one service worker mid-run; throughput must come back within 10 s.

    python bench/bench_failover.py [--duration 40] [--kill-at 12] [--connections 8] [--workers 2]

The same load as bench/bench_serve.py (`smartrouter serve`, wrk POSTing the same /v1/route body
with varying order ids, same connections and threads). wrk counts answers per second (its Lua
`response` hook); at ``--kill-at`` seconds one uvicorn worker is killed with SIGKILL. uvicorn
respawns it, and keep-alive connections are closed after a bounded lifetime (serve/keepalive.py)
so clients spread over both workers again. Target: the throughput averaged over every second from
10 s after the kill to the end is within 10 % of the pre-kill level (the seconds before the kill,
the first two skipped as warm-up), and the first 3-second window back at that level starts at
most 10 s after the kill. Also prints the seconds around the kill. Exits 1 on a miss.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _targets import Targets  # noqa: E402
from bench_serve import _free_port, _lua, stop_server, wait_ready  # noqa: E402  (the same body, request script and start-up)

RECOVERY_SECONDS = 10
WITHIN = 0.10  # throughput back within 10 % of the pre-kill level
WARMUP_SECONDS = 2

# per-second answer counts, per wrk thread, gathered in done()
PER_SECOND = r"""
local threads = {}
setup = function(thread) table.insert(threads, thread) end
init = function(args) counts = {} end
response = function(status, headers, body)
  local s = os.time()
  counts[s] = (counts[s] or 0) + 1
end
done = function(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    local c = t:get("counts")
    for s, n in pairs(c) do total[s] = (total[s] or 0) + n end
  end
  for s, n in pairs(total) do io.write(string.format("SEC %d %d\n", s, n)) end
end
"""


def analyse(per_second: dict[int, int], start: int, kill_at: int, end: int) -> dict:
    """Pre-kill level, level from kill+10 s on, and the first second a 3-s window is back within 10 %."""
    series = [per_second.get(s, 0) for s in range(start, end)]
    k = kill_at - start
    pre = series[WARMUP_SECONDS:k]
    pre_level = sum(pre) / len(pre) if pre else float("nan")
    tail = series[k + RECOVERY_SECONDS:]
    post_level = sum(tail) / len(tail) if tail else float("nan")
    back = None
    for i in range(k, len(series) - 2):
        if sum(series[i:i + 3]) / 3 >= (1 - WITHIN) * pre_level:
            back = i - k
            break
    return {"series": series, "kill_index": k, "pre": pre_level, "post": post_level, "back_after": back}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=int, default=40)
    ap.add_argument("--kill-at", type=int, default=12, help="seconds into the run")
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2, help="wrk threads")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        print("bench_failover: wrk not found; install it (Debian: apt-get install -y wrk)", file=sys.stderr)
        return 2
    if args.duration < args.kill_at + RECOVERY_SECONDS + 5:
        print(f"bench_failover: --duration must leave at least {RECOVERY_SECONDS + 5} s after --kill-at", file=sys.stderr)
        return 2
    port = _free_port()
    state = tempfile.mkdtemp(prefix="smartrouter-failover-")
    env = dict(os.environ, SMARTROUTER_STATE_DIR=state, SMARTROUTER_PORT=str(port))
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    cmd = [sys.executable, "-m", "smartrouter", "serve", "--workers", str(args.workers), "--port", str(port),
           "--host", "127.0.0.1", "--log-level", "warning"]
    server = subprocess.Popen(cmd, env=env, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    killed: dict = {}
    try:
        serving = sorted(wait_ready(url, server, args.workers))  # the workers' pids, as they report them
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
            fh.write(_lua("/v1/route") + PER_SECOND)
            script = fh.name

        def kill_one() -> None:
            victim = serving[0]
            os.kill(victim, signal.SIGKILL)
            killed.update(pid=victim, at=int(time.time()))

        start = int(time.time()) + 1
        timer = threading.Timer(args.kill_at + (start - time.time()), kill_one)
        timer.start()
        out = subprocess.run(["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s",
                              "-s", script, url], capture_output=True, text=True, check=True).stdout
        timer.cancel()
        os.unlink(script)
        respawned = sorted(wait_ready(url, server, args.workers, seconds=30))
    finally:
        stop_server(server)
        shutil.rmtree(state, ignore_errors=True)
    per_second = {int(s): int(n) for s, n in (line.split()[1:] for line in out.splitlines() if line.startswith("SEC "))}
    if not killed or not per_second:
        print("bench_failover: no worker was killed or wrk counted nothing", file=sys.stderr)
        return 1
    first, last = min(per_second), max(per_second)
    r = analyse(per_second, first + 1, killed["at"], last)  # first and last seconds are partial
    print(f"wrk {args.duration}s, {args.connections} connections, {args.threads} threads, {args.workers} workers; "
          f"worker {killed['pid']} killed (SIGKILL) at second {r['kill_index']}; workers after: {respawned}")
    print("answers per second: " + " ".join(("|" if i == r["kill_index"] else "") + str(n) for i, n in enumerate(r["series"])))
    print(f"pre-kill {r['pre']:.0f}/s; from kill+{RECOVERY_SECONDS}s to the end {r['post']:.0f}/s "
          f"({r['post'] / r['pre']:.0%}); back within {WITHIN:.0%} after {r['back_after']} s")
    t = Targets("bench_failover")
    t.check("a worker was respawned", len(respawned) == args.workers and killed["pid"] not in respawned,
            f"workers after the run: {respawned}")
    t.at_least(f"throughput from kill+{RECOVERY_SECONDS}s vs pre-kill", r["post"] / r["pre"], 1 - WITHIN)
    t.at_most("seconds until a 3-s window is back within 10 %",
              float("nan") if r["back_after"] is None else r["back_after"], RECOVERY_SECONDS, "s")
    return t.report()


if __name__ == "__main__":
    sys.exit(main())
