"""Root cause of a window's drift: effect sizes, the rest of a window by subtraction, and which segment is named."""

from __future__ import annotations

import json

import numpy as np
import pytest

from driftline.streams.core.drift import evaluate_window
from driftline.streams.core.explain import (
    FeatureEffect,
    RootCause,
    _Stats,
    drift_features,
    explain,
    root_cause_evidence,
    segment_drift,
    update_segments,
)
from driftline.streams.core.reference import ReferenceProfile
from driftline.streams.core.window_profile import WindowProfile

NUMERIC = [f"x{i}" for i in range(20)]
ATTRIBUTES = {
    "channel": ["web", "mobile", "branch", "partner", "phone"],
    "region": ["n", "s", "e", "w", "c"],
    "tier": ["a", "b", "c", "d", "e"],
}


def _data(rng: np.random.Generator, n: int, offsets: dict[str, np.ndarray] | None = None):
    numeric = {f: rng.normal(0.0, 1.0, n) for f in NUMERIC}
    categorical = {
        "device": rng.choice(["ios", "android", "web"], n, p=[0.3, 0.5, 0.2]).tolist(),
        "plan": rng.choice(["free", "pro"], n).tolist(),
    }
    attrs = {k: rng.choice(v, n) for k, v in ATTRIBUTES.items()}
    for f, add in (offsets or {}).items():
        numeric[f] = numeric[f] + add
    return numeric, categorical, attrs


@pytest.fixture(scope="module")
def reference() -> ReferenceProfile:
    numeric, categorical, _ = _data(np.random.default_rng(0), 30_000)
    return ReferenceProfile.build("m", "1", numeric, categorical)


def _window(ref, numeric, categorical, attrs, seed=5):
    whole = WindowProfile.empty(ref, seed)
    whole.update(numeric, categorical)
    segments: dict[str, WindowProfile] = {}
    update_segments(segments, ref, seed, numeric, categorical, attrs)
    return whole, segments


def test_effects_are_standardized_and_debiased(reference):
    rng = np.random.default_rng(1)
    for n in (300, 20_000):
        numeric, categorical, attrs = _data(rng, n, {"x3": 0.5})
        numeric["x5"] = numeric["x5"] * 1.5  # spread only
        whole = WindowProfile.empty(reference, 1)
        whole.update(numeric, categorical)
        by = {e.feature: e for e in explain(reference, whole, {}).features}
        assert by["x3"].shift == pytest.approx(0.5, abs=4 / np.sqrt(n))
        assert by["x3"].effect == pytest.approx(0.5, abs=4 / np.sqrt(n))  # the same effect at every size
        assert by["x5"].spread == pytest.approx(0.5, abs=6 / np.sqrt(n))
        assert by["x5"].describe().startswith("x5 spread +0.")
        untouched = [by[f].effect for f in NUMERIC if f not in ("x3", "x5")] + [by["device"].effect]
        assert np.mean(untouched) < 1.5 / np.sqrt(n)  # debiased: noise alone gives about nothing


def test_categorical_effect_is_cohens_w(reference):
    rng = np.random.default_rng(2)
    numeric, categorical, attrs = _data(rng, 50_000)
    categorical["device"] = rng.choice(["ios", "android", "web"], 50_000, p=[0.5, 0.3, 0.2]).tolist()
    whole = WindowProfile.empty(reference, 1)
    whole.update(numeric, categorical)
    cause = explain(reference, whole, {})
    top = cause.features[0]
    ref_counts = reference.categorical["device"].counts
    p0 = ref_counts / ref_counts.sum()
    cats = reference.categorical["device"].categories + ["__other__"]
    p1 = np.array([{"ios": 0.5, "android": 0.3, "web": 0.2}.get(c, 0.0) for c in cats])
    w = np.sqrt(((p1 - p0)[p0 > 0] ** 2 / p0[p0 > 0]).sum())
    assert top.feature == "device" and top.effect == pytest.approx(w, abs=0.02)
    assert top.category == "ios" and top.change == pytest.approx(0.2, abs=0.02)


def test_rest_by_subtraction_equals_the_rest_profile(reference):
    rng = np.random.default_rng(3)
    numeric, categorical, attrs = _data(rng, 5_000)
    whole, segments = _window(reference, numeric, categorical, attrs)
    rest = WindowProfile.empty(reference, 5)
    keep = attrs["channel"] != "mobile"
    rest.update(
        {f: x[keep] for f, x in numeric.items()},
        {f: np.asarray(x, dtype=object)[keep].tolist() for f, x in categorical.items()},
    )
    num, cat = list(reference.numeric), list(reference.categorical)
    got = _Stats.of_window(whole, num, cat).minus(_Stats.of_window(segments["channel=mobile"], num, cat))
    want = _Stats.of_window(rest, num, cat)
    assert got.n == want.n
    np.testing.assert_allclose(got.count, want.count)
    np.testing.assert_allclose(got.mean, want.mean, atol=1e-12)
    np.testing.assert_allclose(got.m2, want.m2, rtol=1e-9)
    for a, b in zip(got.cells, want.cells, strict=True):
        np.testing.assert_array_equal(a, b)


def test_drift_confined_to_one_segment_names_it_first(reference):
    rng = np.random.default_rng(4)
    for seed in range(5):
        rng = np.random.default_rng(100 + seed)
        numeric, categorical, attrs = _data(rng, 10_000)
        mobile = attrs["channel"] == "mobile"
        numeric["x2"] = numeric["x2"] - 0.8 * mobile
        numeric["x9"] = numeric["x9"] + 0.5 * mobile
        whole, segments = _window(reference, numeric, categorical, attrs)
        cause = explain(reference, whole, segments)
        assert [e.feature for e in cause.features[:2]] == ["x2", "x9"]
        assert [s.segment for s in cause.segments] == ["channel=mobile"]
        top = cause.segments[0]
        assert top.share == pytest.approx(mobile.mean())
        assert [e.feature for e in top.features][:2] == ["x2", "x9"]
        assert top.features[0].shift == pytest.approx(-0.8, abs=0.1)
        assert cause.summary.startswith(
            f"drift is in channel=mobile ({round(100 * mobile.mean())}% of the window): x2 −0.8σ, x9 +0.5σ"
        )


def test_drift_spread_evenly_names_no_segment(reference):
    for seed in range(8):
        rng = np.random.default_rng(200 + seed)
        numeric, categorical, attrs = _data(rng, 10_000, {"x2": -0.8, "x9": 0.5})
        whole, segments = _window(reference, numeric, categorical, attrs)
        cause = explain(reference, whole, segments)
        assert cause.segments == [], [(s.segment, s.effect, s.rest_effect) for s in cause.segments]
        assert cause.summary.startswith("drift is spread across the window (no segment stands out): x2 −0.8σ")


def test_no_drift_names_nothing(reference):
    rng = np.random.default_rng(5)
    numeric, categorical, attrs = _data(rng, 10_000)
    whole, segments = _window(reference, numeric, categorical, attrs)
    cause = explain(reference, whole, segments)
    assert cause.segments == [] and cause.summary == "no feature moved by 0.1σ or more"


def test_baselines_remove_segments_natural_differences(reference):
    def natural(rng, n, drift):
        numeric, categorical, attrs = _data(rng, n)
        partner = attrs["channel"] == "partner"
        numeric["x4"] = numeric["x4"] + 1.0 * partner  # partners always differ
        tier_e = attrs["tier"] == "e"
        numeric["x4"] = numeric["x4"] + drift * tier_e
        return numeric, categorical, attrs

    rng = np.random.default_rng(6)
    base_whole, base_segments = _window(reference, *natural(rng, 20_000, 0.0), seed=9)
    baselines = {"": base_whole, **base_segments}
    whole, segments = _window(reference, *natural(rng, 10_000, 0.0))
    # against the reference, the partners look drifted; against their own baseline they do not
    assert [s.segment for s in explain(reference, whole, segments).segments] == ["channel=partner"]
    assert explain(reference, whole, segments, baselines=baselines).segments == []
    whole, segments = _window(reference, *natural(rng, 10_000, 1.0))
    named = explain(reference, whole, segments, baselines=baselines).segments
    assert [s.segment for s in named] == ["tier=e"]


def test_small_segments_are_not_named(reference):
    rng = np.random.default_rng(7)
    numeric, categorical, attrs = _data(rng, 1_000)
    attrs["channel"] = np.where(np.arange(1_000) < 80, "kiosk", attrs["channel"])
    numeric["x1"] = numeric["x1"] + 2.0 * (attrs["channel"] == "kiosk")
    whole, segments = _window(reference, numeric, categorical, attrs)
    assert "channel=kiosk" not in [s.segment for s in explain(reference, whole, segments).segments]
    assert [s.segment for s in explain(reference, whole, segments, min_segment_size=30).segments] == ["channel=kiosk"]


def test_root_cause_is_json(reference):
    rng = np.random.default_rng(8)
    numeric, categorical, attrs = _data(rng, 5_000)
    numeric["x0"] = numeric["x0"] + 1.0 * (attrs["region"] == "s")
    whole, segments = _window(reference, numeric, categorical, attrs)
    cause = explain(reference, whole, segments)
    d = json.loads(json.dumps(cause.to_dict()))
    assert RootCause.from_dict(d) == cause
    assert d["segments"][0]["segment"] == "region=s" and d["segments"][0]["concentration"] > 0.5
    assert FeatureEffect(**d["features"][0]).feature == "x0"


def test_categorical_drift_in_one_segment(reference):
    rng = np.random.default_rng(9)
    numeric, categorical, attrs = _data(rng, 10_000)
    south = attrs["region"] == "s"
    device = np.asarray(categorical["device"], dtype=object)
    device[south] = rng.choice(["ios", "android", "web"], int(south.sum()), p=[0.7, 0.2, 0.1])
    categorical["device"] = device.tolist()
    whole, segments = _window(reference, numeric, categorical, attrs)
    cause = explain(reference, whole, segments)
    assert cause.features[0].feature == "device"
    assert [s.segment for s in cause.segments] == ["region=s"]
    assert cause.segments[0].features[0].describe().startswith("device 'ios' +4")


# ---- per-segment drift, bounded, and the root cause as evidence ----------------------------------------


def test_segment_values_are_capped_per_attribute_first_seen_first(reference):
    rng = np.random.default_rng(11)
    numeric, categorical, _ = _data(rng, 600)
    shop = np.array([f"s{i:02d}" for i in range(30)])[np.arange(600) % 30]  # 30 values, 20 each
    segments: dict[str, WindowProfile] = {}
    update_segments(segments, reference, 1, numeric, categorical, {"shop": shop[:300]}, max_values=5)
    # one batch: the 5 smallest values (np.unique's order) get profiles, the rest go into none
    assert sorted(segments) == [f"shop=s{i:02d}" for i in range(5)]
    # a later batch adds rows to the held values only, and no new value
    later = {f: v[300:] for f, v in numeric.items()}
    update_segments(
        segments,
        reference,
        1,
        later,
        {f: v[300:] for f, v in categorical.items()},
        {"shop": shop[300:]},
        max_values=5,
    )
    assert sorted(segments) == [f"shop=s{i:02d}" for i in range(5)]
    assert all(p.n == 20 for p in segments.values())
    # the cap is per attribute: another attribute gets its own five
    update_segments(segments, reference, 1, numeric, categorical, {"tier": shop}, max_values=5)
    assert sum(s.startswith("tier=") for s in segments) == 5


def test_segment_drift_is_the_drift_engine_on_the_segment_alone(reference):
    rng = np.random.default_rng(12)
    numeric, categorical, attrs = _data(rng, 4_000)
    mobile = attrs["channel"] == "mobile"
    numeric["x2"] = numeric["x2"] + 1.0 * mobile
    segments: dict[str, WindowProfile] = {}
    update_segments(segments, reference, 3, numeric, categorical, {"channel": attrs["channel"]})
    got = {d.segment: d for d in segment_drift(reference, segments, ["x2", "x7"], min_segment_size=100)}
    assert set(got) == {f"channel={c}" for c in ATTRIBUTES["channel"]}
    for name, d in got.items():
        # the same rows as evaluating a window of that segment's events only
        rows = np.flatnonzero(attrs["channel"] == name.split("=")[1])
        alone = WindowProfile.empty(reference, 3)
        alone.update(
            {f: v[rows] for f, v in numeric.items()}, {f: [v[i] for i in rows] for f, v in categorical.items()}
        )
        expected = [m for m in evaluate_window(reference, alone) if m.feature in ("x2", "x7")]
        assert d.n == rows.size
        assert [(m.feature, m.metric, m.drifted) for m in d.drift] == [
            (m.feature, m.metric, m.drifted) for m in expected
        ]
        for a, b in zip(d.drift, expected, strict=True):
            assert a.value == pytest.approx(b.value, nan_ok=True, rel=0.05, abs=0.02)  # samples differ only
    assert got["channel=mobile"].drifted == ["x2"]
    assert all(d.drifted == [] for name, d in got.items() if name != "channel=mobile")
    # segments under the minimum size get no rows
    assert segment_drift(reference, segments, ["x2"], min_segment_size=5_000) == []


def test_root_cause_evidence_names_the_features_then_the_segments(reference):
    rng = np.random.default_rng(13)
    numeric, categorical, attrs = _data(rng, 6_000)
    mobile = attrs["channel"] == "mobile"
    numeric["x4"] = numeric["x4"] + 1.2 * mobile
    numeric["x9"] = numeric["x9"] + 0.6 * mobile
    whole, segments = _window(reference, numeric, categorical, attrs)
    cause = explain(reference, whole, segments)
    evidence = root_cause_evidence(cause, 1_000, 2_000)
    effects = [e for e in evidence if e.metric == "effect"]
    shares = [e for e in evidence if e.metric == "segment_share"]
    assert [e.feature for e in effects[:2]] == ["x4", "x9"]
    assert all(e.value >= e.threshold == 0.1 for e in effects)
    assert shares[0].feature == "channel=mobile"
    assert shares[0].value == pytest.approx(mobile.mean())
    assert shares[0].threshold == pytest.approx(cause.segments[0].concentration)
    assert {(e.window_start, e.window_end) for e in evidence} == {(1_000, 2_000)}
    assert drift_features(cause)[:3] == ["__prediction__", "x4", "x9"]


def test_model_output_is_not_ranked_as_a_cause():
    rng = np.random.default_rng(14)
    x = rng.normal(size=10_000)
    ref = ReferenceProfile.build("m", "1", {"x": x}, {}, 1 / (1 + np.exp(-x)))
    y = rng.normal(size=2_000) + 1.0
    whole = WindowProfile.empty(ref, 1)
    whole.update({"x": y}, {}, 1 / (1 + np.exp(-y)))
    assert [e.feature for e in explain(ref, whole, {}).features] == ["x"]


def test_a_segment_of_a_feature_is_not_drifted_for_holding_one_value(reference):
    # segments by the categorical feature "device" itself: each segment is all one device, which says
    # nothing about drift; a shift of x1 in device=ios is what names it
    rng = np.random.default_rng(15)
    numeric, categorical, _ = _data(rng, 6_000)
    device = np.asarray(categorical["device"])
    numeric["x1"] = numeric["x1"] + 1.0 * (device == "ios")
    whole = WindowProfile.empty(reference, 2)
    whole.update(numeric, categorical)
    segments: dict[str, WindowProfile] = {}
    update_segments(segments, reference, 2, numeric, categorical, {"device": device})
    cause = explain(reference, whole, segments)
    assert [s.segment for s in cause.segments] == ["device=ios"]
    assert all(e.feature != "device" for s in cause.segments for e in s.features)
    got = segment_drift(reference, segments, ["x1", "device"], min_segment_size=100)
    assert {m.feature for d in got for m in d.drift} == {"x1"}
    # without drift, no device segment is named although each holds one device only
    numeric["x1"] = rng.normal(size=device.size)
    whole = WindowProfile.empty(reference, 2)
    whole.update(numeric, categorical)
    segments = {}
    update_segments(segments, reference, 2, numeric, categorical, {"device": device})
    assert explain(reference, whole, segments, min_effect=0.0).segments == []
