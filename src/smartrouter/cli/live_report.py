"""`smartrouter live-report [--json]`: the live loop's report (reports/live/index.html) over every live day."""

from __future__ import annotations

import argparse

from smartrouter.cli.world import one_line_errors


def register(subparsers: argparse._SubParsersAction) -> None:
    from smartrouter.live_report import add_report_arguments

    p = subparsers.add_parser(
        "live-report",
        help="the live loop's report: per day and arm, true approval vs the static rules and the oracle-best",
        description="Builds reports/live/index.html (listed on reports/index.html) from the live days of the local "
                    "world: observed and true approval per day and arm, share of the oracle's gain, outages, "
                    "off-policy estimates from the service's logs beside their truth. `smartrouter live` writes it "
                    "at the end of a loop. Exit 2 on a missing or unreadable live folder.",
    )
    one_line_errors(p)
    add_report_arguments(p)
    p.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> int:
    from smartrouter.live_report import main_report

    return main_report(args)
