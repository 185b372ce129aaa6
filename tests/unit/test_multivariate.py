"""Multivariate drift: PCA and correlation statistics against numpy/scipy, merging, calibration, power."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from driftline.streams.core.multivariate import (
    CORRELATION_CHANGE,
    FOLDS,
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


def _standardized(model: MultivariateModel, cols: dict[str, np.ndarray]) -> np.ndarray:
    """Rows x features standardized by hand, missing 0."""
    x = np.column_stack([np.asarray(cols[f], float) for f in model.features])
    return np.nan_to_num((x - model.mean) / model.scale)


def _units(model: MultivariateModel, cols: dict[str, np.ndarray]) -> np.ndarray:
    """Rows x features as the window keeps them: standardized, clipped at 128, rounded to 2**-10."""
    return np.round(np.clip(_standardized(model, cols), -128, 128) * 1024) / 1024


def test_the_residual_is_the_mean_of_the_fold_pcas_and_the_null_mean_is_out_of_fold():
    rng = np.random.default_rng(0)
    cols = mixed_stream(rng, 8, 4_000, 0.0)
    model = MultivariateModel.fit(cols, variance=0.8, seed=3)
    assert model.dropped == ["f6"] and "f6" not in model.features  # the constant feature
    x = np.column_stack([cols[f] for f in model.features])
    np.testing.assert_allclose(model.mean, np.nanmean(x, axis=0))
    np.testing.assert_allclose(model.scale, np.nanstd(x, axis=0))
    z = _units(model, cols)
    values = np.linalg.eigvalsh(np.cov(z, rowvar=False))[::-1]
    k = int(np.searchsorted(np.cumsum(values) / values.sum(), 0.8) + 1)
    assert model.components_kept == k < len(model.features)
    fold = np.empty(len(z), int)
    fold[np.random.default_rng(3).permutation(len(z))] = np.arange(len(z)) % FOLDS
    projector, errors = np.zeros((len(model.features),) * 2), np.empty(len(z))
    for j in range(FOLDS):
        _, vectors = np.linalg.eigh(np.cov(z[fold != j], rowvar=False))
        top = vectors[:, ::-1][:, :k]
        projector += top @ top.T / FOLDS
        residual = z[fold == j] - z[fold == j] @ top @ top.T
        errors[fold == j] = (residual**2).sum(axis=1)
    np.testing.assert_allclose(model.residual, np.eye(len(model.features)) - projector, atol=1e-9)
    assert model.error_mean == pytest.approx(errors.mean()) and model.error_var == pytest.approx(errors.var())
    in_sample = np.einsum("ij,jk,ik->i", z, np.eye(len(model.features)) - projector, z)
    assert model.window_error_var == pytest.approx(in_sample.var(), rel=1e-9)
    assert model.n_calibration == 4_000


def test_window_statistics_are_the_row_formulas():
    rng = np.random.default_rng(1)
    model = MultivariateModel.fit(mixed_stream(rng, 6, 2_000, 0.0))
    cols = mixed_stream(rng, 6, 900, 0.5)
    w = model.window()
    w.update(model, cols)
    z = _units(model, cols)
    assert w.n == 900 and w.row_sum.tolist() == np.rint(z.sum(axis=0) * 1024).astype(int).tolist()
    np.testing.assert_allclose(w.correlation(), np.corrcoef(z, rowvar=False), atol=1e-10)
    # the rounding to 2**-10 standard deviations (noise of sd 2.8e-4 per value) moves a correlation
    # by about 4e-4 / sqrt(n): a thousandth of its own sampling error
    raw = np.corrcoef(_standardized(model, cols), rowvar=False)
    np.testing.assert_allclose(w.correlation(), raw, atol=2e-3 / math.sqrt(900))
    err, _ = model.evaluate(w)
    assert err.value == pytest.approx(np.einsum("ij,jk,ik->i", z, model.residual, z).mean(), rel=1e-12)


def _heavy_window_columns(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    # heavy tails, a value beyond the clip, missing values, and magnitudes whose float sums lose bits
    a = rng.standard_t(2, size=n) * 1e3 + 1e6
    b = 0.7 * (a - 1e6) / 1e3 + rng.normal(size=n)
    c = rng.poisson(3, size=n).astype(float)
    c[rng.random(n) < 0.2] = np.nan
    a[n // 3] = 1e12
    return {"a": a, "b": b, "c": c, "d": rng.normal(scale=1e-8, size=n)}


def _cuts(rng: np.random.Generator, n: int) -> list[tuple[int, int]]:
    edges = np.unique(np.concatenate([[0, n], rng.integers(1, n, size=int(rng.integers(1, 40)))]))
    return list(zip(edges[:-1].tolist(), edges[1:].tolist()))


def test_window_sums_are_exact_for_any_cut_and_merge():
    rng = np.random.default_rng(11)
    model = MultivariateModel.fit(_heavy_window_columns(rng, 3_000), seed=5)
    cols = _heavy_window_columns(rng, 20_000)
    whole = model.window()
    whole.update(model, cols)
    expected = whole.to_dict()
    rows = model.evaluate(whole)
    # the same bits: compare the floats by their representation, nan or not
    bits = [(r.metric, repr(r.value), repr(r.p_value), repr(r.threshold), r.drifted) for r in rows]
    for trial in range(6):
        cuts = _cuts(rng, 20_000)
        pieces = []
        for lo, hi in cuts:
            piece = model.window()
            piece.update(model, {f: c[lo:hi] for f, c in cols.items()})
            pieces.append(piece)
        # one window fed batch by batch, and the pieces merged in a shuffled order
        fed = model.window()
        for lo, hi in cuts:
            fed.update(model, {f: c[lo:hi] for f, c in cols.items()})
        merged = model.window()
        for j in rng.permutation(len(pieces)).tolist():
            merged = merged.merge(pieces[j])
        # two partial windows (partitions), each fed in its own cuts, merged either way round
        split = int(rng.integers(1, 20_000))
        left, right = model.window(), model.window()
        for lo, hi in _cuts(rng, split):
            left.update(model, {f: c[lo:hi] for f, c in cols.items()})
        for lo, hi in _cuts(rng, 20_000 - split):
            right.update(model, {f: c[split + lo : split + hi] for f, c in cols.items()})
        for w in (fed, merged, left.merge(right), right.merge(left)):
            assert w.to_dict() == expected, trial
            got = [(r.metric, repr(r.value), repr(r.p_value), repr(r.threshold), r.drifted) for r in model.evaluate(w)]
            assert got == bits, trial
    # and the sums are the exact sums of the rounded rows
    z = np.rint(_units(model, cols) * 1024).astype(np.int64)
    assert whole.row_sum.tolist() == [int(v) for v in z.sum(axis=0)]
    assert whole.outer_sum.tolist() == [[int(v) for v in row] for row in (z.T.astype(object) @ z.astype(object))]
    again = MultivariateWindow.from_dict(json.loads(json.dumps(whole.to_dict())))
    assert again.to_dict() == expected and model.evaluate(again) == rows


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


def test_p_values_and_thresholds_follow_the_normal_distribution_beyond_the_reference_tolerance():
    rng = np.random.default_rng(4)
    model = MultivariateModel.fit(mixed_stream(rng, 5, 3_000, 0.0))
    w = model.window()
    w.update(model, mixed_stream(rng, 5, 400, 0.0))
    err, corr = model.evaluate(w, alpha=0.05, reference_risk=0.05)
    assert (err.feature, err.metric, corr.metric) == (MULTIVARIATE_FEATURE, RECONSTRUCTION_ERROR, CORRELATION_CHANGE)
    own = math.sqrt(model.window_error_var / 400)
    tolerance = stats.norm.isf(0.05 / 4) * math.sqrt(model.error_var / 3_000)
    excess = max(abs(err.value - model.error_mean) - tolerance, 0.0)
    assert err.p_value == pytest.approx(min(1.0, 2 * stats.norm.sf(excess / own)))
    assert err.threshold == pytest.approx(model.error_mean + tolerance + stats.norm.isf(0.0125) * own)
    k = len(model.features)
    pairs = k * (k - 1) // 2
    iu = np.triu_indices(k, 1)
    v = model.correlation_var[iu]
    margin = stats.norm.isf(0.05 / (4 * pairs)) * np.sqrt(v / 3_000)
    top = (np.maximum(np.abs(w.correlation()[iu] - model.correlation[iu]) - margin, 0) / np.sqrt(v / 400)).max()
    assert corr.value == pytest.approx(top)
    assert corr.p_value == pytest.approx(min(1.0, pairs * 2 * stats.t.sf(corr.value, 400 - 2)))
    assert corr.threshold == pytest.approx(stats.t.isf(0.025 / (2 * pairs), 400 - 2))
    assert err.drifted == (err.p_value <= 0.025) and corr.drifted == (corr.p_value <= 0.025)


def test_an_unlucky_reference_does_not_flag_every_large_window():
    # the reference's sampling error does not shrink with the window: a reference whose null mean is
    # 2 of its standard errors off (inside the tolerance) would fail a plain z test at 20,000 events
    # nearly always; with the tolerance it flags at most its level
    rng = np.random.default_rng(9)
    model = MultivariateModel.fit(mixed_stream(rng, 5, 5_000, 0.0))
    big = _units(model, mixed_stream(rng, 5, 400_000, 0.0))
    truth = np.einsum("ij,jk,ik->i", big, model.residual, big).mean()  # within a tenth of a standard error
    model.error_mean = truth - 2.0 * math.sqrt(model.error_var / model.n_calibration)
    flagged, plain = 0, 0
    for _ in range(40):
        w = model.window()
        w.update(model, mixed_stream(rng, 5, 20_000, 0.0))
        err = model.evaluate(w)[0]
        flagged += err.drifted
        plain += abs(err.value - model.error_mean) / math.sqrt(model.window_error_var / w.n) > stats.norm.isf(0.0125)
    assert flagged <= stats.binom.ppf(0.999, 40, 0.025) and plain >= 30


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
    assert w.n == 2 and w.row_sum[1] == 0 and w.row_sum[0] == round((1.0 - model.mean[0]) / model.scale[0] * 1024)
    empty = model.window()
    assert all(not r.drifted and math.isnan(r.value) for r in model.evaluate(empty))
    with pytest.raises(ValueError, match="reference_risk"):
        model.evaluate(w, reference_risk=0.0)
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
    with pytest.raises(ValueError, match="earlier float layout"):
        MultivariateWindow.from_dict({"n": 1, "error_sum": 0.5, "error_sq_sum": 0.25, "row_sum": [0.0]})


def test_a_format_1_model_still_loads_and_evaluates_as_its_pca():
    # the layout references stored before cross-fitting: one PCA on a fit half, calibrated on the other
    rng = np.random.default_rng(12)
    ref = mixed_stream(rng, 8, 2_000, 0.0)
    names = [f for f in ref if np.nanstd(ref[f]) > 0]
    x = np.column_stack([ref[f] for f in names])
    mean, scale = np.nanmean(x, axis=0), np.nanstd(x, axis=0)
    z = np.nan_to_num((x - mean) / scale)
    values, vectors = np.linalg.eigh(np.cov(z[:1_000], rowvar=False))
    components = vectors[:, ::-1][:, :3]
    held_out = ((z[1_000:] - z[1_000:] @ components @ components.T) ** 2).sum(axis=1)
    stored = {
        "format": 1, "features": names, "mean": mean.tolist(), "scale": scale.tolist(),
        "components": components.tolist(), "error_mean": float(held_out.mean()), "error_var": float(held_out.var()),
        "correlation": np.corrcoef(z[1_000:], rowvar=False).tolist(),
        "correlation_var": np.ones((len(names), len(names))).tolist(), "n_calibration": 1_000,
        "variance": 0.8, "dropped": ["f6"],
    }  # fmt: skip
    model = MultivariateModel.from_dict(json.loads(json.dumps(stored)))
    live = mixed_stream(rng, 8, 700, 0.0)
    err, _ = _evaluate(model, live)
    zl = _units(model, live)
    assert err.value == pytest.approx(((zl - zl @ components @ components.T) ** 2).sum(axis=1).mean(), rel=1e-9)
    assert model.components_kept == 3 and model.window_error_var == model.error_var
    assert model.to_dict()["format"] == 2 and MultivariateModel.from_dict(model.to_dict()).to_dict() == model.to_dict()
