"""The reference profile of a model version: what drift is measured from.

A :class:`ReferenceProfile` summarises the data a model version was trained
or validated on. Numeric features are binned on the reference's quantile
edges, with an open bin below the reference minimum and one above its
maximum. Categorical features count the reference's top-K values plus
``other``. Both count missing values separately. Numeric features also keep
the moments (kurtosis included) and how values spread inside each bin (the
in-bin octiles of a uniform sample, ``metrics.inbin_shape``): all that the
binned CDFs of KS, Wasserstein and the window quantiles need, instead of the
sample itself. ``to_dict`` round-trips exactly (arrays packed, see
``streams.core.packing``); a profile registered with its sample loads by
deriving the same summary from it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from driftline.streams.core import metrics
from driftline.streams.core.columns import category_counts, check_names, columns_length, finite_values, numeric_column
from driftline.streams.core.packing import pack_array, unpack_array
from driftline.streams.core.sampler import stable_seed
from driftline.streams.records import PREDICTION_FEATURE

FORMAT_VERSION = 1
OTHER = "__other__"

T = TypeVar("T")


def _cuts(edges: np.ndarray) -> np.ndarray:
    """The cuts of ``np.searchsorted(cuts, x, side="right")`` on a numeric reference's edges."""
    # a value equal to the maximum goes in the last inner bin and anything above it in the open bin
    return np.append(edges[: max(len(edges) - 1, 1)], np.nextafter(edges[-1], np.inf))


@dataclass(eq=False)
class NumericReference:
    """The reference summary of one numeric feature.

    ``edges`` are the reference quantiles (first = minimum, last = maximum);
    ``counts`` has one open bin below the minimum, the inner bins, and one open
    bin above the maximum (the open bins are empty in the reference itself).
    ``shape`` is the in-bin spread of a uniform sample of ``shape_of`` values
    (``metrics.inbin_shape``), and ``kurtosis`` that sample's moment kurtosis.

    >>> r = NumericReference.build("x", np.arange(100.0), bins=4, sample_size=10, seed=0)
    >>> r.edges.tolist(), r.counts.tolist(), r.shape.shape, r.shape_of
    ([0.0, 24.0, 49.0, 74.0, 99.0], [0, 24, 25, 25, 26, 0], (3, 4, 9), 10)
    >>> r.bin_index(np.array([-1.0, 0.0, 99.0, 99.5])).tolist()
    [0, 1, 4, 5]
    """

    name: str
    edges: np.ndarray
    counts: np.ndarray
    missing: int
    mean: float
    std: float
    min: float
    max: float
    kurtosis: float  # of the sample behind ``shape`` (3 for a normal): sets the scale test's noise
    shape: np.ndarray  # metrics.inbin_shape of that sample: (3, inner bins, INBIN_STEPS + 1)
    shape_of: int  # how many values that sample held
    cuts: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.cuts = _cuts(self.edges)
        if self.counts.shape != (self.n_bins,):
            raise ValueError(f"feature {self.name!r}: {len(self.counts)} counts for {self.n_bins} bins")

    @property
    def n_bins(self) -> int:
        return len(self.cuts) + 1

    @property
    def count(self) -> int:
        return int(self.counts.sum())

    def bin_index(self, values: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.cuts, values, side="right")

    @classmethod
    def build(cls, name: str, values: Any, *, bins: int, sample_size: int, seed: int) -> NumericReference:
        v, n_missing = finite_values(name, numeric_column(name, values))
        if v.size == 0:
            raise ValueError(f"numeric feature {name!r} has no values in the reference; drop it or supply data")
        # Edges are reference values (no interpolation), so repeated values of
        # a discrete feature give fewer, never empty, bins.
        edges = np.unique(np.quantile(v, np.linspace(0.0, 1.0, bins + 1), method="inverted_cdf"))
        rng = np.random.default_rng(stable_seed(seed, "reference", name))
        sample = v if v.size <= sample_size else rng.choice(v, size=sample_size, replace=False)
        ref = cls._summarised(
            name,
            edges,
            np.zeros(max(len(edges), 2) + 1, np.int64),
            n_missing,
            float(v.mean()),
            float(v.std()),
            float(v.min()),
            float(v.max()),
            np.sort(sample),
        )
        ref.counts = np.bincount(ref.bin_index(v), minlength=ref.n_bins).astype(np.int64)
        return ref

    @classmethod
    def _summarised(
        cls,
        name: str,
        edges: np.ndarray,
        counts: np.ndarray,
        missing: int,
        mean: float,
        std: float,
        low: float,
        high: float,
        sample: np.ndarray,
    ) -> NumericReference:
        """The reference with the summary of its sorted ``sample`` in place of the sample."""
        shape = metrics.inbin_shape(_cuts(edges), sample)
        return cls(name, edges, counts, missing, mean, std, low, high, sample_kurtosis(sample), shape, sample.size)

    @property
    def grid(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Where this feature's binned CDFs are known (``metrics.cdf_grid``): (points, bins, fractions)."""
        return metrics.shape_grid(self.shape, self.min, self.max)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": "numeric",
            "edges": self.edges.tolist(),
            "counts": self.counts.tolist(),
            "missing": self.missing,
            "mean": self.mean,
            "std": self.std,
            "min": self.min,
            "max": self.max,
            "kurtosis": self.kurtosis,
            "shape": pack_array(self.shape, "<f8"),
            "shape_of": self.shape_of,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NumericReference:
        common = (
            d["name"],
            np.asarray(d["edges"], np.float64),
            np.asarray(d["counts"], np.int64),
            int(d["missing"]),
            float(d["mean"]),
            float(d["std"]),
            float(d["min"]),
            float(d["max"]),
        )
        if "sample" in d:  # registered before the summary replaced the sample: derive it
            return cls._summarised(*common, unpack_array(d["sample"], "<f8"))
        edges = common[1]
        shape = unpack_array(d["shape"], "<f8").reshape(3, max(len(edges) - 1, 1), -1)
        return cls(*common, float(d["kurtosis"]), shape, int(d["shape_of"]))


def sample_kurtosis(sample: np.ndarray) -> float:
    """Moment kurtosis of a sample (3 for a normal), at least 1 (its least possible value); 3 when constant.

    >>> sample_kurtosis(np.array([-1.0, 1.0])), sample_kurtosis(np.full(4, 2.0))
    (1.0, 3.0)
    """
    d = sample - sample.mean()
    v = float(np.dot(d, d)) / max(sample.size, 1)
    return max(1.0, float(np.mean(d**4)) / (v * v)) if v > 0 else 3.0


@dataclass(eq=False)
class CategoricalReference:
    """The reference summary of one categorical feature: top-K counts, ``other`` and missing.

    >>> r = CategoricalReference.build("c", ["a", "b", "a", None, "c", "a"], top_k=2)
    >>> r.categories, r.counts.tolist(), r.missing
    (['a', 'b'], [3, 1, 1], 1)
    """

    name: str
    categories: list[str]
    counts: np.ndarray  # per category, then other
    missing: int
    index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.index = {c: i for i, c in enumerate(self.categories)}
        if self.counts.shape != (len(self.categories) + 1,):
            raise ValueError(f"feature {self.name!r}: {len(self.counts)} counts for {len(self.categories)} categories")

    @property
    def n_bins(self) -> int:
        return len(self.categories) + 1

    @property
    def count(self) -> int:
        return int(self.counts.sum())

    def count_values(self, values: Sequence[Any]) -> tuple[np.ndarray, int]:
        """Counts over the categories + other, and the missing count, of a column."""
        counts, n_missing = category_counts(self.name, values)
        out = np.zeros(self.n_bins, np.int64)
        other = len(self.categories)
        for key, c in counts.items():  # one step per distinct value, not per value
            out[self.index.get(key, other)] += c
        return out, n_missing

    @classmethod
    def build(cls, name: str, values: Sequence[Any], *, top_k: int) -> CategoricalReference:
        counts, n_missing = category_counts(name, values)
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        top = [k for k, _ in ranked[:top_k]]
        table = np.array([c for _, c in ranked[:top_k]] + [sum(c for _, c in ranked[top_k:])], np.int64)
        if not top:
            raise ValueError(f"categorical feature {name!r} has no values in the reference; drop it or supply data")
        return cls(name, top, table, n_missing)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": "categorical",
            "categories": list(self.categories),
            "counts": self.counts.tolist(),
            "missing": self.missing,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CategoricalReference:
        return cls(d["name"], list(d["categories"]), np.asarray(d["counts"], np.int64), int(d["missing"]))


@dataclass(frozen=True)
class StoredCalibration:
    """Null quantiles of the drift distances stored with the profile (``calibration.precompute``).

    Per alpha, one array of (feature, bucket exponent, PSI / Jensen-Shannon / Hellinger / Wasserstein),
    NaN where not stored: a few kilobytes per model version, against the worker's thousand versions.

    >>> d = [{"alpha": 0.05, "features": {"x": {"exponents": [3, 4], "binned": [[0.1, 0.2, 0.3], [0.05, 0.1, 0.2]],
    ...       "wasserstein": [0.4, 0.3]}, "c": {"exponents": [0], "binned": [[1.0, 0.5, 0.5]]}}}]
    >>> s = StoredCalibration.from_dict(d)
    >>> s.get("binned", "x", 4, 0.05), s.get("wasserstein", "x", 3, 0.05), s.get("wasserstein", "x", 5, 0.05)
    ((0.05, 0.1, 0.2), 0.4, None)
    >>> s.get("wasserstein", "c", 0, 0.05), s.get("binned", "c", 0, 0.01), s.to_dict() == d
    (None, None, True)
    """

    features: dict[str, int]  # row of each feature in the tables
    tables: dict[float, np.ndarray]  # per alpha: (features, exponents, 4)
    with_wasserstein: frozenset[str]

    def get(self, group: str, feature: str, exponent: int, alpha: float) -> Any:
        """The stored value (a float, or a tuple of floats for ``binned``), None when not stored."""
        table, row = self.tables.get(alpha), self.features.get(feature)
        if table is None or row is None or not 0 <= exponent < table.shape[1]:
            return None
        values = table[row, exponent]
        if group == "binned":
            return None if np.isnan(values[0]) else tuple(values[:3].tolist())  # the very floats computed
        return None if np.isnan(values[3]) else float(values[3])

    @classmethod
    def from_dict(cls, blocks: Sequence[Mapping[str, Any]]) -> StoredCalibration:
        names = sorted({f for b in blocks for f in b["features"]})
        top = max((e for b in blocks for kept in b["features"].values() for e in kept["exponents"]), default=-1)
        tables = {}
        for block in blocks:
            table = np.full((len(names), top + 1, 4), np.nan)
            for feature, kept in block["features"].items():
                exponents = np.asarray(kept["exponents"], np.int64)
                binned = np.asarray(kept["binned"], np.float64).reshape(-1, 3)
                wasserstein = np.asarray(kept.get("wasserstein", np.full(exponents.size, np.nan)), np.float64)
                if binned.shape[0] != exponents.size or wasserstein.shape != exponents.shape or (exponents < 0).any():
                    raise ValueError(f"calibration of feature {feature!r}: one value per exponent expected")
                table[names.index(feature), exponents] = np.column_stack([binned, wasserstein])
            tables[float(block["alpha"])] = table
        with_w = frozenset(f for b in blocks for f, kept in b["features"].items() if "wasserstein" in kept)
        return cls({f: i for i, f in enumerate(names)}, tables, with_w)

    def to_dict(self) -> list[dict[str, Any]]:
        blocks = []
        for alpha, table in self.tables.items():
            features: dict[str, Any] = {}
            for feature, row in self.features.items():
                stored = np.flatnonzero(~np.isnan(table[row, :, 0]))
                kept: dict[str, Any] = {"exponents": stored.tolist(), "binned": table[row, stored, :3].tolist()}
                if feature in self.with_wasserstein:
                    kept["wasserstein"] = table[row, stored, 3].tolist()
                features[feature] = kept
            blocks.append({"alpha": alpha, "features": features})
        return blocks


@dataclass(eq=False)
class ReferenceProfile:
    """The reference of one model version: what its inputs and outputs looked like.

    Numeric features keep quantile bins, moments and the in-bin spread of a
    uniform sample; categorical ones the top-K values. The model output is the numeric feature
    ``__prediction__``. Derived data (sorted samples, proportions, calibrated
    thresholds) is cached on the object by :meth:`cached`, never serialised, except the thresholds
    registration stores in ``calibration`` (``calibration.precompute``), which the cache reads first.

    >>> rng = np.random.default_rng(0)
    >>> ref = ReferenceProfile.build(
    ...     "credit", "1",
    ...     numeric={"age": rng.normal(40, 10, 1_000)},
    ...     categorical={"region": ["north", "south", None, "north"] * 250},
    ...     predictions=rng.random(1_000),
    ... )
    >>> ref.features
    ['age', 'region', '__prediction__']
    >>> ref.n, ref.numeric["age"].n_bins, ref.categorical["region"].counts.tolist()
    (1000, 12, [500, 250, 0])
    >>> ReferenceProfile.from_dict(ref.to_dict()).to_dict() == ref.to_dict()
    True
    """

    model_id: str
    model_version: str
    n: int
    numeric: dict[str, NumericReference]
    categorical: dict[str, CategoricalReference]
    bins: int = 10
    top_k: int = 20
    sample_size: int = 5_000
    seed: int = 0
    # ScoreCalibrator.to_dict() of a binary classifier, fitted where the profile was built (scores and
    # labels are both at hand only there); None: no label-free performance estimate for this version
    calibrator: dict[str, Any] | None = None
    # the fitted ``MultivariateModel.to_dict()`` of the raw reference rows (None: not fitted, e.g. an
    # old profile, or fewer than two non-constant numeric features); it needs the joint rows, which
    # the per-feature references do not keep, so whoever builds the profile fits it
    multivariate: dict[str, Any] | None = None
    # ``calibration.precompute``: the drift thresholds' null quantiles, computed where the profile is
    # registered instead of in the worker's first window (None: the worker calibrates on first use)
    calibration: StoredCalibration | None = None
    _cache: dict[Any, Any] = field(default_factory=dict, init=False, repr=False)

    @property
    def features(self) -> list[str]:
        return [
            *(f for f in self.numeric if f != PREDICTION_FEATURE),
            *self.categorical,
            *(f for f in self.numeric if f == PREDICTION_FEATURE),
        ]

    def kind(self, feature: str) -> str:
        if feature in self.numeric:
            return "numeric"
        if feature in self.categorical:
            return "categorical"
        raise KeyError(f"feature {feature!r} is not in the reference of {self.model_id} {self.model_version}")

    def cached(self, key: Any, factory: Callable[[], T]) -> T:
        """Derived data kept for the life of this object (the reference is immutable once built)."""
        try:
            hit: T = self._cache[key]  # the factory stored under this key made it
            return hit
        except KeyError:
            value = self._cache[key] = factory()
            return value

    @classmethod
    def build(
        cls,
        model_id: str,
        model_version: str,
        numeric: Mapping[str, np.ndarray],
        categorical: Mapping[str, Sequence[str | None]],
        predictions: np.ndarray | None = None,
        *,
        bins: int = 10,
        top_k: int = 20,
        sample_size: int = 5_000,
        seed: int = 0,
        multivariate: Mapping[str, Any] | None = None,
    ) -> ReferenceProfile:
        if bins < 1 or top_k < 1 or sample_size < 1:
            raise ValueError(f"bins, top_k and sample_size must be positive, got {bins}, {top_k}, {sample_size}")
        check_names(numeric, categorical)
        n = columns_length(numeric, categorical, predictions)
        if n is None:
            raise ValueError("a reference needs at least one feature or predictions")
        columns = dict(numeric)
        if predictions is not None:
            columns[PREDICTION_FEATURE] = predictions
        return cls(
            model_id,
            model_version,
            n,
            {
                f: NumericReference.build(f, x, bins=bins, sample_size=sample_size, seed=seed)
                for f, x in columns.items()
            },
            {f: CategoricalReference.build(f, x, top_k=top_k) for f, x in categorical.items()},
            bins,
            top_k,
            sample_size,
            seed,
            multivariate=None if multivariate is None else dict(multivariate),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "model_id": self.model_id,
            "model_version": self.model_version,
            "n": self.n,
            "settings": {"bins": self.bins, "top_k": self.top_k, "sample_size": self.sample_size, "seed": self.seed},
            "features": [
                *(r.to_dict() for r in self.numeric.values()),
                *(r.to_dict() for r in self.categorical.values()),
            ],
            # only when present, so profiles without one read and write exactly as before
            **({"calibrator": self.calibrator} if self.calibrator is not None else {}),
            # only when fitted, so that the dict of a profile without it is what it always was
            **({"multivariate": self.multivariate} if self.multivariate is not None else {}),
            **({"calibration": self.calibration.to_dict()} if self.calibration is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ReferenceProfile:
        if d.get("format") != FORMAT_VERSION:
            raise ValueError(f"unsupported reference profile format {d.get('format')!r}; expected {FORMAT_VERSION}")
        s = d["settings"]
        numeric = {f["name"]: NumericReference.from_dict(f) for f in d["features"] if f["kind"] == "numeric"}
        categorical = {
            f["name"]: CategoricalReference.from_dict(f) for f in d["features"] if f["kind"] == "categorical"
        }
        return cls(
            d["model_id"],
            d["model_version"],
            int(d["n"]),
            numeric,
            categorical,
            int(s["bins"]),
            int(s["top_k"]),
            int(s["sample_size"]),
            int(s["seed"]),
            calibrator=d.get("calibrator"),
            multivariate=d.get("multivariate"),
            calibration=None if "calibration" not in d else StoredCalibration.from_dict(d["calibration"]),
        )
