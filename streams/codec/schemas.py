"""Every version of every driftline Avro record, found by fingerprint.

Files in ``schemas/avro/`` are named ``<Record>.v<N>.avsc`` and are never
deleted: a consumer must read what an older producer wrote. The reader
(current) schema of a record is its highest version.

Timestamps are ``long`` with logicalType ``timestamp-millis`` in the files,
but fastavro would turn them into ``datetime`` on read (losing the exact
integer and costing time). The Parsing Canonical Form drops logical types,
so the codec reads and writes with the annotation stripped: fingerprints are
unchanged and timestamps stay exact integer milliseconds.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastavro import parse_schema
from fastavro.schema import fingerprint as _fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form

from driftline.schemas import AVRO_DIR

NAMESPACE = "driftline.v1"
SINGLE_OBJECT_MAGIC = b"\xc3\x01"
_FILE_NAME = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)\.v(?P<version>[1-9][0-9]*)\.avsc$")


class SchemaSetError(ValueError):
    """A schema file or schema that cannot join a SchemaSet."""


def fingerprint(schema: Mapping[str, Any] | str) -> bytes:
    """The 8-byte CRC-64-AVRO fingerprint of a schema's Parsing Canonical Form, little-endian.

    Little-endian is the byte order of the single-object encoding header.

    >>> fingerprint("int").hex()
    '8f5c393f1ad57572'
    """
    return bytes.fromhex(_fastavro_fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))


def strip_logical_types(schema: Any) -> Any:
    """A copy of ``schema`` without ``logicalType`` annotations (see the module docstring).

    >>> strip_logical_types({"type": "long", "logicalType": "timestamp-millis"})
    {'type': 'long'}
    """
    if isinstance(schema, dict):
        return {k: strip_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [strip_logical_types(v) for v in schema]
    return schema


def full_name(schema: Mapping[str, Any]) -> str:
    name = schema["name"]
    if "." in name:
        return name
    namespace = schema.get("namespace")
    return f"{namespace}.{name}" if namespace else name


@dataclass(frozen=True, eq=False)
class SchemaVersion:
    """One version of one record schema, ready for fastavro.

    >>> v = SchemaVersion.from_schema({"type": "record", "name": "T", "namespace": "x",
    ...                                "fields": [{"name": "a", "type": "int"}]}, version=1)
    >>> v.name, v.version, v.header[:2].hex(), len(v.header)
    ('x.T', 1, 'c301', 10)
    """

    name: str
    version: int
    schema: Mapping[str, Any]
    parsed: dict[str, Any] = field(repr=False)
    fingerprint: bytes = field(repr=False)

    @classmethod
    def from_schema(cls, schema: Mapping[str, Any] | str, version: int) -> SchemaVersion:
        if isinstance(schema, str):
            schema = json.loads(schema)
        if not isinstance(schema, Mapping) or schema.get("type") != "record":
            raise SchemaSetError("a driftline schema must be an Avro record")
        schema = copy.deepcopy(dict(schema))
        try:
            parsed = parse_schema(strip_logical_types(schema))
            fp = fingerprint(schema)
        except Exception as exc:  # fastavro raises several types for a bad schema
            raise SchemaSetError(f"invalid Avro schema {schema.get('name')!r}: {exc}") from exc
        return cls(full_name(schema), version, schema, parsed, fp)

    @property
    def short_name(self) -> str:
        return self.name.rsplit(".", 1)[-1]

    @property
    def header(self) -> bytes:
        """The single-object encoding header: ``C3 01`` and the fingerprint."""
        return SINGLE_OBJECT_MAGIC + self.fingerprint

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f["name"] for f in self.schema["fields"])


class SchemaSet:
    """All known versions of the records, by fingerprint, with one current (reader) version per record.

    >>> schemas = SchemaSet.load()
    >>> current = schemas.current("PredictionEvent")
    >>> current.name, schemas.by_fingerprint(current.fingerprint) is current
    ('driftline.v1.PredictionEvent', True)
    """

    def __init__(self, versions: Iterable[SchemaVersion] = ()) -> None:
        self._by_fingerprint: dict[bytes, SchemaVersion] = {}
        self._current: dict[str, SchemaVersion] = {}
        self._listeners: list = []
        for v in versions:
            self._insert(v, make_current=v.version >= self._current.get(v.name, v).version)

    @classmethod
    def load(cls, directory: Path | str = AVRO_DIR) -> SchemaSet:
        """Every ``<Record>.v<N>.avsc`` in ``directory``."""
        versions = []
        for path in sorted(Path(directory).glob("*.avsc")):
            match = _FILE_NAME.match(path.name)
            if not match:
                raise SchemaSetError(f"{path}: schema files are named <Record>.v<N>.avsc")
            try:
                schema = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise SchemaSetError(f"{path}: not JSON: {exc}") from exc
            version = SchemaVersion.from_schema(schema, int(match["version"]))
            if version.short_name != match["name"]:
                raise SchemaSetError(f"{path}: holds record {version.name}, not {match['name']}")
            versions.append(version)
        if not versions:
            raise SchemaSetError(f"no Avro schemas in {directory}")
        return cls(versions)

    def add(
        self, schema: Mapping[str, Any] | str, *, version: int | None = None, make_current: bool = False
    ) -> SchemaVersion:
        """Register one more writer schema at run time (e.g. a newer producer's); returns it.

        ``version`` defaults to one past the highest known version of that record.
        With ``make_current`` it also becomes the reader schema.
        """
        probe = SchemaVersion.from_schema(schema, version or 0)
        if version is None:
            known = [v.version for v in self._by_fingerprint.values() if v.name == probe.name]
            probe = SchemaVersion.from_schema(schema, max(known, default=0) + 1)
        existing = self._by_fingerprint.get(probe.fingerprint)
        if existing is not None:
            if make_current:
                self._insert(existing, make_current=True)
            return existing
        self._insert(probe, make_current=make_current or probe.name not in self._current)
        return probe

    def _insert(self, version: SchemaVersion, *, make_current: bool) -> None:
        other = self._by_fingerprint.get(version.fingerprint)
        if other is not None and other is not version:
            raise SchemaSetError(
                f"{version.name} v{version.version} has the fingerprint of {other.name} v{other.version}"
            )
        self._by_fingerprint[version.fingerprint] = version
        if make_current:
            self._current[version.name] = version
        for listener in self._listeners:
            listener()

    def on_change(self, listener) -> None:
        """Call ``listener()`` after every change (the codec drops its cached decoders)."""
        self._listeners.append(listener)

    def by_fingerprint(self, fp: bytes) -> SchemaVersion | None:
        return self._by_fingerprint.get(fp)

    def current(self, name: str) -> SchemaVersion:
        """The reader schema of a record, by full or short name."""
        version = self._current.get(name if "." in name else f"{NAMESPACE}.{name}")
        if version is None:
            raise KeyError(f"unknown record {name!r}; known: {', '.join(sorted(self._current))}")
        return version

    def names(self) -> list[str]:
        return sorted(self._current)

    def versions(self) -> list[SchemaVersion]:
        return sorted(self._by_fingerprint.values(), key=lambda v: (v.name, v.version))
