"""Poison messages never take the worker down: real Kafka, the embedded ClickHouse, a SQLite registry.

- a message whose handling raises anything but a DecodeError is found by bisection, dead-lettered
  with reason ``internal_error`` and the exception's class and message, counted, and committed;
  the rest of its batch is processed as if it had never been there (in-process, below);
- events whose model id is a 1 MB string, lone surrogates and JSON nested thousands deep,
  interleaved with good traffic, end in the DLQ in a form that fits the broker's limit, and the
  good windows are those of a clean run (``driftline worker`` as a subprocess).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from worker_harness import T0, WINDOW_MS, WorkerEnv, assert_same_results, env, make_batch  # noqa: F401

from driftline.settings import Settings
from driftline.streams import kafka
from driftline.streams.app import build_service
from driftline.streams.codec import default_codec
from driftline.streams.records import LabelEvent, PredictionEvent
from driftline.streams.worker import Incoming, Replay, WorkerOptions

pytestmark = [pytest.mark.kafka, pytest.mark.warehouse]

BIG = 999_000  # characters of an oversized model id: its message fits the producer's 1,000,000 bytes, barely


class FailingReferences:
    """The real registry's references, except that looking up ``model_id`` raises: a bug that one
    message's content triggers, which no DecodeError covers."""

    def __init__(self, inner, model_id: str) -> None:
        self.inner, self.model_id = inner, model_id

    def get(self, model_id: str, version: str):
        if model_id == self.model_id:
            raise ZeroDivisionError(f"division by zero for a password=hunter2 of {model_id}")
        return self.inner.get(model_id, version)

    def knows_model(self, model_id: str) -> bool:
        if model_id == self.model_id:
            raise KeyError("no such thing")
        return self.inner.knows_model(model_id)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def _incoming(topic: str, values: list[bytes], start: int = 0) -> list[Incoming]:
    return [Incoming(topic, 0, start + i, b"k", v) for i, v in enumerate(values)]


def _dlq(settings: Settings, n: int, timeout: float = 30.0) -> list[kafka.Received]:
    return kafka.consume_records(settings, settings.topic("dlq"), n, timeout=timeout, decode=False)


def _service_and_events(
    env: WorkerEnv, model: str, n: int, references: type, unique: str
) -> tuple[Any, str, list[bytes]]:
    """A service in-process whose references fail for model ``boom``, and ``n`` encoded single events of ``model``."""
    version = env.register(model)
    options = WorkerOptions(app_id=f"app-{unique}", window_seconds=WINDOW_MS / 1000, lateness_seconds=0.0)
    service = build_service(env.settings, options)
    service.references = references(service.references, "boom")
    codec = default_codec()
    values = [
        codec.encode(
            PredictionEvent(
                f"e{i}",
                model,
                version,
                T0 + i * 5,
                numeric={"a": 0.1 * i, "b": 1.0},
                categorical={"region": "north"},
                prediction=0.5,
            )
        )
        for i in range(n)
    ]
    return service, version, values


def two_models(env: WorkerEnv, unique: str, windows: int) -> tuple[str, str, str, list[tuple[str, bytes]]]:
    """A model fed single events and one fed batches, registered alike, and their good traffic (_traffic)."""
    singles, batches = f"singles-{unique}", f"batches-{unique}"
    version = env.register(singles)
    assert env.register(batches) == version
    return singles, batches, version, _traffic(singles, batches, version, default_codec(), windows)


def start_half(e: WorkerEnv, unique: str, version: str, models: tuple[str, ...], good: list[bytes]) -> Any:
    """Register the models in ``e``, publish the first half of ``good``, start a worker and wait for
    its first windows (a fault then strikes while the worker runs); returns the worker."""
    assert all(e.register(m) == version for m in models)
    for value in good[: len(good) // 2]:
        e.publish_raw("predictions", "k", value)
    e.flush()
    worker = e.start_worker("w", f"outage-{unique}", idle_seconds="never")
    e.wait(lambda: e.windows_written() >= 2, 120, "the first windows")
    return worker


def clean_run(env: WorkerEnv, unique: str, windows: int) -> tuple[str, str, str, list[bytes], dict[str, Any]]:
    """``two_models``' traffic through a worker on the session's services: what a run must write."""
    singles, batches, version, good = two_models(env, unique, windows)
    for _, value in good:
        env.publish_raw("predictions", "k", value)
    env.flush()
    env.start_worker("clean", f"clean-{unique}", idle_seconds="never")
    env.wait(lambda: env.windows_written() >= 2 * windows, 120, "the clean run's windows")
    return singles, batches, version, [v for _, v in good], {m: env.snapshot(m) for m in (singles, batches)}


def test_a_message_whose_handling_raises_is_dead_lettered_alone_and_the_rest_processed(
    env: WorkerEnv, unique: str
) -> None:
    model = f"poison-{unique}"
    service, version, values = _service_and_events(env, model, 300, FailingReferences, unique)
    codec = default_codec()
    values[77] = codec.encode(PredictionEvent("x77", "boom", "1", T0 + 77 * 5, numeric={"a": 1.0}, prediction=0.5))
    values[150] = codec.encode(make_batch("boom", "1", T0, 10, 5))  # a batch whose handling raises
    # a lone surrogate, today a UnicodeEncodeError in the JSON decoder (else a DecodeError: a reason either way)
    values[200] = (
        b'{"type":"PredictionEvent","event_id":"\\ud800","model_id":"'
        + model.encode()
        + b'","model_version":"1","event_time":1735689600000,"prediction":0.5}'
    )
    values.append(
        codec.encode(PredictionEvent("next", model, version, T0 + WINDOW_MS, numeric={"a": 0.0}, prediction=0.5))
    )
    released = service.handle("predictions", _incoming("predictions", values)) + service.drain()

    good = 300 - 3
    assert env.count("predictions", "model_id = {m:String}", m=model) == good + 1
    rejected = env.query("SELECT offset, reason, detail FROM rejected_events FINAL ORDER BY offset")
    assert [r["offset"] for r in rejected] == [77, 150, 200]
    assert [r["reason"] for r in rejected[:2]] == ["internal_error", "internal_error"]
    assert rejected[0]["detail"].startswith("ZeroDivisionError: division by zero for a password=***")
    assert rejected[2]["reason"]  # internal_error or, once the codec refuses it cleanly, a decode reason
    # the window is that of the good events alone, and every message was released
    counts = env.query("SELECT DISTINCT n_current FROM drift_metrics FINAL WHERE model_id = {m:String}", m=model)
    assert counts == [{"n_current": good}]
    assert max(o.offset for o in released) == 299
    dlq = _dlq(env.settings, 3)
    assert [(m.headers["driftline-error"], m.headers.get("driftline-error-class")) for m in dlq[:2]] == [
        (b"internal_error", b"ZeroDivisionError"),
        (b"internal_error", b"ZeroDivisionError"),
    ]
    assert b"hunter2" not in dlq[0].headers["driftline-error-detail"]
    assert (
        service.metrics.value(
            "driftline_worker_poison_messages_total", topic="predictions", error_class="ZeroDivisionError"
        )
        == 2.0
    )
    assert service.metrics.value("driftline_worker_dlq_messages_total", reason="internal_error") >= 2.0
    service.outbox.close()


def test_a_label_whose_handling_raises_is_dead_lettered_alone(env: WorkerEnv, unique: str) -> None:
    model = f"labels-{unique}"
    env.register(model)
    service = build_service(env.settings, WorkerOptions(app_id=f"app-{unique}"))
    service.references = FailingReferences(service.references, "boom")
    codec = default_codec()
    labels = [LabelEvent(f"e{i}", model, T0 + i, 1.0) for i in range(20)]
    labels[5] = LabelEvent("x", "boom", T0, 1.0)
    service.handle("labels", _incoming("labels", [codec.encode(x) for x in labels]))
    service.drain()
    assert env.count("labels", "model_id = {m:String}", m=model) == 19
    assert env.query("SELECT offset, reason FROM rejected_events FINAL") == [{"offset": 5, "reason": "internal_error"}]
    service.outbox.close()


class BrokenReferences(FailingReferences):
    """A reference "profile" for ``model_id`` that the monitor cannot use: handling its events raises
    only once state is changing (the monitor's ingest), after validation passed."""

    def get(self, model_id: str, version: str):
        return object() if model_id == self.model_id else self.inner.get(model_id, version)


def _until_handled(service, topic: str, messages: list[Incoming]) -> tuple[list, int]:
    """Handle like the app: after a Replay, Kafka delivers the unacknowledged messages again (here all)."""
    for replays in range(10):
        try:
            return service.handle(topic, messages) + service.drain(), replays
        except Replay:
            continue
    raise AssertionError("still replaying after 10 deliveries")


def test_a_message_that_raises_while_state_changes_is_found_by_replays_and_the_rest_is_as_if_it_was_not_there(
    env: WorkerEnv, unique: str
) -> None:
    model = f"apply-{unique}"
    service, version, values = _service_and_events(env, model, 200, BrokenReferences, unique)
    codec = default_codec()
    values[40] = codec.encode(PredictionEvent("x40", "boom", "1", T0 + 200, numeric={"a": 1.0}, prediction=0.5))
    values[120] = codec.encode(make_batch("boom", "1", T0, 10, 5))
    values.append(
        codec.encode(PredictionEvent("next", model, version, T0 + WINDOW_MS, numeric={"a": 0.0}, prediction=0.5))
    )
    released, replays = _until_handled(service, "predictions", _incoming("predictions", values))

    # the part fails; its messages are applied one by one (the first bad one is poison); then the second
    assert replays == 3
    assert service.metrics.value("driftline_worker_replays_total") == 3.0
    rejected = env.query("SELECT offset, reason, detail FROM rejected_events FINAL ORDER BY offset")
    assert [(r["offset"], r["reason"]) for r in rejected] == [(40, "internal_error"), (120, "internal_error")]
    assert all(r["detail"].startswith("AttributeError: ") for r in rejected)
    assert env.count("predictions", "model_id = {m:String}", m=model) == 199
    assert env.count("predictions", "model_id = 'boom'") == 0
    counts = env.query("SELECT DISTINCT n_current FROM drift_metrics FINAL WHERE model_id = {m:String}", m=model)
    assert counts == [{"n_current": 198}]
    assert max(o.offset for o in released) == 199
    assert not service._suspects
    service.outbox.close()


# ---------------------------------------------------------------------------------------- through Kafka


def _traffic(
    singles: str, batches: str, version: str, codec, windows: int = 4, per_window: int = 200
) -> list[tuple[str, bytes]]:
    """Good messages, in event-time order: one model gets single events, the other batches of 50 (a
    model fed both is judged late by handling order, issue 11 finding 9, which is not this test's
    subject); then an event of each in the next window, which closes the last one by the watermark."""
    step = WINDOW_MS // per_window
    out: list[tuple[str, bytes]] = []
    for w in range(windows):
        start = T0 + w * WINDOW_MS
        for lo in range(0, per_window, 50):
            batch = make_batch(batches, version, start + lo * step, 50, step, seed=1000 * w + lo + 1, prefix=f"b{w}-")
            out.append(("batch", codec.encode(batch)))
            one = make_batch(singles, version, start + lo * step, 50, step, seed=1000 * w + lo + 2, prefix=f"s{w}-")
            for i in range(one.n):
                out.append(
                    (
                        "single",
                        codec.encode(
                            PredictionEvent(
                                one.event_ids[i],
                                singles,
                                version,
                                int(one.event_times[i]),
                                numeric={k: float(v[i]) for k, v in one.numeric.items()},
                                categorical={k: v[i] for k, v in one.categorical.items()},
                                prediction=float(one.predictions[i]),
                            )
                        ),
                    )
                )
    for model in (batches, singles):
        out.append(
            (
                "single",
                codec.encode(
                    PredictionEvent(
                        f"last-{model}", model, version, T0 + windows * WINDOW_MS, numeric={"a": 0.0}, prediction=0.5
                    )
                ),
            )
        )
    return out


def _poison(model: str, version: str, codec) -> list[bytes]:
    """Ten events whose model id is a 1 MB string, two lone surrogates, two JSON documents nested 3,000 deep."""
    big = [
        codec.encode(PredictionEvent(f"big{i}", "m" * BIG, version, T0 + i, numeric={"a": 1.0}, prediction=0.5))
        for i in range(10)
    ]
    surrogate = [
        b'{"type":"PredictionEvent","event_id":"\\ud800","model_id":"'
        + model.encode()
        + b'","model_version":"'
        + version.encode()
        + b'","event_time":'
        + str(T0 + i).encode()
        + b',"prediction":0.5}'
        for i in range(2)
    ]
    deep = [b'{"type":"PredictionEvent","numeric":' + b"[" * 3000 + b"]" * 3000 + b"}" for _ in range(2)]
    return big + surrogate + deep


def _second_env(kafka_settings: Settings, warehouse_url: str, tmp: Path, suffix: str) -> WorkerEnv:
    tmp.mkdir()
    settings = kafka_settings.replace(topic_prefix=f"{kafka_settings.topic_prefix}{suffix}.")
    return WorkerEnv.create(settings, f"{warehouse_url}_{suffix}", tmp)


def _run(e: WorkerEnv, model: str, messages: list[bytes], app_id: str, windows: int) -> None:
    for value in messages:
        e.publish_raw("predictions", "k", value)
    e.flush()
    worker = e.start_worker("w", app_id, idle_seconds="never")
    e.wait(lambda: e.windows_written() >= 2 * windows, 120, f"{windows} windows of each model")
    total = len(messages)
    # all but the last two messages, whose windows stay open, are committed
    e.wait(lambda: e.committed(app_id, "predictions").get(0, -1) >= total - 2, 60, "the commits")
    assert worker.alive()


def test_oversized_and_poison_messages_among_good_traffic_are_dead_lettered_in_a_form_that_fits(
    env: WorkerEnv, kafka_settings: Settings, warehouse_url: str, tmp_path: Path, unique: str
) -> None:
    codec = default_codec()
    windows = 4
    model, other, version, good = two_models(env, unique, windows)
    bad = _poison(model, version, codec)
    originals = {hashlib.sha256(v).hexdigest(): len(v) for v in bad}
    # the bad messages at random places among the good ones (the last good ones close the last windows)
    rng = np.random.default_rng(7)
    after = set(rng.choice(np.arange(len(good) - 2), len(bad), replace=False).tolist())
    mixed: list[bytes] = []
    waiting = list(bad)
    for i, (_, value) in enumerate(good):
        mixed.append(value)
        if i in after:
            mixed.append(waiting.pop())
    assert not waiting
    _run(env, model, mixed, f"app-{unique}", windows)

    clean = _second_env(kafka_settings, warehouse_url, tmp_path / "clean", "clean")
    try:
        assert clean.register(model) == version and clean.register(other) == version
        _run(clean, model, [v for _, v in good], f"clean-{unique}", windows)
        clean.wait(lambda: clean.windows_written(other) >= windows, 60, "the other model's windows")
        for m in (model, other):
            assert_same_results(env.snapshot(m), clean.snapshot(m))
    finally:
        clean.close()

    n_bad = len(bad)
    dlq = _dlq(env.settings, n_bad, timeout=60)
    assert len(dlq) == n_bad
    produced = len(mixed)
    accepted_messages = produced - n_bad
    assert env.count("rejected_events") == n_bad
    assert produced == accepted_messages + len(dlq)
    events = sum(1 if kind == "single" else 50 for kind, _ in good)
    assert env.count("predictions") == events
    big = [m for m in dlq if m.headers.get("driftline-truncated")]
    assert len(big) == 10
    for m in big:
        assert len(m.value) + len(m.key or b"") + sum(len(k) + len(v) for k, v in m.headers.items()) < 1_000_000
        size = int(m.headers["driftline-original-size"])
        assert size > BIG and len(m.value) == 64 * 1024
        assert originals[m.headers["driftline-original-sha256"].decode()] == size
        assert len(m.headers.get("driftline-error-detail", b"")) <= 1100
    rows = env.query(
        "SELECT length(raw_base64) AS raw, length(detail) AS detail, length(model_id) AS model "
        "FROM rejected_events FINAL"
    )
    assert max(r["raw"] for r in rows) <= 4 * 64 * 1024 // 3 + 4
    assert max(r["detail"] for r in rows) <= 1200 and max(r["model"] for r in rows) <= 256
