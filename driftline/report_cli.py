"""``driftline report``: write the HTML report of one model.

Exit codes: 0 written, 2 bad input (an invalid model id), 1 the warehouse or
the registry could not be read; the reason is one line on stderr.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from driftline.redaction import redact

if TYPE_CHECKING:
    from driftline.settings import Settings


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    report = subparsers.add_parser(
        "report",
        help="write a self-contained HTML report of one model",
        description="Drift per feature and window, prediction drift, performance, latency, DLQ reasons, the "
        "retraining timeline and each version's lineage, in one HTML file that needs no network.",
    )
    report.add_argument("--model", required=True, help="model id")
    report.add_argument("--out", help="output file (default: driftline-report-MODEL.html)")
    report.add_argument(
        "--days",
        type=float,
        default=7.0,
        help="days of windows to show, back from the model's latest window (default 7; 0 for all)",
    )
    report.set_defaults(handler=_report)


def _report(args: argparse.Namespace, settings: Settings) -> int:
    from driftline.report import write_report
    from driftline.retrainer.registry import InvalidNameError, RegistryError
    from driftline.streams.warehouse import WarehouseError

    out = args.out or f"driftline-report-{args.model}.html"
    try:
        path = write_report(settings, args.model, out, days=args.days if args.days > 0 else None)
    except InvalidNameError as exc:
        print(f"driftline report: {redact(exc)}", file=sys.stderr)
        return 2
    except (WarehouseError, RegistryError, OSError) as exc:
        print(f"driftline report: {redact(exc)}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0
