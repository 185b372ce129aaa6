"""Slow drift: evidence of a trend in a feature's mean, accumulated across windows.

A mean that creeps by 0.02 sigma per window stays under every per-window test
for many windows. :class:`TrendDetector` accumulates the evidence instead,
from each window's exact count, mean and M2, with a false-alarm guarantee that
holds over any number of windows.

**Model.** Each window's mean, in units of the reference's standard deviation
``s``, is ``y_t = (mean_t - mu_ref) / s`` with precision ``n_t s^2 / v_t``
(``v_t`` the window's own variance, shrunk towards the reference's for small
windows); the reference is one more observation, ``y_0 = 0`` with precision
``N``. Under the null every observation has the same mean. The alternative
"a trend started at window ``j``" adds ``b * (t - j + 1)`` to the windows
``t >= j``.

**Evidence.** For each start ``j`` the Bayes factor with a flat prior on the
common mean and a normal prior ``b ~ N(0, slope^2)`` on the trend is, with
``S`` the score and ``I`` the information of the trend regressor after
weighted centring on all observations,

    BF_j = (1 + slope^2 I)^(-1/2) * exp(slope^2 S^2 / (2 (1 + slope^2 I))).

It is the likelihood ratio of the data's *location-invariant* part (every
difference between observations), whose law under the null does not depend
on the unknown common mean; those parts grow with the data, so ``BF_j`` is a
test martingale in windows (value 1 before ``j``). The evidence is the
mixture over starts ``M_T = sum_j w_j BF_j(T)`` with
``w_j = H / ((H + j - 1)(H + j))``, which sum to one: ``M_T`` is itself a test
martingale, and by Ville's inequality **P(M_T ever reaches 1/alpha) <= alpha**
over an unbounded number of windows, whatever their sizes. The weights are
nearly uniform (about 1/H) over the first ``H`` windows after a reset, so for
onsets in that horizon the detector is a Shiryaev-Roberts procedure with
threshold ``H/alpha``; later onsets pay a slowly growing price
(``w_j`` falls as ``1/j^2`` past ``H``).

Only the last ``memory`` starts are kept (older windows join the baseline
sums): dropping terms only lowers ``M_T``, so the guarantee stands. The
streams of one detector (a model's features and its output) share ``alpha``
by Bonferroni: a stream alarms when its evidence reaches ``n_streams/alpha``,
so the probability of any false alarm on any stream, ever, is at most ``alpha``
under any dependence between the streams.

The guarantee is exact for normal window means with known variances; window
means of a few hundred values are close to normal (central limit), and the
benchmark (``bench/power_slow_mv.py``) measures the rate on normal, t(3) and
integer-valued streams.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from driftline.streams.records import FeatureDrift

METRIC = "trend_evidence"
_STATE_FORMAT = 1
# Pseudo-values of the reference's variance added to a window's own: a window of a
# handful of values cannot claim a tiny variance (and so a huge precision) for itself.
_PRIOR_VALUES = 30.0
# A constant reference has no spread to measure in; a floor this far below the
# value's magnitude makes any departure overwhelming and an exact match neutral.
_SCALE_FLOOR = 1e-12
_LOG_MAX = 709.0  # exp() of more overflows a float


class TrendDetector:
    """Anytime-valid evidence of a sustained trend in the means of several streams.

    One detector serves one model version: ``names`` are its numeric
    features (and ``__prediction__``), with each one's reference count, mean
    and standard deviation (population). ``update`` takes each stream's
    window count, mean and M2 (as ``NumericWindow`` keeps them; count 0 means
    no values: that stream learns nothing from the window).

    ``slope`` is the trend the mixture is tuned for, in reference standard
    deviations per window; ``horizon`` the number of windows over which start
    times are weighted alike; ``memory`` how many recent starts are kept.

    >>> det = TrendDetector(["x"], ref_count=[5_000], ref_mean=[0.0], ref_std=[1.0])
    >>> rng = np.random.default_rng(1)
    >>> flagged = []
    >>> for t in range(20):
    ...     v = rng.normal(0.02 * max(0, t - 9), 1.0, 10_000)  # +0.02 sigma per window from window 10
    ...     rows = det.update([v.size], [v.mean()], [((v - v.mean()) ** 2).sum()])
    ...     flagged.append(rows[0].drifted)
    >>> flagged.index(True) - 9 + 1 <= 5   # windows seen since the onset when first flagged
    True
    >>> again = TrendDetector.from_dict(det.to_dict())
    >>> again.to_dict() == det.to_dict(), rows[0].metric, rows[0].threshold
    (True, 'trend_evidence', 20.0)
    >>> det.reset(); det.windows
    0
    """

    def __init__(
        self,
        names: Sequence[str],
        *,
        ref_count: Sequence[float],
        ref_mean: Sequence[float],
        ref_std: Sequence[float],
        alpha: float = 0.05,
        slope: float = 0.02,
        horizon: int = 1_000,
        memory: int = 64,
    ) -> None:
        self.names = list(names)
        k = len(self.names)
        self.ref_count = np.asarray(ref_count, np.float64).reshape(-1)
        self.ref_mean = np.asarray(ref_mean, np.float64).reshape(-1)
        self.ref_std = np.asarray(ref_std, np.float64).reshape(-1)
        if not k or len(set(self.names)) != k:
            raise ValueError(f"a TrendDetector needs distinct stream names, got {self.names}")
        if not (self.ref_count.size == self.ref_mean.size == self.ref_std.size == k):
            raise ValueError(f"{k} streams need {k} reference counts, means and standard deviations")
        if not (
            np.isfinite(self.ref_mean).all()
            and np.isfinite(self.ref_std).all()
            and (self.ref_std >= 0).all()
            and (self.ref_count > 0).all()
        ):
            raise ValueError("reference means and standard deviations must be finite, counts positive")
        if not (0.0 < alpha < 1.0 and slope > 0.0 and horizon >= 1 and memory >= 1):
            raise ValueError(
                f"need 0 < alpha < 1, slope > 0, horizon >= 1, memory >= 1; got {alpha}, {slope}, {horizon}, {memory}"
            )
        self.alpha, self.slope, self.horizon, self.memory = float(alpha), float(slope), int(horizon), int(memory)
        self.floor = _SCALE_FLOOR * np.maximum(1.0, np.abs(self.ref_mean))
        self.scale = np.maximum(self.ref_std, self.floor)
        self.reset()

    @classmethod
    def from_reference(cls, reference: Any, features: Sequence[str] | None = None, **options: Any) -> TrendDetector:
        """A detector over the numeric features of a ``ReferenceProfile`` (all of them by default).

        >>> from driftline.streams.core.reference import ReferenceProfile
        >>> ref = ReferenceProfile.build("m", "1", {"x": np.arange(10.0)}, {}, predictions=np.ones(10))
        >>> TrendDetector.from_reference(ref).names
        ['x', '__prediction__']
        """
        names = list(reference.numeric) if features is None else list(features)
        refs = [reference.numeric[f] for f in names]
        return cls(
            names,
            ref_count=[r.count for r in refs],
            ref_mean=[r.mean for r in refs],
            ref_std=[r.std for r in refs],
            **options,
        )

    @property
    def threshold(self) -> float:
        """The e-value at which a stream alarms: Bonferroni over the streams."""
        return len(self.names) / self.alpha

    def reset(self) -> None:
        """Forget every window (a re-baseline): only the reference remains as the baseline."""
        k = len(self.names)
        self.windows = 0
        # the baseline sums of every observation that left the memory, the reference's included (y_0 = 0)
        self.base_precision = self.ref_count.copy()
        self.base_sum = np.zeros(k)
        self.recent_precision = np.zeros((0, k))
        self.recent_y = np.zeros((0, k))
        self.max_log_evidence = np.zeros(k)

    def update(self, count: Sequence[float], mean: Sequence[float], m2: Sequence[float]) -> list[FeatureDrift]:
        """Add one window per stream (its count, mean and M2); one row per stream."""
        n = np.asarray(count, np.float64).reshape(-1)
        mu = np.asarray(mean, np.float64).reshape(-1)
        m2v = np.asarray(m2, np.float64).reshape(-1)
        k = len(self.names)
        if not (n.size == mu.size == m2v.size == k):
            raise ValueError(f"update needs {k} counts, means and M2s, got {n.size}, {mu.size}, {m2v.size}")
        seen = n > 0
        if (n < 0).any() or not (np.isfinite(mu[seen]).all() and np.isfinite(m2v[seen]).all()) or (m2v[seen] < 0).any():
            raise ValueError("window counts must be >= 0, and means and M2s of non-empty windows finite (M2 >= 0)")
        ref_var = self.ref_std**2
        var = np.maximum((np.where(seen, m2v, 0.0) + _PRIOR_VALUES * ref_var) / (n + _PRIOR_VALUES), self.floor**2)
        precision = np.where(seen, n * self.scale**2 / var, 0.0)
        y = np.where(seen, (np.where(seen, mu, 0.0) - self.ref_mean) / self.scale, 0.0)
        self.recent_precision = np.vstack([self.recent_precision, precision])
        self.recent_y = np.vstack([self.recent_y, y])
        self.windows += 1
        if self.recent_y.shape[0] > self.memory:
            self.base_precision += self.recent_precision[0]
            self.base_sum += self.recent_precision[0] * self.recent_y[0]
            self.recent_precision, self.recent_y = self.recent_precision[1:], self.recent_y[1:]
        log_e = self.log_evidence()
        self.max_log_evidence = np.maximum(self.max_log_evidence, log_e)
        log_threshold = math.log(self.threshold)
        value = np.exp(np.minimum(log_e, _LOG_MAX))
        p = np.minimum(1.0, np.exp(log_threshold + math.log(self.alpha) - self.max_log_evidence))
        return [
            FeatureDrift(f, METRIC, float(v), float(pv), self.threshold, bool(le >= log_threshold))
            for f, v, pv, le in zip(self.names, value.tolist(), p.tolist(), log_e.tolist())
        ]

    def update_window(self, window: Any) -> list[FeatureDrift]:
        """``update`` from a closed ``WindowProfile``: each stream's ``NumericWindow`` count, mean and M2.

        >>> from driftline.streams.core.reference import ReferenceProfile
        >>> from driftline.streams.core.window_profile import WindowProfile
        >>> ref = ReferenceProfile.build("m", "1", {"x": np.arange(100.0)}, {}, predictions=np.ones(100) / 2)
        >>> det = TrendDetector.from_reference(ref)
        >>> w = WindowProfile.empty(ref, seed=1)
        >>> w.update({"x": np.arange(50.0)}, {})   # no predictions: that stream learns nothing
        >>> [(r.feature, r.drifted) for r in det.update_window(w)]
        [('x', False), ('__prediction__', False)]
        """
        moments = [window.numeric[f] for f in self.names]
        return self.update([m.count for m in moments], [m.mean for m in moments], [m.m2 for m in moments])

    def log_evidence(self) -> NDArray[np.float64]:
        """log M_T per stream: the mixture over the kept starts plus the weight of starts still to come."""
        w, y = self.recent_precision, self.recent_y
        m = w.shape[0]
        if m == 0:
            return np.zeros(len(self.names))
        total_w = self.base_precision + w.sum(axis=0)
        total_y = self.base_sum + (w * y).sum(axis=0)
        # ramp[j, i]: the regressor of start j at kept window i (1, 2, ... from the start, 0 before)
        steps = np.arange(m)
        ramp = np.clip(steps[None, :] - steps[:, None] + 1, 0, None).astype(np.float64)
        a = ramp @ w
        b = (ramp * ramp) @ w
        c = ramp @ (w * y)
        score = c - a * (total_y / np.where(total_w > 0, total_w, 1.0))
        info = np.maximum(b - a * a / np.where(total_w > 0, total_w, 1.0), 0.0)
        t2 = self.slope**2
        log_bf = -0.5 * np.log1p(t2 * info) + t2 * score * score / (2.0 * (1.0 + t2 * info))
        first = self.windows - m + 1  # window number (from 1) of the oldest kept start
        j = np.arange(first, self.windows + 1, dtype=np.float64)
        h = float(self.horizon)
        log_w = math.log(h) - np.log(h + j - 1.0) - np.log(h + j)
        terms = log_w[:, None] + log_bf
        # the starts after this window have Bayes factor 1: their weights sum to H / (H + T)
        future = math.log(h / (h + self.windows))
        top = np.maximum(terms.max(axis=0), future)
        evidence: NDArray[np.float64] = top + np.log(np.exp(terms - top).sum(axis=0) + np.exp(future - top))
        return evidence

    def to_dict(self) -> dict[str, Any]:
        """The whole state as plain JSON values (stored with each closed window)."""
        return {
            "format": _STATE_FORMAT,
            "names": self.names,
            "ref_count": self.ref_count.tolist(),
            "ref_mean": self.ref_mean.tolist(),
            "ref_std": self.ref_std.tolist(),
            "alpha": self.alpha,
            "slope": self.slope,
            "horizon": self.horizon,
            "memory": self.memory,
            "windows": self.windows,
            "base_precision": self.base_precision.tolist(),
            "base_sum": self.base_sum.tolist(),
            "recent_precision": self.recent_precision.tolist(),
            "recent_y": self.recent_y.tolist(),
            "max_log_evidence": self.max_log_evidence.tolist(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrendDetector:
        if d.get("format") != _STATE_FORMAT:
            raise ValueError(f"unsupported trend detector state format {d.get('format')!r}; expected {_STATE_FORMAT}")
        det = cls(
            d["names"],
            ref_count=d["ref_count"],
            ref_mean=d["ref_mean"],
            ref_std=d["ref_std"],
            alpha=d["alpha"],
            slope=d["slope"],
            horizon=d["horizon"],
            memory=d["memory"],
        )
        k = len(det.names)
        det.windows = int(d["windows"])
        det.base_precision = np.asarray(d["base_precision"], np.float64)
        det.base_sum = np.asarray(d["base_sum"], np.float64)
        det.recent_precision = np.asarray(d["recent_precision"], np.float64).reshape(-1, k)
        det.recent_y = np.asarray(d["recent_y"], np.float64).reshape(-1, k)
        det.max_log_evidence = np.asarray(d["max_log_evidence"], np.float64)
        return det
