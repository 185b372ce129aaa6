"""Hostile driftline messages: every record kind in Avro and JSON, mutated by structure and by bytes.

Shared by the CI fuzz test (``tests/unit/test_fuzz.py``) and the longer run
(``tests/fuzz/run.py``, ``make fuzz``). Everything is drawn from one
``random.Random``, so a seed names a run exactly.

Seeds are one or more records of each kind in ``schemas/avro/``, single-object
encoded, and the JSON form of every non-batch kind. A mutant is made by one of:

- JSON structure: deep nesting, huge integers, lone surrogates (escaped and as
  raw ``ED A0 80``), wrong types, NaN/Infinity, huge strings, missing, extra and
  reserved fields, odd ``"type"`` values, many map entries;
- Avro structure: a record's datum with extreme values (int64 ends, NaN/±inf,
  huge or invalid strings, columns of the wrong length, many entries), written
  straight with fastavro so that the codec's encode-side checks do not filter it;
- bytes: flips, interesting bytes, inserts (overlong varints, huge lengths,
  surrogates, nesting), deletes, duplications, splices of two seeds, truncation.

>>> import random
>>> corpus = Corpus()
>>> rng = random.Random(1)
>>> kind, data = corpus.mutant(rng)
>>> kind in MUTATION_KINDS and isinstance(data, bytes)
True
"""

from __future__ import annotations

import io
import json
import random
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastavro import schemaless_writer

from driftline.streams.codec import Codec
from driftline.streams.codec.schemas import SchemaVersion
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

T0 = 1_700_000_000_123
MUTATION_KINDS = ("json", "avro", "bytes", "seed")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_MESSAGE_BYTES = 1 << 20

_HUGE_INTS = [
    2**63,
    2**63 - 1,
    -(2**63),
    -(2**63) - 1,
    2**64,
    10**19,
    10**20,
    10**308,
    10**309,
    -(10**400),
    10**4000,
    INT64_MIN,
    0,
    -1,
]
_ODD_FLOATS = [float("nan"), float("inf"), float("-inf"), 1e308, -1e308, 5e-324, -0.0, 1.7976931348623157e308]
_ODD_STRINGS = [
    "",
    "\ud800",
    "\udfff",
    "a\ud800b",
    "\ud83d\ude00",
    "\x00",
    "\x00\x00x",
    "é" * 300,
    "\u2028",
    "label",
    "prediction",
    "__prediction__",
    "event_time",
    "type",
    "\\",
    '"',
]
_BYTE_VALUES = [0x00, 0x01, 0x02, 0x7F, 0x80, 0xFF, 0xC3, 0xED, 0xA0, ord("{"), ord("["), ord('"'), ord("\\")]
_CHUNKS = [
    b"\xff" * 10 + b"\x01",  # an overlong varint
    b"\xff" * 9 + b"\x7f",  # the largest 10-byte varint
    b"\xfe\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # zigzag int64 max as a length
    b"\x81\x80\x80\x80\x80\x80\x80\x80\x80\x01",  # a huge negative count (a block with a byte size)
    b"\xed\xa0\x80",  # a UTF-8-encoded lone surrogate
    b"\\ud800",
    b"\xc0\x80",  # overlong NUL
    b"[" * 3000,
    b'{"a":' * 2000,
    b"9" * 400,
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"1e999",
    b"\x00" * 16,
]
_TOPICS = (None, "predictions", "features", "labels", "models", "retrain-requests", "drift", "alerts")


def seed_records() -> list[Any]:
    """Records of every kind, with unions, maps, arrays and enums filled and empty."""
    rng = np.random.default_rng(0)

    def event(i: int, **changes: Any) -> PredictionEvent:
        values = dict(
            event_id=f"e{i}",
            model_id="credit",
            model_version="3",
            event_time=T0 + i,
            numeric={"age": 41.0 + i, "income": -1.5e6},
            categorical={"region": "eu"},
            prediction=0.25,
            predicted_label="approve",
            latency_ms=3.5,
            attributes={"channel": "web"},
        )
        values.update(changes)
        return PredictionEvent(**values)

    n = 70  # 16 such batches hold the 1,000 events that send a poll of batches to the bulk decoder's batch parser
    batch_events = [
        event(
            i,
            numeric={f"f{k}": float(v) for k, v in enumerate(rng.normal(size=3))},
            categorical={"region": ["eu", "us", None][i % 3] or "apac"},
            predicted_label=None if i % 4 else "deny",
        )
        for i in range(n)
    ]
    return [
        event(0),
        event(1, prediction=None, predicted_label=None, latency_ms=None, attributes={}),
        PredictionEvent("e-min", "m", "1", 0),
        PredictionBatch.from_events(batch_events),
        FeatureEvent("f1", "credit", "3", T0, numeric={"age": 3.0}, categorical={"c": "x"}, attributes={"a": "b"}),
        FeatureBatch.from_events(
            [
                FeatureEvent(
                    f"f{i}",
                    "credit",
                    "3",
                    T0 + i,
                    numeric={"age": float(i)},
                    categorical={"c": "xy"[i % 2]},
                    attributes={"a": "b"},
                )
                for i in range(n)
            ]
        ),
        LabelEvent("e1", "credit", T0, 1.0),
        LabelEvent("e2", "credit", T0, "approve"),
        LabelBatch.from_events([LabelEvent(f"e{i}", "credit", T0 + i, "approve" if i % 3 else 1.0) for i in range(n)]),
        RetrainRequest("r1", "credit", "3", "drift", T0, [Evidence("psi", "age", 0.31, 0.2, T0 - 3_600_000, T0)]),
        ModelEvent("promoted", "credit", "4", T0, alias="champion", request_id="r1"),
        DriftReport(
            "credit",
            "3",
            T0 - 3_600_000,
            T0,
            1000,
            5000,
            ["age"],
            [FeatureDrift("age", "psi", 0.31, None, 0.2, True), FeatureDrift("age", "ks", 0.12, 0.003, 0.1, True)],
            T0 + 5,
        ),
        Alert("a1", "credit", "3", "warning", "drift", "age drifted", T0, T0 - 3_600_000, T0),
    ]


@dataclass
class _Seed:
    record: Any
    version: SchemaVersion
    datum: dict[str, Any]
    avro: bytes
    json: bytes | None


def _write(version: SchemaVersion, datum: Any) -> bytes:
    buf = io.BytesIO()
    buf.write(version.header)
    schemaless_writer(buf, version.parsed, datum)
    return buf.getvalue()


class Corpus:
    """The seeds of every record kind, and mutants of them drawn from a ``random.Random``."""

    def __init__(self, codec: Codec | None = None, *, big: bool = True) -> None:
        self.codec = codec or Codec()
        # big: strings up to a megabyte and maps of 10,000 entries now and then (the long run); without,
        # strings of at most 4 KiB and maps of 1,000 entries (the CI run, which checks the big ones by hand)
        self.big = big
        self.seeds: list[_Seed] = []
        for record in seed_records():
            data = self.codec.encode(record)
            version = self.codec.schemas.by_fingerprint(data[2:10])
            assert version is not None
            _, datum = self.codec.decode_datum(data)
            try:
                as_json = self.codec.encode_json(record)
            except TypeError:
                as_json = None  # batches have no JSON form
            self.seeds.append(_Seed(record, version, datum, data, as_json))
        self.kinds = sorted({type(s.record).__name__ for s in self.seeds})

    # -- the entry point

    def mutant(self, rng: random.Random, kind: str | None = None) -> tuple[str, bytes]:
        """One message and how it was made (one of MUTATION_KINDS)."""
        kind = kind or rng.choices(MUTATION_KINDS, weights=(35, 25, 38, 2))[0]
        seed = rng.choice(self.seeds)
        if kind == "json":
            if seed.json is None:
                kind, data = "bytes", self.bytes_mutant(rng, seed.avro)
            else:
                data = self.json_mutant(rng, seed)
        elif kind == "avro":
            data = self.avro_mutant(rng, seed)
        elif kind == "bytes":
            base = seed.json if seed.json is not None and rng.random() < 0.4 else seed.avro
            data = self.bytes_mutant(rng, base)
        else:
            data = seed.avro if seed.json is None or rng.random() < 0.5 else seed.json
        # no broker takes more by default (message.max.bytes is 1 MB): longer mutants are cut there
        return kind, data[:MAX_MESSAGE_BYTES]

    def topic(self, rng: random.Random) -> str | None:
        return rng.choice(_TOPICS)

    # -- values

    def huge_string(self, rng: random.Random) -> str:
        sizes = [257, 1_025, 4_096] + ([65_536, 1_048_576] if self.big else [])
        return rng.choice("xé\u4e2d") * rng.choice(sizes)

    def odd_string(self, rng: random.Random) -> str:
        return self.huge_string(rng) if rng.random() < 0.15 else rng.choice(_ODD_STRINGS)

    def odd_value(self, rng: random.Random) -> Any:
        """A value of any JSON type, mostly a hostile one."""
        pick = rng.randrange(8)
        if pick == 0:
            return rng.choice(_HUGE_INTS)
        if pick == 1:
            return rng.choice(_ODD_FLOATS)
        if pick == 2:
            return self.odd_string(rng)
        if pick == 3:
            return nesting_marker(rng.choice([3, 100, 999, 1_100, 2_000, 5_000]), rng.random() < 0.5)
        if pick == 4:
            return rng.choice([True, False, None])
        if pick == 5:
            return [rng.choice(_HUGE_INTS + _ODD_FLOATS), "x", None]
        if pick == 6:
            return {self.odd_string(rng): rng.choice(_ODD_FLOATS + [1.0, "v"]) for _ in range(rng.randrange(4))}
        return {f"k{i}": float(i) for i in range(rng.choice([1_000, 10_000] if self.big else [100, 1_000]))}

    # -- JSON

    def json_mutant(self, rng: random.Random, seed: _Seed) -> bytes:
        obj: dict[str, Any] = json.loads(seed.json)
        for _ in range(rng.randint(1, 3)):
            self._mutate_object(rng, obj)
        text = json.dumps(
            obj, ensure_ascii=rng.random() < 0.5, allow_nan=True, separators=rng.choice([(",", ":"), (", ", ": ")])
        )
        data = expand_nesting(text.encode("utf-8", "surrogatepass"))  # lone surrogates: raw ED A0 80 unless escaped
        if rng.random() < 0.2:
            data = self.bytes_mutant(rng, data, rounds=1)
        return data

    def _mutate_object(self, rng: random.Random, obj: dict[str, Any]) -> None:
        keys = list(obj)
        target: dict[str, Any] = obj
        maps = [k for k in keys if isinstance(obj[k], dict)]
        if maps and rng.random() < 0.3:
            target = obj[rng.choice(maps)]  # inside numeric/categorical/attributes
            if not target:
                target["age"] = 1.0
        key = rng.choice(list(target)) if target else "x"
        op = rng.randrange(9)
        if op == 0:
            target[key] = self.odd_value(rng)
        elif op == 1:
            target.pop(key, None)
        elif op == 2:
            target[self.odd_string(rng)] = self.odd_value(rng)
        elif op == 3:
            obj["type"] = rng.choice(
                self.kinds
                + ["PredictionBatch", "Nope", "driftline.v1.Alert", "", 7, None, ["LabelEvent"], {"a": 1}, "\ud800"]
            )
        elif op == 4:
            target[key] = rng.choice(_HUGE_INTS)
        elif op == 5:
            target[key] = rng.choice(_ODD_FLOATS)
        elif op == 6:
            target[key] = self.huge_string(rng)
        elif op == 7:
            value = target.pop(key, None)
            target[self.odd_string(rng)] = value
        else:
            target[key] = nesting_marker(rng.choice([1_100, 2_000, 10_000]), rng.random() < 0.5)

    # -- Avro datum

    def avro_mutant(self, rng: random.Random, seed: _Seed) -> bytes:
        datum = _copy(seed.datum)
        for _ in range(rng.randint(1, 3)):
            self._mutate_datum(rng, seed.version.parsed, datum)
        try:
            data = _write(seed.version, datum)
        except Exception:  # noqa: BLE001 - the mutant does not fit its own schema: mutate its bytes instead
            return self.bytes_mutant(rng, seed.avro)
        if rng.random() < 0.15:
            data = self.bytes_mutant(rng, data, rounds=1)
        return data

    def _mutate_datum(self, rng: random.Random, schema: dict[str, Any], datum: dict[str, Any]) -> None:
        field = rng.choice(schema["fields"])
        name, kind = field["name"], _kind(field["type"])
        value = datum.get(name)
        if kind == "string":
            datum[name] = self.odd_string(rng) if rng.random() < 0.7 else _surrogate_free(self.huge_string(rng))
        elif kind == "long":
            datum[name] = rng.choice([INT64_MIN, INT64_MAX, INT64_MIN + 1, -1, 0, -946_684_800_000, 2**62])
        elif kind in ("double", "float"):
            datum[name] = rng.choice(_ODD_FLOATS)
        elif kind == "union" and value is not None:
            if isinstance(value, str):
                datum[name] = self.odd_string(rng)
            elif isinstance(value, float):
                datum[name] = rng.choice(_ODD_FLOATS)
        elif kind == "bytes":
            datum[name] = self._column(rng, value)
        elif kind == "map" and isinstance(value, dict):
            self._mutate_map(rng, value)
        elif kind == "array" and isinstance(value, list):
            op = rng.randrange(3)
            if op == 0 and value:
                value.pop(rng.randrange(len(value)))
            elif op == 1 and value:
                value.extend([value[0]] * _copies(rng.choice([1, 1_000]), value[0]))
            elif value and isinstance(value[0], str):
                value[rng.randrange(len(value))] = self.odd_string(rng)
        elif kind == "enum":
            datum[name] = rng.choice(field["type"]["symbols"]) if "symbols" in field["type"] else value

    def _column(self, rng: random.Random, value: bytes) -> bytes:
        op = rng.randrange(4)
        if op == 0:
            return value[: -rng.choice([1, 8])]
        if op == 1:
            return value + bytes(8)
        if op == 2:
            odd = np.array([rng.choice(_ODD_FLOATS) for _ in range(len(value) // 8)], dtype="<f8")
            return odd.tobytes()
        longs = np.array([rng.choice([INT64_MIN, INT64_MAX, -1, 0]) for _ in range(len(value) // 8)], dtype="<i8")
        return longs.tobytes()

    def _mutate_map(self, rng: random.Random, value: dict[str, Any]) -> None:
        op = rng.randrange(4)
        sample = next(iter(value.values()), 1.0)
        if op == 0:
            value[_surrogate_free(self.odd_string(rng)) or "k"] = sample
        elif op == 1:
            # many entries; fewer when each is a whole column, so that a mutant stays under a megabyte
            many = [1_000, 10_000] if self.big else [100, 1_000]
            for i in range(_copies(rng.choice([50, 200] if isinstance(sample, (list, bytes)) else many), sample)):
                value[f"k{i}"] = sample
        elif op == 2 and value:
            key = rng.choice(list(value))
            if isinstance(sample, float):
                value[key] = rng.choice(_ODD_FLOATS)
            elif isinstance(sample, bytes):
                value[key] = self._column(rng, value[key])
            elif isinstance(sample, str):
                value[key] = _surrogate_free(self.odd_string(rng))
        elif value:
            value.pop(rng.choice(list(value)))
        for key in ("label", "prediction", "event_time"):
            if rng.random() < 0.05:
                value[key] = sample

    # -- bytes

    def bytes_mutant(self, rng: random.Random, data: bytes, rounds: int | None = None) -> bytes:
        buf = bytearray(data)
        for _ in range(rounds or rng.choice([1, 1, 1, 2, 3, 8])):
            self._mutate_bytes(rng, buf)
        return bytes(buf)

    def _mutate_bytes(self, rng: random.Random, buf: bytearray) -> None:
        n = len(buf)
        at = rng.randrange(n + 1)
        op = rng.randrange(8)
        if op == 0 and n:
            buf[min(at, n - 1)] ^= 1 << rng.randrange(8)
        elif op == 1 and n:
            buf[min(at, n - 1)] = rng.choice(_BYTE_VALUES)
        elif op == 2:
            buf[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 3:
            buf[at:at] = rng.choice(_CHUNKS)
        elif op == 4 and n:
            del buf[at : at + rng.randint(1, 16)]
        elif op == 5 and n:
            size = rng.randint(1, 32)
            buf[at:at] = buf[at : at + size] * rng.choice([1, 2, 50])
        elif op == 6:
            other = rng.choice(self.seeds)
            donor = other.avro if other.json is None or rng.random() < 0.5 else other.json
            cut = rng.randrange(len(donor) + 1)
            buf[at:] = donor[cut:]
        else:
            del buf[at:]


_MARKER = re.compile(rb'"@@nest:(\d+):([ao])@@"')


def nesting_marker(depth: int, as_object: bool) -> str:
    """A placeholder that :func:`expand_nesting` turns into a value nested ``depth`` levels deep
    (``json.dumps`` itself cannot write one deeper than the recursion limit)."""
    return f"@@nest:{depth}:{'o' if as_object else 'a'}@@"


def expand_nesting(data: bytes) -> bytes:
    """JSON text with every nesting marker replaced by its nested value.

    >>> expand_nesting(json.dumps({"x": nesting_marker(2, True)}).encode())
    b'{"x": {"a":{"a":1}}}'
    """

    def nest(match: re.Match) -> bytes:
        depth = int(match[1])
        if match[2] == b"o":
            return b'{"a":' * depth + b"1" + b"}" * depth
        return b"[" * depth + b"1" + b"]" * depth

    return _MARKER.sub(nest, data)


def _size(value: Any) -> int:
    if isinstance(value, (str, bytes)):
        return len(value)
    if isinstance(value, (list, tuple)):
        return sum(map(_size, value))
    if isinstance(value, dict):
        return sum(_size(k) + _size(v) for k, v in value.items())
    return 8


def _copies(wanted: int, value: Any) -> int:
    """At most ``wanted`` copies of ``value``, and no more than a megabyte of them (memory stays bounded)."""
    return max(1, min(wanted, MAX_MESSAGE_BYTES // max(1, _size(value))))


def _kind(avro_type: Any) -> str:
    if isinstance(avro_type, list):
        return "union"
    if isinstance(avro_type, dict):
        return str(avro_type.get("type"))
    return str(avro_type)


def _surrogate_free(text: str) -> str:
    # fastavro cannot write a lone surrogate; raw invalid UTF-8 comes from the byte mutations
    return (
        text.encode("utf-8", "replace").decode("utf-8", "replace")
        if any("\ud800" <= c <= "\udfff" for c in text[:8])
        else text
    )


def _copy(datum: Any) -> Any:
    if isinstance(datum, dict):
        return {k: _copy(v) for k, v in datum.items()}
    if isinstance(datum, list):
        return [_copy(v) for v in datum]
    return datum
