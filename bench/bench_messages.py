"""In-process decision latency with message recommendations: every eligible (processor, configuration)
pair scored (smartrouter.routing.messages), against the same router with ``[messages] recommend = false``.

Payments carry every eligibility fact, so all 8 configurations are scored for every processor; the
treatment arm takes every payment, so every decision goes through the model. The model is the
registry's promoted version (or the newest one, or ``--model FOLDER``: an exported serving folder).
Target: in-process p99 <= 1 ms with all configurations scored (the issue's serving target); the
script exits 1 when it is missed (bench/_targets.py).

    make bench-messages            # or: python bench/bench_messages.py --model <registry>/vN/serving
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _targets import Targets  # noqa: E402  (bench/ is the script's folder, first on sys.path)


def model_folder(arg: str | None) -> Path:
    """--model, else the registry's promoted version, else its newest one."""
    if arg:
        return Path(arg)
    from smartrouter.config import load_settings

    reg = Path(load_settings().registry_dir)
    promoted = reg / "PROMOTED"
    if promoted.is_file():
        return reg / json.loads(promoted.read_text())["version"] / "serving"
    versions = sorted((p for p in reg.glob("v*") if (p / "serving").is_dir()), key=lambda p: int(p.name[1:]))
    if not versions:
        raise SystemExit(f"no model in {reg}: run `smartrouter run` first or pass --model FOLDER")
    return versions[-1] / "serving"


def latencies(router, n: int, seed: int = 0) -> np.ndarray:
    """Decision latencies (ms) of ``n`` varied payments, after 500 warm-up decisions."""
    from smartrouter import catalog

    rng = np.random.default_rng(seed)
    lat = []
    for i in range(n + 500):
        p = {"ORDER_ID": f"ORD-{i}", "USER_ID": f"U-{i % 997}", "AMOUNT": float(rng.gamma(2.0, 900.0)),
             "CURRENCY": "MXN", "CARD_BIN": "411111", "CARD_BRAND": str(rng.choice(["VISA", "MASTERCARD"])),
             "CARD_TYPE": str(rng.choice(catalog.CARD_TYPES)), "CARD_COUNTRY": str(rng.choice(["MX", "US"])),
             "CHANNEL": str(rng.choice(catalog.CHANNELS)), "MCI_MSI_TYPE": "CIT", "NUM_ATTEMPTS_ORDER": 1,
             "STORED_CREDENTIAL": True, "BILLING_ADDRESS": True, "TRAVEL_PACKAGE": True}
        t0 = time.perf_counter()
        router.decide(p)
        lat.append((time.perf_counter() - t0) * 1000.0)
    return np.sort(np.asarray(lat[500:]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="an exported serving folder (default: the registry's promoted or newest version)")
    ap.add_argument("--calls", type=int, default=10_000)
    args = ap.parse_args()
    from smartrouter.models.serving import load_serving_model
    from smartrouter.routing import Router, load_routing_config
    from smartrouter.routing.model_holder import LoadedModel
    from smartrouter.routing.policy import rules_from_sources

    folder = model_folder(args.model)
    model = load_serving_model(folder)

    name = folder.parent.name if folder.name == "serving" else folder.name  # registry vN/serving or run models/<family>

    class Holder:
        current = LoadedModel(name, model, None, 0.0, 0.0)

    rules, _ = rules_from_sources(None)
    out = {}
    for label, recommend in (("joint (all configurations)", True), ("processor only", False)):
        cfg = load_routing_config(overrides={"experiment": {"treatment_share": 1.0}, "messages": {"recommend": recommend}})
        lat = latencies(Router(cfg, rules, Holder(), seed=1), args.calls)
        out[label] = lat
        print(f"{label:<28} model={name} ({model.family}): p50 {lat[len(lat) // 2] * 1000:.0f} us, "
              f"p99 {lat[int(len(lat) * 0.99)] * 1000:.0f} us over {len(lat)} decisions")
    t = Targets("bench_messages")
    joint = out["joint (all configurations)"]
    t.at_most("in-process decide p99, all configurations scored", float(joint[int(len(joint) * 0.99)]), 1.0, "ms")
    return t.report()


if __name__ == "__main__":
    raise SystemExit(main())
