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

**Evidence of one start.** With a flat prior on the common mean, ``S`` the
score and ``I`` the information of the trend regressor after weighted centring
on all observations, the Bayes factor of start ``j`` is, for the prior
``prior='normal'`` (``b ~ N(0, slope^2)``),

    BF_j = (1 + slope^2 I)^(-1/2) * exp(slope^2 S^2 / (2 (1 + slope^2 I))),

and for ``prior='two_point'`` (``b = +slope`` or ``-slope``, one half each),

    BF_j = cosh(slope S) * exp(-slope^2 I / 2).

Both are likelihood ratios of the data's *location-invariant* part (every
difference between observations), whose law under the null does not depend
on the unknown common mean; those parts grow with the data, so ``BF_j`` is a
test martingale in windows (value 1 before ``j``). The two-point prior spends
nothing on slopes far from the one sought: at 1,000 events a window it finds
+0.02 sigma per window sooner (docs/STATISTICS.md, "Slow drift"); the normal
prior finds much slower trends too, in time.

**Two guarantees** (``guarantee``):

- ``'rate'`` (the default), an e-detector (Shin, Ramdas & Rinaldo, 2023): the
  Shiryaev-Roberts sum ``R_T = sum_j c_j BF_j(T)`` over the starts since the
  last alarm, each start entering with weight ``c_j = 1``. Under the null
  ``E[R_T | past] = R_(T-1) + 1``. A stream alarms when ``R_T >= A``; it then
  keeps ``min(R_T - A, A)`` (all weights scaled alike), so
  ``R_T + A * alarms_T`` never exceeds what it would have been, and
  **E[alarms over T windows] <= T / A** for every ``T``: false alarms are at
  most ``1/A`` of the windows however long the stream runs. The evidence kept
  past the alarm level lets a trend that goes on alarm again in the next
  window, while a false alarm's evidence is spent (and what is kept is at
  most one alarm level, so a stream that settles stops alarming).
- ``'ever'``: the mixture over starts ``M_T = sum_j w_j BF_j(T)`` with
  ``w_j = H / ((H + j - 1)(H + j))``, which sum to one: ``M_T`` is itself a
  test martingale, and by Ville's inequality **P(M_T ever reaches A) <= 1/A**
  over an unbounded number of windows. The weights are nearly uniform (about
  1/H) over the first ``H`` windows after a reset, so for onsets in that
  horizon this is a Shiryaev-Roberts procedure with threshold ``H A``: a much
  stronger promise (no false alarm at all, with probability ``1 - 1/A``) paid
  for with a later alarm. Once crossed, the evidence of a trend stays.

Only the last ``memory`` starts are kept (older windows join the baseline
sums): dropping terms only lowers the evidence, so the guarantees stand. The
streams of one detector (a model's features and its output) share ``alpha``
by Bonferroni: a stream alarms at ``A = k / alpha`` for ``k`` streams
(``shared_by``), so in ``'rate'`` mode the expected share of windows in which
any stream alarms falsely is at most ``alpha``, and in ``'ever'`` mode the
probability of any false alarm on any stream, ever, is at most ``alpha``,
under any dependence between the streams.

The guarantees are exact for normal window means with known variances; window
means of a few hundred values are close to normal (central limit), and the
benchmark (``bench/power_slow_mv.py``) measures the rates on normal, t(3) and
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
GUARANTEES = ("rate", "ever")
PRIORS = ("normal", "two_point")
# 1: the 'ever' mode with the normal prior, weights implied by the start; 2: guarantee, prior and weights stored
_STATE_FORMAT = 2
# Pseudo-values of the reference's variance added to a window's own: a window of a
# handful of values cannot claim a tiny variance (and so a huge precision) for itself.
_PRIOR_VALUES = 30.0
# A constant reference has no spread to measure in; a floor this far below the
# value's magnitude makes any departure overwhelming and an exact match neutral.
_SCALE_FLOOR = 1e-12
_LOG_MAX = 709.0  # exp() of more overflows a float
_LOG_SPENT = -745.0  # the log weight of a start whose evidence an alarm used up (exp() of it is 0)


class TrendDetector:
    """Anytime-valid evidence of a sustained trend in the means of several streams.

    One detector serves one model version: ``names`` are its numeric
    features (and ``__prediction__``), with each one's reference count, mean
    and standard deviation (population). ``update`` takes each stream's
    window count, mean and M2 (as ``NumericWindow`` keeps them; count 0 means
    no values: that stream learns nothing from the window).

    ``slope`` is the trend the prior is tuned for, in reference standard
    deviations per window; ``guarantee`` ``'rate'`` (false alarms at most
    ``alpha`` of the windows) or ``'ever'`` (any false alarm at all with
    probability at most ``alpha``); ``prior`` ``'two_point'`` or ``'normal'``;
    ``horizon`` the number of windows over which ``'ever'`` weighs start times
    alike; ``memory`` how many recent starts are kept; ``shared_by`` how many
    streams share ``alpha`` (default: this detector's).

    >>> det = TrendDetector(["x"], ref_count=[5_000], ref_mean=[0.0], ref_std=[1.0])
    >>> rng = np.random.default_rng(1)
    >>> flagged = []
    >>> for t in range(20):
    ...     v = rng.normal(0.02 * max(0, t - 9), 1.0, 10_000)  # +0.02 sigma per window from window 10
    ...     rows = det.update([v.size], [v.mean()], [((v - v.mean()) ** 2).sum()])
    ...     flagged.append(rows[0].drifted)
    >>> flagged.index(True) - 9 + 1 <= 5   # windows seen since the onset when first flagged
    True
    >>> all(flagged[flagged.index(True):])   # a trend that goes on alarms in every window
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
        guarantee: str = "rate",
        prior: str = "normal",
        shared_by: int | None = None,
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
        if guarantee not in GUARANTEES or prior not in PRIORS:
            raise ValueError(
                f"guarantee must be one of {GUARANTEES} and prior one of {PRIORS}: {guarantee!r}, {prior!r}"
            )
        if shared_by is not None and shared_by < 1:
            raise ValueError(f"shared_by must be at least 1, got {shared_by}")
        self.alpha, self.slope, self.horizon, self.memory = float(alpha), float(slope), int(horizon), int(memory)
        self.guarantee, self.prior = guarantee, prior
        self.shared_by = k if shared_by is None else int(shared_by)
        self.floor = _SCALE_FLOOR * np.maximum(1.0, np.abs(self.ref_mean))
        self.scale = np.maximum(self.ref_std, self.floor)
        self.reset()

    @classmethod
    def from_reference(cls, reference: Any, features: Sequence[str] | None = None, **options: Any) -> TrendDetector:
        """A detector over the numeric features of a ``ReferenceProfile`` (all of them by default).

        >>> from driftline.streams.core.reference import ReferenceProfile
        >>> ref = ReferenceProfile.build("m", "1", {"x": np.arange(10.0)}, {}, predictions=np.ones(10))
        >>> det = TrendDetector.from_reference(ref, guarantee="ever")
        >>> det.names, det.guarantee
        (['x', '__prediction__'], 'ever')
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
        """The e-value at which a stream alarms: Bonferroni over the streams sharing ``alpha``."""
        return self.shared_by / self.alpha

    def reset(self) -> None:
        """Forget every window (a re-baseline): only the reference remains as the baseline."""
        k = len(self.names)
        self.windows = 0
        # the baseline sums of every observation that left the memory, the reference's included (y_0 = 0)
        self.base_precision = self.ref_count.copy()
        self.base_sum = np.zeros(k)
        self.recent_precision = np.zeros((0, k))
        self.recent_y = np.zeros((0, k))
        # log c_j of each kept start (row) per stream: its weight in the evidence
        self.recent_log_weight = np.zeros((0, k))
        self.max_log_evidence = np.zeros(k)

    def observe(
        self, count: Sequence[float], mean: Sequence[float], m2: Sequence[float]
    ) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
        """Add one window per stream; each stream's log evidence in this window and whether it alarms.

        In ``'rate'`` mode the evidence is the one that raised the alarm; what the
        stream keeps after it is ``log_evidence()``.

        >>> det = TrendDetector(["x"], ref_count=[1_000], ref_mean=[0.0], ref_std=[1.0])
        >>> log_e, alarm = det.observe([1_000], [0.0], [1_000.0])
        >>> bool(alarm[0]), bool(log_e[0] < math.log(det.threshold))
        (False, True)
        """
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
        self.windows += 1
        self.recent_precision = np.vstack([self.recent_precision, precision])
        self.recent_y = np.vstack([self.recent_y, y])
        self.recent_log_weight = np.vstack([self.recent_log_weight, np.full(k, self._log_start_weight(self.windows))])
        if self.recent_y.shape[0] > self.memory:
            self.base_precision += self.recent_precision[0]
            self.base_sum += self.recent_precision[0] * self.recent_y[0]
            self.recent_precision, self.recent_y = self.recent_precision[1:], self.recent_y[1:]
            self.recent_log_weight = self.recent_log_weight[1:]
        log_e = self.log_evidence()
        log_a = math.log(self.threshold)
        alarm = log_e >= log_a
        if self.guarantee == "rate" and alarm.any():
            # keep min(R - A, A): log(R - A) = log R + log(1 - A/R), every start's weight scaled alike
            with np.errstate(divide="ignore"):  # R == A exactly: nothing is kept
                spent = np.minimum(np.log1p(-np.exp(np.minimum(log_a - log_e, 0.0))), log_a - log_e)
            scale = np.where(alarm, np.maximum(spent, _LOG_SPENT), 0.0)
            self.recent_log_weight = np.maximum(self.recent_log_weight + scale, _LOG_SPENT)
        self.max_log_evidence = np.maximum(self.max_log_evidence, log_e)
        return log_e, alarm

    def update(self, count: Sequence[float], mean: Sequence[float], m2: Sequence[float]) -> list[FeatureDrift]:
        """Add one window per stream (its count, mean and M2); one row per stream.

        The row's value is the evidence, ``threshold`` the alarm level ``A`` and
        ``drifted`` the alarm. Its p-value is the smallest ``alpha`` at which the
        stream would have alarmed: in this window (``'rate'``), or by now (``'ever'``).
        """
        log_e, alarm = self.observe(count, mean, m2)
        value = np.exp(np.minimum(log_e, _LOG_MAX))
        evidence = self.max_log_evidence if self.guarantee == "ever" else log_e
        p = np.minimum(1.0, np.exp(math.log(self.shared_by) - evidence))
        return [
            FeatureDrift(f, METRIC, float(v), float(pv), self.threshold, bool(a))
            for f, v, pv, a in zip(self.names, value.tolist(), p.tolist(), alarm.tolist())
        ]

    def update_window(
        self, window: Any, moments: Mapping[str, tuple[int, float, float]] | None = None
    ) -> list[FeatureDrift]:
        """``update`` from a closed ``WindowProfile``: each stream's ``NumericWindow`` count, mean and M2
        (``moments``: those already read, feature -> (count, mean, M2), as ``drift.window_moments`` gives them).

        >>> from driftline.streams.core.reference import ReferenceProfile
        >>> from driftline.streams.core.window_profile import WindowProfile
        >>> ref = ReferenceProfile.build("m", "1", {"x": np.arange(100.0)}, {}, predictions=np.ones(100) / 2)
        >>> det = TrendDetector.from_reference(ref)
        >>> w = WindowProfile.empty(ref, seed=1)
        >>> w.update({"x": np.arange(50.0)}, {})   # no predictions: that stream learns nothing
        >>> [(r.feature, r.drifted) for r in det.update_window(w)]
        [('x', False), ('__prediction__', False)]
        """
        if moments is None:
            read = [window.numeric[f] for f in self.names]
            return self.update([m.count for m in read], [m.mean for m in read], [m.m2 for m in read])
        got = [moments[f] for f in self.names]
        return self.update([m[0] for m in got], [m[1] for m in got], [m[2] for m in got])

    def _log_start_weight(self, j: int | NDArray[np.float64]) -> Any:
        """log of the weight with which start ``j`` (a window number from 1) enters the evidence."""
        if self.guarantee == "rate":
            return np.zeros_like(j, dtype=np.float64) if isinstance(j, np.ndarray) else 0.0
        h = float(self.horizon)
        return math.log(h) - np.log(h + j - 1.0) - np.log(h + j)

    def log_bayes_factors(self) -> NDArray[np.float64]:
        """log BF_j of every kept start (rows, oldest first) per stream (columns)."""
        w, y = self.recent_precision, self.recent_y
        m = w.shape[0]
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
        if self.prior == "normal":
            t2 = self.slope**2
            log_bf: NDArray[np.float64] = -0.5 * np.log1p(t2 * info) + t2 * score * score / (2.0 * (1.0 + t2 * info))
            return log_bf
        x = np.abs(self.slope * score)  # log cosh(x) = x + log(1 + exp(-2x)) - log 2, without overflow
        log_bf = x + np.log1p(np.exp(-2.0 * x)) - math.log(2.0) - 0.5 * self.slope**2 * info
        return log_bf

    def log_evidence(self) -> NDArray[np.float64]:
        """log of the evidence per stream: the weighted sum over the kept starts ('ever': plus the starts to come)."""
        m = self.recent_y.shape[0]
        if m == 0:
            return np.zeros(len(self.names)) if self.guarantee == "ever" else np.full(len(self.names), -np.inf)
        terms = self.recent_log_weight + self.log_bayes_factors()
        if self.guarantee == "ever":
            # the starts after this window have Bayes factor 1: their weights sum to H / (H + T)
            future = np.full((1, terms.shape[1]), math.log(self.horizon / (self.horizon + self.windows)))
            terms = np.vstack([terms, future])
        top = terms.max(axis=0)
        evidence: NDArray[np.float64] = top + np.log(np.exp(terms - top).sum(axis=0))
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
            "guarantee": self.guarantee,
            "prior": self.prior,
            "shared_by": self.shared_by,
            "windows": self.windows,
            "base_precision": self.base_precision.tolist(),
            "base_sum": self.base_sum.tolist(),
            "recent_precision": self.recent_precision.tolist(),
            "recent_y": self.recent_y.tolist(),
            "recent_log_weight": self.recent_log_weight.tolist(),
            "max_log_evidence": self.max_log_evidence.tolist(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrendDetector:
        """The detector ``to_dict`` saved; a state of format 1 (before the guarantee modes) resumes as
        ``'ever'`` with the normal prior, as it was.

        >>> det = TrendDetector(["x"], ref_count=[100], ref_mean=[0.0], ref_std=[1.0], guarantee="ever")
        >>> TrendDetector.from_dict(det.to_dict()).guarantee
        'ever'
        """
        fmt = d.get("format")
        if fmt not in (1, _STATE_FORMAT):
            raise ValueError(f"unsupported trend detector state format {fmt!r}; expected 1 or {_STATE_FORMAT}")
        det = cls(
            d["names"],
            ref_count=d["ref_count"],
            ref_mean=d["ref_mean"],
            ref_std=d["ref_std"],
            alpha=d["alpha"],
            slope=d["slope"],
            horizon=d["horizon"],
            memory=d["memory"],
            guarantee=d.get("guarantee", "ever"),
            prior=d.get("prior", "normal"),
            shared_by=d.get("shared_by"),
        )
        k = len(det.names)
        det.windows = int(d["windows"])
        det.base_precision = np.asarray(d["base_precision"], np.float64)
        det.base_sum = np.asarray(d["base_sum"], np.float64)
        det.recent_precision = np.asarray(d["recent_precision"], np.float64).reshape(-1, k)
        det.recent_y = np.asarray(d["recent_y"], np.float64).reshape(-1, k)
        m = det.recent_y.shape[0]
        if "recent_log_weight" in d:
            det.recent_log_weight = np.asarray(d["recent_log_weight"], np.float64).reshape(-1, k)
        else:  # format 1: each kept start's weight follows from its window number
            starts = np.arange(det.windows - m + 1, det.windows + 1, dtype=np.float64)
            det.recent_log_weight = np.repeat(np.asarray(det._log_start_weight(starts)).reshape(-1, 1), k, axis=1)
        if det.recent_log_weight.shape != det.recent_y.shape:
            raise ValueError("trend detector state: the kept starts' weights and windows differ in number")
        det.max_log_evidence = np.asarray(d["max_log_evidence"], np.float64)
        return det
