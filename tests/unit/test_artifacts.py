"""The content-addressed artifact store: naming, atomic writes, verification on every read."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from driftline.retrainer.registry import ArtifactIntegrityError, ArtifactNotFoundError, ArtifactStore, RegistryError
from driftline.retrainer.trainers import (
    DEFAULT_ARTIFACT_ALLOWLIST,
    ArtifactNotAllowed,
    TrainingSet,
    artifact_allowlist,
    load_model,
    score,
    train_river_linear,
)
from driftline.unpickling import Allowlist, PickleNotAllowed, restricted_loads


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts")


def _tamper(path: Path, data: bytes) -> None:
    os.chmod(path, 0o644)  # objects are written read-only
    path.write_bytes(data)


def test_objects_are_named_by_sha256_and_sharded(store: ArtifactStore) -> None:
    data = b"model weights \x00\x01"
    sha = store.put_bytes(data)
    assert sha == hashlib.sha256(data).hexdigest()
    path = store.root / "objects" / sha[:2] / sha[2:]
    assert store.path(sha) == path
    assert path.read_bytes() == data
    assert store.get_bytes(sha) == data
    assert store.exists(sha)


def test_same_content_is_stored_once(store: ArtifactStore) -> None:
    a = store.put_bytes(b"x" * 1000)
    b = store.put_bytes(b"x" * 1000)
    assert a == b
    assert sum(1 for p in (store.root / "objects").rglob("*") if p.is_file()) == 1


def test_modified_artifact_is_refused(store: ArtifactStore) -> None:
    sha = store.put_bytes(b"original model")
    _tamper(store.path(sha), b"evil model")
    with pytest.raises(ArtifactIntegrityError, match=f"artifact {sha} .* corrupted or was modified"):
        store.get_bytes(sha)
    with pytest.raises(ArtifactIntegrityError):
        store.verified_path(sha)
    with pytest.raises(ArtifactIntegrityError):
        store.copy_to(sha, store.root.parent / "out.bin")
    assert not (store.root.parent / "out.bin").exists()


def test_truncated_artifact_is_refused(store: ArtifactStore) -> None:
    sha = store.put_bytes(b"0123456789" * 100)
    _tamper(store.path(sha), (b"0123456789" * 100)[:500])
    with pytest.raises(ArtifactIntegrityError):
        store.get_bytes(sha)


def test_storing_again_repairs_a_damaged_object(store: ArtifactStore) -> None:
    sha = store.put_bytes(b"payload")
    _tamper(store.path(sha), b"garbage")
    assert store.put_bytes(b"payload") == sha
    assert store.get_bytes(sha) == b"payload"


def test_missing_object_is_reported(store: ArtifactStore) -> None:
    missing = hashlib.sha256(b"never stored").hexdigest()
    with pytest.raises(ArtifactNotFoundError, match=missing):
        store.get_bytes(missing)


@pytest.mark.parametrize(
    "name",
    ["../../etc/passwd", "ab/../../x", "", "A" * 64, "0" * 63, "0" * 65, "g" * 64, "/abs" + "0" * 60],
)
def test_names_other_than_a_sha256_are_refused(store: ArtifactStore, name: str) -> None:
    with pytest.raises(RegistryError, match="invalid artifact hash"):
        store.get_bytes(name)
    with pytest.raises(RegistryError, match="invalid artifact hash"):
        store.path(name)


def test_writes_are_atomic_and_leave_no_temporary_files(store: ArtifactStore) -> None:
    class Failing(io.RawIOBase):
        def __init__(self) -> None:
            self.calls = 0

        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:
            self.calls += 1
            if self.calls > 2:
                raise OSError("disk went away")
            return b"x" * 1024

    with pytest.raises(OSError, match="disk went away"):
        store.put_stream(Failing())
    objects = store.root / "objects"
    assert not objects.exists() or not any(p.is_file() for p in objects.rglob("*"))
    store.put_bytes(b"ok")
    assert list((store.root / "tmp").iterdir()) == []


def test_files_are_streamed_in(store: ArtifactStore, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    data = os.urandom(3 * (1 << 20) + 17)  # several read chunks
    big.write_bytes(data)
    sha = store.put_file(big)
    assert sha == hashlib.sha256(data).hexdigest()
    out = store.copy_to(sha, tmp_path / "copy.bin")
    assert out.read_bytes() == data
    with pytest.raises(RegistryError, match="does not exist"):
        store.put_file(tmp_path / "nope.bin")


def test_json_blobs_are_canonical(store: ArtifactStore) -> None:
    a = store.put_json({"b": [1, 2.5], "a": {"y": None, "x": "é"}})
    b = store.put_json({"a": {"x": "é", "y": None}, "b": [1, 2.5]})
    assert a == b
    assert store.get_json(a) == {"a": {"x": "é", "y": None}, "b": [1, 2.5]}


def test_dataset_snapshots_round_trip_as_parquet(store: ArtifactStore) -> None:
    table = pa.table({"age": [31.0, None, 45.5], "city": ["a", "b", None], "label": [0, 1, 1]})
    sha = store.put_table(table)
    assert store.get_table(sha).equals(table)
    assert store.get_bytes(sha)[:4] == b"PAR1"


def test_uris_name_objects_by_hash(store: ArtifactStore) -> None:
    sha = store.put_bytes(b"d")
    uri = store.uri(sha)
    assert uri == f"sha256:{sha}"
    assert store.sha256_of_uri(uri) == sha
    with pytest.raises(RegistryError):
        store.sha256_of_uri("file:///etc/passwd")


# --- loading through the allowlist (docs/SECURITY.md) -------------------------------------------------


class _RunsACommand:
    """Unpickling this calls os.system: what a hostile `registry register --artifact` would upload."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_an_artifact_that_would_run_a_command_is_refused(store: ArtifactStore, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    sha = store.put_bytes(pickle.dumps(_RunsACommand(marker)))
    with pytest.raises(ArtifactNotAllowed, match=r"(posix|os)\.system is not allowed .*'(posix|os):system'"):
        load_model(store.get_bytes(sha))
    assert not marker.exists()
    # the control: without the allowlist the same bytes do run the command
    pickle.loads(store.get_bytes(sha))
    assert marker.exists()


@pytest.mark.parametrize(
    "payload",
    [
        pickle.dumps(eval),  # a builtin function
        pickle.dumps(__import__("subprocess").Popen),  # a class, but not of an allowed module
        pickle.dumps(np.load),  # a numpy function, not a named global
        pickle.dumps(np.memmap),  # a numpy class that writes files
    ],
)
def test_only_named_globals_and_classes_of_allowed_packages_resolve(payload: bytes) -> None:
    with pytest.raises(ArtifactNotAllowed, match="is not allowed in a model artifact"):
        load_model(payload)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_the_river_linear_model_round_trips(task: str) -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(size=600)
    data = TrainingSet(
        {"x": x, "y": np.where(x > 1.0, np.nan, -x)},
        {"c": np.array(["a", "b", "c"] * 200, dtype=object)},
        (x > 0).astype(float) if task == "classification" else 3.0 * x,
        np.arange(600),
        task,
    )
    trained = train_river_linear(data, {"epochs": 2})
    loaded = load_model(trained.artifact(), artifact_allowlist(train_river_linear))
    # equal up to summation order: river keeps weights in dicts/sets whose order an unpickled copy may change
    np.testing.assert_allclose(score(loaded, data), score(trained.model, data), rtol=1e-12, atol=0)
    assert type(loaded) is type(trained.model) and loaded is not trained.model


def test_a_trainer_declares_what_its_artifacts_may_reference() -> None:
    def counting_trainer(data, params):  # a plug-in trainer whose artifact is a Counter and a Fraction
        raise NotImplementedError

    import collections
    import fractions

    artifact = pickle.dumps({"counts": collections.Counter("aab"), "ratio": fractions.Fraction(1, 3)})
    with pytest.raises(ArtifactNotAllowed, match=r"fractions\.Fraction is not allowed"):
        load_model(artifact, artifact_allowlist(counting_trainer))
    counting_trainer.artifact_allowlist = [*DEFAULT_ARTIFACT_ALLOWLIST, "fractions"]
    assert load_model(artifact, artifact_allowlist(counting_trainer))["ratio"] == fractions.Fraction(1, 3)


def test_detector_states_and_artifacts_share_the_one_unpickler() -> None:
    from driftline.streams.core import detectors

    assert detectors._DETECTOR_STATE.__class__ is Allowlist
    with pytest.raises(PickleNotAllowed):
        restricted_loads(pickle.dumps(os.system), detectors._DETECTOR_STATE)
    with pytest.raises(ValueError, match="invalid allowlist entry"):
        Allowlist.parse(["numpy:"])
