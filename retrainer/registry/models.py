"""The registry's records: model versions with their lineage, aliases, tags and audit entries.

Versions are whole numbers in the database (so they sort) and strings
everywhere else, because ``model_version`` is a string in every event.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from driftline import naming
from driftline.retrainer.registry.canonical import canonical_json
from driftline.retrainer.registry.errors import InvalidNameError, InvalidVersionError
from driftline.streams.records import Evidence, ModelEvent, ModelEventKind

Status = Literal["registered", "challenger", "champion", "rejected", "archived"]
STATUSES: tuple[Status, ...] = ("registered", "challenger", "champion", "rejected", "archived")

CHAMPION = "champion"
CHALLENGER = "challenger"


# Names never reach a file path (artifacts are stored by hash), but they do
# reach topic keys, dashboards and shell commands: keep them boring.
def validate_name(value: object, what: str = "model id") -> str:
    """Return ``value`` if it is a valid model id, alias or tag key (the rule of :mod:`driftline.naming`).

    >>> validate_name("credit-risk_v2.1")
    'credit-risk_v2.1'
    >>> validate_name("../etc/passwd")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    driftline.retrainer.registry.errors.InvalidNameError: invalid model id '../etc/passwd': use 1-128 letters, ...
    """
    return naming.validate_name(value, what, error=InvalidNameError)


def version_number(version: int | str) -> int:
    """The database form of a version: ``"3"`` and ``3`` both give ``3``.

    >>> version_number("3"), version_number(3)
    (3, 3)
    >>> version_number("v3")  # doctest: +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
    ...
    driftline.retrainer.registry.errors.InvalidVersionError: invalid version 'v3':
    versions are whole numbers from 1 ("1", "2", ...)
    """
    if isinstance(version, bool):
        number = None
    elif isinstance(version, int):
        number = version
    elif isinstance(version, str) and version.isascii() and version.isdigit():
        number = int(version)
    else:
        number = None
    if number is None or number < 1:
        raise InvalidVersionError(f'invalid version {version!r}: versions are whole numbers from 1 ("1", "2", ...)')
    return number


@dataclass(frozen=True)
class Lineage:
    """Where a model version came from: data, code, trainer, results and the trigger.

    This is the trainer's half of a version, and :class:`ModelVersion` the
    registry's: a ``Lineage`` is complete before the version exists (it is
    what :meth:`Registry.register <driftline.retrainer.registry.Registry.register>`
    takes), never changes afterwards, and names nothing the registry decides,
    so the two are kept apart and share no field. Its field names are the
    ``model_versions`` columns that store it.

    ``dataset_start_ms``/``dataset_end_ms`` bound the event times of the
    training rows. ``evidence`` is what made the policy ask for this model.

    >>> lin = Lineage(dataset_uri="file:///d.parquet", dataset_rows=10, hyperparameters={"lr": 0.1})
    >>> Lineage.from_dict(lin.to_dict()) == lin
    True
    """

    dataset_uri: str | None = None
    dataset_sha256: str | None = None
    dataset_rows: int | None = None
    dataset_start_ms: int | None = None
    dataset_end_ms: int | None = None
    code_version: str | None = None
    trainer: str | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    train_metrics: dict[str, Any] = field(default_factory=dict)
    holdout_metrics: dict[str, Any] = field(default_factory=dict)
    parent_version: str | None = None
    request_id: str | None = None
    evidence: list[Evidence] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["evidence"] = [dataclasses.asdict(e) for e in self.evidence]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Lineage:
        values = dict(data)
        values["evidence"] = [Evidence(**e) for e in values.get("evidence") or []]
        return cls(**values)


@dataclass(frozen=True)
class ModelVersion:
    """One registered version of a model: the registry's record of it.

    It holds what the registry decides or computes (the model id and
    version number, status, aliases and tags, the stored artifact's and
    reference profile's hashes, who registered it and when) around the
    trainer's :class:`Lineage`, kept whole: the lineage given to ``register``
    is the one that comes back (a missing code version filled in). The
    lineage and artifact never change; status, aliases and tags do.

    >>> mv = ModelVersion("credit", "2", "champion", Lineage(request_id="r1"), None, None,
    ...                   aliases=("champion",), created_at=1700000000000)
    >>> row = mv.mirror_row(updated_at=1700000000001)
    >>> row["version"], row["aliases"], row["artifact_sha256"], row["request_id"]
    ('2', ['champion'], '', 'r1')
    >>> mv.event("promoted", alias="champion", occurred_at=5).request_id
    'r1'
    >>> mv.registered_event(alias="challenger").occurred_at
    1700000000000
    """

    model_id: str
    version: str
    status: Status
    lineage: Lineage
    artifact_sha256: str | None
    reference_profile_sha256: str | None
    aliases: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)
    note: str | None = None
    created_at: int = 0
    created_by: str = ""

    def event(self, kind: ModelEventKind, *, occurred_at: int, alias: str | None = None) -> ModelEvent:
        """The ``models`` topic record announcing a change to this version."""
        return ModelEvent(
            event=kind,
            model_id=self.model_id,
            version=self.version,
            occurred_at=occurred_at,
            alias=alias,
            request_id=self.lineage.request_id,
        )

    def registered_event(self, alias: str | None = None) -> ModelEvent:
        """The ``registered`` record, stamped with the registration time; ``alias`` names one it took."""
        return self.event("registered", occurred_at=self.created_at, alias=alias)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form (``show --json``)."""
        data = dataclasses.asdict(self)
        data["lineage"] = self.lineage.to_dict()
        data["aliases"] = list(self.aliases)
        return data

    def mirror_row(self, updated_at: int | None = None) -> dict[str, Any]:
        """A row for the ClickHouse ``model_versions`` mirror, as ``Warehouse.upsert_model_versions`` takes it.

        The table (schemas/clickhouse/0003_operations.sql) keeps absent text
        as '' and absent counts as 0, times as epoch milliseconds, and
        metrics as ``Map(String, Float64)``: train and holdout metrics are
        flattened to ``train.<name>`` and ``holdout.<name>``, numbers only
        (the registry keeps the complete JSON). ``updated_at`` (default: now)
        makes the newest mirror of a version win in the ReplacingMergeTree.
        """
        lin = self.lineage
        return {
            "model_id": self.model_id,
            "version": self.version,
            "status": self.status,
            "aliases": sorted(self.aliases),
            "artifact_sha256": self.artifact_sha256 or "",
            "dataset_uri": lin.dataset_uri or "",
            "dataset_sha256": lin.dataset_sha256 or "",
            "dataset_rows": lin.dataset_rows or 0,
            "code_version": lin.code_version or "",
            "hyperparameters": canonical_json(lin.hyperparameters, what="hyperparameters"),
            "metrics": {**_numbers("train", lin.train_metrics), **_numbers("holdout", lin.holdout_metrics)},
            "parent_version": lin.parent_version,
            "request_id": lin.request_id,
            "created_at": self.created_at,
            "updated_at": time.time_ns() // 1_000_000 if updated_at is None else updated_at,
        }


def _numbers(prefix: str, metrics: dict[str, Any]) -> dict[str, float]:
    return {
        f"{prefix}.{name}": float(value)
        for name, value in metrics.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    }


@dataclass(frozen=True)
class ModelSummary:
    """A registered model: its newest version and where its aliases point.

    >>> ModelSummary("credit", "3", 3, {"champion": "2"}, 1700000000000).aliases["champion"]
    '2'
    """

    model_id: str
    latest_version: str | None
    versions: int
    aliases: dict[str, str]
    created_at: int


@dataclass(frozen=True)
class AuditEntry:
    """One change to the registry: who did what, when and why.

    ``details`` holds the specifics (e.g. ``{"from": "1", "to": "2"}`` for an alias move).

    >>> AuditEntry(7, "credit", "2", "promote", "ana", "better auc", {"from": "1", "to": "2"}, 0).details["from"]
    '1'
    """

    id: int
    model_id: str
    version: str | None
    action: str
    actor: str
    reason: str
    details: dict[str, Any]
    occurred_at: int
