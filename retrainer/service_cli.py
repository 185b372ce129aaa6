"""``driftline retrainer`` (the retraining service) and ``driftline retrain`` (a manual request).

Handlers have the signature ``handler(args, settings) -> int``. Exit code 2
means the service or the request could not start (bad policy, unknown
model, unreachable warehouse); the reason is one line on stderr.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from driftline.streams.records import RetrainRequest

if TYPE_CHECKING:
    from driftline.settings import Settings

REASONS = ("manual", "drift", "performance", "schedule")
BAD_INPUT = 2


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    service = subparsers.add_parser("retrainer", help="the retraining service: consumes retrain requests")
    service.add_argument("--group-id", default="driftline-retrainer", help="Kafka consumer group (default %(default)s)")
    service.add_argument("--once", action="store_true", help="handle the requests waiting now, then exit")
    service.add_argument("--max-requests", type=_positive_int, metavar="N", help="exit after N requests")
    service.add_argument("--idle-exit", type=float, metavar="SECONDS", help="exit after SECONDS without a request")
    service.add_argument("--poll-seconds", type=float, default=0.5, help=argparse.SUPPRESS)
    service.set_defaults(handler=_run_service)

    retrain = subparsers.add_parser("retrain", help="ask the retrainer for a new version of a model")
    retrain.add_argument("--model", required=True, help="model id")
    retrain.add_argument("--version", help="the version the request is about (default: the champion)")
    retrain.add_argument("--reason", choices=REASONS, default="manual", help="the request's reason (default manual)")
    retrain.add_argument("--requested-by", help="who asks (default: the OS user)")
    retrain.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait up to SECONDS for the retrainer's outcome (default: do not wait)",
    )
    retrain.set_defaults(handler=_retrain)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _fail(verb: str, exc: BaseException) -> int:
    print(f"driftline {verb}: {exc}", file=sys.stderr)
    return BAD_INPUT


# -- driftline retrainer ---------------------------------------------------------------
def _run_service(args: argparse.Namespace, settings: Settings) -> int:
    from confluent_kafka import KafkaException

    from driftline.retrainer.policy import PolicyError
    from driftline.retrainer.registry import RegistryError
    from driftline.retrainer.service import RetrainerOptions, RetrainerService
    from driftline.streams.warehouse import WarehouseError

    options = RetrainerOptions(
        group_id=args.group_id,
        once=args.once,
        max_requests=args.max_requests,
        idle_exit_seconds=args.idle_exit,
        poll_seconds=args.poll_seconds,
    )
    try:
        service = RetrainerService(settings, options)
    except (PolicyError, RegistryError, WarehouseError, KafkaException) as exc:
        return _fail("retrainer", exc)

    def stop(signum: int, frame: Any) -> None:
        service.stop()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        summary = service.run()
    except KafkaException as exc:
        return _fail("retrainer", exc)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(f"retrainer: {summary.counts_line()}; {summary.stopped_because}")
    return 0


# -- driftline retrain ------------------------------------------------------------------
def _retrain(args: argparse.Namespace, settings: Settings) -> int:
    from confluent_kafka import KafkaException

    from driftline.retrainer.registry import CHAMPION, Registry, RegistryError, validate_name, version_number
    from driftline.retrainer.registry.store import default_actor
    from driftline.retrainer.triggers import manual_request
    from driftline.streams.warehouse import Warehouse, WarehouseError

    try:
        model_id = validate_name(args.model)
        registry = Registry.from_settings(settings)
        if args.version is not None:
            version = registry.get(model_id, version_number(args.version)).version
        else:
            champion = registry.alias(model_id, CHAMPION)
            if champion is None:
                raise RegistryError(f"model {model_id!r} has no champion; name the version with --version")
            version = champion.version
        request = manual_request(model_id, version, time.time_ns() // 1_000_000, args.requested_by or default_actor())
        if args.reason != "manual":
            request = replace(request, reason=args.reason)
        warehouse = Warehouse.from_settings(settings, migrate=True)
    except (RegistryError, WarehouseError, ValueError) as exc:
        return _fail("retrain", exc)
    try:
        # recorded first, stamped with the request time: the retrainer's later statuses always win
        warehouse.upsert_retrain_request(request, "requested", updated_at=request.requested_at)
        try:
            _publish_request(request, settings)
        except (KafkaException, RuntimeError) as exc:
            warehouse.upsert_retrain_request(request, "failed", f"could not be published: {exc}")
            return _fail("retrain", exc)
        print(
            f"requested a retrain of {model_id} (version {version}, reason {request.reason}): "
            f"request {request.request_id}"
        )
        if args.wait > 0:
            return _wait_for_outcome(warehouse, request, args.wait)
        return 0
    except WarehouseError as exc:
        return _fail("retrain", exc)
    finally:
        warehouse.close()


def _publish_request(request: RetrainRequest, settings: Settings) -> None:
    from driftline.streams import kafka

    kafka.ensure_topics(settings, ["retrain-requests"])
    try:
        kafka.publish_confirmed(
            kafka.producer(settings), settings.topic("retrain-requests"), [(request.model_id, request)], timeout=30
        )
    except kafka.DeliveryError as exc:
        raise RuntimeError("; ".join(exc.errors) or "the request was not delivered within 30 s") from exc


def _wait_for_outcome(warehouse: Any, request: RetrainRequest, seconds: float) -> int:
    from driftline.retrainer.service import FINAL_STATUSES

    deadline = time.monotonic() + seconds
    row: dict[str, Any] = {}
    while time.monotonic() < deadline:
        row = warehouse.retrain_request_status(request.request_id) or {}
        status = row.get("status")
        if status in FINAL_STATUSES:
            detail = f"version {row['registered_version']}" if status == "registered" else (row.get("error") or "")
            print(f"request {request.request_id}: {status}" + (f": {detail}" if detail else ""))
            return 0 if status == "registered" else 1
        time.sleep(0.5)
    print(f"request {request.request_id}: still {row.get('status') or 'unseen'} after {seconds:g} s", file=sys.stderr)
    return 1
