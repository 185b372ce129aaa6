"""Multivariate drift: PCA and correlation statistics against numpy/scipy, merging, calibration, power."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from driftline.streams.core.multivariate import (
    CORRELATION_CHANGE,
    MULTIVARIATE_FEATURE,
    RECONSTRUCTION_ERROR,
    MultivariateModel,
    MultivariateWindow,
    _correlation_null,
)


def _bench(name: str):  # the benchmark scripts are not a package: load the one whose stream generator is shared
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mixed_stream = _bench("power_slow_mv").mixed_stream


def test_components_span_the_top_eigenvectors_of_the_fit_half():
    rng = np.random.default_rng(0)
    cols = mixed_stream(rng, 8, 4_000, 0.0)
    model = MultivariateModel.fit(cols, variance=0.8, seed=3)
    assert model.dropped == ["f6"] and "f6" not in model.features  # the constant feature
    x = np.column_stack([cols[f] for f in model.features])
    x = x[np.random.default_rng(3).permutation(len(x))[: len(x) // 2]]  # the fit half
    np.testing.assert_allclose(model.mean, np.nanmean(x, axis=0))
    np.testing.assert_allclose(model.scale, np.nanstd(x, axis=0))
    fit_half = np.nan_to_num((x - np.nanmean(x, axis=0)) / np.nanstd(x, axis=0))
    values, vectors = np.linalg.eigh(np.cov(fit_half, rowvar=False))
    values, vectors = values[::-1], vectors[:, ::-1]
    k = int(np.searchsorted(np.cumsum(values) / values.sum(), 0.8) + 1)
    assert model.components.shape == (len(model.features), k)
    top = vectors[:, :k]
    np.testing.assert_allclose(model.components @ model.components.T, top @ top.T, atol=1e-8)


def test_window_statistics_are_the_row_formulas_and_merge_exactly():
    rng = np.random.default_rng(1)
    model = MultivariateModel.fit(mixed_stream(rng, 6, 2_000, 0.0))
    cols = mixed_stream(rng, 6, 900, 0.5)
    whole = model.window()
    whole.update(model, cols)
    parts = [model.window() for _ in range(3)]
    for i, part in enumerate(parts):
        part.update(model, {f: c[i * 300 : (i + 1) * 300] for f, c in cols.items()})
    merged = parts[0].merge(parts[1]).merge(parts[2])
    z = np.column_stack([(cols[f] - m) / s for f, m, s in zip(model.features, model.mean, model.scale)])
    z = np.nan_to_num(z)
    residual = z - z @ model.components @ model.components.T
    errors = (residual**2).sum(axis=1)
    for w in (whole, merged):
        assert w.n == 900
        assert w.error_sum == pytest.approx(errors.sum()) and w.error_sq_sum == pytest.approx((errors**2).sum())
        np.testing.assert_allclose(w.correlation(), np.corrcoef(z, rowvar=False), atol=1e-10)
    again = MultivariateWindow.from_dict(json.loads(json.dumps(merged.to_dict())))
    assert again.to_dict() == merged.to_dict()
    assert [r.value for r in model.evaluate(again)] == [r.value for r in model.evaluate(merged)]


def test_correlation_variance_is_the_normal_theory_value_for_normal_data():
    rng = np.random.default_rng(2)
    r = 0.6
    a = rng.normal(size=200_000)
    b = r * a + math.sqrt(1 - r**2) * rng.normal(size=a.size)
    corr, var = _correlation_null(np.column_stack([a, b]))
    assert corr[0, 1] == pytest.approx(r, abs=0.01)
    assert var[0, 1] == pytest.approx((1 - r**2) ** 2, rel=0.03)  # the asymptotic variance of Pearson's r
    # uncorrelated but dependent (bivariate t, 5 degrees of freedom): E[a^2 b^2] = (5 - 2) / (5 - 4) = 3,
    # above the normal-theory value 1, which is only the floor
    scale = np.sqrt(5 / rng.chisquare(5, size=200_000))
    _, heavy = _correlation_null(rng.normal(size=(200_000, 2)) * scale[:, None])
    assert heavy[0, 1] == pytest.approx(3.0, rel=0.25)


def test_p_values_and_thresholds_follow_the_normal_distribution():
    rng = np.random.default_rng(4)
    model = MultivariateModel.fit(mixed_stream(rng, 5, 3_000, 0.0))
    w = model.window()
    w.update(model, mixed_stream(rng, 5, 400, 0.0))
    err, corr = model.evaluate(w, alpha=0.05)
    assert (err.feature, err.metric, corr.metric) == (MULTIVARIATE_FEATURE, RECONSTRUCTION_ERROR, CORRELATION_CHANGE)
    se = math.sqrt(model.error_var * (1 / 400 + 1 / model.n_calibration))
    z = (err.value - model.error_mean) / se
    assert err.p_value == pytest.approx(2 * stats.norm.sf(abs(z)))
    assert err.threshold == pytest.approx(model.error_mean + stats.norm.isf(0.0125) * se)
    pairs = len(model.features) * (len(model.features) - 1) / 2
    assert corr.p_value == pytest.approx(min(1.0, pairs * 2 * stats.t.sf(corr.value, 400 - 2)))
    assert corr.threshold == pytest.approx(stats.t.isf(0.025 / (2 * pairs), 400 - 2))
    assert err.drifted == (err.p_value <= 0.025) and corr.drifted == (corr.p_value <= 0.025)


@pytest.mark.parametrize("p", [5, 22])
def test_correlation_change_is_found_with_few_false_alarms(p):
    rng = np.random.default_rng(p)
    model = MultivariateModel.fit(mixed_stream(rng, p, 5_000, 0.0))
    reps = 100
    null = sum(any(r.drifted for r in _evaluate(model, mixed_stream(rng, p, 1_000, 0.0))) for _ in range(reps))
    power = sum(any(r.drifted for r in _evaluate(model, mixed_stream(rng, p, 1_000, 0.8))) for _ in range(reps))
    assert null <= stats.binom.ppf(0.999, reps, 0.05) and power >= 90


def test_a_broken_correlation_raises_the_reconstruction_error():
    # the block of features 2..p/2 shares a factor; without it, rows leave the principal subspace
    rng = np.random.default_rng(7)
    model = MultivariateModel.fit(mixed_stream(rng, 12, 5_000, 0.0))
    live = mixed_stream(rng, 12, 1_000, 0.0)
    for j in range(2, 6):
        live[f"f{j}"] = rng.normal(size=1_000)
    err, _ = _evaluate(model, live)
    assert err.drifted and err.value > err.threshold


def _evaluate(model: MultivariateModel, cols: dict[str, np.ndarray]):
    w = model.window()
    w.update(model, cols)
    return model.evaluate(w)


def test_missing_absent_and_bad_input():
    rng = np.random.default_rng(8)
    model = MultivariateModel.fit({"a": rng.normal(size=100), "b": rng.normal(size=100), "c": np.ones(100)})
    w = model.window()
    w.update(model, {"a": np.array([np.nan, 1.0])})  # b absent: missing, imputed by the reference mean
    assert w.n == 2 and w.row_sum[1] == 0.0 and w.row_sum[0] == pytest.approx((1.0 - model.mean[0]) / model.scale[0])
    empty = model.window()
    assert all(not r.drifted and math.isnan(r.value) for r in model.evaluate(empty))
    with pytest.raises(ValueError, match="infinite"):
        w.update(model, {"a": np.array([np.inf])})
    with pytest.raises(ValueError, match="one common length"):
        w.update(model, {"a": np.zeros(2), "b": np.zeros(3)})
    with pytest.raises(ValueError, match="not numbers"):
        w.update(model, {"a": ["x"]})
    with pytest.raises(ValueError, match="two non-constant"):
        MultivariateModel.fit({"a": rng.normal(size=100), "c": np.ones(100)})
    with pytest.raises(ValueError, match="unsupported"):
        MultivariateModel.from_dict({"format": 0})
    assert MultivariateModel.from_dict(json.loads(json.dumps(model.to_dict()))).to_dict() == model.to_dict()
