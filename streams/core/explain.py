"""Where a window's drift comes from: features ranked by effect size, and the segments it concentrates in.

Input: the reference, the whole window's :class:`WindowProfile`, and one
``WindowProfile`` per segment ``key=value`` (built by the worker for the
attributes the policy names, over the same reference). Only the profiles'
exact, mergeable parts are read: counts, means and sums of squares. So the
*rest* of a window (everyone outside a segment) is the whole minus the
segment, without a profile of its own.

Effect sizes are standardized and do not grow with the window's size:

- numeric: the change of mean and of standard deviation, both in reference
  standard deviations, combined as ``sqrt(shift^2 + spread^2)`` (the
  2-Wasserstein distance between normals with those moments);
- categorical: Cohen's w, ``sqrt(sum (p - p0)^2 / p0)`` over the reference's
  categories plus ``other``, on the same scale (0.2 small, 0.5 medium);
- both debiased: the square loses what sampling noise alone adds to it in
  expectation (``1/n`` per estimated moment, ``(k-1)/n`` for ``k`` cells), so
  a small segment does not look drifted for being small.

Concentration: over the window's top drifted features, a segment's effect
``E_seg`` (the root sum of squares of its features' effects) against the
effect of the rest of the window ``E_rest``. A segment is named when
``E_seg - E_rest`` is at least ``min_concentration`` and at least ``z``
standard errors of that difference (``sqrt(1/n_seg + 1/n_rest)`` per unit
effect): drift confined to ``channel=mobile`` names it; drift spread evenly
names none. Segments are compared with ``baselines`` (per-segment profiles of
a period without drift) when given, else with the whole reference: without
baselines, a segment that has always differed from the population looks
drifted (docs/ESTIMATION.md).

>>> import numpy as np
>>> from driftline.streams.core.reference import ReferenceProfile
>>> from driftline.streams.core.window_profile import WindowProfile
>>> rng = np.random.default_rng(0)
>>> ref = ReferenceProfile.build("m", "1", {"income": rng.normal(50, 10, 20_000)}, {})
>>> channel = rng.choice(["web", "mobile"], 4_000)
>>> income = rng.normal(50, 10, 4_000) - 8 * (channel == "mobile")
>>> whole, segments = WindowProfile.empty(ref, seed=1), {}
>>> whole.update({"income": income}, {})
>>> for c in ("web", "mobile"):
...     segments[f"channel={c}"] = WindowProfile.empty(ref, seed=1)
...     segments[f"channel={c}"].update({"income": income[channel == c]}, {})
>>> cause = explain(ref, whole, segments)
>>> cause.segments[0].segment, [s.segment for s in cause.segments]
('channel=mobile', ['channel=mobile'])
>>> cause.summary  # doctest: +ELLIPSIS
'drift is in channel=mobile (50% of the window): income −0.8σ'
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from driftline.streams.core.drift import Thresholds, evaluate_window
from driftline.streams.core.reference import OTHER, ReferenceProfile
from driftline.streams.core.window_profile import WindowProfile
from driftline.streams.records import PREDICTION_FEATURE, Evidence, FeatureDrift

TOP_FEATURES = 5
MIN_EFFECT = 0.1
MIN_CONCENTRATION = 0.2
MIN_SEGMENT_SIZE = 100
Z = 3.0
FORMAT_VERSION = 1
# per attribute, the values that get a profile of their own in one window (the first seen): bounds memory
MAX_SEGMENT_VALUES = 20
# metric names of the root cause's entries in a retrain request's evidence
EFFECT_EVIDENCE = "effect"
SEGMENT_EVIDENCE = "segment_share"


@dataclass(frozen=True)
class FeatureEffect:
    """How far one feature moved, in reference standard deviations (or Cohen's w for categories).

    ``shift``/``spread``: the numeric change of mean and of standard deviation
    in reference sigmas; ``category``/``change``: the categorical cell whose
    share grew most, and by how much (a proportion).

    >>> FeatureEffect("income", "numeric", 0.8, shift=-0.8, spread=0.05).describe()
    'income −0.8σ'
    >>> FeatureEffect("device", "categorical", 0.4, category="tablet", change=0.12).describe()
    "device 'tablet' +12 pts"
    """

    feature: str
    kind: str
    effect: float
    shift: float | None = None
    spread: float | None = None
    category: str | None = None
    change: float | None = None

    def describe(self) -> str:
        if self.kind == "numeric":
            if abs(self.shift or 0.0) >= abs(self.spread or 0.0):
                return f"{self.feature} {_signed(self.shift or 0.0)}σ"
            return f"{self.feature} spread {_signed(self.spread or 0.0)}σ"
        return f"{self.feature} {self.category!r} {_signed(100 * (self.change or 0.0), 0)} pts"


@dataclass(frozen=True)
class SegmentDrift:
    """One segment where the drift concentrates: its share of the window and its effects against the rest's.

    >>> SegmentDrift("channel=mobile", 0.62, 1240, 0.9, 0.1, []).concentration
    0.8
    """

    segment: str
    share: float
    n: int
    effect: float
    rest_effect: float
    features: list[FeatureEffect] = field(default_factory=list)

    @property
    def concentration(self) -> float:
        return round(self.effect - self.rest_effect, 12)


@dataclass(frozen=True)
class RootCause:
    """Features ranked by effect, the segments the drift concentrates in, and one sentence for people.

    JSON-able through :meth:`to_dict` (for a retrain request's evidence).

    >>> rc = RootCause(2_000, [FeatureEffect("income", "numeric", 0.8, -0.8, 0.0)], [], "drift ...")
    >>> RootCause.from_dict(rc.to_dict()) == rc
    True
    """

    n: int
    features: list[FeatureEffect]
    segments: list[SegmentDrift]
    summary: str

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for s, seg in zip(out["segments"], self.segments, strict=True):
            s["concentration"] = seg.concentration
        return {"format": FORMAT_VERSION, **out}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RootCause:
        if d.get("format") != FORMAT_VERSION:
            raise ValueError(f"unsupported root cause format {d.get('format')!r}; expected {FORMAT_VERSION}")
        segments = [
            SegmentDrift(
                s["segment"],
                s["share"],
                s["n"],
                s["effect"],
                s["rest_effect"],
                [FeatureEffect(**f) for f in s["features"]],
            )
            for s in d["segments"]
        ]
        return cls(int(d["n"]), [FeatureEffect(**f) for f in d["features"]], segments, d["summary"])


def _signed(x: float, digits: int = 1) -> str:
    return f"{x:+.{digits}f}".replace("-", "−")


# ----------------------------------------------------------------------------- exact summaries


@dataclass
class _Stats:
    """Numeric (count, mean, M2) per numeric feature and counts per categorical feature, as arrays."""

    n: int
    count: NDArray[np.float64]
    mean: NDArray[np.float64]
    m2: NDArray[np.float64]
    cells: list[NDArray[np.float64]]

    @classmethod
    def of_window(cls, w: WindowProfile, numeric: list[str], categorical: list[str]) -> _Stats:
        nw = [w.numeric[f] for f in numeric]
        return cls(
            w.n,
            np.array([x.count for x in nw], np.float64),
            np.array([x.mean for x in nw], np.float64),
            np.array([x.m2 for x in nw], np.float64),
            [w.categorical[f].counts.astype(np.float64) for f in categorical],
        )

    @classmethod
    def of_reference(cls, r: ReferenceProfile, numeric: list[str], categorical: list[str]) -> _Stats:
        nr = [r.numeric[f] for f in numeric]
        count = np.array([x.count for x in nr], np.float64)
        std = np.array([x.std for x in nr], np.float64)
        return cls(
            r.n,
            count,
            np.array([x.mean for x in nr], np.float64),
            std**2 * count,
            [r.categorical[f].counts.astype(np.float64) for f in categorical],
        )

    def minus(self, part: _Stats) -> _Stats:
        """Everyone in ``self`` but not in ``part`` (Chan's pairwise update, inverted)."""
        count = self.count - part.count
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = np.where(count > 0, (self.count * self.mean - part.count * part.mean) / count, 0.0)
            delta = part.mean - mean
            m2 = np.where(count > 0, self.m2 - part.m2 - delta * delta * part.count * count / self.count, 0.0)
        return _Stats(
            self.n - part.n,
            count,
            mean,
            np.maximum(m2, 0.0),
            [np.maximum(a - b, 0.0) for a, b in zip(self.cells, part.cells, strict=True)],
        )


def _effects(
    cur: _Stats,
    base: _Stats,
    sigma: NDArray[np.float64],
    numeric: list[str],
    categorical: list[str],
    labels: list[list[str]],
) -> list[FeatureEffect]:
    """Debiased effect of every feature, ``cur`` against ``base``, in the reference's ``sigma``."""
    out: list[FeatureEffect] = []
    with np.errstate(divide="ignore", invalid="ignore"):
        var_c = cur.m2 / cur.count
        var_b = base.m2 / base.count
        shift = (cur.mean - base.mean) / sigma
        spread = (np.sqrt(var_c) - np.sqrt(var_b)) / sigma
        # sampling variance of the mean difference, and of the sd difference (normal theory: var / 2n)
        noise = (var_c / cur.count + var_b / base.count) * 1.5 / sigma**2
        effect = np.sqrt(np.maximum(shift**2 + spread**2 - noise, 0.0))
    ok = (cur.count > 1) & (base.count > 1) & (sigma > 0) & np.isfinite(effect)
    for j, f in enumerate(numeric):
        if ok[j]:
            out.append(FeatureEffect(f, "numeric", float(effect[j]), float(shift[j]), float(spread[j])))
    for f, c, b, names in zip(categorical, cur.cells, base.cells, labels, strict=True):
        n_c, n_b = c.sum(), b.sum()
        if n_c == 0 or n_b == 0:
            continue
        p_c, p_b = c / n_c, b / n_b
        floor = np.where(p_b > 0, p_b, 0.5 / n_b)  # a cell the baseline never saw: half a count
        cells = int(np.count_nonzero((c > 0) | (b > 0)))
        w2 = float(((p_c - p_b) ** 2 / floor).sum()) - (cells - 1) * (1.0 / n_c + 1.0 / n_b)
        grew = int(np.argmax(p_c - p_b))
        out.append(
            FeatureEffect(
                f, "categorical", math.sqrt(max(w2, 0.0)), category=names[grew], change=float(p_c[grew] - p_b[grew])
            )
        )
    return out


def _ranked(effects: list[FeatureEffect]) -> list[FeatureEffect]:
    return sorted(effects, key=lambda e: (-e.effect, e.feature))


def _norm(effects: list[FeatureEffect], features: list[str]) -> float:
    by = {e.feature: e.effect for e in effects}
    return math.sqrt(sum(by.get(f, 0.0) ** 2 for f in features))


def explain(
    reference: ReferenceProfile,
    window: WindowProfile,
    segments: Mapping[str, WindowProfile],
    *,
    baselines: Mapping[str, WindowProfile] | None = None,
    top_features: int = TOP_FEATURES,
    min_effect: float = MIN_EFFECT,
    min_concentration: float = MIN_CONCENTRATION,
    min_segment_size: int = MIN_SEGMENT_SIZE,
    z: float = Z,
) -> RootCause:
    """The root cause of one window's drift (see the module's docstring for the rules).

    ``segments`` maps ``key=value`` to that segment's profile in this window;
    ``baselines`` (optional) maps ``''`` and ``key=value`` to profiles of a
    period without drift, against which the window and each segment are
    compared instead of the reference. Segments with fewer than
    ``min_segment_size`` events, or leaving fewer in the rest, are not named.
    A segment ``key=value`` is judged without the feature ``key``, if there is one
    (a segment of channel=mobile is all mobile: no drift in itself).
    """
    # the model output moves because its inputs did: the root cause ranks the inputs only
    numeric = [f for f in reference.numeric if f != PREDICTION_FEATURE]
    categorical = list(reference.categorical)
    labels = [[*reference.categorical[f].categories, OTHER] for f in categorical]
    sigma = np.array([reference.numeric[f].std for f in numeric], np.float64)
    ref = _Stats.of_reference(reference, numeric, categorical)

    def stats(w: WindowProfile) -> _Stats:
        return _Stats.of_window(w, numeric, categorical)

    whole = stats(window)
    whole_base = stats(baselines[""]) if baselines and "" in baselines else ref
    ranked = _ranked(_effects(whole, whole_base, sigma, numeric, categorical, labels))
    top = [e.feature for e in ranked if e.effect >= min_effect][:top_features]

    named: list[SegmentDrift] = []
    for segment in sorted(segments) if top else []:
        seg = stats(segments[segment])
        rest = whole.minus(seg)
        if seg.n < min_segment_size or rest.n < min_segment_size:
            continue
        if baselines and segment in baselines and "" in baselines:
            seg_base = stats(baselines[segment])
            rest_base = whole_base.minus(seg_base)
        else:
            seg_base = rest_base = ref
        seg_effects = _effects(seg, seg_base, sigma, numeric, categorical, labels)
        # a segment of the attribute that is also a feature differs in that feature by definition
        key = segment.partition("=")[0]
        seg_effects = [e for e in seg_effects if e.feature != key]
        judged = [f for f in top if f != key]
        e_seg = _norm(seg_effects, judged)
        e_rest = _norm(_effects(rest, rest_base, sigma, numeric, categorical, labels), judged)
        noise = z * math.sqrt(1.0 / seg.n + 1.0 / rest.n)
        if e_seg - e_rest >= max(min_concentration, noise):
            # what moved in the segment, whether or not it shows in the diluted whole window
            moved = [e for e in _ranked(seg_effects) if e.effect >= min_effect][:top_features]
            named.append(SegmentDrift(segment, seg.n / max(window.n, 1), seg.n, e_seg, e_rest, moved))
    named.sort(key=lambda s: (-s.concentration, s.segment))
    return RootCause(window.n, ranked, named, _summary(ranked, top, named, min_effect))


def update_segments(
    profiles: dict[str, WindowProfile],
    reference: ReferenceProfile,
    seed: int,
    numeric: Mapping[str, np.ndarray],
    categorical: Mapping[str, Any],
    attributes: Mapping[str, Any],
    predictions: np.ndarray | None = None,
    *,
    max_values: int | None = None,
) -> None:
    """Add a batch to the per-segment profiles ``profiles`` (``key=value`` -> profile), creating new ones.

    One profile per value of each attribute; ``''`` (no such attribute) is no segment.
    With ``max_values``, an attribute gets at most that many
    profiles: the values first seen; the rows of later values go into no segment.

    >>> ref = ReferenceProfile.build("m", "1", {"x": np.arange(100.0)}, {})
    >>> seg: dict[str, WindowProfile] = {}
    >>> update_segments(seg, ref, 7, {"x": np.array([1.0, 2.0, 3.0])}, {}, {"c": ["a", "b", ""]})
    >>> {k: (p.n, p.numeric["x"].mean) for k, p in sorted(seg.items())}
    {'c=a': (1, 1.0), 'c=b': (1, 2.0)}
    """
    # each column converted once, not once per segment
    num = {f: np.asarray(x) for f, x in numeric.items()}
    cat = {f: np.asarray(x, dtype=object) for f, x in categorical.items()}
    scores = None if predictions is None else np.asarray(predictions)
    for key in sorted(attributes):
        values = np.asarray(attributes[key], dtype=str)
        names, codes = np.unique(values, return_inverse=True)
        order = np.argsort(codes, kind="stable")
        bounds = np.searchsorted(codes[order], np.arange(names.size + 1))
        held = sum(s.startswith(f"{key}=") for s in profiles) if max_values is not None else 0
        for g, name in enumerate(names.tolist()):
            if name == "":
                continue
            rows = order[bounds[g] : bounds[g + 1]]
            segment = f"{key}={name}"
            if segment not in profiles:
                if max_values is not None:
                    if held >= max_values:
                        continue
                    held += 1
                profiles[segment] = WindowProfile.empty(reference, seed)
            profiles[segment].update(
                {f: x[rows] for f, x in num.items()},
                {f: x[rows].tolist() for f, x in cat.items()},
                None if scores is None else scores[rows],
                n=rows.size,
            )


def _summary(ranked: list[FeatureEffect], top: list[str], named: list[SegmentDrift], min_effect: float) -> str:
    if not top:
        return f"no feature moved by {min_effect:g}σ or more"

    def listing(effects: list[FeatureEffect]) -> str:
        return ", ".join(e.describe() for e in effects[:3])

    if not named:
        return f"drift is spread across the window (no segment stands out): {listing(ranked)}"
    parts = [f"{s.segment} ({round(100 * s.share)}% of the window): {listing(s.features)}" for s in named[:3]]
    return "drift is in " + "; also in ".join(parts)


@dataclass(frozen=True)
class SegmentWindowDrift:
    """The drift rows of one segment ``key=value`` of one window, and how many events it held.

    >>> SegmentWindowDrift("channel=mobile", 812, [FeatureDrift("x", "psi", 0.3, None, 0.2, True)]).drifted
    ['x']
    """

    segment: str
    n: int
    drift: list[FeatureDrift]

    @property
    def drifted(self) -> list[str]:
        return sorted({m.feature for m in self.drift if m.drifted})


def segment_drift(
    reference: ReferenceProfile,
    segments: Mapping[str, WindowProfile],
    features: Collection[str],
    *,
    thresholds: Thresholds | None = None,
    fdr_q: float = 0.05,
    min_segment_size: int = MIN_SEGMENT_SIZE,
) -> list[SegmentWindowDrift]:
    """The drift of ``features`` in each segment of at least ``min_segment_size`` events, as the drift
    engine judges a whole window (``evaluate_window``, Benjamini-Hochberg across the segment's features).
    A segment ``key=value`` gets no rows of the feature ``key`` (constant there by definition).

    >>> rng = np.random.default_rng(0)
    >>> ref = ReferenceProfile.build("m", "1", {"x": rng.normal(size=5_000), "y": rng.normal(size=5_000)}, {})
    >>> seg: dict[str, WindowProfile] = {}
    >>> c = np.repeat(["a", "b", "tiny"], [500, 500, 10])
    >>> x = rng.normal(size=c.size) + 2.0 * (c == "b")
    >>> update_segments(seg, ref, 1, {"x": x, "y": rng.normal(size=c.size)}, {}, {"c": c})
    >>> [(d.segment, d.n, d.drifted, sorted({m.feature for m in d.drift})) for d in segment_drift(ref, seg, ["x"])]
    [('c=a', 500, [], ['x']), ('c=b', 500, ['x'], ['x'])]
    """
    out = []
    for name in sorted(segments):
        profile = segments[name]
        if profile.n < min_segment_size:
            continue
        key = name.partition("=")[0]
        rows = evaluate_window(reference, profile, thresholds=thresholds, fdr_q=fdr_q)
        out.append(
            SegmentWindowDrift(name, int(profile.n), [m for m in rows if m.feature in features and m.feature != key])
        )
    return out


def drift_features(cause: RootCause, top_features: int = TOP_FEATURES) -> list[str]:
    """The features whose drift is written per segment: the model output and the top inputs by effect.

    >>> effects = [FeatureEffect("b", "numeric", 0.9), FeatureEffect("a", "numeric", 0.1)]
    >>> drift_features(RootCause(10, effects, [], ""), 1)
    ['__prediction__', 'b']
    """
    return [PREDICTION_FEATURE, *(e.feature for e in cause.features[:top_features])]


def root_cause_evidence(cause: RootCause, window_start: int, window_end: int) -> list[Evidence]:
    """A root cause as retrain-request evidence: its top features (metric ``effect``, the value
    in reference standard deviations, the threshold ``MIN_EFFECT``) and its segments (metric
    ``segment_share``: the feature is ``key=value``, the value its share of the window and the
    threshold its concentration, its effect above the rest's).

    >>> rc = RootCause(100, [FeatureEffect("income", "numeric", 0.8, -0.8, 0.0)],
    ...                [SegmentDrift("channel=mobile", 0.5, 50, 1.2, 0.1, [])], "")
    >>> [(e.metric, e.feature, e.value, e.threshold) for e in root_cause_evidence(rc, 0, 60_000)]
    [('effect', 'income', 0.8, 0.1), ('segment_share', 'channel=mobile', 0.5, 1.1)]
    """
    features = [
        Evidence(EFFECT_EVIDENCE, e.feature, e.effect, MIN_EFFECT, window_start, window_end)
        for e in cause.features[:TOP_FEATURES]
        if e.effect >= MIN_EFFECT
    ]
    segments = [
        Evidence(SEGMENT_EVIDENCE, s.segment, s.share, s.concentration, window_start, window_end)
        for s in cause.segments
    ]
    return features + segments
