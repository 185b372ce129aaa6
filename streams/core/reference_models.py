"""The models a reference profile carries (score calibrator, multivariate model), parsed once per reference."""

from __future__ import annotations

from driftline.streams.core.estimation import ScoreCalibrator
from driftline.streams.core.multivariate import MultivariateModel
from driftline.streams.core.reference import ReferenceProfile


def reference_calibrator(reference: ReferenceProfile) -> ScoreCalibrator | None:
    """The reference's score calibrator, parsed once per reference; None if it has none or a broken one.

    >>> import numpy as np
    >>> ref = ReferenceProfile.build("m", "1", {"x": np.arange(100.0)}, {})
    >>> reference_calibrator(ref) is None
    True
    >>> from dataclasses import replace
    >>> reference_calibrator(replace(ref, calibrator=ScoreCalibrator.identity(bins=10).to_dict())).n_bins
    10
    """
    if reference.calibrator is None:
        return None

    def parse() -> ScoreCalibrator | None:
        try:
            return ScoreCalibrator.from_dict(reference.calibrator or {})
        except (ValueError, KeyError, TypeError):
            # an unreadable calibrator costs the estimate, never the window's drift
            return None

    return reference.cached("score_calibrator", parse)


def reference_estimates(reference: ReferenceProfile) -> dict[str, float]:
    """The reference's own label-free estimates (metric -> value); empty without a calibrator.

    >>> import numpy as np
    >>> reference_estimates(ReferenceProfile.build("m", "1", {"x": np.arange(100.0)}, {}))
    {}
    """
    calibrator = reference_calibrator(reference)
    if calibrator is None:
        return {}
    return reference.cached(
        "reference_estimates", lambda: {m: float(e.value) for m, e in calibrator.reference_estimates().items()}
    )


def multivariate_model(reference: ReferenceProfile) -> MultivariateModel | None:
    """The reference's multivariate model, read once per reference object (None: it has none).

    >>> import numpy as np
    >>> ref = ReferenceProfile.build("m", "1", {"x": np.arange(100.0)}, {})
    >>> multivariate_model(ref) is None
    True
    """
    stored = reference.multivariate
    if stored is None:
        return None

    def read() -> MultivariateModel | None:
        try:
            return MultivariateModel.from_dict(stored)
        except (ValueError, KeyError, TypeError):
            # a model this version cannot read (another format): the per-feature tests still run
            return None

    return reference.cached("multivariate_model", read)
