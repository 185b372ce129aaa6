"""The model registry: versions with lineage, aliases and an audit log, and a content-addressed artifact store.

>>> import tempfile
>>> reg = Registry(f"sqlite:///{tempfile.mkdtemp()}/r.db", ArtifactStore(tempfile.mkdtemp()))
>>> reg.register("m", lineage=Lineage(), reference_profile={}).version
'1'
"""

from driftline.retrainer.registry.artifacts import ArtifactStore
from driftline.retrainer.registry.errors import (
    ArtifactIntegrityError,
    ArtifactNotFoundError,
    InvalidNameError,
    InvalidVersionError,
    ModelNotFoundError,
    RegistryError,
    VersionNotFoundError,
)
from driftline.retrainer.registry.models import (
    CHALLENGER,
    CHAMPION,
    STATUSES,
    AuditEntry,
    Lineage,
    ModelSummary,
    ModelVersion,
    Status,
    validate_name,
    version_number,
)
from driftline.retrainer.registry.provenance import code_version
from driftline.retrainer.registry.store import SCHEMA_VERSION, Registry

__all__ = [
    "ArtifactIntegrityError",
    "ArtifactNotFoundError",
    "ArtifactStore",
    "AuditEntry",
    "CHALLENGER",
    "CHAMPION",
    "InvalidNameError",
    "InvalidVersionError",
    "Lineage",
    "ModelNotFoundError",
    "ModelSummary",
    "ModelVersion",
    "Registry",
    "RegistryError",
    "SCHEMA_VERSION",
    "STATUSES",
    "Status",
    "VersionNotFoundError",
    "code_version",
    "validate_name",
    "version_number",
]
