import pickle

import numpy as np
import pytest

from driftline.streams.core import detectors
from driftline.streams.core.detectors import BINARY_DETECTORS, DETECTORS, ChangeDetectorBank, ChangeEvent

CONTINUOUS = [n for n in DETECTORS if n not in BINARY_DETECTORS]
FAST_CONTINUOUS = [n for n in CONTINUOUS if n != "kswin"]  # KSWIN runs ~5k updates/s: tested on short streams


def normal(n, seed, shift_at=None):
    x = np.random.default_rng(seed).normal(size=n)
    if shift_at is not None:
        x[shift_at:] += 1.0
    return x


def errors(n, seed, change_at=None, before=0.1, after=0.3):
    p = np.full(n, before)
    if change_at is not None:
        p[change_at:] = after
    return (np.random.default_rng(seed).random(n) < p).astype(float)


# False-alarm bounds: docs/DETECTORS.md has the rates on 10 x 1e5 values (ADWIN: none in 1e7).
@pytest.mark.parametrize("name", FAST_CONTINUOUS)
def test_quiet_on_a_stationary_normal_stream(name):
    bank = ChangeDetectorBank(names=(name,))
    assert len(bank.update("s", normal(100_000, seed=1))) <= 1


@pytest.mark.parametrize("name", list(DETECTORS))
def test_quiet_on_a_stationary_error_stream(name):
    n = 2000 if name == "kswin" else 100_000
    bank = ChangeDetectorBank(names=(name,))
    assert len(bank.update("e", errors(n, seed=2), binary=True)) <= 1


def test_river_defaults_are_noisy_which_is_why_driftline_overrides_them():
    # If river changes these defaults, DEFAULT_PARAMS and docs/DETECTORS.md need another look.
    noisy = ChangeDetectorBank(names=("page_hinkley",), page_hinkley={"alpha": 0.9999, "delta": 0.005, "threshold": 50})
    assert len(noisy.update("s", normal(100_000, seed=1))) > 20
    eddm = ChangeDetectorBank(names=("eddm",), eddm={"warm_start": 30, "alpha": 0.95, "beta": 0.9})
    assert len(eddm.update("e", errors(100_000, seed=2), binary=True)) > 20


@pytest.mark.parametrize("name", FAST_CONTINUOUS)
@pytest.mark.parametrize("seed", [11, 12])
def test_detects_a_one_sigma_mean_shift(name, seed):
    events = ChangeDetectorBank(names=(name,)).update("s", normal(10_000, seed, shift_at=5000))
    assert events, f"{name} missed the shift"
    assert 5000 <= events[0].index <= 5000 + 300


def test_kswin_quiet_and_detects_on_short_streams():
    bank = ChangeDetectorBank(names=("kswin",))
    assert bank.update("s", normal(2500, seed=3)) == []
    events = ChangeDetectorBank(names=("kswin",)).update("s", normal(1000, seed=4, shift_at=600))
    assert events and 600 <= events[0].index <= 600 + 300


# KSWIN at its quiet setting cannot see this change (KS of 150 vs 150 Bernoulli values with
# D = 0.2 has p ~ 0.005 >> alpha); docs/DETECTORS.md says so. It is meant for score streams.
@pytest.mark.parametrize("name", [n for n in DETECTORS if n != "kswin"])
def test_detects_an_error_rate_rising_from_10_to_30_percent(name):
    events = ChangeDetectorBank(names=(name,)).update("e", errors(10_000, 21, change_at=5000), binary=True)
    assert events, f"{name} missed the change"
    assert 5000 <= events[0].index <= 5000 + 3000


def test_events_carry_detector_stream_index_and_value_and_skip_nan():
    x = normal(6000, seed=5, shift_at=3000) * 0.1
    with_gaps = np.insert(x, [0, 100, 4000], np.nan)  # positions move by the NaNs before them
    bank = ChangeDetectorBank(names=("adwin", "page_hinkley"), page_hinkley={"delta": 0.01, "threshold": 5})
    plain = ChangeDetectorBank(names=("adwin", "page_hinkley"), page_hinkley={"delta": 0.01, "threshold": 5})
    got = bank.update("v1:score", with_gaps)
    want = plain.update("v1:score", x)
    assert got and len(got) == len(want)
    for g, w in zip(got, want):
        assert (g.detector, g.stream, g.value) == (w.detector, w.stream, w.value)
        assert with_gaps[g.index] == g.value == x[w.index]
    assert all(isinstance(e, ChangeEvent) for e in got)
    assert [e.index for e in got] == sorted(e.index for e in got)


def test_streams_are_independent_and_state_round_trips():
    names = ("adwin", "page_hinkley", "ddm", "hddm_w")
    x, e = normal(8000, seed=6, shift_at=5000), errors(8000, seed=7, change_at=5000)
    whole = ChangeDetectorBank(names=names)
    expected = whole.update("v1:score", x) + whole.update("v1:error", e, binary=True)

    first = ChangeDetectorBank(names=names)
    got = first.update("v1:score", x[:4000]) + first.update("v1:error", e[:4000], binary=True)
    state = pickle.loads(pickle.dumps(first.state_dict()))
    resumed = ChangeDetectorBank.from_state(state)
    later = resumed.update("v1:score", x[4000:]) + resumed.update("v1:error", e[4000:], binary=True)
    for ev in later:
        ev.index += 4000
    got += later

    def key(ev: ChangeEvent) -> tuple[str, str, int]:
        return (ev.stream, ev.detector, ev.index)

    assert sorted(got, key=key) == sorted(expected, key=key)
    assert {ev.stream for ev in expected} == {"v1:score", "v1:error"}
    assert resumed.detector_names("v1:score") == ["adwin", "page_hinkley"]
    assert resumed.detector_names("v1:error") == list(names)
    assert resumed.forget("v1:score") and resumed.keys() == ["v1:error"]


def test_configuration_and_input_errors_are_clear():
    with pytest.raises(ValueError, match="unknown change detector"):
        ChangeDetectorBank(names=("adwin", "cusum"))
    with pytest.raises(ValueError, match="not in names"):
        ChangeDetectorBank(names=("adwin",), ddm={"warm_start": 10})
    with pytest.raises(ValueError, match="invalid parameters for change detector 'eddm'"):
        ChangeDetectorBank(names=("eddm",), eddm={"alpha": 0.5, "beta": 0.9})
    with pytest.raises(ValueError, match="invalid parameters"):
        ChangeDetectorBank(names=("adwin",), adwin={"no_such": 1})
    bank = ChangeDetectorBank(names=("adwin", "ddm"))
    with pytest.raises(ValueError, match="0/1"):
        bank.update("e", np.array([0.0, 0.5]), binary=True)
    with pytest.raises(ValueError, match="infinite"):
        bank.update("s", np.array([1.0, np.inf]))
    bank.update("s", np.array([0.2]))
    with pytest.raises(ValueError, match="binary=False"):
        bank.update("s", np.array([1.0]), binary=True)
    with pytest.raises(ValueError, match="format"):
        ChangeDetectorBank.from_state({"format": 99})
    assert bank.update("s", np.array([np.nan])) == []


def _one_value_at_a_time(detector, xs):
    """river's documented way of feeding a detector: update, then read drift_detected."""
    hits = []
    for i, v in enumerate(xs):
        detector.update(v)
        if detector.drift_detected:
            hits.append(i)
    return hits


@pytest.mark.parametrize("params", [{}, {"clock": 1, "grace_period": 1, "min_window_length": 1}, {"clock": 4}])
def test_adwin_fed_in_bulk_drifts_where_and_as_river_one_value_at_a_time_does(params):
    rng = np.random.default_rng(11)
    # means that jump every 700 values: many drifts, each one resetting the detector
    x = (rng.random(14_000) + np.repeat(rng.integers(0, 6, 20), 700) * 0.4).tolist()
    slow, fast = DETECTORS["adwin"](**params), DETECTORS["adwin"](**params)
    expected = _one_value_at_a_time(slow, x)
    assert len(expected) >= 10
    # cut the stream right after some drifts too: the reset due then happens at the next call's first value
    cuts = sorted({0, len(x), *(i + 1 for i in expected[::3]), *rng.integers(0, len(x), 5).tolist()})
    got = []
    for lo, hi in zip(cuts, cuts[1:]):
        got += [lo + i for i in detectors._feed(fast, x[lo:hi])]
        assert fast.drift_detected == slow.drift_detected or hi != len(x)
    assert got == expected
    assert (fast.width, fast.total, fast.n_detections, fast.drift_detected) == (
        slow.width,
        slow.total,
        slow.n_detections,
        slow.drift_detected,
    )
    assert pickle.dumps(fast) == pickle.dumps(slow)


def test_adwin_in_bulk_leaves_a_drift_on_the_last_value_as_river_does():
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(0, 0.1, 3000), rng.normal(3, 0.1, 3000)]).tolist()
    first = _one_value_at_a_time(DETECTORS["adwin"](), x)[0]
    slow, fast = DETECTORS["adwin"](), DETECTORS["adwin"]()
    assert _one_value_at_a_time(slow, x[: first + 1])[-1] == detectors._feed(fast, x[: first + 1])[-1] == first
    assert slow.drift_detected and fast.drift_detected  # the reset is still to come
    assert _one_value_at_a_time(slow, x[first + 1 :]) == detectors._feed(fast, x[first + 1 :])
    assert pickle.dumps(fast) == pickle.dumps(slow)
