"""Per-window compute: driftline's core against scipy recomputation and Evidently's DataDriftPreset.

Every method sees the same reference (5,000 rows) and the same windows of a
model with 20 numeric features, 2 categorical features and a score:

- **driftline**: ``WindowProfile.empty`` + ``update`` in chunks of 1,000 rows
  (as the worker receives ``PredictionBatch`` es) + ``evaluate_window``. The
  reference profile is built once; its calibrated thresholds are cached on it,
  so the first window of each size is timed apart ("cold") and left out of the
  median, as a running worker pays it once per reference and size;
- **scipy**: what a stateless job computes per window from the raw reference
  rows: ``ks_2samp`` (scipy's default method, and ``method='asymp'`` as an
  informational second row), ``wasserstein_distance``, ``jensenshannon`` on
  histograms over the reference's decile edges, and ``chi2_contingency`` for
  the categorical features;
- **Evidently**: ``Report([DataDriftPreset()]).run(current, reference)`` with
  an explicit ``DataDefinition``; the reference ``Dataset`` and the current
  pandas frame are built outside the timed region (in Evidently's favour).

Times are medians of per-window wall-clock times in this one process, taken
in rounds (each round runs every method on the same window, one after the
other), so that the ratios hold up on a loaded machine better than the
absolute figures do.

The script also counts false alarms on stationary windows (drawn from the
reference's own distribution): a driftline window is an alarm when any
feature is ``drifted``; for Evidently it prints both its dataset-drift rule
(share of drifted columns >= 0.5, the preset's default) and "any column drifted".

Run ``python bench/window_compute.py`` (about three minutes on 2 cores), or
``--quick`` for a smoke run of seconds. Lines starting with ``RATIO`` and
``FALSE-ALARMS`` are the results.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from driftline.streams.core.drift import drifted_features, evaluate_window  # noqa: E402
from driftline.streams.core.reference import ReferenceProfile  # noqa: E402
from driftline.streams.core.sampler import stable_seed  # noqa: E402
from driftline.streams.core.window_profile import WindowProfile  # noqa: E402
from driftline.streams.records import PREDICTION_FEATURE, FeatureDrift  # noqa: E402

N_NUMERIC = 20
REFERENCE_ROWS = 5_000
SIZES = (150, 1_000, 10_000)
FALSE_ALARM_SIZES = (150, 1_000)
CHUNK = 1_000
REGIONS = ("north", "south", "east", "west", "central")
REGION_P = (0.4, 0.3, 0.15, 0.1, 0.05)
MERCHANTS = tuple(f"m{i:02d}" for i in range(40))
EVIDENTLY_TARGET = 100.0
SCIPY_TARGET = 10.0
EVALUATE_TARGET_MS = 1.5  # issue 12: evaluate_window at 1,000 events x 22 features (here 22 and the score)
EVALUATE_TARGET_SIZE = 1_000

T = TypeVar("T")


# ----------------------------------------------------------------------------- data


@dataclass
class Columns:
    """``n`` rows of the benchmark model in columns: 20 numeric features, 2 categorical ones, a score.

    >>> c = synthetic(10, seed=1)
    >>> c.n, len(c.numeric), sorted(c.categorical), len(c.chunks(4))
    (10, 20, ['merchant', 'region'], 3)
    """

    numeric: dict[str, np.ndarray]
    categorical: dict[str, list[str]]
    predictions: np.ndarray

    @property
    def n(self) -> int:
        return int(self.predictions.size)

    def rows(self, start: int, stop: int) -> Columns:
        return Columns(
            {f: x[start:stop] for f, x in self.numeric.items()},
            {f: x[start:stop] for f, x in self.categorical.items()},
            self.predictions[start:stop],
        )

    def chunks(self, size: int) -> list[Columns]:
        return [self.rows(i, i + size) for i in range(0, self.n, size)]


def synthetic(n: int, seed: int) -> Columns:
    """Stationary rows: every call draws from the same distribution, whatever the seed.

    The numeric features mix shapes that matter to the tests: normal, skewed
    (lognormal, exponential), bounded (uniform), discrete with ties (Poisson),
    and one with 5% missing values. ``merchant`` has 40 Zipf-like categories,
    more than the reference's top 20.
    """
    rng = np.random.default_rng(seed)
    numeric = {f"f{i:02d}": numeric_column(rng, i, n) for i in range(N_NUMERIC)}
    numeric[f"f{N_NUMERIC - 1:02d}"][rng.random(n) < 0.05] = np.nan
    zipf = 1.0 / np.arange(1, len(MERCHANTS) + 1) ** 1.1
    categorical = {
        "region": np.asarray(REGIONS, dtype=object)[rng.choice(len(REGIONS), n, p=REGION_P)].tolist(),
        "merchant": np.asarray(MERCHANTS, dtype=object)[rng.choice(len(MERCHANTS), n, p=zipf / zipf.sum())].tolist(),
    }
    logit = 0.8 * (numeric["f00"]) - 0.5 * numeric["f02"] + 0.3 * (numeric["f05"] - 10.0)
    return Columns(numeric, categorical, 1.0 / (1.0 + np.exp(-logit)))


def numeric_column(rng: np.random.Generator, i: int, n: int) -> np.ndarray:
    """Feature ``i``'s ``n`` values: its shape by ``i % 5`` (normal, lognormal, uniform, Poisson, exponential).

    >>> numeric_column(np.random.default_rng(0), 3, 4).dtype, numeric_column(np.random.default_rng(0), 3, 4).size
    (dtype('float64'), 4)
    """
    kind = i % 5
    if kind == 0:
        return rng.normal(2.0 * i, 1.0 + i / 10, n)
    if kind == 1:
        return rng.lognormal(0.0, 0.5 + i / 40, n)
    if kind == 2:
        return rng.uniform(-1.0, 1.0 + i, n)
    if kind == 3:
        return rng.poisson(1.0 + i / 4, n).astype(np.float64)
    return rng.exponential(1.0 + i / 10, n)


def build_reference(data: Columns, model_id: str = "bench", version: str = "1") -> ReferenceProfile:
    """driftline's reference profile of ``data`` (default bins, top-K and sample size)."""
    return ReferenceProfile.build(model_id, version, data.numeric, data.categorical, data.predictions)


# ----------------------------------------------------------------------------- the three methods


def driftline_window(reference: ReferenceProfile, chunks: Sequence[Columns], seed: int) -> list[FeatureDrift]:
    """One window as the worker computes it: profile the chunks, then evaluate."""
    profile = WindowProfile.empty(reference, seed=seed)
    for c in chunks:
        profile.update(c.numeric, c.categorical, c.predictions)
    return evaluate_window(reference, profile)


@dataclass
class ScipyReference:
    """The raw reference rows that a stateless per-window job starts from."""

    numeric: dict[str, np.ndarray]  # NaN dropped; the score under PREDICTION_FEATURE
    categorical: dict[str, np.ndarray]

    @classmethod
    def of(cls, data: Columns) -> ScipyReference:
        columns = {**data.numeric, PREDICTION_FEATURE: data.predictions}
        return cls(
            {f: x[~np.isnan(x)] for f, x in columns.items()},
            {f: np.asarray(x, dtype=object) for f, x in data.categorical.items()},
        )


def scipy_window(reference: ScipyReference, window: Columns, ks_method: str = "auto") -> dict[str, dict[str, float]]:
    """KS, Wasserstein and Jensen-Shannon per numeric feature, chi-squared per categorical one."""
    from scipy import stats
    from scipy.spatial import distance

    out: dict[str, dict[str, float]] = {}
    for f, x in {**window.numeric, PREDICTION_FEATURE: window.predictions}.items():
        r = reference.numeric[f]
        v = x[~np.isnan(x)]
        ks = stats.ks_2samp(r, v, method=ks_method)
        edges = np.quantile(r, np.linspace(0.0, 1.0, 11))
        edges[0], edges[-1] = min(edges[0], v.min()), max(edges[-1], v.max())
        edges = np.unique(edges)
        p, _ = np.histogram(r, edges)
        q, _ = np.histogram(v, edges)
        out[f] = {
            "ks": float(ks.statistic),
            "ks_p": float(ks.pvalue),
            "wasserstein": float(stats.wasserstein_distance(r, v)),
            "jensenshannon": float(distance.jensenshannon(p, q, base=2)),
        }
    for f, col in window.categorical.items():
        ref_values, ref_counts = np.unique(reference.categorical[f], return_counts=True)
        cur_values, cur_counts = np.unique(np.asarray(col, dtype=object), return_counts=True)
        categories = np.union1d(ref_values, cur_values)
        table = np.zeros((2, categories.size))
        table[0, np.searchsorted(categories, ref_values)] = ref_counts
        table[1, np.searchsorted(categories, cur_values)] = cur_counts
        chi = stats.chi2_contingency(table, correction=False)
        out[f] = {"chi2": float(chi.statistic), "chi2_p": float(chi.pvalue)}
    return out


def import_evidently() -> Any | None:
    """The ``evidently`` module (0.7.x), or None when it is not installed.

    Evidently 0.7.23 imports ``pandas.core.dtypes.common.infer_dtype_from_object``,
    which pandas 3 removed, in a legacy column-type test that the drift preset
    never runs. A stand-in that raises if it is ever called lets the import succeed
    without changing what the preset computes.
    """
    try:
        import pandas.core.dtypes.common as common
    except ImportError:
        return None
    if not hasattr(common, "infer_dtype_from_object"):

        def removed_in_pandas_3(*args: Any, **kwargs: Any) -> Any:
            raise NotImplementedError("pandas 3 removed infer_dtype_from_object")

        common.infer_dtype_from_object = removed_in_pandas_3
    try:
        import evidently
        import evidently.presets  # noqa: F401
    except ImportError:
        return None
    return evidently


class EvidentlyBaseline:
    """Evidently's ``DataDriftPreset`` at its defaults, on the same reference rows."""

    def __init__(self, evidently: Any, reference: Columns) -> None:
        from evidently import DataDefinition, Dataset

        self.version = getattr(evidently, "__version__", "?")
        self.numeric = [*reference.numeric, "prediction"]
        self.categorical = list(reference.categorical)
        self.definition = DataDefinition(numerical_columns=self.numeric, categorical_columns=self.categorical)
        self._dataset = Dataset
        self.reference = Dataset.from_pandas(self.frame(reference), data_definition=self.definition)

    @staticmethod
    def frame(data: Columns) -> Any:
        import pandas as pd

        return pd.DataFrame({**data.numeric, **data.categorical, "prediction": data.predictions})

    def run(self, current_frame: Any) -> Any:
        from evidently import Report
        from evidently.presets import DataDriftPreset

        current = self._dataset.from_pandas(current_frame, data_definition=self.definition)
        return Report([DataDriftPreset()]).run(current, self.reference)

    @staticmethod
    def drifted_columns(snapshot: Any) -> tuple[int, float]:
        """(count, share) of drifted columns, from the preset's DriftedColumnsCount metric."""
        for metric in snapshot.dict()["metrics"]:
            if metric["metric_name"].startswith("DriftedColumnsCount"):
                return int(metric["value"]["count"]), float(metric["value"]["share"])
        raise RuntimeError("Evidently's snapshot has no DriftedColumnsCount metric; its API changed")


# ----------------------------------------------------------------------------- timing


def median_ms(run: Callable[[T], object], items: Sequence[T]) -> float:
    """Median wall-clock milliseconds of ``run`` over ``items`` (one call each)."""
    times = []
    for item in items:
        started = time.perf_counter()
        run(item)
        times.append(time.perf_counter() - started)
    return 1000.0 * statistics.median(times)


def interleaved_ms(methods: dict[str, tuple[Callable[[int], object], int]], rounds: int) -> dict[str, float]:
    """Median milliseconds per call of each method, given as (call on window i, number of windows).

    Round i calls every method still due on window i, one after the other, so
    that a change in the machine's load during the run falls on all of them alike.
    """
    times: dict[str, list[float]] = {name: [] for name in methods}
    for i in range(rounds):
        for name, (call, count) in methods.items():
            if i < count:
                started = time.perf_counter()
                call(i)
                times[name].append(time.perf_counter() - started)
    return {name: 1000.0 * statistics.median(t) for name, t in times.items() if t}


def driftline_ms(
    reference: ReferenceProfile, size: int, windows: int, *, seed: int = 10_000, chunk: int = CHUNK
) -> tuple[float, float]:
    """(cold ms of the first window, median warm ms per window) of driftline at ``size`` events."""
    data = [synthetic(size, seed + i).chunks(chunk) for i in range(windows + 1)]
    cold = median_ms(lambda c: driftline_window(reference, c, stable_seed("cold", size)), data[:1])
    warm = median_ms(lambda c: driftline_window(reference, c, stable_seed(size, len(c))), data[1:])
    return cold, warm


def evaluate_cpu_ms(
    reference: ReferenceProfile, profiles: Sequence[WindowProfile], rounds: int = 5
) -> tuple[float, float]:
    """Median process CPU milliseconds of ``evaluate_window`` per window (the machine is shared: CPU
    time counts what this process spent, not the waits), after one call that fills the caches
    (calibration is per reference and size: a running worker pays it once). Each window is
    evaluated ``rounds`` times, so that the median of a loaded machine's noisy calls settles.
    Returns (median, least): on a machine shared by more processes than cores, the contention
    (caches, the other hyperthread) inflates CPU time too, and the least call shows the cost
    without it; the target is judged on the median."""
    evaluate_window(reference, profiles[0])
    times = []
    for _ in range(rounds):
        for profile in profiles:
            started = time.process_time()
            evaluate_window(reference, profile)
            times.append(time.process_time() - started)
    return 1000.0 * statistics.median(times), 1000.0 * min(times)


def verdict(ratio: float, target: float) -> str:
    return "MET" if ratio >= target else "NOT MET"


def machine_line() -> str:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return (
        f"machine: {os.cpu_count()} cpu(s), load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
        f"python {platform.python_version()}, numpy {np.__version__}"
    )


# ----------------------------------------------------------------------------- the benchmark


def run(
    sizes: Sequence[int],
    repeats: int,
    evidently_repeats: int,
    false_alarm_windows: int,
    driftline_false_alarm_windows: int,
    use_evidently: bool,
    *,
    warm_up: bool = True,
    out: Callable[[str], None] = print,
) -> int:
    import scipy

    out(machine_line())
    out(f"versions: scipy {scipy.__version__}")
    reference_data = synthetic(REFERENCE_ROWS, seed=0)
    reference = build_reference(reference_data)
    scipy_ref = ScipyReference.of(reference_data)
    evidently = import_evidently() if use_evidently else None
    baseline: EvidentlyBaseline | None = None
    if evidently is not None:
        baseline = EvidentlyBaseline(evidently, reference_data)
        out(f"versions: evidently {baseline.version}")
        if warm_up:  # Evidently's first report pays for lazy imports: not a per-window cost
            baseline.run(baseline.frame(synthetic(min(sizes), seed=99)))
    elif use_evidently:
        out("evidently: not installed (pip install -e '.[bench]'); its comparison is left out")
    else:
        out("evidently: left out (--no-evidently)")
    out(
        f"reference: {REFERENCE_ROWS} rows; {N_NUMERIC} numeric + 2 categorical features + score; "
        f"driftline updates in chunks of {CHUNK}"
    )

    for size in sizes:
        windows = [synthetic(size, 20_000 + i) for i in range(repeats)]
        chunks = [w.chunks(CHUNK) for w in windows]
        cold = median_ms(
            lambda c, size=size: driftline_window(reference, c, stable_seed("cold", size)),
            [synthetic(size, 19_999).chunks(CHUNK)],
        )
        methods: dict[str, tuple[Callable[[int], object], int]] = {
            "driftline": (
                lambda i, chunks=chunks, size=size: driftline_window(reference, chunks[i], stable_seed(size, i)),
                repeats,
            ),
            "scipy": (lambda i, windows=windows: scipy_window(scipy_ref, windows[i]), repeats),
            "scipy-asymp": (lambda i, windows=windows: scipy_window(scipy_ref, windows[i], ks_method="asymp"), repeats),
        }
        if baseline is not None:
            frames = [baseline.frame(w) for w in windows[:evidently_repeats]]
            methods["evidently"] = (lambda i, frames=frames: baseline.run(frames[i]), len(frames))
        profiles = []
        for i, c in enumerate(chunks):
            profile = WindowProfile.empty(reference, seed=stable_seed(size, i))
            for part in c:
                profile.update(part.numeric, part.categorical, part.predictions)
            profiles.append(profile)
        methods["evaluate_window"] = (lambda i, profiles=profiles: evaluate_window(reference, profiles[i]), repeats)
        times = interleaved_ms(methods, repeats)
        cpu, least = evaluate_cpu_ms(reference, profiles)
        verdict_here = (
            ("MET" if cpu <= EVALUATE_TARGET_MS else "NOT MET")
            if size == EVALUATE_TARGET_SIZE
            else f"(informational: the target is at {EVALUATE_TARGET_SIZE} events)"
        )
        out(
            f"RATIO window={size} evaluate_window cpu={cpu:.2f} ms target<={EVALUATE_TARGET_MS:g} ms "
            f"({len(reference.features) - 1} features + score, calibration cached, least call {least:.2f} ms; "
            f"process CPU time) {verdict_here}"
        )
        out(
            f"EVALUATE window={size} evaluate_window {times['evaluate_window']:.2f} ms/window "
            f"({len(reference.features)} features; the profile already built)"
        )
        dl, sp, sp_asymp, ev = times["driftline"], times["scipy"], times["scipy-asymp"], times.get("evidently")
        out(
            f"window {size}: driftline {dl:.2f} ms/window (first window, calibration included: {cold:.1f} ms), "
            f"scipy {sp:.2f} ms/window (asymp KS: {sp_asymp:.2f}), "
            + (f"evidently {ev:.1f} ms/window" if ev is not None else "evidently n/a")
        )
        ratio = sp / dl
        out(
            f"RATIO window={size} scipy/driftline={ratio:.1f}x target>={SCIPY_TARGET:g}x {verdict(ratio, SCIPY_TARGET)}"
        )
        out(
            f"RATIO window={size} scipy-asymp/driftline={sp_asymp / dl:.1f}x (informational: scipy's KS with "
            "method='asymp')"
        )
        if ev is not None:
            ratio = ev / dl
            out(
                f"RATIO window={size} evidently/driftline={ratio:.0f}x target>={EVIDENTLY_TARGET:g}x "
                f"{verdict(ratio, EVIDENTLY_TARGET)}"
            )

    for size in [s for s in FALSE_ALARM_SIZES if s in sizes] or [min(sizes)]:
        false_alarms(reference, baseline, size, false_alarm_windows, driftline_false_alarm_windows, out)
    out(machine_line())
    return 0


def false_alarms(
    reference: ReferenceProfile,
    baseline: EvidentlyBaseline | None,
    size: int,
    windows: int,
    driftline_windows: int,
    out: Callable[[str], None],
) -> None:
    """Alarms on stationary windows: the same windows for both tools, then more windows for driftline alone."""
    data = [synthetic(size, 50_000 + size + i) for i in range(max(windows, driftline_windows))]
    flagged = [
        bool(drifted_features(driftline_window(reference, w.chunks(CHUNK), stable_seed("fa", size, i))))
        for i, w in enumerate(data)
    ]
    shared = flagged[:windows]
    line = f"FALSE-ALARMS window={size} windows={windows} driftline={sum(shared)}/{windows}"
    if baseline is not None:
        verdicts = [baseline.drifted_columns(baseline.run(baseline.frame(w))) for w in data[:windows]]
        dataset = sum(share >= 0.5 for _, share in verdicts)
        any_column = sum(count > 0 for count, _ in verdicts)
        mean_share = statistics.mean(share for _, share in verdicts)
        line += (
            f" evidently-dataset-drift={dataset}/{windows} evidently-any-column={any_column}/{windows} "
            f"(mean share of drifted columns {mean_share:.2f})"
        )
    out(line)
    n = len(flagged)
    out(
        f"FALSE-ALARMS window={size} driftline over {n} windows: {sum(flagged)}/{n} = {sum(flagged) / n:.1%} "
        "(design: at most fdr_q = 5%)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="window sizes (events), comma-separated")
    parser.add_argument("--repeats", type=int, default=20, help="windows timed per size for driftline and scipy")
    parser.add_argument("--evidently-repeats", type=int, default=3, help="windows timed per size for Evidently")
    parser.add_argument(
        "--false-alarm-windows", type=int, default=10, help="stationary windows per size checked by both tools"
    )
    parser.add_argument(
        "--driftline-false-alarm-windows",
        type=int,
        default=1_000,
        help="stationary windows per size checked by driftline alone",
    )
    parser.add_argument("--no-evidently", dest="evidently", action="store_false", help="leave Evidently out")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: sizes up to 1,000 only, few windows, no warm-up (times not meaningful)",
    )
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if not sizes or min(sizes) < 2:
        parser.error("--sizes needs window sizes of at least 2 events")
    if args.quick:
        sizes = [s for s in sizes if s <= 1_000] or [min(sizes)]
        args.repeats, args.evidently_repeats = 3, 1
        args.false_alarm_windows, args.driftline_false_alarm_windows = 1, 20
    if min(args.repeats, args.evidently_repeats, args.false_alarm_windows) < 1:
        parser.error("repeats and window counts must be at least 1")
    return run(
        sizes,
        args.repeats,
        args.evidently_repeats,
        args.false_alarm_windows,
        max(args.driftline_false_alarm_windows, args.false_alarm_windows),
        args.evidently,
        warm_up=not args.quick,
    )


if __name__ == "__main__":
    sys.exit(main())
