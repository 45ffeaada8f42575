"""`smartrouter world build|ensure|summary|info|advance`: the local synthetic world (and its live days)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from typing import Any

import pandas as pd

from smartrouter import catalog, warehouse
from smartrouter.config import load_settings
from smartrouter.errors import ConfigError, WarehouseError


class _Parser(argparse.ArgumentParser):
    """Bad arguments: one line on stderr and exit 2 (argparse's usage dump is noise here)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        one_line_errors(self)(message)


def one_line_errors(parser: argparse.ArgumentParser):  # noqa: ANN201
    """Make ``parser`` report bad arguments as one line + exit 2 instead of usage + error."""

    def error(message: str) -> None:
        parser.exit(2, f"{parser.prog}: error: {message}; see `{parser.prog} --help`\n")

    parser.error = error  # type: ignore[method-assign]
    return error


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("world", help="build and inspect the local synthetic payments world")
    one_line_errors(parser)
    sub = parser.add_subparsers(dest="world_command", metavar="ACTION", parser_class=_Parser)
    sub.required = True

    build = sub.add_parser("build", help="(re)generate the world into the local warehouse")
    _add_params(build)
    build.set_defaults(func=cmd_build)

    ensure = sub.add_parser("ensure", help="build the default world only if none is there")
    ensure.add_argument("--quiet", action="store_true", help="no progress bar")
    ensure.set_defaults(func=cmd_ensure, profile="default", days=None, per_day=None, seed=None, end=None, processors=None,
                        truth=None)

    summary = sub.add_parser("summary", help="rows, dates, approval, Amex rule and PROCESSING counts (via SQL)")
    summary.add_argument("--json", action="store_true", help="print JSON instead of tables")
    summary.set_defaults(func=cmd_summary)

    info = sub.add_parser("info", help="print the world.json the local world was built from")
    info.set_defaults(func=cmd_info)

    adv = sub.add_parser("advance", help="simulate the next days, each attempt routed by the routing service")
    adv.add_argument("--days", type=_whole_number, default=1, help="days to simulate (default 1)")
    adv.add_argument("--scenario", help="scenario TOML file, or the name of one in scenarios/ (default: none)")
    where = adv.add_mutually_exclusive_group()
    where.add_argument("--url", help="the running service (default: http://SMARTROUTER_HOST:SMARTROUTER_PORT)")
    where.add_argument("--in-process", action="store_true", help="route with the service's handlers in this process")
    adv.add_argument("--concurrency", type=_whole_number, default=8, help="HTTP requests in flight (default 8)")
    adv.add_argument("--slice-seconds", type=float, default=None,
                     help="simulated seconds routed before their outcomes are reported (default 60)")
    adv.add_argument("--quiet", action="store_true", help="only the summary line per day")
    adv.set_defaults(func=cmd_advance)


def _whole_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    return value


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date; use YYYY-MM-DD") from None


def _add_params(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="default", help="default (84 days x 10,500) or small (14 x 2,000)")
    parser.add_argument("--days", type=_whole_number, help="days of history")
    parser.add_argument("--per-day", type=_whole_number, help="payment attempts per day")
    parser.add_argument("--seed", type=_whole_number, help="random seed (same seed -> identical tables)")
    parser.add_argument("--end", type=_date, help="last day included, YYYY-MM-DD (default: yesterday, UTC)")
    parser.add_argument("--processors", help=f"comma-separated processors (default: {','.join(catalog.PROCESSORS)})")
    parser.add_argument("--truth", help="the truth model: default, or interactions (adds hidden attribute x attribute x "
                                        "processor terms; README 'A world with interactions')")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def params_from_args(args: argparse.Namespace) -> Any:
    """WorldParams from the CLI options (profile + overrides), validated; ConfigError if invalid."""
    from smartrouter.world import PROFILES

    if args.profile not in PROFILES:
        raise ConfigError(f"unknown world profile {args.profile!r}; choose from {', '.join(PROFILES)}")
    overrides: dict[str, Any] = {}
    for name in ("days", "per_day", "seed", "end", "truth"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    if getattr(args, "processors", None):
        procs = tuple(p.strip().upper() for p in args.processors.split(",") if p.strip())
        overrides["processors"] = procs
        late = PROFILES[args.profile]().late_processor
        if late is not None and late not in procs:  # leaving the newcomer out means: no newcomer
            overrides["late_processor"] = None
    params = PROFILES[args.profile](**overrides)
    params.validate()
    return params


def _build(params: Any, quiet: bool) -> warehouse.WorldSummary:
    from smartrouter.world import World

    settings = load_settings()
    summary = warehouse.write_world(World(params), settings, progress=not quiet)
    print(
        f"built world: {summary.attempts:,} attempts over {summary.days} days "
        f"({summary.start[:10]} .. {summary.params.get('end', summary.end[:10])}, truth {params.truth}) "
        f"in {summary.build_seconds:.1f} s -> {summary.db_path}"
    )
    return summary


def cmd_build(args: argparse.Namespace) -> int:
    _build(params_from_args(args), args.quiet)
    return 0


def cmd_ensure(args: argparse.Namespace) -> int:
    settings = load_settings()
    if not settings.is_local:
        print("warehouse is Snowflake (SMARTROUTER_WAREHOUSE=snowflake): no local world needed")
        return 0
    path = warehouse.db_path(settings)
    if path.exists():
        try:
            with warehouse.connect(settings):
                pass
        except WarehouseError as exc:
            if "corrupt" not in str(exc):  # locked or in use: not ours to replace
                raise
            print(f"{exc}\nrebuilding the default world")
            _build(params_from_args(args), args.quiet)
            return 0
        age = warehouse.world_age_hours(settings) or 0.0
        try:
            info = warehouse.load_world_info(settings)
            what = f"{info['rows'].get(catalog.ATTEMPTS_VIEW, 0):,} attempts, {info['first_day']} .. {info['last_day']}"
            what += f", truth {info['params'].get('truth', 'default')}"
        except (WarehouseError, KeyError):
            what = "no world.json"
        print(f"local world is there: {path} ({what}), built {_age(age)} ago; `make world` rebuilds it")
        return 0
    print(f"no local world at {path}: building the default world")
    _build(params_from_args(args), args.quiet)
    return 0


def _age(hours: float) -> str:
    if hours < 1:
        return f"{hours * 60:.0f} min"
    if hours < 48:
        return f"{hours:.1f} h"
    return f"{hours / 24:.1f} days"


def world_summary(settings: Any = None) -> dict[str, pd.DataFrame]:
    """The summary tables (counts, overview, per processor), each from one SQL file."""
    with warehouse.connect(settings) as conn:
        return {
            name: warehouse.query_frame(name, conn=conn)
            for name in ("table_counts", "attempts_overview", "approval_by_processor")
        }


def cmd_summary(args: argparse.Namespace) -> int:
    frames = world_summary()
    counts, overview, procs = frames["table_counts"], frames["attempts_overview"], frames["approval_by_processor"]
    o = overview.iloc[0]
    late = procs.sort_values("FIRST_DAY").iloc[-1] if len(procs) else None
    adyen = procs[procs["PROCESSOR"] == "ADYEN"]
    if args.json:
        out = {
            "rows": dict(zip(counts["TABLE_NAME"], counts["ROW_COUNT"].astype(int))),
            "overview": json.loads(overview.to_json(orient="records", date_format="iso"))[0],
            "processors": json.loads(procs.to_json(orient="records", date_format="iso")),
        }
        print(json.dumps(out, indent=2, default=str))
        return 0
    print("rows per table")
    print(counts.to_string(index=False, formatters={"ROW_COUNT": "{:,}".format}))
    print()
    print(f"date range       {o['FIRST_CREATED_AT']} .. {o['LAST_CREATED_AT']} ({o['DAYS']} days)")
    print(f"attempts         {o['ATTEMPTS']:,} ({o['ORDERS']:,} orders)")
    print(f"approval         {o['APPROVAL_RATE']:.2%} of all attempts, {o['LABELLED_APPROVAL_RATE']:.2%} of labelled")
    print(f"PROCESSING       {o['PROCESSING']:,} attempts (excluded from labels)")
    print(f"Amex rule        {o['AMEX_RULE_VIOLATIONS']:,} violations (Amex card off AMEX, or AMEX with another brand)")
    if len(adyen):
        print(f"ADYEN first day  {adyen.iloc[0]['FIRST_DAY']}")
    elif late is not None:
        print("ADYEN first day  (ADYEN has no attempts)")
    print()
    print("per processor")
    print(procs.to_string(index=False, formatters={"APPROVAL_RATE": "{:.2%}".format, "ATTEMPTS": "{:,}".format}))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    info = warehouse.load_world_info()
    json.dump(info, sys.stdout, indent=2, sort_keys=True, default=str)
    print()
    return 0


def resolve_scenario_path(text: str) -> Any:
    """A scenario file: the path given, else scenarios/<text>(.toml); ScenarioError if neither exists."""
    from pathlib import Path

    from smartrouter.world.scenario import SCENARIO_DIR, ScenarioError

    for path in (Path(text), SCENARIO_DIR / text, SCENARIO_DIR / f"{text}.toml"):
        if path.is_file():
            return path
    shipped = ", ".join(sorted(p.stem for p in SCENARIO_DIR.glob("*.toml")))
    raise ScenarioError(f"scenario {text!r} is neither a file nor one of the shipped scenarios ({shipped}); "
                        "pass a TOML file path or a shipped name")


def cmd_advance(args: argparse.Namespace) -> int:
    from smartrouter.world import live
    from smartrouter.world.scenario import load_scenario

    settings = load_settings()
    if args.days < 1:
        raise ConfigError(f"--days {args.days} must be >= 1")
    if args.concurrency < 1:
        raise ConfigError(f"--concurrency {args.concurrency} must be >= 1")
    scenario = load_scenario(resolve_scenario_path(args.scenario)) if args.scenario else None
    warehouse.load_world_params(settings)  # no world: one line before any service is contacted
    if args.in_process:
        client: Any = live.InProcessClient(settings)
        where = "in process"
    else:
        url = args.url or f"http://{settings.host}:{settings.port}"
        client = live.HttpClient(url, concurrency=args.concurrency)
        where = url
    quiet = args.quiet
    extra = {} if args.slice_seconds is None else {"slice_seconds": args.slice_seconds}
    print(f"advancing {args.days} day(s), routed by the service {where}"
          f"{f', scenario {scenario.name}' if scenario else ''}", flush=True)
    try:
        days = live.advance(settings, args.days, client, scenario,
                            progress=lambda line: (quiet and line.startswith(" ")) or print(line, flush=True), **extra)
    finally:
        client.close()
    total = sum(d.seconds for d in days)
    print(f"done: {len(days)} day(s), {sum(d.attempts for d in days):,} attempts in {total:.1f} s "
          f"({total / max(len(days), 1):.1f} s per simulated day) -> {live.live_dir(settings)}")
    return 0
