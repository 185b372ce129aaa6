"""The one Confluent Schema Registry call the codec needs: a writer schema by id.

Producers that use Confluent serializers frame each message as ``00`` and a
4-byte big-endian schema id. The codec asks the registry for that id once
(``GET {url}/schemas/ids/{id}``) and keeps the answer: ids are immutable.

Credentials in the URL (``https://user:password@registry/``) are sent as HTTP
basic authentication and never appear in an error, a log line or a repr: every
message quotes the URL through ``driftline.redaction.redact``.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from driftline.redaction import redact


class SchemaRegistryError(Exception):
    """The registry could not be asked, or gave an answer the codec cannot use.

    ``unknown`` is True when the registry answered that the id does not exist.
    The message is redacted.

    >>> str(SchemaRegistryError("http://u:pw@registry unreachable"))
    'http://u:***@registry unreachable'
    """

    def __init__(self, message: str, *, unknown: bool = False) -> None:
        super().__init__(redact(message))
        self.unknown = unknown


class SchemaRegistryClient:
    """Writer schemas by id, fetched once each.

    Failed look-ups are not cached as answers, but for ``retry_after`` seconds
    the same id fails at once instead of waiting for the registry again, so
    that an unreachable registry cannot slow a consumer to one message per timeout.

    >>> client = SchemaRegistryClient("http://127.0.0.1:8081/")
    >>> client.url
    'http://127.0.0.1:8081'
    >>> SchemaRegistryClient("https://bob:s3cret@registry.local/")
    SchemaRegistryClient('https://bob:***@registry.local')
    """

    def __init__(self, url: str, *, timeout: float = 5.0, retry_after: float = 5.0) -> None:
        self._shown = url.rstrip("/")
        self.url, self._authorization = _split_credentials(self._shown)  # the URL requests go to: no userinfo
        self.timeout = timeout
        self.retry_after = retry_after
        self._schemas: dict[int, dict[str, Any]] = {}
        self._failed: dict[int, tuple[float, SchemaRegistryError]] = {}
        self._lock = threading.Lock()
        self.fetches = 0

    def __repr__(self) -> str:
        return f"SchemaRegistryClient({self.shown_url!r})"

    @property
    def shown_url(self) -> str:
        """The URL as it may be logged: with the user, without the password."""
        return redact(self._shown)

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
        path = f"/schemas/ids/{schema_id}"
        url = f"{self.shown_url}{path}"
        self.fetches += 1
        request = urllib.request.Request(f"{self.url}{path}")
        if self._authorization:
            request.add_header("Authorization", self._authorization)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise SchemaRegistryError(
                    f"schema id {schema_id} is not in the registry at {self.shown_url}", unknown=True
                ) from exc
            raise SchemaRegistryError(f"schema registry {url} answered HTTP {exc.code}") from exc
        except Exception as exc:  # URLError, OSError, http.client.HTTPException, InvalidURL (a ValueError), ...
            raise SchemaRegistryError(f"schema registry {url} unreachable: {type(exc).__name__}: {exc}") from exc
        try:
            answer = json.loads(body)
            if answer.get("schemaType", "AVRO") != "AVRO":
                raise SchemaRegistryError(f"schema id {schema_id} is {answer['schemaType']!r}, not Avro", unknown=True)
            schema = json.loads(answer["schema"])
        except SchemaRegistryError:
            raise
        except Exception as exc:  # not JSON, not an object, too deep (RecursionError), ...
            raise SchemaRegistryError(
                f"schema registry {url} gave an answer that is not a schema: {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(schema, dict):
            raise SchemaRegistryError(f"schema id {schema_id} is not an Avro record schema", unknown=True)
        return schema


def _split_credentials(url: str) -> tuple[str, str | None]:
    """The URL without its userinfo, and the basic-authentication header value it held (or None).

    >>> _split_credentials("https://bob:s3cret@registry.local:8081/x")
    ('https://registry.local:8081/x', 'Basic Ym9iOnMzY3JldA==')
    >>> _split_credentials("http://127.0.0.1:8081")
    ('http://127.0.0.1:8081', None)
    """
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as exc:
        raise ValueError(f"schema registry {redact(url)} is not a URL: {exc}") from None
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    token = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}".encode()
    return urllib.parse.urlunsplit(parts._replace(netloc=host)), "Basic " + base64.b64encode(token).decode()
