"""Trainers: turn a training snapshot into a model artifact.

A trainer is any callable ``(TrainingSet, params) -> TrainedModel``. The
built-in one is a river pipeline (scaling, one-hot categoricals, then logistic
regression for classification or linear regression for regression). Others
plug in through the ``driftline.trainers`` entry-point group, or as
``module:function`` in the policy file.

Artifacts are pickles, and a pickle can run any code it names; so they are read
back through an allowlist (:mod:`driftline.unpickling`). A trainer declares what
its artifacts may reference in an ``artifact_allowlist`` attribute (entries
``"module"``: that package's own classes, or ``"module:name"``: one global);
without one, :data:`DEFAULT_ARTIFACT_ALLOWLIST` (what ``river-linear`` needs) applies.
"""

from __future__ import annotations

import importlib
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Literal

import numpy as np
import pandas as pd
from river.base import MiniBatchTransformer

from driftline.unpickling import Allowlist, PickleNotAllowed, restricted_loads

Task = Literal["classification", "regression"]


class TrainerError(RuntimeError):
    """A trainer that cannot be found, or that failed."""


@dataclass
class TrainingSet:
    """Feature columns, labels and event times of one snapshot (or its holdout part).

    >>> ts = TrainingSet({"x": np.array([1.0, 2.0])}, {"c": np.array(["a", "b"])},
    ...                  np.array([0.0, 1.0]), np.array([1, 2]))
    >>> ts.n, ts.frame().columns.tolist()
    (2, ['x', 'c'])
    """

    numeric: dict[str, np.ndarray]
    categorical: dict[str, np.ndarray]
    label: np.ndarray
    event_time: np.ndarray
    task: Task = "classification"

    @property
    def n(self) -> int:
        return len(self.label)

    def frame(self) -> pd.DataFrame:
        columns: dict[str, Any] = {k: v for k, v in self.numeric.items()}
        columns.update({k: pd.Series(v, dtype=object) for k, v in self.categorical.items()})
        return pd.DataFrame(columns)

    def split_by_time(self, holdout_fraction: float) -> tuple[TrainingSet, TrainingSet]:
        """The oldest events train, the newest ``holdout_fraction`` evaluate."""
        train, holdout = self.split_index(holdout_fraction)
        return self.take(train), self.take(holdout)

    def split_index(self, holdout_fraction: float) -> tuple[np.ndarray, np.ndarray]:
        """Row positions of :meth:`split_by_time`, to split other columns of the same rows alike.

        >>> ts = TrainingSet({"x": np.arange(5.0)}, {}, np.zeros(5), np.array([50, 10, 40, 20, 30]))
        >>> [i.tolist() for i in ts.split_index(0.4)]
        [[1, 3, 4], [2, 0]]
        """
        if not 0.0 < holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must be between 0 and 1, got {holdout_fraction}")
        order = np.argsort(self.event_time, kind="stable")
        cut = int(round(self.n * (1.0 - holdout_fraction)))
        return order[:cut], order[cut:]

    def take(self, index: np.ndarray) -> TrainingSet:
        return TrainingSet(
            {k: v[index] for k, v in self.numeric.items()},
            {k: v[index] for k, v in self.categorical.items()},
            self.label[index],
            self.event_time[index],
            self.task,
        )


@dataclass
class TrainedModel:
    """What a trainer returns: a scorer, its serialised artifact and what it learnt from."""

    model: Any
    params: dict[str, Any]
    trainer: str
    train_metrics: dict[str, float] = field(default_factory=dict)

    def artifact(self) -> bytes:
        return pickle.dumps(self.model, protocol=pickle.HIGHEST_PROTOCOL)


def score(model: Any, data: TrainingSet) -> np.ndarray:
    """Scores of ``model`` on ``data``: P(label = 1) for classifiers, the estimate for regressors."""
    frame = data.frame()
    if data.task == "classification":
        proba = model.predict_proba_many(frame)
        if True in proba.columns:
            return proba[True].to_numpy(dtype=np.float64)
        if 1 in proba.columns:
            return proba[1].to_numpy(dtype=np.float64)
        return np.zeros(len(frame))
    return np.asarray(model.predict_many(frame), dtype=np.float64)


# What a river-linear artifact references (river 0.26, numpy 2): river's classes, the containers
# their state holds, numpy scalars and the fill step below. Nothing that runs a command or opens a file.
DEFAULT_ARTIFACT_ALLOWLIST: tuple[str, ...] = (
    "river",
    "collections:Counter",
    "collections:OrderedDict",
    "collections:defaultdict",
    "collections:deque",
    "builtins:float",
    "builtins:int",
    "builtins:set",
    "builtins:frozenset",
    "numpy:dtype",
    "numpy:ndarray",
    "numpy._core.multiarray:scalar",
    "numpy._core.multiarray:_reconstruct",
    "numpy.core.multiarray:scalar",
    "numpy.core.multiarray:_reconstruct",
    "driftline.retrainer.trainers:FillMissing",
)


class ArtifactNotAllowed(TrainerError):
    """A model artifact references a global outside its trainer's ``artifact_allowlist``."""


def artifact_allowlist(trainer: Any) -> Allowlist:
    """What ``trainer``'s artifacts may reference: its ``artifact_allowlist`` attribute, or the default.

    >>> artifact_allowlist(train_river_linear).modules
    ('river',)
    >>> def custom(data, params): ...
    >>> custom.artifact_allowlist = ["sklearn", "numpy:ndarray"]
    >>> artifact_allowlist(custom).entries()
    ['sklearn', 'numpy:ndarray']
    """
    entries = getattr(trainer, "artifact_allowlist", None)
    name = getattr(trainer, "__name__", "trainer")
    return Allowlist.parse(
        DEFAULT_ARTIFACT_ALLOWLIST if entries is None else entries, what=f"a model artifact (allowlist of {name})"
    )


def load_model(artifact: bytes, allow: Allowlist | None = None) -> Any:
    """The model in ``artifact``, unpickled through ``allow`` (default: river-linear's allowlist).

    Raises :class:`ArtifactNotAllowed` naming the global it refused and how to allow it.
    The artifact store verifies the bytes' sha256 (integrity); this limits what they may do (trust).

    >>> import os
    >>> load_model(pickle.dumps(os.getcwd))  # doctest: +ELLIPSIS +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
    ...
    driftline.retrainer.trainers.ArtifactNotAllowed: posix.getcwd is not allowed in a model artifact
    (allowlist of train_river_linear): its allowlist names only river, ...;
    if you trust it, add 'posix:getcwd' (or its module 'posix') to the allowlist:
    set the trainer's artifact_allowlist attribute (see docs/SECURITY.md)
    """
    try:
        return restricted_loads(artifact, allow or artifact_allowlist(train_river_linear))
    except PickleNotAllowed as exc:
        raise ArtifactNotAllowed(
            f"{exc}: set the trainer's artifact_allowlist attribute (see docs/SECURITY.md)"
        ) from exc


DEFAULT_RIVER_PARAMS = {"learning_rate": 0.05, "l2": 0.0, "epochs": 5, "batch_size": 256, "seed": 0}

# (batches done, batches in all): how far a trainer has got, for logs and live views.
TrainingProgress = Callable[[int, int], None]


class FillMissing(MiniBatchTransformer):
    """Replace missing (NaN or absent) numeric inputs with fixed values, e.g. the training means.

    Snapshots hold NaN wherever an event lacked a feature; one NaN reaching a
    linear model makes every later score NaN, so the fill values are learnt
    with the model and travel inside its artifact.

    >>> import pandas as pd
    >>> fill = FillMissing({"x": 2.0})
    >>> fill.transform_many(pd.DataFrame({"x": [1.0, np.nan]}))["x"].tolist(), fill.transform_one({})
    ([1.0, 2.0], {'x': 2.0})
    """

    def __init__(self, values: dict[str, float]) -> None:
        self.values = values

    def transform_one(self, x: dict) -> dict:
        out = dict(x)
        for name, value in self.values.items():
            current = out.get(name)
            if current is None or (isinstance(current, float) and np.isnan(current)):
                out[name] = value
        return out

    def transform_many(self, X: pd.DataFrame) -> pd.DataFrame:
        present = {k: v for k, v in self.values.items() if k in X.columns}
        missing = [k for k in self.values if k not in X.columns]
        X = X.fillna(present) if present else X
        return X.assign(**{k: self.values[k] for k in missing}) if missing else X


def train_river_linear(
    data: TrainingSet, params: dict[str, Any] | None = None, *, progress: TrainingProgress | None = None
) -> TrainedModel:
    """The built-in trainer: river's scaler, one-hot encoder and linear model, in mini-batches.

    Missing numeric inputs are filled with the training means (see :class:`FillMissing`).

    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=2000)
    >>> ts = TrainingSet({"x": x}, {}, (x > 0).astype(float), np.arange(2000))
    >>> trained = train_river_linear(ts)
    >>> bool(((score(trained.model, ts) > 0.5) == (x > 0)).mean() > 0.95)
    True
    """
    from river import compose, linear_model, optim, preprocessing

    merged = {**DEFAULT_RIVER_PARAMS, **(params or {})}
    unknown = set(merged) - set(DEFAULT_RIVER_PARAMS)
    if unknown:
        raise TrainerError(f"river-linear: unknown hyperparameter(s) {', '.join(sorted(unknown))}")
    if data.n == 0:
        raise TrainerError("river-linear: the training set is empty")
    numeric = list(data.numeric)
    categorical = list(data.categorical)
    steps = []
    if numeric:
        with np.errstate(all="ignore"):  # an all-missing column has no mean: it is filled with 0
            means = {k: float(np.nanmean(v)) if np.isfinite(v).any() else 0.0 for k, v in data.numeric.items()}
        steps.append(compose.Select(*numeric) | FillMissing(means) | preprocessing.StandardScaler())
    if categorical:
        steps.append(compose.Select(*categorical) | preprocessing.OneHotEncoder())
    features = steps[0] if len(steps) == 1 else compose.TransformerUnion(*steps)
    optimizer = optim.SGD(merged["learning_rate"])
    if data.task == "classification":
        estimator = linear_model.LogisticRegression(optimizer=optimizer, l2=merged["l2"])
    else:
        estimator = linear_model.LinearRegression(optimizer=optimizer, l2=merged["l2"])
    model = features | estimator

    frame = data.frame()
    target = pd.Series(data.label.astype(bool) if data.task == "classification" else data.label)
    rng = np.random.default_rng(merged["seed"])
    size = int(merged["batch_size"])
    epochs = int(merged["epochs"])
    per_epoch = -(-data.n // size)
    done = 0
    for _ in range(epochs):
        order = rng.permutation(data.n)
        for start in range(0, data.n, size):
            rows = order[start : start + size]
            model.learn_many(frame.iloc[rows].reset_index(drop=True), target.iloc[rows].reset_index(drop=True))
            done += 1
            if progress is not None:
                progress(done, epochs * per_epoch)
    return TrainedModel(model=model, params=merged, trainer="river-linear")


train_river_linear.artifact_allowlist = DEFAULT_ARTIFACT_ALLOWLIST  # type: ignore[attr-defined]

TrainerFn = Callable[[TrainingSet, dict[str, Any]], TrainedModel]


def resolve_trainer(name: str) -> TrainerFn:
    """An entry point of ``driftline.trainers`` by name, or ``module:function``."""
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            return getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise TrainerError(f"trainer {name!r} cannot be imported: {exc}") from exc
    for ep in entry_points(group="driftline.trainers"):
        if ep.name == name:
            return ep.load()
    if name == "river-linear":  # also when the package metadata is not installed
        return train_river_linear
    known = sorted(ep.name for ep in entry_points(group="driftline.trainers"))
    raise TrainerError(f"unknown trainer {name!r}; installed: {', '.join(known) or 'none'}; or give module:function")
