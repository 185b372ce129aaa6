"""The default minimum effects (drift.DEFAULT_THRESHOLDS): what a user sees on synthetic streams.

Each kind of change is flagged in at least 95% of drifted windows of 1,000 and
10,000 events, a practically negligible one (0.05 sd at 10,000 events) in at
most 5%, and stationary windows raise at most 5% false alarms.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from scipy import stats

from driftline.streams.core.drift import DEFAULT_THRESHOLDS, drifted_features, evaluate_window
from driftline.streams.core.reference import ReferenceProfile
from driftline.streams.core.sampler import stable_seed
from driftline.streams.core.window_profile import WindowProfile

COLOURS = np.array(["red", "green", "blue"], dtype=object)
BASE_P = np.array([0.5, 0.3, 0.2])
WINDOWS = 40

Change = dict[str, float]


def columns(
    rng: np.random.Generator,
    n: int,
    *,
    shift: float = 0.0,
    scale: float = 1.0,
    p: np.ndarray = BASE_P,
    new: float = 0.0,
    missing: float = 0.0,
) -> tuple[dict, dict]:
    x = rng.normal(shift, scale, n)
    x[rng.random(n) < missing] = np.nan
    colour = COLOURS[rng.choice(3, n, p=p)]
    colour[rng.random(n) < new] = "purple"
    return {"x": x, "y": rng.normal(size=n)}, {"colour": colour.tolist()}


@pytest.fixture(scope="module")
def reference() -> ReferenceProfile:
    return ReferenceProfile.build("m", "1", *columns(np.random.default_rng(7), 20_000))


def flagged(reference: ReferenceProfile, rng: np.random.Generator, n: int, k: int, **change: float) -> list[str]:
    w = WindowProfile.empty(reference, seed=stable_seed("defaults", n, k))
    w.update(*columns(rng, n, **change))
    return drifted_features(evaluate_window(reference, w, thresholds=DEFAULT_THRESHOLDS))


CHANGES: dict[str, tuple[str, Callable[[int], dict]]] = {
    "mean + 0.5 sd": ("x", lambda k: {"shift": 0.5}),
    "mean + 0.25 sd": ("x", lambda k: {"shift": 0.25}),
    # From 0.2 sd (twice the minimum effect) to 1 sd over the windows, then held.
    "gradual drift to 1 sd": ("x", lambda k: {"shift": min(1.0, 0.2 + 0.8 * k / (WINDOWS // 2))}),
    "sd x 1.5": ("x", lambda k: {"scale": 1.5}),
    "categorical proportions": ("colour", lambda k: {"p": np.array([0.4, 0.35, 0.25])}),
    "10% new categories": ("colour", lambda k: {"new": 0.1}),
    "missing 0% -> 5%": ("x", lambda k: {"missing": 0.05}),
}


@pytest.mark.parametrize("n", [1_000, 10_000])
@pytest.mark.parametrize("change", list(CHANGES))
def test_each_change_is_flagged_in_95_percent_of_windows(reference: ReferenceProfile, n: int, change: str) -> None:
    feature, make = CHANGES[change]
    rng = np.random.default_rng(stable_seed(change, n))
    caught = sum(feature in flagged(reference, rng, n, k, **make(k)) for k in range(WINDOWS))
    assert caught >= 0.95 * WINDOWS, f"{change} at {n}: {caught}/{WINDOWS}"


@pytest.mark.parametrize("n", [1_000, 10_000])
def test_recurring_drift_is_flagged_when_it_comes_back(reference: ReferenceProfile, n: int) -> None:
    rng = np.random.default_rng(stable_seed("recurring", n))
    on = off = 0
    for k in range(2 * WINDOWS):
        drifting = (k // 4) % 2 == 1  # four windows on, four off
        hit = "x" in flagged(reference, rng, n, k, shift=0.5 if drifting else 0.0)
        on += hit and drifting
        off += hit and not drifting
    assert on >= 0.95 * WINDOWS and off <= 0.05 * WINDOWS + 1


def test_a_negligible_shift_in_a_large_window_is_not_flagged(reference: ReferenceProfile) -> None:
    rng = np.random.default_rng(5)
    caught = sum("x" in flagged(reference, rng, 10_000, k, shift=0.05) for k in range(WINDOWS))
    assert caught <= 0.05 * WINDOWS
    # It is significant all the same: without minimum effects it would be flagged often.
    w = WindowProfile.empty(reference, seed=1)
    w.update(*columns(rng, 10_000, shift=0.05))
    row = next(r for r in evaluate_window(reference, w) if (r.feature, r.metric) == ("x", "mean_shift"))
    assert row.p_value < 0.01


@pytest.mark.parametrize("n,windows", [(1_000, 150), (10_000, 100)])
def test_defaults_raise_at_most_five_percent_false_alarms(reference: ReferenceProfile, n: int, windows: int) -> None:
    rng = np.random.default_rng(stable_seed("stationary", n))
    alarms = sum(bool(flagged(reference, rng, n, k)) for k in range(windows))
    assert stats.binom.sf(alarms - 1, windows, 0.05) > 0.01, f"{alarms}/{windows}"


def test_data_quality_alarms_are_their_own_class_and_never_hidden_by_a_distance(reference: ReferenceProfile) -> None:
    rng = np.random.default_rng(9)
    w = WindowProfile.empty(reference, seed=2)
    w.update(*columns(rng, 1_000, missing=0.05))
    rows = evaluate_window(reference, w, thresholds={"*": {**DEFAULT_THRESHOLDS["*"], "hellinger": 10.0}})
    assert drifted_features(rows, "data_quality") == ["x"] and drifted_features(rows, "drift") == []
    miss = next(r for r in rows if (r.feature, r.metric) == ("x", "missing_rate"))
    assert miss.kind == "data_quality" and miss.threshold == pytest.approx(0.02)  # reference: no missing values
