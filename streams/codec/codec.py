"""Bytes to driftline records and back (docs/CONTRACTS.md, "Message encoding").

A message is recognised by its first bytes:

- ``C3 01``: Avro single-object encoding. The next 8 bytes are the
  little-endian CRC-64-AVRO fingerprint of the writer schema, looked up among
  every version in ``schemas/avro/`` (and any added at run time); the body is
  read with schema resolution into the current (reader) version of that record.
- ``00``: Confluent wire format, a 4-byte big-endian schema id, when a schema
  registry is configured; the writer schema is fetched once per id.
- ``{``: a JSON object with the fields of one non-batch record, validated
  against the reader schema. Which record it is comes from, in this order:
  a ``"type"`` key (``"LabelEvent"`` or ``"driftline.v1.LabelEvent"``; the key
  is reserved for this and never a field), the topic it was read from
  (``decode(data, topic="labels")``), or its fields:
  ``label`` -> LabelEvent, ``alert_id`` -> Alert, ``request_id`` and ``reason``
  -> RetrainRequest, ``event`` and ``version`` -> ModelEvent, ``metrics`` or
  ``drifted_features`` -> DriftReport, any of ``prediction``, ``predicted_label``,
  ``latency_ms`` -> PredictionEvent, else ``model_version`` -> FeatureEvent.
  A prediction without any prediction field is therefore a FeatureEvent
  unless the topic or ``"type"`` says otherwise; both are model inputs.

Every failure raises :class:`DecodeError`, whose ``reason`` is the short code
that the streams worker writes into the DLQ header ``driftline-error``:

=====================  =====================================================
``empty``              no bytes at all
``unknown_encoding``   first bytes are none of the three above (or ``00``
                       without a schema registry)
``truncated``          too short for its header
``unknown_fingerprint``  no known schema has that fingerprint
``avro_body``          the Avro body does not parse, or bytes are left over
``schema_resolution``  the writer schema cannot be read as the reader schema
``json_syntax``        not JSON
``json_schema``        JSON that does not match the record's schema
``column_length``      a batch column does not hold exactly n values
``invalid_value``      ±inf in a numeric input, a prediction or a latency; NaN as the
                       prediction of a single event (null says "no prediction" there;
                       in a batch column NaN is the contract's "none"); a LabelBatch
                       row without exactly one of a number and a string label
``schema_registry``    the schema registry could not be asked
``unknown_schema_id``  the registry does not know the id, or it is not a driftline record
``unexpected_record``  a valid record that does not belong on that topic
``reserved_feature_name``, ``feature_kind_conflict``, ``value_too_long``
                       the feature names or attribute keys of one event or batch
                       message (``driftline.streams.core.validation.check_feature_names``)
``malformed``          anything else that went wrong reading the message; the
                       detail names the exception class (a bug to report, never a crash)
=====================  =====================================================

Decoding is total: :meth:`Codec.decode` raises :class:`DecodeError` and nothing
else for any bytes (``ValueError`` only for a topic name that is not one, a
programming error). A detail is at most ``MAX_DETAIL_CHARS`` characters of valid
UTF-8 with passwords masked (``driftline.redaction``), so that it always fits a
DLQ header and a log line. JSON must be UTF-8; lone surrogates, escaped or raw,
are ``json_syntax``, as is nesting deeper than Python's parser allows; an integer
too large for a double field is ``json_schema``.

Encoding writes a NaN prediction of a single event as null.

Timestamps stay exact integer milliseconds (see ``driftline.streams.codec.schemas``).
Batches decode with one fastavro read and ``np.frombuffer`` per packed
column, so their numeric columns are read-only views of the message bytes.
"""

from __future__ import annotations

import io
import json
import math
import reprlib
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastavro import schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError
from fastavro.validation import ValidationError, validate

from driftline.redaction import redact
from driftline.streams.codec.registry import SchemaRegistryClient, SchemaRegistryError
from driftline.streams.codec.schemas import NAMESPACE, SINGLE_OBJECT_MAGIC, SchemaSet, SchemaSetError, SchemaVersion
from driftline.streams.core.validation import check_feature_names
from driftline.streams.records import (
    Alert,
    DriftReport,
    Evidence,
    FeatureBatch,
    FeatureDrift,
    FeatureEvent,
    LabelBatch,
    LabelEvent,
    ModelEvent,
    PredictionBatch,
    PredictionEvent,
    RetrainRequest,
)

Record = (
    PredictionEvent
    | PredictionBatch
    | FeatureEvent
    | FeatureBatch
    | LabelEvent
    | LabelBatch
    | RetrainRequest
    | ModelEvent
    | DriftReport
    | Alert
)

DECODE_ERROR_REASONS = frozenset(
    {
        "empty",
        "unknown_encoding",
        "truncated",
        "unknown_fingerprint",
        "avro_body",
        "schema_resolution",
        "json_syntax",
        "json_schema",
        "column_length",
        "invalid_value",
        "schema_registry",
        "unknown_schema_id",
        "unexpected_record",
        "reserved_feature_name",
        "feature_kind_conflict",
        "value_too_long",
        "malformed",
    }
)
MAX_DETAIL_CHARS = 1_024

# Which records each topic carries (docs/CONTRACTS.md); the first is the JSON default.
TOPIC_RECORDS: dict[str, tuple[str, ...]] = {
    "predictions": ("PredictionEvent", "PredictionBatch"),
    "features": ("FeatureEvent", "FeatureBatch"),
    "labels": ("LabelEvent", "LabelBatch"),
    "drift": ("DriftReport",),
    "alerts": ("Alert",),
    "retrain-requests": ("RetrainRequest",),
    "models": ("ModelEvent",),
    "dlq": (),
}

_CONFLUENT_MAGIC = 0
_JSON_START = frozenset(b"{ \t\r\n")
_BATCHES = frozenset({f"{NAMESPACE}.PredictionBatch", f"{NAMESPACE}.FeatureBatch", f"{NAMESPACE}.LabelBatch"})


class DecodeError(ValueError):
    """A message that is not a valid driftline record; ``reason`` is a short code (module docstring).

    The message is made safe for headers and logs: valid UTF-8 (a lone surrogate quoted from the
    input is escaped), at most ``MAX_DETAIL_CHARS`` characters, passwords masked.

    >>> err = DecodeError("empty", "the message has no bytes")
    >>> err.reason, str(err)
    ('empty', 'empty: the message has no bytes')
    >>> DecodeError("json_schema", "no field " + chr(0xD800) + " at http://u:pw@host/").message
    'no field \\\\ud800 at http://u:***@host/'
    """

    def __init__(self, reason: str, message: str) -> None:
        message = _safe_detail(message)
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


def _safe_detail(message: str) -> str:
    if len(message) > MAX_DETAIL_CHARS:
        message = f"{message[: MAX_DETAIL_CHARS - 40]}... ({len(message)} characters in all)"
    try:
        message.encode("utf-8")
    except UnicodeEncodeError:
        message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return redact(message)


def _unexpected(exc: BaseException) -> DecodeError:
    """An exception the decoders did not foresee, as the reason ``malformed``."""
    return DecodeError("malformed", f"{type(exc).__name__}: {exc}")


# ---------------------------------------------------------------- value checks


def _infinite_key(values: Mapping[str, float]) -> str | None:
    """The first key holding ±inf, or None; one C-level sum covers the common all-finite case."""
    if not values or math.isfinite(sum(values.values())):
        return None
    for key, value in values.items():
        if math.isinf(value):
            return key
    return None  # NaN (missing) or an overflowing sum: both valid


def _infinite_column(columns: Mapping[str, np.ndarray]) -> str | None:
    for key, column in columns.items():
        if np.isinf(column).any():
            return key
    return None


def _is_inf(value: float | None) -> bool:
    return value is not None and math.isinf(value)


def _event_problem(
    numeric: Mapping[str, float], prediction: float | None = None, latency_ms: float | None = None
) -> str | None:
    key = _infinite_key(numeric)
    if key is not None:
        return f"numeric input {key!r} is ±inf (missing is NaN or an absent key)"
    if prediction is not None and not math.isfinite(prediction):
        return f"prediction is {prediction}; a single event without a prediction sends null"
    if _is_inf(latency_ms):
        return "latency_ms is ±inf"
    return None


def _check_names(d: Mapping[str, Any]) -> None:
    problem = check_feature_names(d["numeric"], d["categorical"], d["attributes"])
    if problem:
        raise DecodeError(problem.reason, problem.detail)


def _batch_problem(
    numeric: Mapping[str, np.ndarray], predictions: np.ndarray | None = None, latency_ms: np.ndarray | None = None
) -> str | None:
    key = _infinite_column(numeric)
    if key is not None:
        return f"numeric input {key!r} holds ±inf (missing is NaN)"
    if predictions is not None and np.isinf(predictions).any():
        return "predictions hold ±inf"
    if latency_ms is not None and np.isinf(latency_ms).any():
        return "latency_ms holds ±inf"
    return None


# ---------------------------------------------------------------- datum -> record


def _column(buf: bytes, dtype: str, n: int, what: str) -> np.ndarray:
    if len(buf) != 8 * n:
        raise DecodeError("column_length", f"{what} holds {len(buf)} bytes, expected {n} values of 8 bytes")
    return np.frombuffer(buf, dtype=dtype)


def _check_lists(columns: Mapping[str, list], n: int, what: str) -> None:
    for key, values in columns.items():
        if len(values) != n:
            raise DecodeError("column_length", f"{what} {key!r} holds {len(values)} values, expected {n}")


def _columns(d: dict[str, Any]) -> tuple[int, np.ndarray, dict[str, np.ndarray]]:
    n = len(d["event_ids"])
    if n == 0:
        raise DecodeError("column_length", "a batch needs at least one event")
    times = _column(d["event_times"], "<i8", n, "event_times")
    numeric = {k: _column(v, "<f8", n, f"numeric {k!r}") for k, v in d["numeric"].items()}
    _check_lists(d["categorical"], n, "categorical")
    _check_lists(d["attributes"], n, "attributes")
    return n, times, numeric


def _prediction_batch(d: dict[str, Any]) -> PredictionBatch:
    n, times, numeric = _columns(d)
    predictions = _column(d["predictions"], "<f8", n, "predictions")
    labels = d["predicted_labels"]
    if labels and len(labels) != n:
        raise DecodeError("column_length", f"predicted_labels holds {len(labels)} values, expected {n} or none")
    latency = _column(d["latency_ms"], "<f8", n, "latency_ms") if d["latency_ms"] else None
    problem = _batch_problem(numeric, predictions, latency)
    if problem:
        raise DecodeError("invalid_value", problem)
    _check_names(d)
    return PredictionBatch(
        d["model_id"],
        d["model_version"],
        d["event_ids"],
        times,
        numeric,
        d["categorical"],
        predictions,
        labels,
        latency,
        d["attributes"],
    )


def _feature_batch(d: dict[str, Any]) -> FeatureBatch:
    n, times, numeric = _columns(d)
    problem = _batch_problem(numeric)
    if problem:
        raise DecodeError("invalid_value", problem)
    _check_names(d)
    return FeatureBatch(
        d["model_id"], d["model_version"], d["event_ids"], times, numeric, d["categorical"], d["attributes"]
    )


def _label_problem(numbers: np.ndarray, strings: list[str | None]) -> str | None:
    """Why the label columns of a LabelBatch are invalid, or None: each row holds exactly one of a
    finite number and a string (docs/CONTRACTS.md, "Labels in a LabelBatch")."""
    if np.isinf(numbers).any():
        return "numeric_labels hold ±inf"
    is_number = ~np.isnan(numbers)
    if strings:
        is_string = np.fromiter((s is not None for s in strings), dtype=bool, count=len(strings))
        both = np.flatnonzero(is_number & is_string)
        if both.size:
            return f"row {int(both[0])} holds both a numeric and a string label"
        is_number |= is_string
    if not is_number.all():
        return f"row {int(np.argmin(is_number))} holds no label (NaN and no string)"
    return None


def _label_batch(d: dict[str, Any]) -> LabelBatch:
    n = len(d["event_ids"])
    if n == 0:
        raise DecodeError("column_length", "a batch needs at least one event")
    times = _column(d["event_times"], "<i8", n, "event_times")
    numbers = _column(d["numeric_labels"], "<f8", n, "numeric_labels")
    strings = d["string_labels"]
    if strings and len(strings) != n:
        raise DecodeError("column_length", f"string_labels holds {len(strings)} values, expected {n} or none")
    problem = _label_problem(numbers, strings)
    if problem:
        raise DecodeError("invalid_value", problem)
    return LabelBatch(d["model_id"], d["event_ids"], times, numbers, strings)


def _prediction_event(d: dict[str, Any]) -> PredictionEvent:
    problem = _event_problem(d["numeric"], d["prediction"], d["latency_ms"])
    if problem:
        raise DecodeError("invalid_value", problem)
    _check_names(d)
    return PredictionEvent(**d)


def _feature_event(d: dict[str, Any]) -> FeatureEvent:
    problem = _event_problem(d["numeric"])
    if problem:
        raise DecodeError("invalid_value", problem)
    _check_names(d)
    return FeatureEvent(**d)


def _retrain_request(d: dict[str, Any]) -> RetrainRequest:
    d["evidence"] = [Evidence(**e) for e in d["evidence"]]
    return RetrainRequest(**d)


def _drift_report(d: dict[str, Any]) -> DriftReport:
    d["metrics"] = [FeatureDrift(**m) for m in d["metrics"]]
    return DriftReport(**d)


# ---------------------------------------------------------------- record -> datum


def _pack(values: Any, dtype: str, n: int, what: str) -> bytes:
    array = np.asarray(values, dtype=dtype)
    if array.shape != (n,):
        raise ValueError(f"{what} has shape {array.shape}, expected ({n},)")
    return array.tobytes()


def _lists(columns: Mapping[str, list], n: int, what: str) -> dict[str, list]:
    for key, values in columns.items():
        if len(values) != n:
            raise ValueError(f"{what} {key!r} has {len(values)} values, expected {n}")
    return dict(columns)


def _columns_datum(b: PredictionBatch | FeatureBatch) -> dict[str, Any]:
    n = b.n
    if n == 0:
        raise ValueError("a batch needs at least one event")
    return {
        "model_id": b.model_id,
        "model_version": b.model_version,
        "event_ids": list(b.event_ids),
        "event_times": _pack(b.event_times, "<i8", n, "event_times"),
        "numeric": {k: _pack(v, "<f8", n, f"numeric {k!r}") for k, v in b.numeric.items()},
        "categorical": _lists(b.categorical, n, "categorical"),
        "attributes": _lists(b.attributes, n, "attributes"),
    }


def _prediction_batch_datum(b: PredictionBatch) -> dict[str, Any]:
    d = _columns_datum(b)
    n = b.n
    # The dataclass default (an empty array) means "no predictions"; the wire form needs n NaNs.
    predictions = b.predictions if len(b.predictions) else np.full(n, np.nan)
    if b.predicted_labels and len(b.predicted_labels) != n:
        raise ValueError(f"predicted_labels has {len(b.predicted_labels)} values, expected {n} or none")
    d["predictions"] = _pack(predictions, "<f8", n, "predictions")
    d["predicted_labels"] = list(b.predicted_labels)
    d["latency_ms"] = b"" if b.latency_ms is None else _pack(b.latency_ms, "<f8", n, "latency_ms")
    problem = _batch_problem(
        {k: np.frombuffer(v, "<f8") for k, v in d["numeric"].items()},
        np.frombuffer(d["predictions"], "<f8"),
        np.frombuffer(d["latency_ms"], "<f8"),
    )
    if problem:
        raise ValueError(problem)
    return d


def _feature_batch_datum(b: FeatureBatch) -> dict[str, Any]:
    d = _columns_datum(b)
    problem = _batch_problem({k: np.frombuffer(v, "<f8") for k, v in d["numeric"].items()})
    if problem:
        raise ValueError(problem)
    return d


def _label_batch_datum(b: LabelBatch) -> dict[str, Any]:
    n = b.n
    if n == 0:
        raise ValueError("a batch needs at least one event")
    if b.string_labels and len(b.string_labels) != n:
        raise ValueError(f"string_labels has {len(b.string_labels)} values, expected {n} or none")
    d = {
        "model_id": b.model_id,
        "event_ids": list(b.event_ids),
        "event_times": _pack(b.event_times, "<i8", n, "event_times"),
        "numeric_labels": _pack(b.numeric_labels, "<f8", n, "numeric_labels"),
        "string_labels": list(b.string_labels),
    }
    problem = _label_problem(np.frombuffer(d["numeric_labels"], "<f8"), d["string_labels"])
    if problem:
        raise ValueError(problem)
    return d


def _prediction_event_datum(e: PredictionEvent) -> dict[str, Any]:
    if e.prediction is not None and math.isnan(e.prediction):
        # NaN is "no prediction" in the SDK and in batches; a single event says that with null
        return {**e.__dict__, "prediction": None}
    problem = _event_problem(e.numeric, e.prediction, e.latency_ms)
    if problem:
        raise ValueError(problem)
    return e.__dict__


def _feature_event_datum(e: FeatureEvent) -> dict[str, Any]:
    problem = _event_problem(e.numeric)
    if problem:
        raise ValueError(problem)
    return e.__dict__


def _plain_datum(record: Any) -> dict[str, Any]:
    return record.__dict__


def _retrain_request_datum(r: RetrainRequest) -> dict[str, Any]:
    return {**r.__dict__, "evidence": [e.__dict__ for e in r.evidence]}


def _drift_report_datum(r: DriftReport) -> dict[str, Any]:
    return {**r.__dict__, "metrics": [m.__dict__ for m in r.metrics]}


@dataclass(frozen=True)
class _Kind:
    cls: type
    to_datum: Callable[[Any], dict[str, Any]]
    from_datum: Callable[[dict[str, Any]], Any]


_KINDS: dict[str, _Kind] = {
    f"{NAMESPACE}.{k.cls.__name__}": k
    for k in (
        _Kind(PredictionEvent, _prediction_event_datum, _prediction_event),
        _Kind(PredictionBatch, _prediction_batch_datum, _prediction_batch),
        _Kind(FeatureEvent, _feature_event_datum, _feature_event),
        _Kind(FeatureBatch, _feature_batch_datum, _feature_batch),
        _Kind(LabelEvent, _plain_datum, lambda d: LabelEvent(**d)),
        _Kind(LabelBatch, _label_batch_datum, _label_batch),
        _Kind(RetrainRequest, _retrain_request_datum, _retrain_request),
        _Kind(ModelEvent, _plain_datum, lambda d: ModelEvent(**d)),
        _Kind(DriftReport, _drift_report_datum, _drift_report),
        _Kind(Alert, _plain_datum, lambda d: Alert(**d)),
    )
}
_NAME_OF_CLASS: dict[type, str] = {k.cls: name for name, k in _KINDS.items()}


def infer_json_record(obj: Mapping[str, Any]) -> str:
    """The record a JSON object without a ``"type"`` is taken to be (rules in the module docstring).

    >>> infer_json_record({"event_id": "e1", "model_id": "m", "event_time": 1, "label": 1.0})
    'LabelEvent'
    """
    keys = obj.keys()
    if "label" in keys:
        return "LabelEvent"
    if "alert_id" in keys:
        return "Alert"
    if "request_id" in keys and "reason" in keys:
        return "RetrainRequest"
    if "event" in keys and "version" in keys:
        return "ModelEvent"
    if "metrics" in keys or "drifted_features" in keys:
        return "DriftReport"
    if keys & {"prediction", "predicted_label", "latency_ms"}:
        return "PredictionEvent"
    if "model_version" in keys:
        return "FeatureEvent"
    raise DecodeError(
        "json_schema",
        'cannot tell which record this JSON object is; add "type": "PredictionEvent" '
        "(or LabelEvent, FeatureEvent, ...)",
    )


# ---------------------------------------------------------------- the codec


@dataclass(frozen=True)
class _Reader:
    """How to turn one writer's bodies into one reader's records."""

    writer: SchemaVersion
    reader: SchemaVersion
    kind: _Kind | None

    def datum(self, data: bytes, offset: int) -> dict[str, Any]:
        fo = io.BytesIO(data)
        fo.seek(offset)
        reader = None if self.writer is self.reader else self.reader.parsed
        try:
            datum = schemaless_reader(fo, self.writer.parsed, reader)
        except SchemaResolutionError as exc:
            raise DecodeError(
                "schema_resolution",
                f"{self.writer.name} v{self.writer.version} cannot be read as v{self.reader.version}: {exc}",
            ) from exc
        except Exception as exc:  # fastavro raises EOFError, IndexError, UnicodeDecodeError, ... on bad bytes
            raise DecodeError(
                "avro_body", f"{self.writer.name} body does not parse: {type(exc).__name__}: {exc}"
            ) from exc
        if fo.tell() != len(data):
            raise DecodeError("avro_body", f"{len(data) - fo.tell()} bytes left after the {self.writer.name} body")
        return datum

    def record(self, data: bytes, offset: int) -> Record:
        return self.convert(self.datum(data, offset))

    def convert(self, datum: dict[str, Any]) -> Record:
        if self.kind is None:
            raise DecodeError("unexpected_record", f"{self.reader.name} is not a driftline record type")
        return self.kind.from_datum(datum)


class Codec:
    """Decodes and encodes driftline records (formats and error reasons in the module docstring).

    >>> codec = Codec()
    >>> event = LabelEvent("e1", "credit", 1700000000123, "approved")
    >>> data = codec.encode(event)
    >>> data[:2].hex(), codec.decode(data) == event
    ('c301', True)
    >>> codec.decode(b'{"event_id": "e1", "model_id": "credit", "event_time": 1700000000123, "label": 1}')
    LabelEvent(event_id='e1', model_id='credit', event_time=1700000000123, label=1.0)
    >>> codec.decode(b"\\x01garbage")
    Traceback (most recent call last):
    ...
    driftline.streams.codec.codec.DecodeError: unknown_encoding: first byte 0x01 is not C3 01 (Avro), ...
    """

    def __init__(
        self, schemas: SchemaSet | None = None, *, schema_registry: str | SchemaRegistryClient | None = None
    ) -> None:
        self.schemas = schemas if schemas is not None else SchemaSet.load()
        if isinstance(schema_registry, str):
            schema_registry = SchemaRegistryClient(schema_registry)
        self.registry = schema_registry
        self._by_fingerprint: dict[bytes, _Reader] = {}
        self._by_schema_id: dict[int, _Reader] = {}
        # A weak reference: a SchemaSet shared by many codecs must not keep them alive.
        forget = weakref.WeakMethod(self._forget)

        def on_change() -> None:
            method = forget()
            if method is not None:
                method()

        self.schemas.on_change(on_change)

    @classmethod
    def from_settings(cls, settings: Any) -> Codec:
        """A codec that also reads Confluent framing when ``settings.schema_registry`` is set."""
        return cls(schema_registry=settings.schema_registry or None)

    def _forget(self) -> None:
        self._by_fingerprint.clear()
        self._by_schema_id.clear()

    def _reader_for(self, writer: SchemaVersion) -> _Reader:
        reader = self.schemas.current(writer.name)
        if writer.fingerprint == reader.fingerprint:
            writer = reader  # e.g. our own schema from a registry: no resolution step needed
        return _Reader(writer, reader, _KINDS.get(writer.name))

    # -- decoding

    def decode(self, data: bytes, *, topic: str | None = None) -> Record:
        """The record in ``data``; ``topic`` (like ``"predictions"``, no prefix) also checks it belongs there.

        Raises DecodeError and nothing else (module docstring), ValueError for an unknown topic name.
        """
        if topic is not None and topic not in TOPIC_RECORDS:
            raise ValueError(f"unknown topic {topic!r}; expected one of {', '.join(TOPIC_RECORDS)}")
        try:
            if type(data) is not bytes:
                data = as_message_bytes(data)
            if data[:2] == SINGLE_OBJECT_MAGIC:
                # The hot path: one dict look-up, one fastavro read.
                reader = self._by_fingerprint.get(data[2:10])
                record = (reader or self._single_object_reader(data)).record(data, 10)
            else:
                reader, datum = self._decode_other(data, topic)
                record = reader.convert(datum)
            if topic is not None:
                self._check_topic(record, topic)
            return record
        except DecodeError:
            raise
        except Exception as exc:  # a reader's surprise must cost one message, never the consumer
            raise _unexpected(exc) from exc

    def decode_datum(self, data: bytes, *, topic: str | None = None) -> tuple[SchemaVersion, dict[str, Any]]:
        """The reader schema and the plain Avro datum, before conversion to a record (DecodeError as ``decode``)."""
        try:
            if type(data) is not bytes:
                data = as_message_bytes(data)
            if data[:2] == SINGLE_OBJECT_MAGIC:
                reader = self._by_fingerprint.get(data[2:10]) or self._single_object_reader(data)
                return reader.reader, reader.datum(data, 10)
            reader, datum = self._decode_other(data, topic)
            return reader.reader, datum
        except DecodeError:
            raise
        except Exception as exc:
            raise _unexpected(exc) from exc

    def _single_object_reader(self, data: bytes) -> _Reader:
        if len(data) < 10:
            raise DecodeError("truncated", f"{len(data)} bytes; single-object encoding needs a 10-byte header")
        fp = data[2:10]
        writer = self.schemas.by_fingerprint(fp)
        if writer is None:
            raise DecodeError(
                "unknown_fingerprint",
                f"no known schema has fingerprint {fp.hex()} (little-endian); "
                f"known records: {', '.join(self.schemas.names())}",
            )
        reader = self._by_fingerprint[fp] = self._reader_for(writer)
        return reader

    def _decode_other(self, data: bytes, topic: str | None) -> tuple[_Reader, dict[str, Any]]:
        if not data:
            raise DecodeError("empty", "the message has no bytes")
        first = data[0]
        if first == _CONFLUENT_MAGIC:
            reader = self._confluent_reader(data)
            return reader, reader.datum(data, 5)
        if first in _JSON_START:
            return self._decode_json(data, topic)
        if first == SINGLE_OBJECT_MAGIC[0]:
            raise DecodeError("unknown_encoding", f"C3 is followed by {data[1:2].hex() or 'nothing'}, not 01")
        raise DecodeError(
            "unknown_encoding", f"first byte 0x{first:02x} is not C3 01 (Avro), 00 (Confluent) or {{ (JSON)"
        )

    def _confluent_reader(self, data: bytes) -> _Reader:
        if self.registry is None:
            raise DecodeError(
                "unknown_encoding",
                "Confluent wire format (first byte 00) needs a schema registry; set DRIFTLINE_SCHEMA_REGISTRY",
            )
        if len(data) < 5:
            raise DecodeError("truncated", f"{len(data)} bytes; Confluent framing needs a 5-byte header")
        schema_id = int.from_bytes(data[1:5], "big")
        reader = self._by_schema_id.get(schema_id)
        if reader is not None:
            return reader
        try:
            schema = self.registry.schema(schema_id)
        except SchemaRegistryError as exc:
            raise DecodeError("unknown_schema_id" if exc.unknown else "schema_registry", str(exc)) from exc
        try:
            writer = SchemaVersion.from_schema(schema, version=0)
            reader = self._reader_for(writer)
        except (SchemaSetError, KeyError) as exc:
            raise DecodeError("unknown_schema_id", f"schema id {schema_id} is not a driftline record: {exc}") from exc
        self._by_schema_id[schema_id] = reader
        return reader

    def _decode_json(self, data: bytes, topic: str | None) -> tuple[_Reader, dict[str, Any]]:
        try:
            # Strict UTF-8 (json.loads of bytes would also take UTF-16 and raw surrogates)
            obj = json.loads(data.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise DecodeError("json_syntax", f"JSON must be UTF-8: {exc}") from exc
        except ValueError as exc:
            raise DecodeError("json_syntax", str(exc)) from exc
        except RecursionError as exc:
            raise DecodeError("json_syntax", "nested too deeply") from exc
        if not isinstance(obj, dict):
            raise DecodeError("json_schema", f"expected a JSON object, got {type(obj).__name__}")
        name = obj.pop("type", None)
        if name is None and topic is not None and TOPIC_RECORDS.get(topic):
            name = TOPIC_RECORDS[topic][0]
        if name is None:
            name = infer_json_record(obj)
        if not isinstance(name, str):
            raise DecodeError("json_schema", f'"type" must name a record, got {name!r}')
        try:
            version = self.schemas.current(name)
        except KeyError as exc:
            raise DecodeError("json_schema", str(exc.args[0])) from exc
        if version.name in _BATCHES:
            raise DecodeError("json_schema", f"{version.short_name} has no JSON form; send single events or Avro")
        unknown = sorted(set(obj) - set(version.field_names))
        if unknown:
            raise DecodeError("json_schema", f"{version.short_name} has no field(s) {', '.join(unknown)}")
        try:
            validate(obj, version.parsed, raise_errors=True)
        except ValidationError as exc:
            # reprlib: a value of a megabyte is quoted by its first characters, at once
            problems = "; ".join(
                f"{e.field.removeprefix(version.name + '.')} is {reprlib.repr(e.datum)}, expected {e.schema}"
                for e in exc.errors[:5]
            )
            raise DecodeError("json_schema", f"not a valid {version.short_name}: {problems}") from exc
        # A write and read through the same schema fills defaults and makes ints of double fields floats,
        # so that JSON and Avro inputs give identical records.
        buf = io.BytesIO()
        try:
            schemaless_writer(buf, version.parsed, obj)
        except UnicodeEncodeError as exc:
            raise DecodeError(
                "json_syntax",
                f"a string holds a lone surrogate ({exc.object[exc.start : exc.end]!r}), "
                "which is not a Unicode character",
            ) from exc
        except OverflowError as exc:
            raise DecodeError("json_schema", f"a number does not fit its {version.short_name} field: {exc}") from exc
        buf.seek(0)
        return _Reader(version, version, _KINDS.get(version.name)), schemaless_reader(buf, version.parsed, None)

    @staticmethod
    def _check_topic(record: Record, topic: str) -> None:
        allowed = TOPIC_RECORDS.get(topic)
        if allowed is None:
            raise ValueError(f"unknown topic {topic!r}; expected one of {', '.join(TOPIC_RECORDS)}")
        if allowed and type(record).__name__ not in allowed:
            raise DecodeError(
                "unexpected_record",
                f"a {type(record).__name__} does not belong on {topic} (expected {' or '.join(allowed)})",
            )

    # -- encoding

    def encode(self, record: Record, *, writer: SchemaVersion | None = None) -> bytes:
        """Single-object encoding of ``record`` with the current schema, or ``writer``."""
        name = _NAME_OF_CLASS.get(type(record))
        if name is None:
            raise TypeError(f"{type(record).__name__} is not a driftline record")
        return self.encode_datum(_KINDS[name].to_datum(record), writer or self.schemas.current(name))

    def encode_datum(self, datum: Mapping[str, Any], writer: SchemaVersion) -> bytes:
        """Single-object encoding of a plain Avro datum with the given writer schema."""
        buf = io.BytesIO()
        buf.write(writer.header)
        try:
            schemaless_writer(buf, writer.parsed, datum)
        except Exception as exc:  # fastavro raises TypeError, ValueError, struct.error, ... for wrong values
            raise ValueError(f"cannot encode {writer.short_name}: {type(exc).__name__}: {exc}") from exc
        return buf.getvalue()

    def encode_json(self, record: Record) -> bytes:
        """A JSON object with ``"type"`` and the record's fields; batches have no JSON form.

        NaN is written as the token ``NaN``, which Python and most JSON libraries read.
        """
        name = _NAME_OF_CLASS.get(type(record))
        if name is None:
            raise TypeError(f"{type(record).__name__} is not a driftline record")
        if name in _BATCHES:
            raise TypeError(f"{type(record).__name__} has no JSON form; encode it with Avro")
        datum = _KINDS[name].to_datum(record)
        return json.dumps({"type": name.rsplit(".", 1)[-1], **datum}, separators=(",", ":")).encode()


def as_message_bytes(value: Any) -> bytes:
    """A message value as ``bytes``; a missing value (a Kafka tombstone) is a DecodeError ``empty``.

    >>> as_message_bytes(memoryview(b"{}")), as_message_bytes(bytearray(b"x"))
    (b'{}', b'x')
    """
    if value is None:
        raise DecodeError("empty", "the message has no value (a tombstone)")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise DecodeError("malformed", f"a message value is bytes, not {type(value).__name__}")


_default_codec: Codec | None = None


def default_codec() -> Codec:
    """A process-wide codec over ``schemas/avro/`` without a schema registry."""
    global _default_codec
    if _default_codec is None:
        _default_codec = Codec()
    return _default_codec


def decode(data: bytes, *, topic: str | None = None) -> Record:
    """``default_codec().decode``."""
    return default_codec().decode(data, topic=topic)


def encode(record: Record) -> bytes:
    """``default_codec().encode``."""
    return default_codec().encode(record)


def encode_json(record: Record) -> bytes:
    """``default_codec().encode_json``."""
    return default_codec().encode_json(record)
