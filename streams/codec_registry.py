"""The one Confluent Schema Registry call the codec needs: a writer schema by id.

Producers that use Confluent serializers frame each message as ``00`` and a
4-byte big-endian schema id. The codec asks the registry for that id once
(``GET {url}/schemas/ids/{id}``) and keeps the answer: ids are immutable.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from typing import Any


class SchemaRegistryError(Exception):
    """The registry could not be asked, or gave an answer the codec cannot use.

    ``unknown`` is True when the registry answered that the id does not exist.
    """

    def __init__(self, message: str, *, unknown: bool = False) -> None:
        super().__init__(message)
        self.unknown = unknown


class SchemaRegistryClient:
    """Writer schemas by id, fetched once each.

    Failed look-ups are not cached as answers, but for ``retry_after`` seconds
    the same id fails at once instead of waiting for the registry again, so
    that an unreachable registry cannot slow a consumer to one message per timeout.

    >>> client = SchemaRegistryClient("http://127.0.0.1:8081/")
    >>> client.url
    'http://127.0.0.1:8081'
    """

    def __init__(self, url: str, *, timeout: float = 5.0, retry_after: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.retry_after = retry_after
        self._schemas: dict[int, dict[str, Any]] = {}
        self._failed: dict[int, tuple[float, SchemaRegistryError]] = {}
        self._lock = threading.Lock()
        self.fetches = 0

    def schema(self, schema_id: int) -> dict[str, Any]:
        """The Avro schema registered under ``schema_id``."""
        found = self._schemas.get(schema_id)
        if found is not None:
            return found
        with self._lock:
            found = self._schemas.get(schema_id)
            if found is not None:
                return found
            failed = self._failed.get(schema_id)
            if failed is not None and time.monotonic() - failed[0] < self.retry_after:
                raise failed[1]
            try:
                schema = self._fetch(schema_id)
            except SchemaRegistryError as exc:
                self._failed[schema_id] = (time.monotonic(), exc)
                raise
            self._failed.pop(schema_id, None)
            self._schemas[schema_id] = schema
            return schema

    def _fetch(self, schema_id: int) -> dict[str, Any]:
        url = f"{self.url}/schemas/ids/{schema_id}"
        self.fetches += 1
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise SchemaRegistryError(f"schema id {schema_id} is not in the registry at {self.url}", unknown=True) from exc
            raise SchemaRegistryError(f"schema registry {url} answered HTTP {exc.code}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise SchemaRegistryError(f"schema registry {url} unreachable: {exc}") from exc
        try:
            answer = json.loads(body)
            if answer.get("schemaType", "AVRO") != "AVRO":
                raise SchemaRegistryError(f"schema id {schema_id} is {answer['schemaType']}, not Avro", unknown=True)
            schema = json.loads(answer["schema"])
        except SchemaRegistryError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SchemaRegistryError(f"schema registry {url} gave an answer that is not a schema: {exc}") from exc
        if not isinstance(schema, dict):
            raise SchemaRegistryError(f"schema id {schema_id} is not an Avro record schema", unknown=True)
        return schema
