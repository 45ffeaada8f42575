"""`smartrouter` command line: the home of every command.

Each module in this package that defines ``register(subparsers)`` adds one command (its
module name), so commands are added without touching this file.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from smartrouter.errors import SmartrouterError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smartrouter",
        description="ML payment routing: world, warehouse SQL, daily runs, models, service.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except SmartrouterError as exc:
        print(f"smartrouter {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"smartrouter {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
