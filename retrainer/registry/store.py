"""The model registry: versions with lineage, aliases, tags and an audit log, in SQLite or PostgreSQL.

Every change runs in one transaction that first locks the model's row, so
changes to one model are serialised: concurrent registrations get distinct
versions, and concurrent promotions leave exactly one champion. Every change
writes an audit entry in the same transaction, so the log cannot miss one.

The champion's history is a stack: ``promote`` pushes, ``rollback`` pops,
so repeated rollbacks walk back through earlier champions.
"""

from __future__ import annotations

import getpass
import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import fields, replace
from typing import TYPE_CHECKING, Any

from driftline.retrainer.registry.artifacts import ArtifactStore
from driftline.retrainer.registry.canonical import canonical_json, sha256_hex
from driftline.retrainer.registry.dialects import Dialect, dialect_for
from driftline.retrainer.registry.errors import (
    ArtifactIntegrityError,
    InvalidVersionError,
    ModelNotFoundError,
    RegistryError,
    VersionNotFoundError,
)
from driftline.retrainer.registry.models import (
    CHALLENGER,
    CHAMPION,
    AuditEntry,
    Lineage,
    ModelSummary,
    ModelVersion,
    validate_name,
    version_number,
)
from driftline.retrainer.registry.provenance import code_version
from driftline.retrainer.registry.schema import MIGRATIONS, SCHEMA_VERSION
from driftline.streams.records import ModelEvent

if TYPE_CHECKING:
    from driftline.settings import Settings

ProfileSource = Mapping[str, Any] | Callable[[str], Mapping[str, Any]]

# A Lineage's fields are stored in columns of the same names, between the registry's own.
_LINEAGE_COLUMNS = tuple(f.name for f in fields(Lineage))
_LINEAGE_JSON = ("hyperparameters", "train_metrics", "holdout_metrics", "evidence")
_LINEAGE_NUMBERS = ("dataset_rows", "dataset_start_ms", "dataset_end_ms", "parent_version")
_HEAD_COLUMNS = ("model_id", "version", "status", "artifact_sha256", "reference_profile_sha256")
_TAIL_COLUMNS = ("note", "created_at", "created_by")
_VERSION_COLUMNS = ", ".join(_HEAD_COLUMNS + _LINEAGE_COLUMNS + _TAIL_COLUMNS)
_IN_CHUNK = 500  # values of one ``IN (...)`` list (SQLite's older builds allow 999 parameters a statement)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def default_actor() -> str:
    """The OS user, for changes made without naming who made them."""
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers; still record something honest
        return "unknown"


class _Tx:
    """A cursor inside one transaction that speaks the store's portable SQL."""

    def __init__(self, cursor: Any, dialect: Dialect) -> None:
        self.cursor = cursor
        self._dialect = dialect

    def execute(self, statement: str, params: Sequence[Any] = ()) -> int:
        self.cursor.execute(self._dialect.sql(statement), tuple(params))
        return self.cursor.rowcount

    def one(self, statement: str, params: Sequence[Any] = ()) -> tuple | None:
        self.execute(statement, params)
        return self.cursor.fetchone()

    def all(self, statement: str, params: Sequence[Any] = ()) -> list[tuple]:
        self.execute(statement, params)
        return list(self.cursor.fetchall())


class Registry:
    """Registered model versions with lineage, aliases, tags and an audit log.

    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> reg = Registry(f"sqlite:///{d}/registry.db", ArtifactStore(os.path.join(d, "artifacts")))
    >>> v1 = reg.register("credit", lineage=Lineage(dataset_rows=100), artifact_bytes=b"model-1",
    ...                   reference_profile={"features": {}}, actor="ana", reason="first model")
    >>> v1.version, v1.status
    ('1', 'registered')
    >>> reg.promote("credit", "1", actor="ana", reason="baseline").event
    'promoted'
    >>> reg.alias("credit", "champion").version
    '1'
    >>> reg.load_artifact("credit", "1")
    b'model-1'
    >>> [e.action for e in reg.audit_log("credit")]
    ['create_model', 'register', 'promote']
    """

    def __init__(self, url: str, artifacts: ArtifactStore) -> None:
        self.url = url
        self.artifacts = artifacts
        self._dialect: Dialect = dialect_for(url)
        self._dialect.prepare()
        self.migrate()

    @classmethod
    def from_settings(cls, settings: Settings) -> Registry:
        """The registry at ``DRIFTLINE_REGISTRY`` with artifacts under ``DRIFTLINE_ARTIFACTS``."""
        return cls(settings.registry, ArtifactStore(settings.artifacts))

    def __repr__(self) -> str:
        return f"Registry({self._dialect.describe()!r}, {self.artifacts!r})"

    # -- transactions -------------------------------------------------------------
    @contextmanager
    def _transaction(self, begin: str) -> Iterator[_Tx]:
        conn = self._dialect.connect()
        try:
            cursor = conn.cursor()
            cursor.execute(begin)
            try:
                yield _Tx(cursor, self._dialect)
            except BaseException:
                cursor.execute("ROLLBACK")
                raise
            cursor.execute("COMMIT")
        finally:
            conn.close()

    def _write(self) -> Any:
        return self._transaction(self._dialect.begin_write)

    def _read(self) -> Any:
        return self._transaction(self._dialect.begin_read)

    @contextmanager
    def _version_change(self, model_id: str, version: int | str) -> Iterator[tuple[_Tx, int, str, int]]:
        """A write transaction with the model locked: ``(tx, version number, its status now, when)``.

        Raises if the model or the version does not exist.
        """
        number = version_number(version)
        at = now_ms()
        with self._write() as tx:
            self._lock_model(tx, model_id)
            yield tx, number, self._status(tx, model_id, number), at

    # -- schema -------------------------------------------------------------------
    def migrate(self) -> int:
        """Bring the schema up to date; safe to call from many processes at once. Returns the version."""
        with self._write() as tx:
            self._dialect.lock_for_migration(tx.cursor)
            tx.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                "version BIGINT PRIMARY KEY, description TEXT NOT NULL, applied_at BIGINT NOT NULL)"
            )
            row = tx.one("SELECT MAX(version) FROM schema_version")
            current = row[0] if row and row[0] is not None else 0
            if current > SCHEMA_VERSION:
                raise RegistryError(
                    f"the registry at {self._dialect.describe()} has schema version {current}, newer than this "
                    f"driftline understands ({SCHEMA_VERSION}); upgrade driftline"
                )
            for version, description, statements in MIGRATIONS:
                if version <= current:
                    continue
                for statement in statements:
                    tx.execute(statement.format(identity_pk=self._dialect.identity_pk))
                tx.execute(
                    "INSERT INTO schema_version (version, description, applied_at) VALUES (?, ?, ?)",
                    (version, description, now_ms()),
                )
            return SCHEMA_VERSION

    def schema_version(self) -> int:
        with self._read() as tx:
            row = tx.one("SELECT MAX(version) FROM schema_version")
        return int(row[0]) if row and row[0] is not None else 0

    # -- helpers inside a transaction ----------------------------------------------
    def _lock_model(self, tx: _Tx, model_id: str) -> int:
        """Lock the model's row until the transaction ends; returns its last version."""
        row = tx.one(f"SELECT last_version FROM models WHERE model_id = ?{self._dialect.for_update}", (model_id,))
        if row is None:
            raise ModelNotFoundError(f"model {model_id!r} is not registered")
        return int(row[0])

    @staticmethod
    def _audit(
        tx: _Tx,
        model_id: str,
        version: int | None,
        action: str,
        actor: str,
        reason: str,
        details: Mapping[str, Any],
        at: int,
    ) -> None:
        tx.execute(
            "INSERT INTO audit_log (model_id, version, action, actor, reason, details, occurred_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (model_id, version, action, actor, reason, canonical_json(dict(details), what="audit details"), at),
        )

    @staticmethod
    def _status(tx: _Tx, model_id: str, version: int) -> str:
        row = tx.one("SELECT status FROM model_versions WHERE model_id = ? AND version = ?", (model_id, version))
        if row is None:
            raise VersionNotFoundError(f"model {model_id!r} has no version {version}")
        return str(row[0])

    @staticmethod
    def _set_status(tx: _Tx, model_id: str, version: int, status: str) -> None:
        tx.execute(
            "UPDATE model_versions SET status = ? WHERE model_id = ? AND version = ?", (status, model_id, version)
        )

    @staticmethod
    def _alias_version(tx: _Tx, model_id: str, alias: str) -> int | None:
        row = tx.one("SELECT version FROM aliases WHERE model_id = ? AND alias = ?", (model_id, alias))
        return None if row is None else int(row[0])

    @staticmethod
    def _point_alias(tx: _Tx, model_id: str, alias: str, version: int, at: int) -> None:
        # one statement, so a reader sees the old target or the new one, never none
        tx.execute(
            "INSERT INTO aliases (model_id, alias, version, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (model_id, alias) DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at",
            (model_id, alias, version, at),
        )

    def _fetch_versions(self, tx: _Tx, model_id: str, version: int | None = None) -> list[ModelVersion]:
        where, params = (
            ("model_id = ?", [model_id]) if version is None else ("model_id = ? AND version = ?", [model_id, version])
        )
        rows = tx.all(f"SELECT {_VERSION_COLUMNS} FROM model_versions WHERE {where} ORDER BY version", params)
        aliases: dict[int, list[str]] = defaultdict(list)
        for alias, v in tx.all(f"SELECT alias, version FROM aliases WHERE {where} ORDER BY alias", params):
            aliases[int(v)].append(alias)
        tags: dict[int, dict[str, str]] = defaultdict(dict)
        for key, value, v in tx.all(
            f"SELECT tag_key, tag_value, version FROM tags WHERE {where} ORDER BY tag_key", params
        ):
            tags[int(v)][key] = value
        return [_version_from_row(row, tuple(aliases[int(row[1])]), tags[int(row[1])]) for row in rows]

    def _model_exists(self, tx: _Tx, model_id: str) -> bool:
        return tx.one("SELECT 1 FROM models WHERE model_id = ?", (model_id,)) is not None

    # -- registering ------------------------------------------------------------------
    def register(
        self,
        model_id: str,
        *,
        lineage: Lineage,
        reference_profile: ProfileSource,
        artifact_bytes: bytes | None = None,
        tags: Mapping[str, str] | None = None,
        note: str | None = None,
        actor: str | None = None,
        reason: str = "",
    ) -> ModelVersion:
        """Record a new immutable version; its number is the model's next one.

        ``reference_profile`` is the training data's profile as a JSON dict
        (``ReferenceProfile.to_dict()``), or a function of the allocated version
        string returning it, for profiles that carry their own version.
        ``artifact_bytes`` is None for models trained and served elsewhere.
        A missing ``lineage.code_version`` is filled in with :func:`code_version`.
        Publish ``version.registered_event()`` on the ``models`` topic.
        """
        validate_name(model_id)
        actor = actor or default_actor()
        tag_items = {validate_name(k, "tag key"): _tag_value(k, v) for k, v in (tags or {}).items()}
        if lineage.code_version is None:
            lineage = replace(lineage, code_version=code_version())
        parent = None if lineage.parent_version is None else version_number(lineage.parent_version)
        if parent is not None and lineage.parent_version != str(parent):
            lineage = replace(lineage, parent_version=str(parent))
        lineage_values = _lineage_values(lineage)
        # Stored before the row that names it: a crash in between leaves an
        # unreferenced object, never a version whose artifact is missing.
        artifact_sha256 = None if artifact_bytes is None else self.artifacts.put_bytes(artifact_bytes)
        at = now_ms()
        with self._write() as tx:
            created = tx.execute(
                "INSERT INTO models (model_id, last_version, created_at, created_by) VALUES (?, 0, ?, ?) "
                "ON CONFLICT (model_id) DO NOTHING",
                (model_id, at, actor),
            )
            if created == 1:
                self._audit(tx, model_id, None, "create_model", actor, reason, {}, at)
            number = self._lock_model(tx, model_id) + 1
            tx.execute("UPDATE models SET last_version = ? WHERE model_id = ?", (number, model_id))
            if parent is not None and parent >= number:
                raise VersionNotFoundError(f"parent version {parent} of model {model_id!r} does not exist")
            version = str(number)
            profile = reference_profile(version) if callable(reference_profile) else reference_profile
            if not isinstance(profile, Mapping):
                raise RegistryError(f"the reference profile must be a JSON object (dict), not {type(profile).__name__}")
            profile_body = canonical_json(dict(profile), what="reference profile", allow_nan=True)
            profile_sha256 = sha256_hex(profile_body.encode())
            row = (model_id, number, "registered", artifact_sha256, profile_sha256, *lineage_values, note, at, actor)
            tx.execute(f"INSERT INTO model_versions ({_VERSION_COLUMNS}) VALUES ({', '.join('?' * len(row))})", row)
            tx.execute(
                "INSERT INTO reference_profiles (model_id, version, sha256, body) VALUES (?, ?, ?, ?)",
                (model_id, number, profile_sha256, profile_body),
            )
            for key, value in tag_items.items():
                tx.execute(
                    "INSERT INTO tags (model_id, version, tag_key, tag_value) VALUES (?, ?, ?, ?)",
                    (model_id, number, key, value),
                )
            self._audit(
                tx,
                model_id,
                number,
                "register",
                actor,
                reason,
                {"artifact_sha256": artifact_sha256, "request_id": lineage.request_id, "tags": tag_items},
                at,
            )
        return ModelVersion(
            model_id=model_id,
            version=version,
            status="registered",
            lineage=lineage,
            artifact_sha256=artifact_sha256,
            reference_profile_sha256=profile_sha256,
            aliases=(),
            tags=tag_items,
            note=note,
            created_at=at,
            created_by=actor,
        )

    # -- reading -------------------------------------------------------------------------
    def get(self, model_id: str, version: int | str) -> ModelVersion:
        number = version_number(version)
        with self._read() as tx:
            found = self._fetch_versions(tx, model_id, number)
            if not found:
                if not self._model_exists(tx, model_id):
                    raise ModelNotFoundError(f"model {model_id!r} is not registered")
                raise VersionNotFoundError(f"model {model_id!r} has no version {number}")
        return found[0]

    def list_models(self) -> list[ModelSummary]:
        with self._read() as tx:
            models = tx.all(
                "SELECT m.model_id, m.last_version, m.created_at, COUNT(v.version) FROM models m "
                "LEFT JOIN model_versions v ON v.model_id = m.model_id "
                "GROUP BY m.model_id, m.last_version, m.created_at ORDER BY m.model_id"
            )
            aliases: dict[str, dict[str, str]] = defaultdict(dict)
            for model_id, alias, version in tx.all("SELECT model_id, alias, version FROM aliases ORDER BY alias"):
                aliases[model_id][alias] = str(version)
        return [
            ModelSummary(
                model_id=model_id,
                latest_version=str(last) if last else None,
                versions=int(count),
                aliases=aliases[model_id],
                created_at=int(created_at),
            )
            for model_id, last, created_at, count in models
        ]

    def list_versions(self, model_id: str) -> list[ModelVersion]:
        with self._read() as tx:
            if not self._model_exists(tx, model_id):
                raise ModelNotFoundError(f"model {model_id!r} is not registered")
            return self._fetch_versions(tx, model_id)

    def find_by_request(self, model_id: str, request_id: str) -> list[ModelVersion]:
        """Versions registered for one retrain request (lets a retried request find its earlier result)."""
        with self._read() as tx:
            rows = tx.all(
                "SELECT version FROM model_versions WHERE model_id = ? AND request_id = ? ORDER BY version",
                (model_id, request_id),
            )
            return [self._fetch_versions(tx, model_id, int(r[0]))[0] for r in rows]

    def alias(self, model_id: str, name: str) -> ModelVersion | None:
        """The version an alias points to, or None when the alias is not set."""
        with self._read() as tx:
            number = self._alias_version(tx, model_id, name)
            if number is None:
                if not self._model_exists(tx, model_id):
                    raise ModelNotFoundError(f"model {model_id!r} is not registered")
                return None
            return self._fetch_versions(tx, model_id, number)[0]

    def champion_history(self, model_id: str) -> list[str]:
        """Champions still on the rollback stack, oldest first (the last is the champion)."""
        with self._read() as tx:
            rows = tx.all(
                "SELECT version FROM champion_history WHERE model_id = ? AND rolled_back_at IS NULL ORDER BY id",
                (model_id,),
            )
        return [str(r[0]) for r in rows]

    def load_artifact(self, model_id: str, version: int | str) -> bytes:
        """The version's artifact, verified against the hash recorded at registration."""
        mv = self.get(model_id, version)
        if mv.artifact_sha256 is None:
            raise RegistryError(
                f"model {model_id!r} version {mv.version} has no artifact: it was registered without one "
                "(trained and served outside driftline)"
            )
        return self.artifacts.get_bytes(mv.artifact_sha256)

    def reference_profile(self, model_id: str, version: int | str) -> dict[str, Any]:
        """The reference profile of the version's training data, as registered."""
        number = version_number(version)
        with self._read() as tx:
            row = tx.one(
                "SELECT sha256, body FROM reference_profiles WHERE model_id = ? AND version = ?", (model_id, number)
            )
            if row is None:
                self.get(model_id, number)  # raises the precise not-found error
                raise VersionNotFoundError(f"model {model_id!r} version {number} has no reference profile")
        sha256, body = row
        if sha256_hex(body.encode()) != sha256:
            raise ArtifactIntegrityError(
                f"the reference profile of model {model_id!r} version {number} was modified in the database: "
                f"it no longer hashes to {sha256}"
            )
        return json.loads(body)

    def reference_profiles(self, keys: Sequence[tuple[str, int | str]]) -> dict[tuple[str, str], dict[str, Any]]:
        """The reference profiles of many versions in one read, by ``(model_id, version)``.

        A key left out of the answer has no profile the registry vouches for (no such model or version,
        an invalid version, or a body that no longer hashes to its digest): :meth:`reference_profile`
        says which. A worker meeting a thousand versions at once pays one read, not a thousand.

        >>> import tempfile, os
        >>> d = tempfile.mkdtemp()
        >>> reg = Registry(f"sqlite:///{d}/registry.db", ArtifactStore(os.path.join(d, "artifacts")))
        >>> for m in ("a", "b"):
        ...     _ = reg.register(m, lineage=Lineage(), reference_profile={"model_id": m})
        >>> found = reg.reference_profiles([("a", "1"), ("b", 1), ("b", "2"), ("c", "1"), ("a", "x")])
        >>> sorted(found.items())
        [(('a', '1'), {'model_id': 'a'}), (('b', '1'), {'model_id': 'b'})]
        """
        wanted: dict[str, set[int]] = {}
        for model_id, version in keys:
            try:
                wanted.setdefault(model_id, set()).add(version_number(version))
            except InvalidVersionError:
                continue
        found: dict[tuple[str, str], dict[str, Any]] = {}
        models = list(wanted)
        with self._read() as tx:
            # in chunks: SQLite bounds the parameters of one statement (999 in older builds)
            for lo in range(0, len(models), _IN_CHUNK):
                chunk = models[lo : lo + _IN_CHUNK]
                rows = tx.all(
                    "SELECT model_id, version, sha256, body FROM reference_profiles "
                    f"WHERE model_id IN ({', '.join('?' * len(chunk))})",
                    chunk,
                )
                for model_id, number, sha256, body in rows:
                    if int(number) in wanted[model_id] and sha256_hex(body.encode()) == sha256:
                        found[(model_id, str(number))] = json.loads(body)
        return found

    def audit_log(self, model_id: str | None = None) -> list[AuditEntry]:
        """Every change, oldest first; all models when ``model_id`` is None."""
        columns = "id, model_id, version, action, actor, reason, details, occurred_at"
        with self._read() as tx:
            if model_id is None:
                rows = tx.all(f"SELECT {columns} FROM audit_log ORDER BY id")
            else:
                rows = tx.all(f"SELECT {columns} FROM audit_log WHERE model_id = ? ORDER BY id", (model_id,))
        return [
            AuditEntry(
                id=int(i),
                model_id=m,
                version=None if v is None else str(v),
                action=a,
                actor=who,
                reason=why,
                details=json.loads(d),
                occurred_at=int(t),
            )
            for i, m, v, a, who, why, d, t in rows
        ]

    def mirror_rows(self, model_id: str | None = None) -> list[dict[str, Any]]:
        """Rows for the ClickHouse ``model_versions`` mirror, for every version (of one model).

        Pass them to ``Warehouse.upsert_model_versions``; syncing after each
        change (or periodically) keeps the mirror current.
        """
        model_ids = [model_id] if model_id is not None else [m.model_id for m in self.list_models()]
        at = now_ms()  # one stamp per sync: this snapshot replaces earlier ones
        return [mv.mirror_row(updated_at=at) for m in model_ids for mv in self.list_versions(m)]

    # -- changing aliases and status ---------------------------------------------------------
    def promote(self, model_id: str, version: int | str, actor: str | None = None, reason: str = "") -> ModelEvent:
        """Make ``version`` the champion; the previous champion stays on the rollback stack.

        Promoting the current champion again changes nothing and returns the same event.
        """
        actor = actor or default_actor()
        with self._version_change(model_id, version) as (tx, number, status, at):
            previous = self._alias_version(tx, model_id, CHAMPION)
            if previous != number:
                self._point_alias(tx, model_id, CHAMPION, number, at)
                if previous is not None:
                    self._set_status(tx, model_id, previous, "archived")
                self._set_status(tx, model_id, number, "champion")
                was_challenger = self._alias_version(tx, model_id, CHALLENGER) == number
                if was_challenger:
                    tx.execute("DELETE FROM aliases WHERE model_id = ? AND alias = ?", (model_id, CHALLENGER))
                tx.execute(
                    "INSERT INTO champion_history (model_id, version, promoted_at) VALUES (?, ?, ?)",
                    (model_id, number, at),
                )
                self._audit(
                    tx,
                    model_id,
                    number,
                    "promote",
                    actor,
                    reason,
                    {
                        "from": _str(previous),
                        "to": str(number),
                        "previous_status": status,
                        "removed_aliases": [CHALLENGER] if was_challenger else [],
                    },
                    at,
                )
            promoted = self._fetch_versions(tx, model_id, number)[0]
        return promoted.event("promoted", occurred_at=at, alias=CHAMPION)

    def rollback(self, model_id: str, actor: str | None = None, reason: str = "") -> ModelEvent:
        """Move the champion back to the previous champion; repeated calls walk further back.

        Earlier champions rejected since are skipped. Returns a ``rolled_back``
        event naming the version that is champion now.
        """
        actor = actor or default_actor()
        at = now_ms()
        with self._write() as tx:
            self._lock_model(tx, model_id)
            stack = tx.all(
                "SELECT h.id, h.version, v.status FROM champion_history h JOIN model_versions v "
                "ON v.model_id = h.model_id AND v.version = h.version "
                "WHERE h.model_id = ? AND h.rolled_back_at IS NULL ORDER BY h.id DESC",
                (model_id,),
            )
            current = self._alias_version(tx, model_id, CHAMPION)
            if not stack or current is None:
                raise RegistryError(f"model {model_id!r} has no champion to roll back")
            popped = [stack[0][0]]
            target = None
            for entry_id, version, status in stack[1:]:
                if status != "rejected" and int(version) != current:
                    target = int(version)
                    break
                popped.append(entry_id)
            if target is None:
                raise RegistryError(
                    f"model {model_id!r} has no previous champion to roll back to (champion is version {current})"
                )
            for entry_id in popped:
                tx.execute("UPDATE champion_history SET rolled_back_at = ? WHERE id = ?", (at, entry_id))
            self._point_alias(tx, model_id, CHAMPION, target, at)
            self._set_status(tx, model_id, current, "archived")
            self._set_status(tx, model_id, target, "champion")
            self._audit(tx, model_id, target, "rollback", actor, reason, {"from": str(current), "to": str(target)}, at)
            restored = self._fetch_versions(tx, model_id, target)[0]
        event = restored.event("rolled_back", occurred_at=at, alias=CHAMPION)
        # the request that produced the restored version is not why it is back
        return replace(event, request_id=None)

    def reject(self, model_id: str, version: int | str, actor: str | None = None, reason: str = "") -> ModelEvent:
        """Mark a version unfit; it loses its aliases. The champion cannot be rejected: roll back first."""
        actor = actor or default_actor()
        with self._version_change(model_id, version) as (tx, number, status, at):
            if self._alias_version(tx, model_id, CHAMPION) == number:
                raise RegistryError(
                    f"version {number} is the champion of model {model_id!r}; roll back or promote another "
                    "version before rejecting it"
                )
            if status != "rejected":
                removed = [
                    r[0]
                    for r in tx.all(
                        "SELECT alias FROM aliases WHERE model_id = ? AND version = ? ORDER BY alias",
                        (model_id, number),
                    )
                ]
                tx.execute("DELETE FROM aliases WHERE model_id = ? AND version = ?", (model_id, number))
                self._set_status(tx, model_id, number, "rejected")
                self._audit(
                    tx,
                    model_id,
                    number,
                    "reject",
                    actor,
                    reason,
                    {"previous_status": status, "removed_aliases": removed},
                    at,
                )
            rejected = self._fetch_versions(tx, model_id, number)[0]
        return rejected.event("rejected", occurred_at=at)

    def set_alias(
        self, model_id: str, name: str, version: int | str, actor: str | None = None, reason: str = ""
    ) -> ModelVersion:
        """Point an alias at a version (moving it if set). ``champion`` moves only through :meth:`promote`.

        Pointing ``challenger`` at a version marks it ``challenger``; the
        version it leaves goes back to ``registered``.
        """
        validate_name(name, "alias")
        if name == CHAMPION:
            raise RegistryError(
                "the champion alias moves only through promote() and rollback(), which keep its history"
            )
        actor = actor or default_actor()
        with self._version_change(model_id, version) as (tx, number, status, at):
            if status == "rejected":
                raise RegistryError(f"version {number} of model {model_id!r} is rejected; it cannot take an alias")
            if name == CHALLENGER and status == "champion":
                raise RegistryError(
                    f"version {number} of model {model_id!r} is the champion; it cannot be the challenger"
                )
            previous = self._alias_version(tx, model_id, name)
            if previous != number:
                self._point_alias(tx, model_id, name, number, at)
                if name == CHALLENGER:
                    if previous is not None and self._status(tx, model_id, previous) == "challenger":
                        self._set_status(tx, model_id, previous, "registered")
                    if status == "registered":
                        self._set_status(tx, model_id, number, "challenger")
                self._audit(
                    tx,
                    model_id,
                    number,
                    "set_alias",
                    actor,
                    reason,
                    {"alias": name, "from": _str(previous), "to": str(number)},
                    at,
                )
            return self._fetch_versions(tx, model_id, number)[0]

    def remove_alias(self, model_id: str, name: str, actor: str | None = None, reason: str = "") -> None:
        if name == CHAMPION:
            raise RegistryError("the champion alias cannot be removed; use rollback() or promote()")
        actor = actor or default_actor()
        at = now_ms()
        with self._write() as tx:
            self._lock_model(tx, model_id)
            previous = self._alias_version(tx, model_id, name)
            if previous is None:
                return
            tx.execute("DELETE FROM aliases WHERE model_id = ? AND alias = ?", (model_id, name))
            if name == CHALLENGER and self._status(tx, model_id, previous) == "challenger":
                self._set_status(tx, model_id, previous, "registered")
            self._audit(tx, model_id, previous, "remove_alias", actor, reason, {"alias": name}, at)

    def set_tag(
        self, model_id: str, version: int | str, key: str, value: str, actor: str | None = None, reason: str = ""
    ) -> None:
        validate_name(key, "tag key")
        value = _tag_value(key, value)
        actor = actor or default_actor()
        with self._version_change(model_id, version) as (tx, number, _, at):
            row = tx.one(
                "SELECT tag_value FROM tags WHERE model_id = ? AND version = ? AND tag_key = ?", (model_id, number, key)
            )
            if row is not None and row[0] == value:
                return
            tx.execute(
                "INSERT INTO tags (model_id, version, tag_key, tag_value) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (model_id, version, tag_key) DO UPDATE SET tag_value = excluded.tag_value",
                (model_id, number, key, value),
            )
            self._audit(
                tx,
                model_id,
                number,
                "set_tag",
                actor,
                reason,
                {"key": key, "from": None if row is None else row[0], "to": value},
                at,
            )

    def remove_tag(
        self, model_id: str, version: int | str, key: str, actor: str | None = None, reason: str = ""
    ) -> None:
        actor = actor or default_actor()
        with self._version_change(model_id, version) as (tx, number, _, at):
            deleted = tx.execute(
                "DELETE FROM tags WHERE model_id = ? AND version = ? AND tag_key = ?", (model_id, number, key)
            )
            if deleted:
                self._audit(tx, model_id, number, "remove_tag", actor, reason, {"key": key}, at)


def _str(version: int | None) -> str | None:
    return None if version is None else str(version)


def _tag_value(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise RegistryError(f"tag {key!r}: values are strings, got {type(value).__name__}")
    return value


def _lineage_values(lineage: Lineage) -> tuple[Any, ...]:
    """The lineage's column values, in :data:`_LINEAGE_COLUMNS` order: JSON as canonical text."""
    data = lineage.to_dict()
    for name in _LINEAGE_JSON:
        data[name] = canonical_json(data[name], what=name.replace("_", " "))
    for name in _LINEAGE_NUMBERS:
        data[name] = _int(data[name])
    return tuple(data[name] for name in _LINEAGE_COLUMNS)


def _version_from_row(row: tuple, aliases: tuple[str, ...], tags: dict[str, str]) -> ModelVersion:
    model_id, version, status, artifact_sha256, profile_sha256 = row[: len(_HEAD_COLUMNS)]
    lineage_end = len(_HEAD_COLUMNS) + len(_LINEAGE_COLUMNS)
    data = dict(zip(_LINEAGE_COLUMNS, row[len(_HEAD_COLUMNS) : lineage_end], strict=True))
    note, created_at, created_by = row[lineage_end:]
    for name in _LINEAGE_JSON:
        data[name] = json.loads(data[name])
    for name in _LINEAGE_NUMBERS:
        data[name] = _int(data[name])
    data["parent_version"] = _str(data["parent_version"])
    return ModelVersion(
        model_id=model_id,
        version=str(version),
        status=status,
        lineage=Lineage.from_dict(data),
        artifact_sha256=artifact_sha256,
        reference_profile_sha256=profile_sha256,
        aliases=aliases,
        tags=dict(tags),
        note=note,
        created_at=int(created_at),
        created_by=created_by,
    )


def _int(value: Any) -> int | None:
    return None if value is None else int(value)
