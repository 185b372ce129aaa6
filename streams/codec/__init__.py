"""Bytes to driftline records and back: the codec the SDK, the worker and the retrainer share.

One concept per module: ``codec`` (one message to a record and back: Avro single-object,
Confluent, JSON), ``schemas`` (the Avro schema versions and their fingerprints), ``registry``
(a Confluent schema registry client), and the bulk decoder ``bulk`` (many messages at once),
built on ``buffer`` (vectorised byte and varint reads), ``event_parser`` (single events) and
``batch_parser`` (packed-column batches), and ``label_parser`` (many label messages at once).
The names below are the public surface.

>>> from driftline.streams.codec import decode, encode
>>> from driftline.streams.records import LabelEvent
>>> decode(encode(LabelEvent("e1", "m", 5, 1.0))).label
1.0
"""

from driftline.streams.codec.bulk import BulkDecoded, DecodedGroup, decode_bulk
from driftline.streams.codec.codec import (
    DECODE_ERROR_REASONS,
    MAX_DETAIL_CHARS,
    TOPIC_RECORDS,
    Codec,
    DecodeError,
    Record,
    as_message_bytes,
    decode,
    default_codec,
    encode,
    encode_json,
    infer_json_record,
)
from driftline.streams.codec.label_parser import decode_labels
from driftline.streams.codec.registry import SchemaRegistryClient, SchemaRegistryError
from driftline.streams.codec.schemas import SchemaSet, SchemaSetError, SchemaVersion

__all__ = [
    "DECODE_ERROR_REASONS",
    "MAX_DETAIL_CHARS",
    "TOPIC_RECORDS",
    "BulkDecoded",
    "Codec",
    "DecodeError",
    "DecodedGroup",
    "Record",
    "SchemaRegistryClient",
    "SchemaRegistryError",
    "SchemaSet",
    "SchemaSetError",
    "SchemaVersion",
    "as_message_bytes",
    "decode",
    "decode_bulk",
    "decode_labels",
    "default_codec",
    "encode",
    "encode_json",
    "infer_json_record",
]
