"""One model version's lineage, the shell's single record of a version (report and demo alike)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from driftline.report.columns import _ms
from driftline.retrainer.registry import ModelVersion
from driftline.streams.records import Evidence

__all__ = ["VersionInfo"]


@dataclass(frozen=True)
class VersionInfo:
    """One model version's lineage, from the registry or (without one) from the warehouse mirror.

    >>> v = VersionInfo.from_mirror({"version": "2", "status": "champion", "aliases": ["champion"],
    ...     "hyperparameters": '{"lr": 0.1}', "metrics": {"holdout.auc": 0.8, "train.auc": 0.9}, "dataset_rows": 10})
    >>> v.hyperparameters, v.holdout_metrics, v.dataset_rows
    ({'lr': 0.1}, {'auc': 0.8}, 10)
    >>> VersionInfo("2", "champion", ("champion",), "r1").request_id  # what the demo reads of the mirror
    'r1'
    """

    version: str
    status: str
    aliases: tuple[str, ...] = ()
    request_id: str | None = None
    created_at_ms: int | None = None
    created_by: str = ""
    trainer: str = ""
    code_version: str = ""
    dataset_uri: str = ""
    dataset_sha256: str = ""
    dataset_rows: int | None = None
    dataset_start_ms: int | None = None
    dataset_end_ms: int | None = None
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    train_metrics: Mapping[str, Any] = field(default_factory=dict)
    holdout_metrics: Mapping[str, Any] = field(default_factory=dict)
    parent_version: str | None = None
    evidence: Sequence[Evidence] = ()
    artifact_sha256: str = ""
    note: str = ""

    @classmethod
    def from_registry(cls, mv: ModelVersion) -> VersionInfo:
        lin = mv.lineage
        return cls(
            version=mv.version,
            status=mv.status,
            aliases=tuple(mv.aliases),
            created_at_ms=mv.created_at,
            created_by=mv.created_by,
            trainer=lin.trainer or "",
            code_version=lin.code_version or "",
            dataset_uri=lin.dataset_uri or "",
            dataset_sha256=lin.dataset_sha256 or "",
            dataset_rows=lin.dataset_rows,
            dataset_start_ms=lin.dataset_start_ms,
            dataset_end_ms=lin.dataset_end_ms,
            hyperparameters=dict(lin.hyperparameters),
            train_metrics=dict(lin.train_metrics),
            holdout_metrics=dict(lin.holdout_metrics),
            parent_version=lin.parent_version,
            request_id=lin.request_id,
            evidence=tuple(lin.evidence),
            artifact_sha256=mv.artifact_sha256 or "",
            note=mv.note or "",
        )

    @classmethod
    def from_mirror(cls, row: Mapping[str, Any]) -> VersionInfo:
        """From a row of the ``model_versions`` query: metrics come flattened as ``train.x`` and ``holdout.x``."""
        metrics = dict(row.get("metrics") or {})
        try:
            params = json.loads(row.get("hyperparameters") or "{}")
        except json.JSONDecodeError:
            params = {"(unparsed)": row.get("hyperparameters")}
        return cls(
            version=str(row["version"]),
            status=str(row.get("status") or ""),
            aliases=tuple(row.get("aliases") or ()),
            created_at_ms=_ms(row.get("created_at")),
            code_version=row.get("code_version") or "",
            dataset_uri=row.get("dataset_uri") or "",
            dataset_sha256=row.get("dataset_sha256") or "",
            dataset_rows=row.get("dataset_rows"),
            hyperparameters=params,
            train_metrics={k[len("train.") :]: v for k, v in metrics.items() if k.startswith("train.")},
            holdout_metrics={k[len("holdout.") :]: v for k, v in metrics.items() if k.startswith("holdout.")},
            parent_version=row.get("parent_version"),
            request_id=row.get("request_id"),
            artifact_sha256=row.get("artifact_sha256") or "",
        )
