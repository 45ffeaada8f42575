"""`smartrouter run`: the daily job (all stage notebooks, one run folder, reports, lineage)."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from smartrouter.errors import ConfigError
from smartrouter.pipeline import BASE_PROFILE, PROFILES_FILE, load_profiles

EXIT_OK, EXIT_FAILED = 0, 1  # 2: bad input, 3: another run holds the lock (see errors / pipeline.RunLocked)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "run",
        help="run the daily pipeline (stage notebooks with papermill)",
        description="Run the stage notebooks in order into runs/<run_id>/, render reports, record lineage. "
                    "Exit codes: 0 succeeded, 1 a stage failed, 2 bad input, 3 another run is in progress.",
    )
    try:
        names = ", ".join(load_profiles())
    except ConfigError:  # a broken profiles file is reported when `run` reads it, not by every command
        names = "see profiles.toml"
    p.add_argument("--profile", default=BASE_PROFILE,
                   help=f"parameter profile from profiles.toml ({names}; default {BASE_PROFILE})")
    p.add_argument("--profiles", dest="profiles_file", type=Path, default=None, metavar="FILE",
                   help=f"read profiles from FILE instead of the package's {PROFILES_FILE.name} (same layout)")
    p.add_argument("--as-of", dest="as_of", metavar="YYYY-MM-DD", default=None,
                   help="use data before this UTC day (backfills); default today")
    p.add_argument("--stages", default=None, metavar="01,02",
                   help="run only these stages (names or numbers, comma separated)")
    p.add_argument("-p", "--param", dest="params", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one parameter (repeatable): run-level ones as run.KEY (-p run.lookback_days=7; "
                        "they reach every stage), stage ones as STAGE.KEY (-p 03_train.dnn_epochs=3), runner "
                        "settings as runner.KEY; names and types are checked against the notebooks first")
    p.add_argument("--no-reports", dest="render", action="store_false", help="skip the HTML reports")
    p.add_argument("--reason", default=None, metavar="TEXT",
                   help="why this run is started, kept in its manifest (default 'scheduled'; the drift check sets it)")
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
                              overrides=args.params, echo=echo, render=args.render,
                              profiles_file=args.profiles_file, reason=args.reason)
    if not result.ok:
        print(f"smartrouter run: error: run {result.run_id} failed at {result.failed_stage}: {result.error}; "
              f"open {result.run_dir / (str(result.failed_stage) + '.ipynb')} to see the failing cell",
              file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK
