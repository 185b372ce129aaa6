"""Telling others about registry changes.

A registry change is announced twice: a ``ModelEvent`` on the ``models`` topic
(the worker re-baselines, services reload the model) and a refreshed
``model_versions`` mirror in ClickHouse (dashboards). The retrainer service
and the ``driftline registry`` verbs share these functions.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from confluent_kafka import Producer

from driftline.retrainer.registry import Registry
from driftline.settings import Settings
from driftline.streams import kafka
from driftline.streams.codec import Codec
from driftline.streams.records import ModelEvent
from driftline.streams.warehouse import Warehouse


class AnnounceError(RuntimeError):
    """A ModelEvent that was not delivered to Kafka."""


def publish_model_events(
    producer: Producer,
    settings: Settings,
    events: Sequence[ModelEvent],
    *,
    codec: Codec | None = None,
    timeout: float = 10.0,
) -> None:
    """Publish ``events`` to ``models`` and wait until every one is delivered."""
    topic = settings.topic("models")
    try:
        kafka.publish_confirmed(producer, topic, [(e.model_id, e) for e in events], codec=codec, timeout=timeout)
    except kafka.DeliveryError as exc:
        raise AnnounceError(f"publishing {len(events)} model event(s) to {topic} failed: {exc}") from exc


def mirror_versions(registry: Registry, warehouse: Warehouse, model_id: str) -> int:
    """Refresh the ClickHouse ``model_versions`` rows of one model from the registry."""
    rows = registry.mirror_rows(model_id)
    warehouse.upsert_model_versions(rows)
    return len(rows)


def announce_from_cli(event: ModelEvent, settings: Settings) -> None:
    """The ``driftline registry`` publisher: the event to Kafka, then the mirror to ClickHouse.

    The registry change has been made when this runs; a failure here is
    reported loudly (the worker would not re-baseline) but does not undo it.
    """
    producer = kafka.producer(settings)
    try:
        publish_model_events(producer, settings, [event], timeout=15.0)
    except AnnounceError as exc:
        print(
            f"driftline registry: the registry changed, but {exc}; run the verb again to re-announce", file=sys.stderr
        )
        raise SystemExit(1) from exc
    try:
        registry = Registry.from_settings(settings)
        with Warehouse.from_settings(settings) as warehouse:
            mirror_versions(registry, warehouse, event.model_id)
    except Exception as exc:  # the mirror is for dashboards; the next change refreshes it
        print(f"driftline registry: warning: the model_versions mirror was not refreshed: {exc}", file=sys.stderr)
