"""``driftline worker``: the Faust streaming worker.

Every flag has a ``DRIFTLINE_WORKER_*`` environment variable of the same
name (``--window-seconds`` -> ``DRIFTLINE_WORKER_WINDOW_SECONDS``); the flag wins.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

from driftline.settings import Settings
from driftline.streams.worker import WorkerOptions


def _env(name: str, cast: Callable[[str], Any], default: Any) -> Any:
    raw = os.environ.get(f"DRIFTLINE_WORKER_{name.upper().replace('-', '_')}")
    if raw is None or raw == "":
        return default
    if raw.lower() in ("none", "off") and default is None:
        return None
    return cast(raw)


def _optional_float(raw: str) -> float | None:
    return None if raw.lower() in ("none", "off", "never") else float(raw)


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    d = WorkerOptions()
    g = parser.add_argument_group("worker")
    g.add_argument(
        "--app-id",
        default=_env("app-id", str, d.app_id),
        help=f"the Kafka consumer group of the input topics (default {d.app_id})",
    )
    g.add_argument(
        "--window-seconds",
        type=float,
        default=_env("window-seconds", float, None),
        help="window size for every model (default: the policy's monitoring.window_seconds, 60)",
    )
    g.add_argument(
        "--lateness-seconds",
        type=float,
        default=_env("lateness-seconds", float, None),
        help="allowed lateness for every model (default: the policy's, 10)",
    )
    g.add_argument(
        "--idle-seconds",
        type=_optional_float,
        default=_env("idle-seconds", _optional_float, d.idle_seconds),
        help="after this long without events, a model's event clock follows the wall clock so its last "
        f"window closes; 'never' to disable (default {d.idle_seconds})",
    )
    g.add_argument(
        "--release-idle-seconds",
        type=_optional_float,
        default=_env("release-idle-seconds", _optional_float, d.release_idle_seconds),
        help="after this long without predictions, and once its windows are written, a model version's "
        "reference and score detectors leave memory, to be read back from the registry and the warehouse "
        f"on its next event; 'never' to keep them (default {d.release_idle_seconds})",
    )
    g.add_argument(
        "--tick-seconds",
        type=float,
        default=_env("tick-seconds", float, d.tick_seconds),
        help=f"how often idle windows are checked (default {d.tick_seconds})",
    )
    g.add_argument(
        "--batch-size",
        type=int,
        default=_env("batch-size", int, d.batch_size),
        help=f"most messages polled at a time (default {d.batch_size})",
    )
    g.add_argument(
        "--batch-within-seconds",
        type=float,
        default=_env("batch-within-seconds", float, d.batch_within_seconds),
        help=f"longest wait to fill a poll (default {d.batch_within_seconds})",
    )
    g.add_argument(
        "--max-poll-bytes",
        type=int,
        default=_env("max-poll-bytes", int, d.max_poll_bytes),
        help="about how many message bytes a poll takes, which bounds the memory of the messages "
        f"waiting to be handled (default {d.max_poll_bytes})",
    )
    g.add_argument(
        "--max-take-events",
        type=int,
        default=_env("max-take-events", int, d.max_take_events),
        help="events handled at once: a batch of messages is handled in parts of about this many "
        f"events, which bounds its memory and how long its windows wait (default {d.max_take_events})",
    )
    g.add_argument(
        "--max-future-seconds",
        type=float,
        default=_env("max-future-seconds", float, d.max_future_seconds),
        help=f"events further ahead of the clock go to the DLQ (default {d.max_future_seconds:g})",
    )
    g.add_argument(
        "--min-event-time-ms",
        type=int,
        default=_env("min-event-time-ms", int, d.min_event_time_ms),
        help=f"events before this epoch millisecond go to the DLQ (default {d.min_event_time_ms}, 2000-01-01)",
    )
    g.add_argument(
        "--baseline",
        choices=("version", "champion"),
        default=_env("baseline", str, d.baseline),
        help="compare each version with its own reference profile (falling back to the champion's), "
        "or every version with the champion's (default version)",
    )
    g.add_argument(
        "--web-host", default=_env("web-host", str, d.web_host), help=f"web/metrics host (default {d.web_host})"
    )
    g.add_argument(
        "--web-port",
        type=int,
        default=_env("web-port", int, d.web_port),
        help=f"web port; /metrics serves Prometheus metrics (default {d.web_port})",
    )
    g.add_argument(
        "--datadir", default=_env("datadir", str, None), help="Faust data directory (default STATE_DIR/worker/APP_ID)"
    )
    g.add_argument(
        "--partitions",
        type=int,
        default=_env("partitions", int, d.partitions),
        help=f"partitions of topics the worker creates if missing (default {d.partitions})",
    )
    g.add_argument(
        "--session-timeout-seconds",
        type=float,
        default=_env("session-timeout-seconds", float, d.session_timeout_seconds),
        help=f"Kafka consumer session timeout (default {d.session_timeout_seconds:g})",
    )
    g.add_argument(
        "--index-ttl-hours",
        type=float,
        default=_env("index-ttl-hours", float, d.index_ttl_hours),
        help=f"how long predictions wait for their labels in memory (default {d.index_ttl_hours:g})",
    )
    g.add_argument(
        "--index-max-entries",
        type=int,
        default=_env("index-max-entries", int, d.index_max_entries),
        help="predictions kept per model for the label join, about 300 bytes each "
        f"(default {d.index_max_entries}, about 60 MiB)",
    )
    g.add_argument(
        "--task",
        choices=("classification", "regression"),
        default=_env("task", str, None),
        help="what the labels grade (default: inferred per window)",
    )
    g.add_argument(
        "--raw-insert-rows",
        type=int,
        default=_env("raw-insert-rows", int, d.raw_insert_rows),
        help="while a backlog is read, raw predictions are inserted once about this many have "
        f"gathered (else at once, or within a tick) (default {d.raw_insert_rows})",
    )
    g.add_argument(
        "--no-raw",
        dest="write_raw",
        action="store_false",
        default=True,
        help="do not write raw predictions and labels to ClickHouse",
    )
    g.add_argument(
        "--keep-late-events",
        action="store_true",
        default=False,
        help="also send each message with late rows to the DLQ and rejected_events, reason late_event "
        "(late rows are always counted in drift_reports.late_events and /metrics)",
    )
    g.add_argument(
        "--health",
        action="store_true",
        help="print the health of the worker running at --web-host:--web-port (warehouse, background "
        "threads, fetch paused) as JSON and exit: 0 when healthy, 1 when not, 2 when it does not answer",
    )
    g.add_argument(
        "--log-format",
        choices=("json", "text"),
        default=_env("log-format", str, "json"),
        help="log lines as JSON objects or text (default json)",
    )
    g.add_argument("--log-level", default=_env("log-level", str, "info"), help="log level (default info)")


def options_from_args(args: argparse.Namespace) -> WorkerOptions:
    return WorkerOptions(
        app_id=args.app_id,
        window_seconds=args.window_seconds,
        lateness_seconds=args.lateness_seconds,
        idle_seconds=args.idle_seconds,
        release_idle_seconds=args.release_idle_seconds,
        tick_seconds=args.tick_seconds,
        batch_size=args.batch_size,
        batch_within_seconds=args.batch_within_seconds,
        max_poll_bytes=args.max_poll_bytes,
        max_take_events=args.max_take_events,
        max_future_seconds=args.max_future_seconds,
        min_event_time_ms=args.min_event_time_ms,
        baseline=args.baseline,
        web_host=args.web_host,
        web_port=args.web_port,
        datadir=args.datadir,
        partitions=args.partitions,
        session_timeout_seconds=args.session_timeout_seconds,
        index_ttl_hours=args.index_ttl_hours,
        index_max_entries=args.index_max_entries,
        write_raw=args.write_raw,
        raw_insert_rows=args.raw_insert_rows,
        task=args.task,
        keep_late_events=args.keep_late_events,
    )


def health_problems(report: dict[str, Any]) -> list[str]:
    """What is wrong in a worker's ``/health`` report (empty: healthy).

    >>> ok = {"warehouse": {"up": True}, "threads": {"driftline-models": {"state": "running", "restarts": 1,
    ...       "last_error": "RuntimeError: x"}}, "fetch_paused": False, "failed": False}
    >>> health_problems(ok)
    []
    >>> health_problems({**ok, "warehouse": {"up": False, "outage_seconds": 61.5},
    ...                  "threads": {"driftline-models": {"state": "restarting", "last_error": "OSError: gone"}}})
    ['warehouse unreachable for 61.5 s', 'thread driftline-models restarting (OSError: gone)']
    """
    problems = []
    if report.get("failed"):
        problems.append("the worker has failed and is stopping")
    warehouse = report.get("warehouse", {})
    if not warehouse.get("up", True):
        problems.append(f"warehouse unreachable for {warehouse.get('outage_seconds', 0):g} s")
    for name, thread in sorted(report.get("threads", {}).items()):
        if thread.get("state") not in ("running", "idle"):
            problems.append(f"thread {name} {thread.get('state')} ({thread.get('last_error') or 'no error'})")
    return problems


def print_health(host: str, port: int) -> int:
    """``driftline worker --health``: the running worker's report, and an exit code for scripts and probes."""
    import json
    import sys
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=5) as r:
            report = json.loads(r.read())
    except (OSError, urllib.error.URLError, ValueError) as exc:
        print(f"no worker answers at http://{host}:{port}/health: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2, sort_keys=True))
    problems = health_problems(report)
    for problem in problems:
        print(f"unhealthy: {problem}", file=sys.stderr)
    return 1 if problems else 0


def handle(args: argparse.Namespace, settings: Settings) -> int:
    if getattr(args, "health", False):
        return print_health(args.web_host, args.web_port)
    from driftline.streams.app import run_worker
    from driftline.streams.observability import configure_logging

    level = "DEBUG" if getattr(args, "verbose", False) else args.log_level.upper()
    configure_logging(args.log_format, level)
    # Faust and aiokafka are chatty at INFO; their warnings still show
    import logging

    if level != "DEBUG":
        for name in ("faust", "aiokafka", "mode"):
            logging.getLogger(name).setLevel(logging.WARNING)
    return run_worker(settings, options_from_args(args), loglevel=args.log_level)


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "worker",
        help="the streaming worker: windowed drift, performance and latency from Kafka into ClickHouse",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_worker_arguments(parser)
    parser.set_defaults(handler=handle)
