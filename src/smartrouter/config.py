"""The one place that owns settings and paths.

Every setting is an environment variable with a default that runs the local world, so a
notebook, papermill, a test or the service sees the same paths whatever the working directory.

| variable | default | meaning |
|---|---|---|
| SMARTROUTER_HOME | the repository root | project home; relative paths below hang off it |
| SMARTROUTER_WAREHOUSE | `local` | `local` (fakesnow over DuckDB) or `snowflake` |
| SMARTROUTER_LOCAL_DIR | `$HOME/data/warehouse` | folder of the local world's DuckDB file(s) |
| SMARTROUTER_SNOWFLAKE_CONNECTION | (connector default) | name of a connection in the connector's `connections.toml` |
| SMARTROUTER_RUNS_DIR | `$HOME/runs` | one folder per pipeline run |
| SMARTROUTER_REPORTS_DIR | `$HOME/reports` | HTML run reports |
| SMARTROUTER_REGISTRY_DIR | `$HOME/models` | versioned model registry |
| SMARTROUTER_STATE_DIR | `$HOME/data/state` | lineage store, decision log, locks |
| SMARTROUTER_HOST / SMARTROUTER_PORT | `127.0.0.1` / `8000` | routing service bind address |
| SMARTROUTER_WORKERS | `2` | routing service worker processes (they share outcomes; 2 fills this 2-core machine) |
| SMARTROUTER_STATE_STORE | `local` | where service workers share processor health and exploration posteriors: `local` (one host: a peer bus + a snapshot file in the state dir) or `redis://host:port/db` (several hosts: a Redis stream) |
| SMARTROUTER_ADMIN_TOKEN | (unset: admin endpoints refuse all calls) | bearer token for `/admin/*` |
| SMARTROUTER_BENCH_ROUTES | (unset) | `1` mounts the benchmark's constant endpoints (`/v1/constant`); `bench/bench_serve.py` sets it |
| SMARTROUTER_KERNEL | `smartrouter` | Jupyter kernel papermill runs stages with |
| SMARTROUTER_TRAIN_ENGINE | `local` | where XGBoost's boosting runs (`smartrouter.models.engine`): `local` (this process, batches binned into one QuantileDMatrix) or `dask` (`xgboost.dask` on a Dask cluster; needs `dask[distributed]`, a dependency of this package) |
| SMARTROUTER_DASK_SCHEDULER | (unset: a LocalCluster on this machine, closed after training) | address of an existing Dask scheduler (`tcp://host:8786`) for the `dask` engine; the connect timeout is Dask's own `distributed.comm.timeouts.connect` (env `DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT`, default 30s) |
| SMARTROUTER_DASK_WORKERS | `2` | worker processes of that LocalCluster (one thread each) |

Snowflake credentials never live here: the connector reads its own `connections.toml`
(`~/.snowflake/connections.toml`) or the `SNOWFLAKE_*` environment variables.
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from smartrouter.errors import ConfigError

# src/smartrouter/config.py -> repository root
REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIR = Path(__file__).resolve().parent
SQL_DIR = PACKAGE_DIR / "sql"

WAREHOUSES = ("local", "snowflake")
TRAIN_ENGINES = ("local", "dask")
DASK_INSTALL_HINT = "pip install 'dask[distributed]' (it is in pyproject.toml's dependencies: pip install -e . brings it)"


def _path(env: dict[str, str], name: str, home: Path, default: str) -> Path:
    raw = env.get(name) or default
    path = Path(raw).expanduser()
    return path if path.is_absolute() else (home / path)


@dataclass(frozen=True)
class Settings:
    home: Path
    warehouse: str
    local_dir: Path
    snowflake_connection: str | None
    runs_dir: Path
    reports_dir: Path
    registry_dir: Path
    state_dir: Path
    host: str
    port: int
    workers: int
    state_store: str
    admin_token: str | None = field(repr=False)
    kernel: str
    train_engine: str
    dask_scheduler: str | None
    dask_workers: int

    @property
    def notebooks_dir(self) -> Path:
        return self.home / "notebooks"

    @property
    def is_local(self) -> bool:
        return self.warehouse == "local"

    def public_dict(self) -> dict[str, str | int | None]:
        """Settings safe to write into a manifest (the admin token is never included)."""
        return {
            "home": str(self.home),
            "warehouse": self.warehouse,
            "local_dir": str(self.local_dir),
            "snowflake_connection": self.snowflake_connection,
            "runs_dir": str(self.runs_dir),
            "reports_dir": str(self.reports_dir),
            "registry_dir": str(self.registry_dir),
            "state_dir": str(self.state_dir),
            "host": self.host,
            "port": self.port,
            "workers": self.workers,
            "state_store": re.sub(r"//[^@/]*@", "//***@", self.state_store),  # never a Redis password
            "kernel": self.kernel,
            "train_engine": self.train_engine,
            "dask_scheduler": self.dask_scheduler,
            "dask_workers": self.dask_workers,
        }


def load_settings(env: dict[str, str] | None = None) -> Settings:
    """Read settings from the environment (or ``env``), validating each; raises ConfigError."""
    env = dict(os.environ if env is None else env)
    home = Path(env.get("SMARTROUTER_HOME") or REPO_ROOT).expanduser().resolve()
    warehouse = (env.get("SMARTROUTER_WAREHOUSE") or "local").strip().lower()
    if warehouse not in WAREHOUSES:
        raise ConfigError(
            f"SMARTROUTER_WAREHOUSE={warehouse!r} is not a warehouse; set it to one of {', '.join(WAREHOUSES)}"
        )
    port_raw = env.get("SMARTROUTER_PORT") or "8000"
    try:
        port = int(port_raw)
        if not 0 < port < 65536:
            raise ValueError
    except ValueError:
        raise ConfigError(f"SMARTROUTER_PORT={port_raw!r} is not a TCP port; set it to a number in 1..65535") from None
    workers_raw = env.get("SMARTROUTER_WORKERS") or "2"
    try:
        workers = int(workers_raw)
        if not 1 <= workers <= 64:
            raise ValueError
    except ValueError:
        raise ConfigError(f"SMARTROUTER_WORKERS={workers_raw!r} is not a worker count; set it to a number in 1..64") from None
    state_store = (env.get("SMARTROUTER_STATE_STORE") or "local").strip()
    if state_store != "local" and not state_store.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(
            f"SMARTROUTER_STATE_STORE={state_store!r} is not a state store; set it to local or a Redis URL (redis://host:port/db)"
        )
    train_engine = (env.get("SMARTROUTER_TRAIN_ENGINE") or "local").strip().lower()
    if train_engine not in TRAIN_ENGINES:
        raise ConfigError(
            f"SMARTROUTER_TRAIN_ENGINE={train_engine!r} is not a training engine; set it to one of {', '.join(TRAIN_ENGINES)}"
        )
    # checked here, at the start of a run, rather than when stage 03 reaches the booster
    if train_engine == "dask" and not all(importlib.util.find_spec(m) for m in ("dask", "distributed")):
        raise ConfigError(f"SMARTROUTER_TRAIN_ENGINE=dask needs dask and distributed, which are not installed: {DASK_INSTALL_HINT}")
    dask_scheduler = (env.get("SMARTROUTER_DASK_SCHEDULER") or "").strip() or None
    if dask_scheduler is not None and not re.fullmatch(r"([a-z]+://)?[^\s/:]+(:\d+)?/?", dask_scheduler):
        raise ConfigError(
            f"SMARTROUTER_DASK_SCHEDULER={dask_scheduler!r} is not a scheduler address; set it to tcp://host:port "
            "or leave it empty to start a LocalCluster"
        )
    dask_workers_raw = env.get("SMARTROUTER_DASK_WORKERS") or "2"
    try:
        dask_workers = int(dask_workers_raw)
        if not 1 <= dask_workers <= 64:
            raise ValueError
    except ValueError:
        raise ConfigError(
            f"SMARTROUTER_DASK_WORKERS={dask_workers_raw!r} is not a worker count; set it to a number in 1..64"
        ) from None
    return Settings(
        home=home,
        warehouse=warehouse,
        local_dir=_path(env, "SMARTROUTER_LOCAL_DIR", home, "data/warehouse"),
        snowflake_connection=env.get("SMARTROUTER_SNOWFLAKE_CONNECTION") or None,
        runs_dir=_path(env, "SMARTROUTER_RUNS_DIR", home, "runs"),
        reports_dir=_path(env, "SMARTROUTER_REPORTS_DIR", home, "reports"),
        registry_dir=_path(env, "SMARTROUTER_REGISTRY_DIR", home, "models"),
        state_dir=_path(env, "SMARTROUTER_STATE_DIR", home, "data/state"),
        host=env.get("SMARTROUTER_HOST") or "127.0.0.1",
        port=port,
        workers=workers,
        state_store=state_store,
        admin_token=env.get("SMARTROUTER_ADMIN_TOKEN") or None,
        kernel=env.get("SMARTROUTER_KERNEL") or "smartrouter",
        train_engine=train_engine,
        dask_scheduler=dask_scheduler,
        dask_workers=dask_workers,
    )
