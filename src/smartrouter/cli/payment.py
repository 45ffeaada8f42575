"""`smartrouter payment ID`: one order's attempts, the decision behind each, features, outcome and truth."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _payment(args: argparse.Namespace) -> int:
    from smartrouter import atomic
    from smartrouter.payment import render_html, render_text, story

    s = story(args.id, decisions_dirs=args.decisions_dir or (), with_features=not args.no_features)
    if args.html:
        atomic.write_text(args.html, render_html(s))
    if args.json:
        print(json.dumps(s, indent=1, default=str))
    else:
        print(render_text(s))
        if args.html:
            print(f"\nHTML: {args.html}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "payment", help="one payment, all its data: attempts, the decision behind each, features, outcome, truth",
        description="Everything about one order, given its ORDER_ID or any of its ATTEMPT_IDs: each attempt in order "
                    "with its routing log row, the service's decision (arm, source, model version, ranked scores, "
                    "reasons, propensity) from the decision log, the features at decision time recomputed by the "
                    "training code, the model's scores on them, the outcome, and on world data the truth on every "
                    "processor. Exit 2 for an unknown id.")
    p.add_argument("id", help="an order id (O...) or an attempt id (A...)")
    p.add_argument("--html", type=Path, default=None, metavar="FILE", help="also write a small HTML page")
    p.add_argument("--json", action="store_true", help="print the whole story as JSON")
    p.add_argument("--decisions-dir", dest="decisions_dir", action="append", default=[], metavar="DIR",
                   help="another decision-log folder to search (repeatable; the state folder's and the live loop's "
                        "are always searched)")
    p.add_argument("--no-features", dest="no_features", action="store_true",
                   help="skip recomputing the features (faster: no feature SQL over the 28-day history)")
    p.set_defaults(func=_payment)
