"""Power, false alarms and cost of the slow-drift and multivariate statistics.

- **Slow drift** (``driftline.streams.core.sequential.TrendDetector``): a 5,000-row
  reference, stationary windows 1-9, then +0.02 sigma per window from window
  10; the delay is the number of drifted windows seen when first flagged (5:
  flagged by the window whose mean has moved 0.1 sigma). One stream at
  alpha = 0.05, and one stream of a 23-stream detector (22 features and the
  output, Bonferroni: threshold 23/alpha).
- **False alarms** of one stream over 1,000 stationary windows: normal,
  t(3), integer-valued (Poisson 3), and window sizes drawn from 50 to 5,000.
- **Multivariate** (``driftline.streams.core.multivariate``): two features whose
  correlation goes 0 -> 0.8 with unchanged marginals, among 5, 22 and 50
  features (a correlated block, an integer-valued, a constant and a 10%-missing
  feature); the share of windows flagged, per metric and by either, each window
  against a reference of its own, at 100, 1,000, 10,000 and varied (50-10,000)
  events. ``--multivariate-only`` prints these lines (and the costs) alone.
- **Cost** per window: TrendDetector.update for 23 streams, and the
  multivariate update + evaluate at 1,000 events x 22 features.

Many streams of one simulation run as the streams of one detector (they are
independent columns); each is judged at its own level (log evidence against
log(1/alpha), or log(23/alpha)). ``--quick`` is a smoke run.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # many small products: threads only contend

import argparse
import math
import time

import numpy as np
from scipy import special

from driftline.streams.core.multivariate import MultivariateModel
from driftline.streams.core.sampler import stable_seed
from driftline.streams.core.sequential import TrendDetector

N_REF = 5_000
ONSET = 10


def _draw(rng: np.random.Generator, kind: str, shape: tuple[int, ...]) -> np.ndarray:
    if kind == "t3":
        return rng.standard_t(3, size=shape) / math.sqrt(3.0)
    if kind == "integer":
        return rng.poisson(3.0, size=shape).astype(np.float64)
    return rng.normal(size=shape)


def _detector(
    rng: np.random.Generator, kind: str, streams: int, guarantee: str, shared_by: int, prior: str = "normal"
) -> tuple[TrendDetector, float]:
    ref = _draw(rng, kind, (streams, N_REF))
    det = TrendDetector(
        [f"s{i}" for i in range(streams)],
        ref_count=np.full(streams, N_REF),
        ref_mean=ref.mean(axis=1),
        ref_std=ref.std(axis=1),
        guarantee=guarantee,
        prior=prior,
        shared_by=shared_by,
    )
    return det, float(ref.std(axis=1).mean())


def _window(rng, kind: str, streams: int, n: np.ndarray, shift: float, sd: float):
    """Each stream's window count, mean and M2; normal windows from their exact laws, the others drawn
    at the first stream's size (varied sizes are drawn for normal windows only)."""
    if kind == "normal":
        mean = rng.normal(shift, sd / np.sqrt(n))
        return n, mean, sd**2 * rng.chisquare(n - 1)
    x = _draw(rng, kind, (streams, int(n[0]))) + shift
    mean = x.mean(axis=1)
    return n, mean, ((x - mean[:, None]) ** 2).sum(axis=1)


def slow_drift_delays(
    n: int, reps: int, seed: int, guarantee: str = "rate", shared_by: int = 1, prior: str = "normal"
) -> tuple[np.ndarray, np.ndarray]:
    """Each stream's delay (drifted windows seen at its first alarm from the onset on; 10**6: never in 50
    drifted windows), and whether it alarmed again in the next window (what a trigger of two windows
    in a row needs). The streams are judged at the level of a detector of ``shared_by`` streams."""
    rng = np.random.default_rng(seed)
    det, sd = _detector(rng, "normal", reps, guarantee, shared_by, prior)
    first = np.full(reps, -1)
    again = np.zeros(reps, bool)
    for t in range(1, ONSET + 50):
        shift = 0.02 * sd * max(0, t - ONSET + 1)
        _, alarm = det.observe(*_window(rng, "normal", reps, np.full(reps, float(n)), shift, sd))
        again |= alarm & (first == t - 1) & (t > ONSET)
        if t >= ONSET:  # an alarm before the onset is a false one: it does not find the trend
            first[(first < 0) & alarm] = t
    return np.where(first > 0, first - ONSET + 1, 10**6), again


def oracle_bound(n: int, paths: int, windows: int = 1_000, slope: float = 0.02, delay: int = 5, seed: int = 0):
    """The share of onsets at window ``ONSET`` that an oracle flags by ``delay`` drifted windows, under the
    same guarantee as TrendDetector's 'ever' mode (at most 5% of stationary streams ever flagged over
    ``windows`` windows).

    The oracle knows the slope and the delay: for each possible onset j it tests once, at window
    j + delay - 1, the matched filter sum_k k (y_(j+k-1) - baseline_j) of the window means (baseline: the
    reference and the windows before j, precision-weighted), standardised exactly; it alarms when any
    onset's |Z_j| passes c, the 95% quantile of max_j |Z_j| over stationary streams (simulated: the
    exact scan threshold, not Bonferroni). With the onset known as well, no scan would be needed and
    the guarantee over 1,000 windows would not be the same. Returns (c, signal at ONSET, power).
    """
    rng = np.random.default_rng(seed)
    k = np.arange(1, delay + 1, dtype=np.float64)
    starts = np.arange(1, windows - delay + 2)  # onsets whose test falls inside the horizon
    base_precision = N_REF + (starts - 1) * n  # in units of 1 / sigma^2
    sd = np.sqrt((k @ k) / n + k.sum() ** 2 / base_precision)
    maxima = np.empty(paths)
    for i in range(paths):
        y = rng.normal(0.0, 1.0 / math.sqrt(n), windows)
        y0 = rng.normal(0.0, 1.0 / math.sqrt(N_REF))
        before = np.concatenate([[0.0], np.cumsum(y)])[starts - 1]  # sum of the windows before j
        baseline = (N_REF * y0 + n * before) / base_precision
        lagged = np.stack([y[starts - 1 + d] for d in range(delay)])  # delay x onsets
        z = (k @ lagged - k.sum() * baseline) / sd
        maxima[i] = np.abs(z).max()
    c = float(np.quantile(maxima, 0.95))
    signal = slope * (k @ k) / float(sd[ONSET - 1])
    return c, signal, float(special.ndtr(signal - c) + special.ndtr(-signal - c))


def oracle_rate(n: int, shared_by: int, alpha: float = 0.05, slope: float = 0.02, delay: int = 5):
    """The same oracle under the 'rate' guarantee (false alarms at most alpha of the windows of a detector
    of ``shared_by`` streams): in each window it tests the one onset ``delay`` windows back, so each test
    may spend alpha / shared_by, two-sided, exactly (no scan: one test per window). It flags the onset at
    window ``ONSET`` by ``delay`` drifted windows only through that last test. Returns (c, signal, power)."""
    k = np.arange(1, delay + 1, dtype=np.float64)
    sd = math.sqrt((k @ k) / n + k.sum() ** 2 / (N_REF + (ONSET - 1) * n))
    c = float(special.ndtri(1 - alpha / shared_by / 2))
    signal = slope * float(k @ k) / sd
    return c, signal, float(special.ndtr(signal - c) + special.ndtr(-signal - c))


def false_alarms(
    kind: str, n: int | str, detectors: int, streams: int, windows: int, seed: int, guarantee: str
) -> dict[str, float]:
    """Over ``windows`` stationary windows of ``detectors`` detectors of ``streams`` streams each (level
    shared by Bonferroni): the share of windows in which a detector alarms on any stream, the share
    in which it alarms in this window and the one before (a trigger's two windows in a row), and the
    share of detectors that ever alarm."""
    rng = np.random.default_rng(seed)
    total = detectors * streams
    det, sd = _detector(rng, kind, total, guarantee, streams)
    alarmed = np.zeros(detectors, bool)
    before = np.zeros(detectors, bool)
    windows_alarmed = twice = 0
    for _ in range(windows):
        sizes = rng.integers(50, 5_001, total).astype(float) if n == "varied" else np.full(total, float(n))
        _, alarm = det.observe(*_window(rng, kind, total, sizes, 0.0, sd))
        now = alarm.reshape(detectors, streams).any(axis=1)
        windows_alarmed += int(now.sum())
        twice += int((now & before).sum())
        alarmed |= now
        before = now
    return {
        "windows": windows_alarmed / (detectors * windows),
        "twice": twice / (detectors * windows),
        "ever": float(alarmed.mean()),
    }


def _ratio(what: str, value: float, target: float, at_least: bool) -> str:
    met = value >= target if at_least else value <= target
    return f"RATIO {what} {value:.3f} target {'>=' if at_least else '<='} {target:g} {'MET' if met else 'NOT MET'}"


def slow_report(quick: bool) -> None:
    """The SLOW, ORACLE and NULL lines: power and false alarms of both guarantees."""
    reps, windows = (40, 50) if quick else (2_000, 1_000)
    print(f"# slow drift: +0.02 sigma/window from window {ONSET}, reference {N_REF:,}, {reps} streams per cell")
    print("# delay = drifted windows seen at the first alarm from the onset (5 = by the window at +0.1 sigma);")
    print("# again = alarmed in the next window too (a trigger of two windows in a row)")
    for n in (1_000, 10_000):
        for guarantee, prior in (("rate", "normal"), ("rate", "two_point"), ("ever", "normal")):
            for shared_by in (1, 23):
                d, again = slow_drift_delays(
                    n, reps, seed=n + shared_by, guarantee=guarantee, shared_by=shared_by, prior=prior
                )
                never = float((d >= 10**6).mean())
                q = np.quantile(np.where(d >= 10**6, np.inf, d), [0.1, 0.5, 0.9])
                found = float((d <= 5).mean())
                label = "alone" if shared_by == 1 else "of 23"
                print(
                    f"SLOW n={n:>6,} {guarantee} {prior:<9} stream {label:<6} P(delay<=5)={found:.3f} "
                    f"delay p10/p50/p90={q[0]:.0f}/{q[1]:.0f}/{q[2]:.0f} never={never:.2f} again={again.mean():.2f}"
                )
                if prior == "normal":
                    print(_ratio(f"slow n={n} {guarantee} {label} P(delay<=5)", found, 0.95, True))

    print("# oracles: know the slope and the delay (5); 'ever' scans the onsets at 5% ever over 1,000 windows,")
    print("# 'rate' tests one onset per window at alpha/k (false alarms at most 5% of windows)")
    for n in (1_000, 10_000):
        c, signal, power = oracle_bound(n, paths=200 if quick else 2_000, seed=n)
        print(
            f"ORACLE ever n={n:>6,} scan threshold |Z|>{c:.2f} signal at delay 5 {signal:.2f} P(delay<=5)={power:.3f}"
        )
        for shared_by in (1, 23):
            c, signal, power = oracle_rate(n, shared_by)
            print(
                f"ORACLE rate n={n:>6,} k={shared_by:<2} |Z|>{c:.2f} "
                f"signal at delay 5 {signal:.2f} P(delay<=5)={power:.3f}"
            )

    print(f"# false alarms over {windows:,} stationary windows: share of windows with an alarm (any stream),")
    print("# with an alarm in this and the window before, and share of detectors ever alarmed; alpha 0.05")
    cells = [
        ("normal", 100, 100),
        ("normal", 1_000, 100),
        ("normal", 10_000, 100),
        ("normal", "varied", 100),
        ("t3", 100, 20),
        ("t3", 1_000, 10),
        ("t3", 10_000, 2),
        ("integer", 100, 20),
        ("integer", 1_000, 10),
        ("integer", 10_000, 2),
    ]
    for kind, n, detectors in cells:
        for streams in (23, 1):
            count = (max(detectors // 10, 1) if quick else detectors) * (23 if streams == 1 else 1)
            for guarantee in ("rate", "ever"):
                start = time.process_time()
                rates = false_alarms(kind, n, count, streams, windows, stable_seed(kind, n, streams) % 2**32, guarantee)
                print(
                    f"NULL {guarantee} {kind:<8} n={n!s:>6} streams={streams:>2} detectors={count:>4} "
                    f"windows alarmed={rates['windows']:.4f} two in a row={rates['twice']:.4f} "
                    f"ever={rates['ever']:.3f} ({time.process_time() - start:.0f} s CPU)"
                )
                if guarantee == "rate":
                    print(
                        _ratio(
                            f"null {kind} n={n} streams={streams} rate share of windows", rates["windows"], 0.05, False
                        )
                    )


def mixed_stream(rng: np.random.Generator, p: int, n: int, corr: float, block_break: bool = False) -> dict:
    """Columns f0..f(p-1): f0 and f1 standard normal with correlation ``corr``; f2..f(p/2 - 1) sharing
    a factor (pairwise correlation 0.49, none with ``block_break``); the last three are 10% missing,
    constant and integer-valued (Poisson 4). The unit tests use it too."""
    x = rng.normal(size=(n, p))
    x[:, 1] = corr * x[:, 0] + math.sqrt(1 - corr**2) * x[:, 1]
    if not block_break:
        factor = rng.normal(size=n)
        x[:, 2 : p // 2] = 0.7 * factor[:, None] + math.sqrt(0.51) * x[:, 2 : p // 2]
    cols = {f"f{j}": x[:, j] for j in range(p)}
    cols[f"f{p - 1}"] = rng.poisson(4, size=n).astype(float)
    cols[f"f{p - 2}"] = np.full(n, 3.0)
    holes = cols[f"f{p - 3}"].copy()
    holes[rng.random(n) < 0.1] = np.nan
    cols[f"f{p - 3}"] = holes
    return cols


def multivariate_rates(p: int, n: int | str, reps: int, seed: int) -> dict[str, np.ndarray]:
    """Shares of windows flagged, each window against a reference of its own (fitted afresh), so that
    the share is the rate over references too: a reference's own sampling error moves its rate most at
    10,000 events, and a few references would measure that error rather than the level.
    ``n="varied"``: window sizes drawn from 50 to 10,000 events."""
    rng = np.random.default_rng(seed)
    cases = [("stationary", 0.0, False), ("corr 0->0.8", 0.8, False)]
    if p >= 8:  # features 2 .. p/2 share a factor (correlation 0.49) in the reference: there is a block to break
        cases.append(("block 0.49->0", 0.0, True))
    hits = {name: np.zeros(3) for name, _, _ in cases}
    for r in range(reps):
        model = MultivariateModel.fit(mixed_stream(rng, p, N_REF, 0.0), seed=seed + r)
        for name, corr, broken in cases:
            size = int(rng.integers(50, 10_001)) if n == "varied" else int(n)
            w = model.window()
            w.update(model, mixed_stream(rng, p, size, corr, broken))
            err, cor = model.evaluate(w)
            hits[name] += [err.drifted, cor.drifted, err.drifted or cor.drifted]
    return {name: h / reps for name, h in hits.items()}


def multivariate_table(reps: int) -> None:
    """The MV lines: every cell of features x window size, ``reps`` windows (and references) each."""
    print(
        f"# multivariate: share of windows flagged, {reps} windows per cell, each against its own reference "
        f"of {N_REF:,} rows; alpha 0.05 (0.025 per metric), reference_risk 0.05"
    )
    print("# columns: reconstruction_error / correlation_change / either; 95% interval: r +- 2 sqrt(r(1-r)/reps)")
    for p in (5, 22, 50):
        for n in (100, 1_000, 10_000, "varied"):
            start = time.process_time()
            rates = multivariate_rates(p, n, reps, seed=stable_seed("mv", p, n) % 2**32)
            cells = "  ".join(f"{k}: {'/'.join(f'{v:.3f}' for v in r)}" for k, r in rates.items())
            size = f"{n:,}" if isinstance(n, int) else n
            print(f"MV p={p:>2} n={size:>6}  {cells}  ({time.process_time() - start:.0f} s CPU)", flush=True)


def _per_call_us(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e6)


def costs(repeat: int) -> None:
    rng = np.random.default_rng(0)
    det = TrendDetector(
        [f"f{i}" for i in range(23)], ref_count=np.full(23, N_REF), ref_mean=np.zeros(23), ref_std=np.ones(23)
    )
    for _ in range(80):  # a full memory of 64 windows
        det.update(np.full(23, 1_000.0), rng.normal(0, 0.03, 23), np.full(23, 999.0))

    def update() -> object:
        return det.update(np.full(23, 1_000.0), rng.normal(0, 0.03, 23), np.full(23, 999.0))

    print(f"COST TrendDetector.update, 23 streams, 64 kept windows: {_per_call_us(update, repeat):.0f} us")
    model = MultivariateModel.fit(mixed_stream(rng, 22, N_REF, 0.0))
    cols = mixed_stream(rng, 22, 1_000, 0.0)

    def window() -> None:
        w = model.window()
        w.update(model, cols)
        model.evaluate(w)

    print(
        f"COST multivariate update + evaluate, 1,000 events x 22 features "
        f"({len(model.features)} non-constant, {model.components_kept} components): "
        f"{_per_call_us(window, repeat):.0f} us"
    )
    w = model.window()
    w.update(model, cols)
    print(f"COST multivariate evaluate alone: {_per_call_us(lambda: model.evaluate(w), repeat):.0f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of seconds")
    parser.add_argument("--multivariate-only", action="store_true", help="only the MV lines (and their cost)")
    args = parser.parse_args()
    if args.multivariate_only:
        multivariate_table(20 if args.quick else 400)
        costs(repeat=20 if args.quick else 200)
        return
    mv_reps = 20 if args.quick else 400

    slow_report(args.quick)

    multivariate_table(mv_reps)

    costs(repeat=20 if args.quick else 200)


if __name__ == "__main__":
    main()
