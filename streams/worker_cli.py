"""``driftline worker``: the Faust streaming worker.

Every flag has a ``DRIFTLINE_WORKER_*`` environment variable of the same
name (``--window-seconds`` -> ``DRIFTLINE_WORKER_WINDOW_SECONDS``); the flag wins.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass, fields
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


#: A flag's default is the WorkerOptions field of its name unless given here.
_FROM_OPTIONS: Any = object()


@dataclass(frozen=True)
class _Flag:
    """One valued ``driftline worker`` flag: ``--<name>``, read from ``DRIFTLINE_WORKER_<NAME>`` when not given.

    ``help`` may say ``{default}`` (formatted like an f-string field); ``type`` also reads the variable.
    """

    name: str
    help: str
    type: Callable[[str], Any] = str
    default: Any = _FROM_OPTIONS
    choices: tuple[str, ...] | None = None


_FLAGS = (
    _Flag("app-id", "the Kafka consumer group of the input topics (default {default})"),
    _Flag(
        "window-seconds",
        "window size for every model (default: the policy's monitoring.window_seconds, 60)",
        float,
    ),
    _Flag("lateness-seconds", "allowed lateness for every model (default: the policy's, 10)", float),
    _Flag(
        "idle-seconds",
        "after this long without events, a model's event clock follows the wall clock so its last "
        "window closes; 'never' to disable (default {default})",
        _optional_float,
    ),
    _Flag(
        "release-idle-seconds",
        "after this long without predictions, and once its windows are written, a model version's "
        "reference and score detectors leave memory, to be read back from the registry and the warehouse "
        "on its next event; 'never' to keep them (default {default})",
        _optional_float,
    ),
    _Flag("tick-seconds", "how often idle windows are checked (default {default})", float),
    _Flag("batch-size", "most messages polled at a time (default {default})", int),
    _Flag("batch-within-seconds", "longest wait to fill a poll (default {default})", float),
    _Flag(
        "max-poll-bytes",
        "about how many message bytes a poll takes, which bounds the memory of the messages "
        "waiting to be handled (default {default})",
        int,
    ),
    _Flag(
        "max-take-events",
        "events handled at once: a batch of messages is handled in parts of about this many "
        "events, which bounds its memory and how long its windows wait (default {default})",
        int,
    ),
    _Flag("max-future-seconds", "events further ahead of the clock go to the DLQ (default {default:g})", float),
    _Flag(
        "min-event-time-ms", "events before this epoch millisecond go to the DLQ (default {default}, 2000-01-01)", int
    ),
    _Flag(
        "baseline",
        "compare each version with its own reference profile (falling back to the champion's), "
        "or every version with the champion's (default version)",
        choices=("version", "champion"),
    ),
    _Flag("web-host", "web/metrics host (default {default})"),
    _Flag("web-port", "web port; /metrics serves Prometheus metrics (default {default})", int),
    _Flag("datadir", "Faust data directory (default STATE_DIR/worker/APP_ID)", default=None),
    _Flag("partitions", "partitions of topics the worker creates if missing (default {default})", int),
    _Flag("session-timeout-seconds", "Kafka consumer session timeout (default {default:g})", float),
    _Flag("index-ttl-hours", "how long predictions wait for their labels in memory (default {default:g})", float),
    _Flag(
        "index-max-entries",
        "predictions kept for the label join by all models together, oldest out first, "
        "about 300 bytes each (default {default}, about 60 MiB)",
        int,
    ),
    _Flag(
        "task",
        "what the labels grade (default: inferred per window)",
        default=None,
        choices=("classification", "regression"),
    ),
    _Flag(
        "raw-insert-rows",
        "while a backlog is read, raw predictions are inserted once about this many have "
        "gathered (else at once, or within a tick) (default {default})",
        int,
    ),
    _Flag(
        "raw-insert-bytes",
        "... or once the raw rows gathered hold about this many bytes (numbers, ids, categories), "
        "which bounds the memory of the raw inserts: up to three inserts' rows and tables are "
        "alive at once (default {default}, 16 MiB)",
        int,
    ),
)
#: Logging flags, listed by ``--help`` after the switches.
_LOGGING_FLAGS = (
    _Flag(
        "log-format", "log lines as JSON objects or text (default {default})", default="json", choices=("json", "text")
    ),
    _Flag("log-level", "log level (default {default})", default="info"),
)


def _add_flag(group: argparse._ArgumentGroup, flag: _Flag, options: WorkerOptions) -> None:
    default = getattr(options, flag.name.replace("-", "_")) if flag.default is _FROM_OPTIONS else flag.default
    extra: dict[str, Any] = {} if flag.type is str else {"type": flag.type}
    if flag.choices is not None:
        extra["choices"] = flag.choices
    group.add_argument(
        f"--{flag.name}", default=_env(flag.name, flag.type, default), help=flag.help.format(default=default), **extra
    )


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``driftline worker`` flags, in the ``worker`` group of ``parser``.

    >>> parser = argparse.ArgumentParser()
    >>> add_worker_arguments(parser)
    >>> args = parser.parse_args(["--batch-size", "10", "--no-raw"])
    >>> args.batch_size, args.write_raw, args.tick_seconds, args.log_format
    (10, False, 1.0, 'json')
    """
    d = WorkerOptions()
    g = parser.add_argument_group("worker")
    for flag in _FLAGS:
        _add_flag(g, flag, d)
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
    for flag in _LOGGING_FLAGS:
        _add_flag(g, flag, d)


def options_from_args(args: argparse.Namespace) -> WorkerOptions:
    """The worker's options from its parsed flags (each flag's destination is the field of its name)."""
    return WorkerOptions(**{f.name: getattr(args, f.name) for f in fields(WorkerOptions) if hasattr(args, f.name)})


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
