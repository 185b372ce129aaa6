"""Label-free performance estimation and root cause: honesty of the bands, and cost per window.

1. **Estimator** (``driftline.streams.core.estimation``): a model whose score is a
   miscalibrated but monotone function of the true log-odds is calibrated on a
   labeled reference of 20,000 rows. Windows of 2,000 events then follow
   (a) covariate shift: the inputs move and narrow, P(y | x) stays; and
   (b) concept drift: the inputs stay, P(y | x) weakens. For every metric the
   script prints the mean absolute error of the estimate against the realized
   metric (``compute_performance`` on the labels) and how often the 95% band
   covers the realized value; and the cost per window of the state
   (``update`` in batches of 500, then ``rows()``), without and with segments
   of 3 attributes x 5 values.
2. **Root cause** (``driftline.streams.core.explain``): windows of 2,000 events with 20
   numeric and 2 categorical features, 3 attributes x 5 values, drift in one
   segment. Cost per window of ``explain`` on ready profiles, and of building the
   15 per-segment profiles (``update_segments``), which the worker would pay.

Run ``python bench/estimation.py`` (about a minute on 2 cores) or ``--quick``.
Lines starting with ``RESULT`` are the results.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np
from scipy.special import expit

from driftline.streams.core.estimation import ESTIMATED_METRICS, EstimationState, ScoreCalibrator
from driftline.streams.core.explain import explain, update_segments
from driftline.streams.core.performance import compute_performance
from driftline.streams.core.reference import ReferenceProfile
from driftline.streams.core.window_profile import WindowProfile

WINDOW = 2_000
BATCH = 500
WEIGHTS = np.array([1.2, -0.8, 0.6])
ATTRIBUTES = {
    "channel": ["web", "mobile", "branch", "partner", "phone"],
    "region": ["n", "s", "e", "w", "c"],
    "tier": ["a", "b", "c", "d", "e"],
}


def labeled(
    rng: np.random.Generator, n: int, shift: float, scale: float, concept: float
) -> tuple[np.ndarray, np.ndarray]:
    x = rng.normal(shift, scale, size=(n, WEIGHTS.size))
    logit = x @ WEIGHTS - 0.3
    y = (rng.random(n) < expit(concept * logit)).astype(np.int64)
    return expit(1.8 * logit + 0.4), y


def attributes(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {k: rng.choice(v, n) for k, v in ATTRIBUTES.items()}


def estimate_windows(cal: ScoreCalibrator, windows: int, seed: int, concept: float, shifting: bool) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    shifts = np.linspace(0.0, 0.6, windows) if shifting else np.zeros(windows)
    scales = np.linspace(1.0, 0.4, windows) if shifting else np.ones(windows)
    err: dict[str, list[float]] = {m: [] for m in ESTIMATED_METRICS}
    hit: dict[str, list[bool]] = {m: [] for m in ESTIMATED_METRICS}
    realized_acc, estimated_acc = [], []
    for shift, scale in zip(shifts.tolist(), scales.tolist(), strict=True):
        score, y = labeled(rng, WINDOW, shift, scale, concept)
        state = EstimationState(cal)
        state.update(score)
        est = state.estimates()
        real = {r.metric: r.value for r in compute_performance(y, score, None, {}, task="classification")}
        for m in ESTIMATED_METRICS:
            err[m].append(abs(est[m].value - real[m]))
            hit[m].append(est[m].lower <= real[m] <= est[m].upper)
        realized_acc.append(real["accuracy"])
        estimated_acc.append(est["accuracy"].value)
    return {
        "mae": {m: float(np.mean(v)) for m, v in err.items()},
        "coverage": {m: float(np.mean(v)) for m, v in hit.items()},
        "realized": (realized_acc[0], realized_acc[-1]),
        "estimated": (estimated_acc[0], estimated_acc[-1]),
    }


def time_state(cal: ScoreCalibrator, rounds: int, with_segments: bool) -> float:
    rng = np.random.default_rng(3)
    score, _ = labeled(rng, WINDOW, 0.3, 0.8, 1.0)
    attrs = attributes(rng, WINDOW) if with_segments else {}
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        state = EstimationState(cal)
        for lo in range(0, WINDOW, BATCH):
            state.update(score[lo : lo + BATCH], None, {k: v[lo : lo + BATCH] for k, v in attrs.items()})
        state.rows()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def features(
    rng: np.random.Generator, n: int, mobile_shift: np.ndarray | None = None
) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    numeric = {f"x{i}": rng.normal(0.0, 1.0, n) for i in range(20)}
    categorical = {
        "device": rng.choice(["ios", "android", "web"], n, p=[0.3, 0.5, 0.2]).tolist(),
        "plan": rng.choice(["free", "pro"], n).tolist(),
    }
    if mobile_shift is not None:
        numeric["x2"] = numeric["x2"] - 0.8 * mobile_shift
        numeric["x9"] = numeric["x9"] + 0.5 * mobile_shift
    return numeric, categorical


def time_root_cause(rounds: int) -> tuple[float, float, str]:
    rng = np.random.default_rng(4)
    ref = ReferenceProfile.build("m", "1", *features(rng, 20_000))
    attrs = attributes(rng, WINDOW)
    numeric, categorical = features(rng, WINDOW, attrs["channel"] == "mobile")
    whole = WindowProfile.empty(ref, 1)
    whole.update(numeric, categorical)
    build, cost = [], []
    summary = ""
    for _ in range(rounds):
        start = time.perf_counter()
        segments: dict[str, WindowProfile] = {}
        for lo in range(0, WINDOW, BATCH):
            rows = slice(lo, lo + BATCH)
            update_segments(
                segments,
                ref,
                1,
                {f: x[rows] for f, x in numeric.items()},
                {f: x[rows] for f, x in categorical.items()},
                {k: v[rows] for k, v in attrs.items()},
            )
        mid = time.perf_counter()
        summary = explain(ref, whole, segments).summary
        end = time.perf_counter()
        build.append(mid - start)
        cost.append(end - mid)
    return statistics.median(cost) * 1e6, statistics.median(build) * 1e6, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of seconds")
    parser.add_argument("--windows", type=int, default=None, help="windows per scenario (default 500; quick 20)")
    args = parser.parse_args()
    windows = args.windows or (20 if args.quick else 500)
    rounds = 5 if args.quick else 50

    ref_score, ref_y = labeled(np.random.default_rng(1), 20_000, 0.0, 1.0, 1.0)
    start = time.perf_counter()
    cal = ScoreCalibrator.fit(ref_score, ref_y)
    fit_ms = (time.perf_counter() - start) * 1e3
    print(
        f"reference: 20,000 labeled rows, calibrator fitted in {fit_ms:.1f} ms, {cal.n_bins} bins, "
        f"{cal.block_rows.size} isotonic blocks"
    )
    for name, concept, shifting in (("covariate-shift", 1.0, True), ("concept-drift", 0.3, False)):
        out = estimate_windows(cal, windows, 11, concept, shifting)
        for m in ESTIMATED_METRICS:
            print(
                f"RESULT scenario={name} windows={windows} window={WINDOW} metric={m} "
                f"mae={out['mae'][m]:.4f} coverage95={out['coverage'][m]:.3f}"
            )
        print(
            f"  {name}: realized accuracy {out['realized'][0]:.3f} -> {out['realized'][1]:.3f}, "
            f"estimated {out['estimated'][0]:.3f} -> {out['estimated'][1]:.3f} (first -> last window)"
        )
    print(
        f"RESULT cost=estimator window={WINDOW} batches={WINDOW // BATCH} segments=0 "
        f"us_per_window={time_state(cal, rounds, False):.0f}"
    )
    print(
        f"RESULT cost=estimator window={WINDOW} batches={WINDOW // BATCH} segments=3x5 "
        f"us_per_window={time_state(cal, rounds, True):.0f}"
    )
    explain_us, build_us, summary = time_root_cause(rounds)
    print(
        f"RESULT cost=root-cause window={WINDOW} segments=3x5 features=22 explain_us_per_window={explain_us:.0f} "
        f"segment_profiles_us_per_window={build_us:.0f}"
    )
    print(f"  summary: {summary}")


if __name__ == "__main__":
    main()
