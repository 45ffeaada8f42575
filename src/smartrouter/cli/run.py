"""`smartrouter run`: the daily job (all stage notebooks, one run folder, reports, lineage)."""

from __future__ import annotations

import argparse
import sys
import warnings

from smartrouter.pipeline import BASE_PROFILE, load_profiles

EXIT_OK, EXIT_FAILED = 0, 1  # 2: bad input, 3: another run holds the lock (see errors / pipeline.RunLocked)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "run",
        help="run the daily pipeline (stage notebooks with papermill)",
        description="Run the stage notebooks in order into runs/<run_id>/, render reports, record lineage. "
                    "Exit codes: 0 succeeded, 1 a stage failed, 2 bad input, 3 another run is in progress.",
    )
    p.add_argument("--profile", default=BASE_PROFILE,
                   help=f"parameter profile from profiles.toml ({', '.join(load_profiles())}; default {BASE_PROFILE})")
    p.add_argument("--as-of", dest="as_of", metavar="YYYY-MM-DD", default=None,
                   help="use data before this UTC day (backfills); default today")
    p.add_argument("--stages", default=None, metavar="01,02",
                   help="run only these stages (names or numbers, comma separated)")
    p.add_argument("-p", "--param", dest="params", action="append", default=[], metavar="STAGE.KEY=VALUE",
                   help="override one parameter, e.g. -p 01_extract_eda.lookback_days=7 (repeatable)")
    p.add_argument("--no-reports", dest="render", action="store_false", help="skip the HTML reports")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from smartrouter.pipeline import run_pipeline

    def echo(msg: str) -> None:
        print(msg, flush=True)

    with warnings.catch_warnings():
        # A stale lock taken over is worth one clear line, not a traceback-like warning.
        warnings.simplefilter("always", RuntimeWarning)
        warnings.showwarning = lambda m, *a, **k: print(f"smartrouter run: warning: {m}", file=sys.stderr)
        result = run_pipeline(profile=args.profile, as_of=args.as_of, select=args.stages,
                              overrides=args.params, echo=echo, render=args.render)
    if not result.ok:
        print(f"smartrouter run: error: run {result.run_id} failed at {result.failed_stage}: {result.error}; "
              f"open {result.run_dir / (str(result.failed_stage) + '.ipynb')} to see the failing cell",
              file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK
