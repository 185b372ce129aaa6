"""A content-addressed store for model artifacts, dataset snapshots and JSON blobs.

Objects live at ``ROOT/objects/ab/cdef...`` where ``abcdef...`` is the sha256
of their bytes. A name can therefore never point outside the store, the same
content is stored once, and every read can prove the bytes are still the ones
written: a mismatch raises :class:`ArtifactIntegrityError` instead of handing
a silently corrupted model to a service.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from driftline.retrainer.registry.canonical import canonical_json, sha256_hex
from driftline.retrainer.registry.errors import ArtifactIntegrityError, ArtifactNotFoundError, RegistryError

if TYPE_CHECKING:
    import pyarrow as pa

_SHA256 = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20
URI_PREFIX = "sha256:"


def validate_sha256(sha256: object) -> str:
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        raise RegistryError(f"invalid artifact hash {sha256!r}: expected 64 lower-case hex digits")
    return sha256


class ArtifactStore:
    """Objects in a local directory, named by the sha256 of their content and verified on every read.

    >>> import tempfile
    >>> store = ArtifactStore(tempfile.mkdtemp())
    >>> sha = store.put_bytes(b"weights")
    >>> store.get_bytes(sha)
    b'weights'
    >>> store.get_json(store.put_json({"b": 1, "a": 2}))
    {'a': 2, 'b': 1}
    >>> store.uri(sha) == "sha256:" + sha
    True
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"ArtifactStore({str(self.root)!r})"

    # -- naming -----------------------------------------------------------------
    def path(self, sha256: str) -> Path:
        sha256 = validate_sha256(sha256)
        return self.root / "objects" / sha256[:2] / sha256[2:]

    @staticmethod
    def uri(sha256: str) -> str:
        """How lineage refers to a stored object (e.g. a dataset snapshot)."""
        return URI_PREFIX + validate_sha256(sha256)

    @staticmethod
    def sha256_of_uri(uri: str) -> str:
        if not uri.startswith(URI_PREFIX):
            raise RegistryError(f"{uri!r} is not an artifact store URI (expected {URI_PREFIX}<hex>)")
        return validate_sha256(uri[len(URI_PREFIX) :])

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    # -- writing ----------------------------------------------------------------
    def put_bytes(self, data: bytes) -> str:
        """Store ``data``; returns its sha256. Storing the same bytes twice is free."""
        return self.put_stream(io.BytesIO(data))

    def put_file(self, path: str | os.PathLike[str]) -> str:
        """Store a copy of a file, streamed (datasets can be larger than memory)."""
        try:
            with open(path, "rb") as source:
                return self.put_stream(source)
        except FileNotFoundError:
            raise RegistryError(f"file {os.fspath(path)} does not exist") from None
        except IsADirectoryError:
            raise RegistryError(f"{os.fspath(path)} is a directory, not a file") from None

    def put_stream(self, source: IO[bytes]) -> str:
        # Write to a temporary file in the same filesystem, then rename: a
        # reader sees either no object or the complete one, never a prefix.
        tmp_dir = self.root / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        fd, tmp_name = tempfile.mkstemp(dir=tmp_dir, prefix="put-")
        try:
            with os.fdopen(fd, "wb") as tmp:
                while chunk := source.read(_CHUNK):
                    digest.update(chunk)
                    tmp.write(chunk)
                tmp.flush()
                os.fsync(tmp.fileno())
            sha256 = digest.hexdigest()
            target = self.path(sha256)
            if target.is_file() and self._hash_file(target) == sha256:
                return sha256
            # absent, or present but damaged: the fresh copy replaces it
            target.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(tmp_name, 0o444)
            os.replace(tmp_name, target)
            return sha256
        finally:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)

    def put_json(self, value: Any) -> str:
        """Store a JSON value in canonical form, so equal values share one object."""
        return self.put_bytes(canonical_json(value, what="JSON blob", allow_nan=True).encode())

    def put_table(self, table: pa.Table) -> str:
        """Store a dataset snapshot as Parquet."""
        import pyarrow.parquet as pq

        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        return self.put_bytes(buffer.getvalue())

    # -- reading ----------------------------------------------------------------
    def get_bytes(self, sha256: str) -> bytes:
        """The object's bytes, after checking they still hash to ``sha256``."""
        path = self.path(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ArtifactNotFoundError(f"artifact {sha256} is not in the store at {self.root}") from None
        actual = sha256_hex(data)
        if actual != sha256:
            raise self._integrity_error(sha256, path, actual)
        return data

    def verified_path(self, sha256: str) -> Path:
        """The object's path after a streamed check; for readers that want a file (Parquet, mmap)."""
        path = self.path(sha256)
        if not path.is_file():
            raise ArtifactNotFoundError(f"artifact {sha256} is not in the store at {self.root}")
        actual = self._hash_file(path)
        if actual != sha256:
            raise self._integrity_error(sha256, path, actual)
        return path

    def get_json(self, sha256: str) -> Any:
        return json.loads(self.get_bytes(sha256))

    def get_table(self, sha256: str) -> pa.Table:
        """A stored Parquet dataset snapshot."""
        import pyarrow.parquet as pq

        return pq.read_table(io.BytesIO(self.get_bytes(sha256)))

    def copy_to(self, sha256: str, destination: str | os.PathLike[str]) -> Path:
        """Copy an object out of the store (e.g. for a trainer that wants a file), verifying the copy."""
        source = self.path(sha256)
        destination = Path(destination)
        if not source.is_file():
            raise ArtifactNotFoundError(f"artifact {sha256} is not in the store at {self.root}")
        digest = hashlib.sha256()
        with open(source, "rb") as src, open(destination, "wb") as dst:
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                dst.write(chunk)
        if digest.hexdigest() != sha256:
            destination.unlink(missing_ok=True)
            raise self._integrity_error(sha256, source, digest.hexdigest())
        return destination

    @staticmethod
    def _hash_file(path: Path) -> str:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
        return digest.hexdigest()

    @staticmethod
    def _integrity_error(sha256: str, path: Path, actual: str) -> ArtifactIntegrityError:
        return ArtifactIntegrityError(
            f"artifact {sha256} at {path} is corrupted or was modified: its content hashes to {actual}; "
            "refusing to load it (restore it from a backup, or register the model again)"
        )
