"""What the fault tests share: their sizes, the traffic they send, services they may stop, and the wait
for a run to finish.

Every fault test sends the same bytes to two runs, each on its own topics and ClickHouse database: a clean
run that nothing disturbs, and a run with the fault; then it compares every row the two wrote
(``worker_harness.RunResults``). ``DRIFTLINE_FAULTS=full`` (``make faults``) runs the sizes of issue 11;
without it each test runs a bounded version, small enough for every ``make test``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from worker_harness import REPO, T0, RunResults, WorkerEnv, WorkerProcess, make_batch, stop_process

from driftline.settings import Settings
from driftline.stack.kafka_local import KafkaBroker
from driftline.stack.process import free_port, port_answers
from driftline.streams import kafka
from driftline.streams.codec import encode
from driftline.streams.records import LabelEvent, PredictionBatch, PredictionEvent

FULL = os.environ.get("DRIFTLINE_FAULTS", "") == "full"
FIGURES = REPO / ".driftline" / "faults" / f"figures-{'full' if FULL else 'bounded'}.jsonl"


def sized(bounded: Any, full: Any) -> Any:
    """The full size under ``DRIFTLINE_FAULTS=full``, else the bounded one.

    >>> sized(2, 10) in (2, 10)
    True
    """
    return full if FULL else bounded


# -- the traffic ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """One message as produced: contract topic name, key and bytes; ``kind`` says what it is."""

    topic: str
    key: str | None
    value: bytes
    kind: str = "good"


@dataclass
class Traffic:
    """The messages of one model version in log order, and what they hold.

    Each window's events are cut into groups of ``group`` consecutive events; every ``singles_every``-th
    group goes as single ``PredictionEvent`` messages, the others as one ``PredictionBatch``, so that one
    model receives both, interleaved. A share of the predictions gets a label right after its message.
    The last message is a sentinel (a prediction and its label ten windows ahead) that closes every window.
    """

    model_id: str
    version: str
    windows: int
    per_window: int
    window_ms: int
    messages: list[Message] = field(default_factory=list)
    events: int = 0
    singles: int = 0
    labels: int = 0
    window_of_message: list[int] = field(default_factory=list)

    @property
    def window_seconds(self) -> float:
        return self.window_ms / 1000

    def part(self, k: int, parts: int) -> list[Message]:
        """The ``k``-th of ``parts`` runs of whole windows (the sentinel in the last)."""
        bounds = np.linspace(0, self.windows, parts + 1).round().astype(int)
        chosen = [m for m, w in zip(self.messages, self.window_of_message) if bounds[k] <= w < bounds[k + 1]]
        return chosen + (self.messages[-2:] if k == parts - 1 else [])


def traffic(
    model_id: str,
    version: str,
    *,
    windows: int,
    per_window: int,
    group: int = 100,
    singles_every: int = 4,
    label_share: float = 0.5,
    drift_from: int | None = None,
    seed: int = 0,
) -> Traffic:
    """Deterministic traffic for one model version (class docstring).

    >>> t = traffic("m", "1", windows=2, per_window=400, group=100)
    >>> (t.events, t.singles, t.window_ms, t.messages[-1].topic)
    (800, 200, 2000, 'labels')
    """
    window_ms = max(2_000, per_window)
    step = window_ms // per_window
    out = Traffic(model_id, version, windows, per_window, window_ms)
    rng = np.random.default_rng(seed)
    for w in range(windows):
        drift = ("b", "d") if drift_from is not None and w >= drift_from else ()
        for g, start in enumerate(range(0, per_window, group)):
            n = min(group, per_window - start)
            batch = make_batch(
                model_id,
                version,
                T0 + w * window_ms + start * step,
                n,
                step,
                drift=drift,
                seed=seed * 1_000_000 + w * 1_000 + g,
                prefix=f"{model_id}-",
            )
            if g % singles_every == singles_every - 1:
                records: list[Any] = singles(batch)
                out.singles += n
            else:
                records = [batch]
            labelled = np.flatnonzero(rng.random(n) < label_share)
            truth = (rng.random(labelled.size) < batch.predictions[labelled]).astype(int)
            records += [
                LabelEvent(batch.event_ids[i], model_id, int(batch.event_times[i]), int(y))
                for i, y in zip(labelled.tolist(), truth.tolist())
            ]
            for r in records:
                out.messages.append(
                    Message("labels" if isinstance(r, LabelEvent) else "predictions", model_id, encode(r))
                )
                out.window_of_message.append(w)
            out.events += n
            out.labels += labelled.size
    end = make_batch(
        model_id, version, T0 + (windows + 10) * window_ms, 1, 1, seed=seed + 999, prefix=f"{model_id}-end-"
    )
    out.messages += [
        Message("predictions", model_id, encode(end)),
        Message("labels", model_id, encode(LabelEvent(end.event_ids[0], model_id, int(end.event_times[0]), 1))),
    ]
    out.window_of_message += [windows, windows]
    return out


def singles(batch: PredictionBatch) -> list[PredictionEvent]:
    """The rows of a batch as single events (what an SDK in another language sends).

    >>> [e.event_id for e in singles(make_batch("m", "1", T0, 2, 1))]
    ['e1-0', 'e1-1']
    """
    numeric = {f: v.tolist() for f, v in batch.numeric.items()}
    latency = batch.latency_ms.tolist() if batch.latency_ms is not None else [None] * batch.n
    return [
        PredictionEvent(
            event_id,
            batch.model_id,
            batch.model_version,
            t,
            numeric={f: v[i] for f, v in numeric.items()},
            categorical={f: v[i] for f, v in batch.categorical.items()},
            prediction=p,
            latency_ms=latency[i],
            attributes={f: v[i] for f, v in batch.attributes.items()},
        )
        for i, (event_id, t, p) in enumerate(
            zip(batch.event_ids, batch.event_times.tolist(), batch.predictions.tolist())
        )
    ]


def send(
    env: WorkerEnv, messages: Iterable[Message], *, producer: Any = None, offsets: list[tuple[str, int]] | None = None
) -> int:
    """Produce the messages in order and wait for them; with ``offsets``, append each one's (topic, offset)."""
    client = producer or env.producer
    count = 0
    for m in messages:
        on_delivery = None
        if offsets is not None:
            slot = len(offsets)
            offsets.append(("", -1))

            def on_delivery(err: Any, msg: Any, slot: int = slot, topic: str = m.topic) -> None:
                assert err is None, err
                offsets[slot] = (topic, msg.offset())

        kafka.produce(client, env.settings.topic(m.topic), m.value, m.key, on_delivery=on_delivery, wait_when_full=5.0)
        count += 1
    assert client.flush(120) == 0
    return count


# -- waiting for a run to finish ------------------------------------------------------------------------------


def label_windows(env: WorkerEnv, model_id: str) -> int:
    return env.count(
        "performance_metrics", "model_id = {m:String} AND metric = 'n_labeled' AND segment = ''", m=model_id
    )


def finished(env: WorkerEnv, loads: Sequence[Traffic], timeout: float) -> RunResults:
    """Wait until every window of the traffic is written and the rows stop changing, then read them."""

    def all_windows() -> bool:
        return all(
            env.windows_written(t.model_id) >= t.windows and label_windows(env, t.model_id) >= t.windows for t in loads
        )

    env.wait(all_windows, timeout, "every prediction and label window")
    models = [t.model_id for t in loads]
    last = RunResults.read(env, models)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(1.5)
        now = RunResults.read(env, models)
        if now == last:
            return now
        last = now
    return last


def hold(env: WorkerEnv, seconds: float, what: str) -> None:
    """Sleep ``seconds``, checking four times a second that the workers are alive (no warehouse query)."""
    started = time.monotonic()
    while time.monotonic() < started + seconds:
        dead = [w for w in env.workers if not w.alive() and not w.expected_exit]
        assert not dead, (
            f"worker {dead[0].name} exited with {dead[0].popen.returncode} "
            f"{time.monotonic() - started:.0f} s into {what}\n{env.logs()}"
        )
        time.sleep(0.25)


def pair(
    kafka_settings: Settings,
    clean_url: str,
    fault_url: str,
    tmp: Path,
    unique: str,
    *,
    fault_kafka: str | None = None,
    partitions: int = 1,
) -> tuple[WorkerEnv, WorkerEnv]:
    """A clean and a fault run, each with its own topics, group, ClickHouse database and directory."""
    for name in ("clean", "fault"):
        (tmp / name).mkdir()
    clean = WorkerEnv.create(
        kafka_settings.replace(topic_prefix=f"t{unique}c."), clean_url, tmp / "clean", partitions=partitions
    )
    fault_settings = kafka_settings.replace(topic_prefix=f"t{unique}f.")
    if fault_kafka:
        fault_settings = fault_settings.replace(kafka_bootstrap=fault_kafka)
    fault = WorkerEnv.create(fault_settings, fault_url, tmp / "fault", partitions=partitions)
    return clean, fault


class Stopwatch:
    """Seconds from the start of a test to each named moment, for its figures.

    >>> watch = Stopwatch()
    >>> watch.lap("started") >= 0, list(watch.laps)
    (True, ['started'])
    """

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> float:
        self.laps[name] = round(time.monotonic() - self.started, 1)
        return self.laps[name]


def record(test: str, **figures: Any) -> None:
    """Append one test's measured figures to ``.driftline/faults/`` (docs/RELIABILITY.md quotes them)."""
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    with FIGURES.open("a") as out:
        out.write(
            json.dumps({"test": test, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **figures}) + "\n"
        )


# -- services a test may stop ---------------------------------------------------------------------------------


class PrivateBroker:
    """A Kafka broker of one test, stopped by a signal and started again on the same ports and data directory."""

    def __init__(self, home: Path, jars: Path) -> None:
        self.broker = KafkaBroker(home, port=free_port(), controller_port=free_port(), jars=jars)
        self.broker.start()

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    def stop(self, sig: int, grace: float = 30.0) -> tuple[float, bool]:
        pid = self.broker.process.pid()
        assert pid is not None, "the broker is not running"
        took = stop_process(pid, sig, grace)
        self.broker.process.pid_file.unlink(missing_ok=True)
        return took

    def start(self) -> None:
        deadline = time.monotonic() + 30
        while port_answers(self.broker.host, self.broker.port) and time.monotonic() < deadline:
            time.sleep(0.2)  # the old process's socket
        self.broker.start()

    def close(self) -> None:
        self.broker.stop()


def kill_after(
    worker: WorkerProcess, progress: Callable[[], bool], env: WorkerEnv, rng: np.random.Generator, timeout: float
) -> None:
    """SIGKILL ``worker`` at a random moment (up to 0.8 s) after ``progress`` holds."""
    env.wait(progress, timeout, f"{worker.name} at work")
    time.sleep(float(rng.uniform(0.0, 0.8)))
    worker.kill()


def mebibytes(n: float) -> int:
    return int(math.ceil(n * 1024 * 1024))


def shortfalls(results: RunResults, loads: Sequence[Traffic]) -> list[str]:
    """How a run's windows fall short of the traffic it read: every event in its window, every label counted.

    A clean run must pass this too, or comparing with it proves little.
    """
    found = []
    for load in loads:
        reports = [r for r in results.tables["drift_reports"] if r["model_id"] == load.model_id]
        short = [r for r in reports if r["n_current"] != load.per_window]
        if len(reports) != load.windows or short:
            found.append(
                f"{load.model_id}: {len(reports)} windows written of {load.windows}, {len(short)} not holding "
                f"their {load.per_window} events ({sum(r['n_current'] for r in reports)} of {load.events} in all)"
            )
        labelled = sum(
            r["n_labeled"]
            for r in results.tables["performance_metrics"]
            if r["model_id"] == load.model_id and r["metric"] == "n_labeled" and r["segment"] == ""
        )
        if labelled != load.labels:
            found.append(f"{load.model_id}: {labelled} labels counted in label windows of {load.labels} sent")
    return found


def compare(
    test: str,
    got: RunResults,
    expected: RunResults,
    loads: Sequence[Traffic],
    started: float,
    *,
    problems: Sequence[str] = (),
    **figures: Any,
) -> None:
    """Record the test's figures, then assert that both runs hold every event and label of the traffic, that
    every row equals the clean run's, and that the test found no other ``problems``."""
    differences = list(problems) + [f"clean run: {s}" for s in shortfalls(expected, loads)]
    differences += [f"fault run: {s}" for s in shortfalls(got, loads)]
    differences += got.differences(expected)
    record(
        test,
        seconds=round(time.monotonic() - started, 1),
        rows_compared=expected.rows,
        events=sum(t.events for t in loads),
        singles=sum(t.singles for t in loads),
        labels=sum(t.labels for t in loads),
        windows=sum(t.windows for t in loads),
        result="identical" if not differences else "DIFFERENT",
        differences=differences,
        **figures,
    )
    assert not differences, "the runs fall short or differ from the clean run:\n" + "\n".join(differences)
    assert got == expected
