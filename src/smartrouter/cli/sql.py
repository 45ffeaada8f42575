"""`smartrouter sql "<query>"`: run Snowflake-dialect SQL against the configured warehouse."""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from smartrouter import warehouse
from smartrouter.cli.world import one_line_errors
from smartrouter.errors import ConfigError

FORMATS = ("table", "csv", "json")
DEFAULT_LIMIT = 1000


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sql",
        help="run a Snowflake SQL query (or a query file's name) against the configured warehouse",
        description="Run Snowflake-dialect SQL against the local world or Snowflake. QUERY is SQL text, the name "
        "of a file in src/smartrouter/sql/ (e.g. attempts_overview), or - to read it from stdin.",
    )
    parser.add_argument("query", help='SQL text, e.g. "SELECT COUNT(*) FROM PAYMENT_ML.SOURCES.VW_ATHENA_PAYMENT_ATTEMPT"')
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    parser.add_argument(
        "--limit", type=int, default=DEFAULT_LIMIT, help=f"print at most N rows (default {DEFAULT_LIMIT}; 0 = all)"
    )
    one_line_errors(parser)
    parser.set_defaults(func=cmd_sql)


def fetch(query: str, limit: int) -> tuple[pd.DataFrame, bool]:
    """Rows of ``query`` (at most ``limit``; 0 = all) and whether more were left out."""
    if limit < 0:
        raise ConfigError(f"--limit {limit} must be 0 (all rows) or a positive number of rows")
    parts: list[pd.DataFrame] = []
    got = 0
    truncated = False
    batch = min(limit, warehouse.DEFAULT_BATCH_ROWS) if limit else warehouse.DEFAULT_BATCH_ROWS
    for frame in warehouse.iter_frames(query, batch_rows=batch):
        if limit and got >= limit:
            truncated = truncated or len(frame) > 0
            break
        take = frame.iloc[: limit - got] if limit else frame
        truncated = len(take) < len(frame)
        parts.append(take)
        got += len(take)
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    return frame, truncated


def cmd_sql(args: argparse.Namespace) -> int:
    query = sys.stdin.read() if args.query == "-" else args.query
    frame, truncated = fetch(query, args.limit)
    if args.format == "csv":
        frame.to_csv(sys.stdout, index=False)
    elif args.format == "json":
        sys.stdout.write(frame.to_json(orient="records", date_format="iso", lines=False) + "\n")
    else:
        if frame.empty and not len(frame.columns):
            print("(no result)")
        else:
            with pd.option_context("display.max_columns", None, "display.width", 200, "display.max_colwidth", 60):
                print(frame.to_string(index=False))
            print(f"({len(frame):,} row{'s' if len(frame) != 1 else ''})")
    if truncated:
        print(f"smartrouter sql: showing the first {args.limit:,} rows; pass --limit 0 for all", file=sys.stderr)
    return 0
