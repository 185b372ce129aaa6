"""Feed mutants through ``Codec.decode`` and ``decode_bulk`` and record everything that is not a clean DecodeError.

Each mutant is decoded alone by both entry points, with a topic drawn at random,
and both must agree (the same record kind, or the same DecodeError reason).
Every so often a round of 40 messages of one kind of event or batch (most of
them valid, so that ``decode_bulk``'s vectorised readers take them) goes through
one ``decode_bulk`` call and must agree with ``Codec.decode`` of each.
A message whose decode takes longer than a quarter of ``slow_ms`` is timed twice
more and its best time is the one reported; it counts as slow only if that stays
above ``slow_ms`` (a busy machine is not a slow message).

>>> import random
>>> report = fuzz(Corpus(big=False), random.Random(3), count=60)
>>> report.messages >= 60, report.failures
(True, [])
"""

from __future__ import annotations

import logging
import random
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from mutations import Corpus

from driftline.streams.codec import DECODE_ERROR_REASONS, MAX_DETAIL_CHARS, TOPIC_RECORDS, DecodeError, decode_bulk

ROUND = 40  # messages of one grouped decode_bulk call
ROUND_EVERY = 400  # single mutants between two grouped rounds
_GROUP_SEEDS = ("PredictionEvent", "FeatureEvent", "PredictionBatch", "FeatureBatch")


@dataclass
class Failure:
    """A message that made an entry point raise something else than DecodeError, or disagree."""

    where: str
    problem: str
    data: bytes
    topic: str | None

    def __str__(self) -> str:
        return (
            f"{self.where} (topic {self.topic}): {self.problem}; message {self.data[:120]!r} ({len(self.data)} bytes)"
        )


@dataclass
class FuzzReport:
    messages: int = 0
    seconds: float = 0.0
    slowest_ms: float = 0.0
    slowest_bulk_ms: float = 0.0
    slowest_bulk_round_ms: float = 0.0
    slow: list[tuple[float, bytes]] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    reasons: Counter = field(default_factory=Counter)
    accepted: int = 0
    by_kind: Counter = field(default_factory=Counter)
    fallbacks: int = 0

    def summary(self) -> str:
        return (
            f"{self.messages} messages in {self.seconds:.1f} s: {self.accepted} accepted, "
            f"{sum(self.reasons.values())} DecodeErrors {dict(self.reasons.most_common())}; "
            f"mutants {dict(self.by_kind)}; slowest Codec.decode {self.slowest_ms:.1f} ms, slowest decode_bulk "
            f"of one message {self.slowest_bulk_ms:.1f} ms, slowest grouped "
            f"decode_bulk call ({ROUND} messages) {self.slowest_bulk_round_ms:.1f} ms; "
            f"{len(self.slow)} slow, {len(self.failures)} failures, {self.fallbacks} decode_bulk fallbacks"
        )


class _CountFallbacks(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.last = ""

    def emit(self, record: logging.LogRecord) -> None:
        if "fell back" in record.getMessage():
            self.count += 1
            self.last = record.getMessage()


_fallbacks = _CountFallbacks()  # decode_bulk's warnings while fuzz() runs


def _outcome(decode: Any, data: bytes, topic: str | None) -> tuple[str, Any]:
    """("error", reason) or ("record", kind); raises what decode raises if it is not a DecodeError."""
    try:
        record = decode(data, topic=topic)
    except DecodeError as exc:
        return "error", exc
    return "record", type(record).__name__


def _bulk_outcomes(codec: Any, values: list[bytes], topic: str | None) -> list[tuple[str, Any]]:
    before = _fallbacks.count
    out = decode_bulk(codec, values, topic=topic)
    if _fallbacks.count != before:  # its fast path raised: a bug, even if the slow path saved the messages
        raise AssertionError(_fallbacks.last)
    found: list[tuple[str, Any] | None] = [None] * len(values)
    for i, record in out.others:
        found[i] = ("error", record) if isinstance(record, DecodeError) else ("record", type(record).__name__)
    for group in out.groups:
        kind = "PredictionEvent" if group.has_predictions else "FeatureEvent"
        for i in group.messages.tolist():
            found[i] = ("record", kind)
    if any(f is None for f in found):
        raise AssertionError(f"decode_bulk lost message(s) {[i for i, f in enumerate(found) if f is None]}")
    return found  # type: ignore[return-value]


def _same(a: tuple[str, Any], b: tuple[str, Any]) -> bool:
    if a[0] != b[0]:
        return False
    if a[0] == "error":
        return a[1].reason == b[1].reason
    return a[1] == b[1]


def _check_error(exc: DecodeError) -> str | None:
    if exc.reason not in DECODE_ERROR_REASONS:
        return f"unknown reason {exc.reason!r}"
    if len(exc.message) > MAX_DETAIL_CHARS:
        return f"a detail of {len(exc.message)} characters"
    try:
        exc.message.encode("utf-8")
    except UnicodeEncodeError:
        return "a detail that is not valid UTF-8"
    return None


def _describe(exc: BaseException) -> str:
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}" if frame else ""
    return f"{type(exc).__name__}{where}: {str(exc)[:200]}"


def fuzz(
    corpus: Corpus, rng: random.Random, count: int, *, slow_ms: float = 100.0, seconds: float | None = None
) -> FuzzReport:
    """At least ``count`` mutants (or as many as fit in ``seconds``) through both decoders."""
    codec = corpus.codec
    report = FuzzReport()
    counter = _fallbacks
    counter.count = 0
    logger = logging.getLogger("driftline.codec")
    logger.addHandler(counter)
    started = time.perf_counter()
    try:
        while report.messages < count and (seconds is None or time.perf_counter() - started < seconds):
            if report.messages % ROUND_EVERY == ROUND_EVERY - 1:
                _group_round(corpus, rng, report, slow_ms)
            kind, data = corpus.mutant(rng)
            report.by_kind[kind] += 1
            _one(codec, data, corpus.topic(rng), report, slow_ms)
    finally:
        logger.removeHandler(counter)
    report.fallbacks = counter.count
    report.seconds = time.perf_counter() - started
    return report


def _timed_outcome(
    codec: Any, data: bytes, topic: str | None, report: FuzzReport, slow_ms: float
) -> tuple[str, Any] | None:
    """Codec.decode of one message, timed; None (and a failure recorded) if it raised anything else."""
    t = time.perf_counter()
    try:
        outcome = _outcome(codec.decode, data, topic)
    except Exception as exc:  # noqa: BLE001 - what the fuzzer is looking for
        report.failures.append(Failure("Codec.decode", _describe(exc), data, topic))
        return None
    ms = (time.perf_counter() - t) * 1000
    if ms > slow_ms / 4:  # a busy machine is not a slow message: the best of three decides
        for _ in range(2):
            t = time.perf_counter()
            _outcome(codec.decode, data, topic)
            ms = min(ms, (time.perf_counter() - t) * 1000)
        if ms > slow_ms:
            report.slow.append((ms, data))
    report.slowest_ms = max(report.slowest_ms, ms)
    report.messages += 1
    if outcome[0] == "error":
        report.reasons[outcome[1].reason] += 1
        problem = _check_error(outcome[1])
        if problem:
            report.failures.append(Failure("Codec.decode", problem, data, topic))
    else:
        report.accepted += 1
    return outcome


def _one(codec: Any, data: bytes, topic: str | None, report: FuzzReport, slow_ms: float) -> None:
    outcome = _timed_outcome(codec, data, topic, report, slow_ms)
    t = time.perf_counter()
    try:
        bulk = _bulk_outcomes(codec, [data], topic)[0]
    except Exception as exc:  # noqa: BLE001
        report.failures.append(Failure("decode_bulk", _describe(exc), data, topic))
        return
    ms = (time.perf_counter() - t) * 1000
    if ms > slow_ms / 4:
        ms = min(ms, *(_time_bulk(codec, data, topic) for _ in range(2)))
        if ms > slow_ms:
            report.slow.append((ms, data))
    report.slowest_bulk_ms = max(report.slowest_bulk_ms, ms)
    if outcome is not None and not _same(outcome, bulk):
        report.failures.append(Failure("decode_bulk", f"gave {bulk}, Codec.decode {outcome}", data, topic))


def _time_bulk(codec: Any, data: bytes, topic: str | None) -> float:
    t = time.perf_counter()
    decode_bulk(codec, [data], topic=topic)
    return (time.perf_counter() - t) * 1000


def _group_round(corpus: Corpus, rng: random.Random, report: FuzzReport, slow_ms: float) -> None:
    """ROUND messages of one event or batch kind, most of them valid, through one decode_bulk call."""
    codec = corpus.codec
    name = rng.choice(_GROUP_SEEDS)
    seeds = [s for s in corpus.seeds if type(s.record).__name__ == name]
    values = []
    for _ in range(ROUND):
        seed = rng.choice(seeds)
        roll = rng.random()
        if roll < 0.6:
            values.append(seed.avro)
        elif roll < 0.8:
            values.append(corpus.avro_mutant(rng, seed))
        else:
            values.append(corpus.bytes_mutant(rng, seed.avro, rounds=1))
    topic = rng.choice([None, *(t for t, kinds in TOPIC_RECORDS.items() if name in kinds)])
    expected = [_timed_outcome(codec, v, topic, report, slow_ms) for v in values]
    t = time.perf_counter()
    try:
        found = _bulk_outcomes(codec, values, topic)
    except Exception as exc:  # noqa: BLE001
        report.failures.append(Failure("decode_bulk (a round)", _describe(exc), b"".join(values[:1]), topic))
        return
    report.slowest_bulk_round_ms = max(report.slowest_bulk_round_ms, (time.perf_counter() - t) * 1000)
    for value, want, got in zip(values, expected, found):
        if want is not None and not _same(want, got):
            report.failures.append(Failure("decode_bulk (a round)", f"gave {got}, Codec.decode {want}", value, topic))
