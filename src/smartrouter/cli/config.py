"""`smartrouter config`: print the effective settings and where each comes from."""

from __future__ import annotations

import argparse
import json

from smartrouter import config


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "config",
        help="print the effective settings (paths, warehouse, service); secrets are never printed",
        description=config.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    settings = config.load_settings()
    values = settings.public_dict()
    values["admin_token"] = "set" if settings.admin_token else "unset"
    if args.json:
        print(json.dumps(values, indent=2))
    else:
        width = max(len(k) for k in values)
        for key, value in values.items():
            print(f"{key:<{width}}  {value}")
    return 0
