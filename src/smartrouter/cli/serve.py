"""`smartrouter serve`: run the routing service (serve/app.py) under uvicorn.

The HTTP edge lives in the repository's serve/ folder, not in the installed package, so it is
imported with the repository root on sys.path (uvicorn's ``app_dir``); host and port come
from settings (SMARTROUTER_HOST / SMARTROUTER_PORT) unless given on the command line.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from types import ModuleType

from smartrouter.config import REPO_ROOT, load_settings
from smartrouter.errors import ConfigError

# serve/app.py's application behind bounded keep-alive lifetimes (serve/keepalive.py): after a
# worker dies and is respawned, clients spread over the workers again within seconds
APP_FACTORY = "serve.keepalive:create_app"


def import_app_module() -> ModuleType:
    """Import serve/app.py from the repository (for tests, benchmarks and notebooks)."""
    if not (REPO_ROOT / "serve" / "app.py").is_file():
        raise ConfigError(f"{REPO_ROOT / 'serve' / 'app.py'} is missing; run from a full clone of the repository")
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    return importlib.import_module("serve.app")


def prepare_workers(settings, workers: int, env: dict | None = None) -> dict:
    """Set up what several worker processes share, in ``env`` (default: this process's environment).

    Prometheus' multiprocess mode: each worker writes its metrics to files in one folder and a
    scrape of any worker reports them all. The folder is emptied first (counters restart with the
    service, as they would in one process). One worker needs none of it.
    """
    env = os.environ if env is None else env
    if workers > 1 and not env.get("PROMETHEUS_MULTIPROC_DIR"):
        folder = settings.state_dir / "prometheus"
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.db"):
            stale.unlink(missing_ok=True)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    return env


def handler(args: argparse.Namespace) -> int:
    """Start uvicorn on the app factory; blocks until the server stops."""
    import uvicorn

    from smartrouter.routing.config import load_routing_config

    settings = load_settings()
    load_routing_config()  # fail here, with the key named, not inside a worker
    import_app_module()  # a missing serve/ fails here with a clear message
    workers = settings.workers if args.workers is None else args.workers
    if workers < 1:
        raise ConfigError(f"--workers {workers}: give at least 1")
    prepare_workers(settings, workers)
    uvicorn.run(
        APP_FACTORY,
        factory=True,
        app_dir=str(REPO_ROOT),
        host=args.host or settings.host,
        port=args.port or settings.port,
        workers=workers,
        log_level=args.log_level,
        access_log=args.access_log,
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="run the routing service (Litestar under uvicorn)",
        description="Serve /v1/route on the promoted model (static rules if none). Host/port from settings.",
    )
    parser.add_argument("--host", default=None, help="bind address (default: SMARTROUTER_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default: SMARTROUTER_PORT or 8000)")
    parser.add_argument(
        "--workers", type=int, default=None,
        help="worker processes (default: SMARTROUTER_WORKERS or 2); they share outcomes, so health, "
             "exploration and online features agree across them; uvicorn respawns a worker that dies, "
             "and the new one takes over the current state before it serves",
    )
    parser.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    parser.add_argument("--access-log", action="store_true", help="log every request (slows the service)")
    parser.set_defaults(func=handler)
