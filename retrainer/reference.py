"""The reference profile of a model version, built from its reference dataset.

Both ways a version gets registered (``registry register`` and the
retrainer's challenger) build it here, so both carry the same statistics: the
per-feature references and, when the numeric features allow it, the
multivariate model, which needs the joint rows that only the dataset has.
Both store it through :func:`registered_form`, with the drift thresholds'
calibration computed once here rather than in the worker's first window.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from driftline.streams.core.calibration import with_calibration
from driftline.streams.core.multivariate import MultivariateModel
from driftline.streams.core.reference import ReferenceProfile


def fit_multivariate(numeric: Mapping[str, Any], *, seed: int = 0) -> dict[str, Any] | None:
    """The multivariate model of the reference's numeric columns as plain JSON, or None when it
    cannot be fitted (fewer than two non-constant numeric features or 20 rows).

    >>> rng = np.random.default_rng(0)
    >>> fit_multivariate({"a": rng.normal(size=100), "b": rng.normal(size=100)})["features"]
    ['a', 'b']
    >>> fit_multivariate({"a": rng.normal(size=100)}) is None
    True
    """
    if len(numeric) < 2:
        return None
    try:
        model = MultivariateModel.fit({f: np.asarray(x, dtype=np.float64) for f, x in numeric.items()}, seed=seed)
    except ValueError:
        return None  # too few varying features or rows: the per-feature tests are all there is
    return model.to_dict()


def build_reference(
    model_id: str,
    version: str,
    numeric: Mapping[str, Any],
    categorical: Mapping[str, Sequence[str | None]],
    predictions: Any = None,
    **settings: Any,
) -> ReferenceProfile:
    """``ReferenceProfile.build`` with the multivariate model of the numeric columns.

    >>> rng = np.random.default_rng(1)
    >>> ref = build_reference("m", "1", {"a": rng.normal(size=200), "b": rng.normal(size=200)}, {})
    >>> ref.multivariate["features"], ReferenceProfile.from_dict(ref.to_dict()).multivariate == ref.multivariate
    (['a', 'b'], True)
    """
    numeric = dict(numeric)
    return ReferenceProfile.build(
        model_id,
        version,
        numeric=numeric,
        categorical=dict(categorical),
        predictions=predictions,
        multivariate=fit_multivariate(numeric, seed=int(settings.get("seed", 0))),
        **settings,
    )


def registered_form(profile: ReferenceProfile, calibrator: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON form registration stores: the profile with its score ``calibrator`` (or None) and its
    drift thresholds precomputed (``calibration.precompute``), so no worker resamples them.

    >>> ref = build_reference("m", "1", {"a": np.arange(300.0)}, {})
    >>> d = registered_form(ref)
    >>> d["calibration"][0]["alpha"], d["calibration"][0]["features"]["a"]["exponents"][-1]
    (0.05, 8)
    """
    owned = None if calibrator is None else dict(calibrator)
    return with_calibration(dataclasses.replace(profile, calibrator=owned)).to_dict()
