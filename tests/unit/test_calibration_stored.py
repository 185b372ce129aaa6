"""Thresholds calibrated at registration (``calibration.precompute``) are the ones the worker computes.

The stored values travel through the profile's JSON form; a loaded profile
must give, for every bucket of every feature, bit-for-bit the thresholds a
profile without them calibrates on first use, and so the same drift rows.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable

import numpy as np
import pytest

from driftline.streams.core import calibration, metrics
from driftline.streams.core.drift import evaluate_window
from driftline.streams.core.reference import ReferenceProfile
from driftline.streams.core.window_profile import WindowProfile

COLOURS = np.array(["red", "green", "blue", "grey", "teal"])


def _columns(rng: np.random.Generator, n: int, shift: float = 0.0) -> tuple[dict, dict, np.ndarray]:
    numeric = {"normal": rng.normal(3.0 + shift, 2.0, n), "count": rng.poisson(2.0, n).astype(float)}
    numeric["normal"][::50] = np.nan  # missing values: the feature's count is below the reference's rows
    categorical = {"colour": COLOURS[rng.choice(5, n, p=[0.4, 0.25, 0.15, 0.1, 0.1])].tolist()}
    return numeric, categorical, rng.random(n)


def _reference() -> ReferenceProfile:
    return ReferenceProfile.build("m", "1", *_columns(np.random.default_rng(7), 3_000), seed=11)


def _through_json(reference: ReferenceProfile) -> ReferenceProfile:
    d = json.loads(json.dumps(calibration.with_calibration(reference).to_dict()))
    return ReferenceProfile.from_dict(d)


def _runtime(
    group: str, feature: str, exponent: int, alpha: float, make: Callable[[], ReferenceProfile] = _reference
) -> object:
    # a fresh profile and an empty shared cache: nothing precompute left behind is read
    calibration._binned_null.cache_clear()
    fresh = make()
    at = calibration._binned_at if group == "binned" else calibration._wasserstein_at
    return at(fresh, feature, exponent, alpha)


def test_the_default_level_is_the_workers() -> None:
    assert inspect.signature(evaluate_window).parameters["alpha"].default in calibration.DEFAULT_ALPHAS


def test_every_bucket_of_every_feature_is_stored() -> None:
    ref = _reference()
    loaded = _through_json(ref)
    assert loaded.calibration is not None
    for feature in ref.features:
        count = (ref.numeric[feature] if feature in ref.numeric else ref.categorical[feature]).count
        # the largest effective size of a window of this feature is just below the reference's count
        top = int(math.floor(math.log2(metrics.ks_effective_n(10**12, count))))
        assert list(calibration.exponents_of(ref, feature)) == list(range(top + 1))
        for e in range(top + 1):
            assert loaded.calibration.get("binned", feature, e, 0.05) is not None
            assert (loaded.calibration.get("wasserstein", feature, e, 0.05) is not None) == (feature in ref.numeric)


@pytest.mark.parametrize("feature", ["normal", "count", "colour", "__prediction__"])
def test_stored_thresholds_equal_runtime_ones_bit_for_bit(feature: str) -> None:
    loaded = _through_json(_reference())
    groups = ["binned", "wasserstein"] if feature in loaded.numeric else ["binned"]
    for e in calibration.exponents_of(loaded, feature):
        for group in groups:
            stored = loaded.calibration.get(group, feature, e, 0.05) if loaded.calibration else None
            assert stored == _runtime(group, feature, e, 0.05), (group, feature, e)
            # and the loaded profile's calibration serves it (its cache is empty until asked)
            at = calibration._binned_at if group == "binned" else calibration._wasserstein_at
            assert at(loaded, feature, e, 0.05) == stored


def test_a_loaded_profile_reads_the_stored_values() -> None:
    d = json.loads(json.dumps(calibration.with_calibration(_reference()).to_dict()))
    block = d["calibration"][0]["features"]["normal"]
    block["wasserstein"][5] = 123.0
    block["binned"][5] = [1.0, 2.0, 3.0]
    loaded = ReferenceProfile.from_dict(d)
    assert calibration._wasserstein_at(loaded, "normal", 5, 0.05) == 123.0
    assert calibration._binned_at(loaded, "normal", 5, 0.05) == (1.0, 2.0, 3.0)
    # another level is not stored: calibrated at runtime as before
    assert calibration._wasserstein_at(loaded, "normal", 5, 0.01) == _runtime("wasserstein", "normal", 5, 0.01)


@pytest.mark.parametrize("n", [40, 300, 2_500, 40_000])
def test_drift_rows_are_identical_with_and_without_the_stored_calibration(n: int) -> None:
    plain, loaded = _reference(), _through_json(_reference())
    rows = []
    for ref in (plain, loaded):
        calibration._binned_null.cache_clear()
        w = WindowProfile.empty(ref, seed=3)
        w.update(*_columns(np.random.default_rng(n), n, shift=0.1))
        rows.append([r for r in evaluate_window(ref, w)])
    assert len(rows[0]) > 10
    assert repr(rows[0]) == repr(rows[1])  # repr: NaN fields compare equal, floats print exactly


def test_a_profile_without_calibration_reads_and_writes_as_before() -> None:
    d = _reference().to_dict()
    assert "calibration" not in d
    loaded = ReferenceProfile.from_dict(json.loads(json.dumps(d)))
    assert loaded.calibration is None and loaded.to_dict() == d
    stored = calibration.with_calibration(loaded).to_dict()
    assert ReferenceProfile.from_dict(json.loads(json.dumps(stored))).to_dict() == stored


def test_a_malformed_calibration_is_a_clear_error() -> None:
    d = json.loads(json.dumps(calibration.with_calibration(_reference()).to_dict()))
    d["calibration"][0]["features"]["count"]["wasserstein"].pop()
    with pytest.raises(ValueError, match="calibration of feature 'count'"):
        ReferenceProfile.from_dict(d)


def test_registration_stores_the_calibration() -> None:
    from driftline.retrainer.policy import ReferenceSettings

    columns = _columns(np.random.default_rng(7), 3_000)
    settings = ReferenceSettings()
    body = settings.profile_builder("m", *columns)("4")
    loaded = ReferenceProfile.from_dict(json.loads(json.dumps(body)))
    assert loaded.model_version == "4" and loaded.calibration is not None

    def fresh() -> ReferenceProfile:
        return ReferenceProfile.build(
            "m", "4", *columns, bins=settings.bins, top_k=settings.top_k, sample_size=settings.sample_size
        )

    for feature in ("normal", "colour"):
        top = calibration.exponents_of(loaded, feature)[-1]
        assert loaded.calibration.get("binned", feature, top, 0.05) == _runtime("binned", feature, top, 0.05, fresh)
    assert loaded.calibration.get("wasserstein", "normal", 3, 0.05) == _runtime("wasserstein", "normal", 3, 0.05, fresh)
