"""A simulated credit-scoring model, for the demo, ``driftline simulate`` and tests.

Applicants have a numeric income, age and debt ratio, and a categorical region
and channel. Whether they default follows a logistic "world" model. At a
chosen moment the world changes twice over:

- covariate drift: the incomes of mobile applicants fall (a segment's drift: the
  other channels' stay), debt ratios rise, and the mobile channel takes over;
- concept drift: debt ratio starts to matter much more for defaults.

A model trained before the change keeps scoring with the old weights, so its
inputs drift and its accuracy drops; a model retrained on recent labelled data
recovers. Everything here is pure numpy and deterministic for a given seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

NUMERIC = ("income", "age", "debt_ratio")
CATEGORICAL = ("region", "channel")
REGIONS = np.array(["north", "south", "east", "west"])
CHANNELS = np.array(["web", "branch", "mobile"])


@dataclass(frozen=True)
class World:
    """How applicants look and how they default, before or after the change."""

    income_log_mean: float = 10.8
    mobile_income_shift: float = 0.0  # added to the log-income mean of mobile applicants
    debt_alpha: float = 2.0
    debt_beta: float = 5.0
    channel_p: tuple[float, float, float] = (0.5, 0.3, 0.2)
    intercept: float = -1.0
    w_income: float = -0.9  # per standardised log-income
    w_age: float = -0.3
    w_debt: float = 2.5
    w_mobile: float = 0.2


BEFORE = World()
# log-income falls by 0.5 for mobile applicants only: with 70% mobile, the mean falls to 10.45 overall
AFTER = World(
    mobile_income_shift=-0.5, debt_alpha=3.5, debt_beta=4.0, channel_p=(0.2, 0.1, 0.7), w_debt=6.0, w_income=-0.4
)


@dataclass
class Applicants:
    """A batch of applicants, their features in columns and their true outcome."""

    numeric: dict[str, np.ndarray]
    categorical: dict[str, np.ndarray]
    default: np.ndarray  # 1 = defaulted

    @property
    def n(self) -> int:
        return len(self.default)


def _features_matrix(numeric: dict[str, np.ndarray], categorical: dict[str, np.ndarray]) -> np.ndarray:
    log_income = (np.log(np.maximum(numeric["income"], 1.0)) - 10.8) / 0.5
    age = (numeric["age"] - 40.0) / 12.0
    debt = numeric["debt_ratio"] - 0.3
    mobile = (categorical["channel"] == "mobile").astype(np.float64)
    return np.column_stack([log_income, age, debt, mobile])


def default_probability(
    world: World, applicants_numeric: dict[str, np.ndarray], applicants_categorical: dict[str, np.ndarray]
) -> np.ndarray:
    """The true probability that each applicant defaults in ``world``: its logistic default model.

    >>> average = {"income": np.exp([10.8, 10.8]), "age": np.array([40.0, 40.0]), "debt_ratio": np.array([0.3, 0.9])}
    >>> p = default_probability(BEFORE, average, {"channel": np.array(["web", "web"])})
    >>> p.round(4).tolist()  # logits -1 and -1 + 2.5 * 0.6: an average applicant, then a heavily indebted one
    [0.2689, 0.6225]
    """
    weights = np.array([world.w_income, world.w_age, world.w_debt, world.w_mobile])
    logit = world.intercept + _features_matrix(applicants_numeric, applicants_categorical) @ weights
    return 1.0 / (1.0 + np.exp(-logit))


def draw(world: World, n: int, rng: np.random.Generator) -> Applicants:
    """``n`` applicants of ``world``, with outcomes drawn from its default model.

    >>> a = draw(BEFORE, 1000, np.random.default_rng(1))
    >>> a.n, sorted(a.numeric), bool(0.05 < a.default.mean() < 0.6)
    (1000, ['age', 'debt_ratio', 'income'], True)
    """
    log_income = rng.normal(world.income_log_mean, 0.5, n)
    numeric = {
        "age": np.clip(rng.normal(40.0, 12.0, n), 18.0, 90.0),
        "debt_ratio": rng.beta(world.debt_alpha, world.debt_beta, n),
    }
    categorical = {
        "region": rng.choice(REGIONS, n, p=(0.3, 0.3, 0.2, 0.2)),
        "channel": rng.choice(CHANNELS, n, p=world.channel_p),
    }
    # drawn in the order above whatever the world, so that BEFORE's applicants stay what they were
    mobile = categorical["channel"] == "mobile"
    numeric = {"income": np.exp(log_income + world.mobile_income_shift * mobile)} | numeric
    default = (rng.random(n) < default_probability(world, numeric, categorical)).astype(np.int64)
    return Applicants(numeric, categorical, default)


@dataclass
class Timeline:
    """Event time of a simulated stream: ``rate`` events per simulated second, drift at ``drift_at``.

    >>> t = Timeline(start_ms=0, rate=10.0, drift_at_ms=1000)
    >>> t.world_at(999) is BEFORE, t.world_at(1000) is AFTER
    (True, True)
    """

    start_ms: int
    rate: float
    drift_at_ms: int | None = None
    clock_ms: int = field(init=False)

    def __post_init__(self) -> None:
        self.clock_ms = self.start_ms

    def world_at(self, t_ms: int) -> World:
        return AFTER if self.drift_at_ms is not None and t_ms >= self.drift_at_ms else BEFORE

    def next_times(self, n: int) -> np.ndarray:
        """Event times of the next ``n`` events, evenly spaced at the stream's rate."""
        step = 1000.0 / self.rate
        times = self.clock_ms + np.floor(np.arange(n) * step).astype(np.int64)
        self.clock_ms = int(self.clock_ms + round(n * step))
        return times
