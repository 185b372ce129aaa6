import time
from collections import OrderedDict

import numpy as np
import pytest

from driftline.streams.core.labels import IndexBudget, IndexStats, JoinedLabels, PredictionIndex


def rows_of(j: JoinedLabels) -> list[tuple]:
    keys = sorted(j.attributes)
    return [
        (
            j.event_ids[i],
            j.model_versions[i],
            int(j.event_times[i]),
            float(j.scores[i]),
            j.predicted_labels[i],
            j.labels[i],
            tuple((k, j.attributes[k][i]) for k in keys if j.attributes[k][i] != ""),
        )
        for i in range(j.n)
    ]


def test_join_returns_the_stored_columns():
    index = PredictionIndex(max_entries=10, ttl_ms=1000)
    index.add(["a", "b"], "v1", np.array([1, 2]), np.array([0.1, 0.2]), ["0", None], {"region": ["eu", "us"]})
    index.add(["c"], "v2", np.array([3]), np.array([np.nan]), None, {"channel": ["web"]})
    j = index.join(["c", "a", "zz"], [1.0, "no", "yes"])
    assert rows_of(j) == [
        ("c", "v2", 3, pytest.approx(np.nan, nan_ok=True), None, 1.0, (("channel", "web"),)),
        ("a", "v1", 1, 0.1, "0", "no", (("region", "eu"),)),
    ]
    assert j.unmatched == ["zz"] and index.n_pending == 1 and len(index) == 1
    assert set(j.by_version()) == {"v1", "v2"}
    assert j.by_version()["v1"].event_ids.tolist() == ["a"]
    # joined predictions leave the index: a second label for "a" waits
    assert index.join(["a"], ["1"]).unmatched == ["a"]
    assert index.stats == IndexStats(added=3, joined=2, unmatched=2)


def test_labels_that_arrive_first_join_when_the_prediction_comes():
    index = PredictionIndex(max_entries=10, ttl_ms=1000)
    assert index.join(["p", "q"], ["1", "0"]).unmatched == ["p", "q"]
    j = index.add(
        ["x", "q", "y"], "v1", np.array([5, 6, 7]), np.array([0.5, 0.6, 0.7]), None, {"region": ["a", "b", "c"]}
    )
    assert rows_of(j) == [("q", "v1", 6, 0.6, None, "0", (("region", "b"),))]
    assert len(index) == 2 and index.n_pending == 1
    assert index.stats.joined_pending == 1 and index.stats.added == 2  # stored ones only


def test_capacity_evicts_the_oldest_and_counts_it():
    index = PredictionIndex(max_entries=3, ttl_ms=10**9, max_pending=2)
    index.add(["a", "b"], "v", np.array([1, 2]), np.array([0.0, 0.0]))
    index.add(["c", "d", "e"], "v", np.array([3, 4, 5]), np.array([0.0, 0.0, 0.0]))
    assert len(index) == 3 and index.stats.evicted == 2
    j = index.join(["a", "b", "c", "x", "y", "z"], ["1"] * 6)
    assert j.event_ids.tolist() == ["c"]
    assert j.unmatched == ["a", "b", "x", "y", "z"]
    assert index.n_pending == 2 and index.stats.pending_evicted == 3 and index.stats.unmatched == 5


def test_resent_prediction_replaces_the_older_one():
    index = PredictionIndex(max_entries=2, ttl_ms=10**9)
    index.add(["a", "b"], "v1", np.array([1, 2]), np.array([0.1, 0.2]))
    index.add(["a"], "v2", np.array([3]), np.array([0.3]))  # now newest
    index.add(["c"], "v2", np.array([4]), np.array([0.4]))  # evicts b, not a
    assert index.stats.replaced == 1 and index.stats.evicted == 1
    j = index.join(["a", "b"], ["1", "1"])
    assert rows_of(j) == [("a", "v2", 3, 0.3, None, "1", ())] and j.unmatched == ["b"]


def test_expiry_by_event_time_and_pending_by_arrival():
    index = PredictionIndex(max_entries=100, ttl_ms=100)
    index.join(["early"], ["1"])  # before any time is known: waits ttl from the first expire
    index.add(["a", "b", "c"], "v", np.array([0, 50, 120]), np.zeros(3))
    assert index.expire(now_ms=149) == 1  # a: 0 < 49
    assert index.n_pending == 1
    index.join(["late"], ["0"])  # waits from t=149
    assert index.expire(now_ms=251) == 2  # cutoff 151: b (50) and c (120)
    assert len(index) == 0 and index.stats.expired == 3
    assert index.n_pending == 0 and index.stats.pending_expired == 2
    # time does not go backwards
    index.add(["d"], "v", np.array([200]), np.zeros(1))
    assert index.expire(now_ms=0) == 0 and len(index) == 1


def test_expiry_counts_exactly():
    index = PredictionIndex(max_entries=100, ttl_ms=100)
    index.add(["a", "b", "c"], "v", np.array([0, 50, 200]), np.zeros(3))
    assert index.expire(now_ms=160) == 2
    assert len(index) == 1 and index.stats.expired == 2
    assert index.join(["c"], ["1"]).event_ids.tolist() == ["c"]


def test_bad_input_is_rejected():
    index = PredictionIndex(max_entries=10, ttl_ms=10)
    with pytest.raises(ValueError, match="scores"):
        index.add(["a", "b"], "v", np.array([1, 2]), np.array([0.1]))
    with pytest.raises(ValueError, match="attribute 'r'"):
        index.add(["a"], "v", np.array([1]), np.array([0.1]), None, {"r": ["x", "y"]})
    with pytest.raises(ValueError, match="labels"):
        index.join(["a", "b"], ["1"])
    with pytest.raises(ValueError):
        PredictionIndex(max_entries=0, ttl_ms=10)


class ReferenceIndex:
    """The same semantics with one dict entry per row: slow, obvious."""

    def __init__(self, max_entries, ttl_ms, max_pending):
        self.max_entries, self.ttl_ms, self.max_pending = max_entries, ttl_ms, max_pending
        self.rows, self.pending, self.now = OrderedDict(), OrderedDict(), None
        self.stats = IndexStats()

    def add(self, ids, version, times, scores, predicted, attrs):
        joined = []
        for i, e in enumerate(ids):
            row = (
                e,
                version,
                int(times[i]),
                float(scores[i]),
                predicted[i],
                tuple((k, attrs[k][i]) for k in sorted(attrs) if attrs[k][i] != ""),
            )
            if e in self.pending:
                label = self.pending.pop(e)[0]
                joined.append(row[:5] + (label,) + row[5:])
                self.stats.joined_pending += 1
                continue
            if e in self.rows:
                del self.rows[e]
                self.stats.replaced += 1
            self.rows[e] = row
            self.stats.added += 1
        while len(self.rows) > self.max_entries:
            self.rows.popitem(last=False)
            self.stats.evicted += 1
        return joined

    def join(self, ids, labels):
        joined, unmatched = [], []
        for e, label in zip(ids, labels):
            if e in self.rows:
                row = self.rows.pop(e)
                joined.append(row[:5] + (label,) + row[5:])
            else:
                unmatched.append(e)
                self.pending.pop(e, None)
                self.pending[e] = (label, self.now)
        self.stats.joined += len(joined)
        self.stats.unmatched += len(unmatched)
        while len(self.pending) > self.max_pending:
            self.pending.popitem(last=False)
            self.stats.pending_evicted += 1
        return joined, unmatched

    def expire(self, now):
        self.now = now if self.now is None else max(self.now, now)
        cutoff = self.now - self.ttl_ms
        old = [e for e, row in self.rows.items() if row[2] < cutoff]
        for e in old:
            del self.rows[e]
        self.stats.expired += len(old)
        for e, (label, since) in list(self.pending.items()):
            if since is None:
                self.pending[e] = (label, self.now)
        for e, (_, since) in list(self.pending.items()):
            if since >= cutoff:
                break
            del self.pending[e]
            self.stats.pending_expired += 1
        return len(old)


@pytest.mark.parametrize("seed", range(4))
def test_random_operations_match_a_reference(seed):
    rng = np.random.default_rng(seed)
    max_entries, ttl = int(rng.integers(50, 400)), int(rng.integers(100, 2000))
    index = PredictionIndex(max_entries, ttl, max_pending=60)
    ref = ReferenceIndex(max_entries, ttl, 60)
    now = 0
    universe = (3000, 200)[seed % 2]  # small universes repeat ids within and across batches
    for _ in range(400):
        op = rng.random()
        if op < 0.45:
            n = int(rng.integers(0, 80))
            ids = [f"e{k}" for k in rng.integers(0, universe, n)]
            times = now + rng.integers(-300, 300, n)
            scores = np.round(rng.random(n), 3)
            predicted = list(rng.choice(np.array(["1", "0", None], dtype=object), n))
            attrs = {}
            if rng.random() < 0.7:
                attrs["region"] = list(rng.choice(["eu", "us", ""], n))
            if rng.random() < 0.3:
                attrs[f"k{int(rng.integers(0, 3))}"] = list(rng.choice(["x", "y"], n))
            version = f"v{int(rng.integers(0, 3))}"
            got = index.add(ids, version, times, scores, predicted, attrs)
            assert rows_of(got) == ref.add(ids, version, times, scores, predicted, attrs)
        elif op < 0.9:
            n = int(rng.integers(0, 60))
            ids = [f"e{k}" for k in rng.integers(0, universe, n)]
            labels = list(rng.choice(np.array(["1", "0", 1.0], dtype=object), n))
            got = index.join(ids, labels)
            want, unmatched = ref.join(ids, labels)
            assert rows_of(got) == want and got.unmatched == unmatched
        else:
            now += int(rng.integers(0, 400))
            assert index.expire(now) == ref.expire(now)
        assert len(index) == len(ref.rows) and index.n_pending == len(ref.pending)
        assert index.stats == ref.stats


@pytest.mark.parametrize("seed", range(2))
def test_eviction_from_a_large_index_with_holes_matches_a_reference(seed):
    # Eviction looks for the oldest live rows in growing stretches past the last evicted one:
    # joins leave dead rows among them, batches larger than a stretch, compactions move them.
    rng = np.random.default_rng(seed)
    index = PredictionIndex(3_000, 10**9, max_pending=0)
    ref = ReferenceIndex(3_000, 10**9, 0)
    added = 0
    for _ in range(40):
        n = int(rng.choice([10, 700, 2_500]))
        ids = [f"e{k}" for k in range(added, added + n)]
        added += n
        times, scores = np.zeros(n, dtype=np.int64), np.round(rng.random(n), 3)
        assert rows_of(index.add(ids, "v", times, scores, None, {})) == ref.add(ids, "v", times, scores, [None] * n, {})
        joined = [f"e{k}" for k in rng.integers(max(0, added - 4_000), added, int(rng.integers(0, 1_500)))]
        got = index.join(joined, ["1"] * len(joined))
        want, unmatched = ref.join(joined, ["1"] * len(joined))
        assert rows_of(got) == want and got.unmatched == unmatched
        assert len(index) == len(ref.rows) and index.stats == ref.stats


def test_memory_stays_bounded_and_operations_are_fast():
    index = PredictionIndex(max_entries=20_000, ttl_ms=10**9)
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    for b in range(100):
        ids = [f"{b}-{i}" for i in range(1000)]
        index.add(ids, "v", np.full(1000, b), rng.random(1000), None, {"region": ["eu"] * 1000})
        index.join(ids[::2], ["1"] * 500)
    elapsed = time.perf_counter() - t
    # steady state: 19,500 stored + 1,000 added -> 500 evicted -> 500 joined
    assert len(index) == 19_500 and index.stats.joined == 50_000 and index.stats.evicted == 30_500
    assert index._ids.size <= 4 * (20_000 + 1000)  # capacity, in rows
    assert elapsed < 2.0


def test_a_batch_with_stored_and_repeated_ids_is_merged_as_id_by_id():
    # a batch of new ids is merged in one go; one that repeats or re-sends ids is redone id by id
    index = PredictionIndex(max_entries=12, ttl_ms=10**9, max_pending=10)
    ref = ReferenceIndex(12, 10**9, 10)
    batches = [
        [f"a{i}" for i in range(8)],
        ["b0", "a3", "b1", "a0", "b1", "b2"],  # two stored ids, one repeated new id
        ["c0", "c1", "c2", "c0", "c0"],  # repeats only
        [f"d{i}" for i in range(6)],  # evicts the oldest, in the order the id-by-id merge left them
    ]
    for k, ids in enumerate(batches):
        n = len(ids)
        times, scores = np.arange(n) + 100 * k, np.round(np.linspace(0, 1, n), 3)
        got = index.add(ids, "v", times, scores, [None] * n, {})
        assert rows_of(got) == ref.add(ids, "v", times, scores, [None] * n, {})
        assert len(index) == len(ref.rows) and index.stats == ref.stats
    # a re-sent or repeated id counts as newest: a0, b1 and c0 outlive ids added after them first
    assert (index.stats.replaced, index.stats.evicted) == (5, 8)
    every = [f"{p}{i}" for p in "abcd" for i in range(8)]
    got = index.join(every, ["1"] * len(every))
    want, unmatched = ref.join(every, ["1"] * len(every))
    assert rows_of(got) == want and got.unmatched == unmatched
    assert [r[0] for r in want] == ["a0", "b1", "b2", "c0", "c1", "c2", "d0", "d1", "d2", "d3", "d4", "d5"]
    assert [r[2] for r in want][:4] == [103, 104, 105, 204]  # the newest copy of each


def test_a_shared_budget_evicts_the_oldest_across_indexes():
    # the same operations on three indexes sharing a budget and on one index holding them all
    # evict the same predictions: the earliest added, whichever index holds them
    rng = np.random.default_rng(7)
    budget = IndexBudget(150)
    shared = [PredictionIndex(ttl_ms=10**9, budget=budget) for _ in range(3)]
    ref = ReferenceIndex(150, 10**9, 10**6)
    for b in range(60):
        which = int(rng.choice(3, p=[0.7, 0.2, 0.1]))  # skewed, like Zipf traffic
        n = int(rng.integers(1, 40))
        ids = [f"{which}-{b}-{i}" for i in range(n)]
        times, scores = np.full(n, b), np.round(rng.random(n), 3)
        shared[which].add(ids, "v", times, scores, [None] * n, {})
        ref.add(ids, "v", times, scores, [None] * n, {})
        if b % 7 == 3:  # labels for a few of the stored predictions, of any index
            asked = [e for e in ref.rows if rng.random() < 0.2]
            joined = [shared[int(e.split("-")[0])].join([e], ["1"]).event_ids.tolist() for e in asked]
            assert [e for got in joined for e in got] == [r[0] for r in ref.join(asked, ["1"] * len(asked))[0]]
        assert budget.size == sum(len(i) for i in shared) == len(ref.rows) <= 150
        assert sorted(e for i in shared for e in i._rows) == sorted(ref.rows)
    assert sum(i.stats.evicted for i in shared) == ref.stats.evicted > 0
    # the quiet index lost predictions to the busy one's newer ones
    assert shared[2].stats.evicted > 0


def test_an_index_needs_a_bound():
    with pytest.raises(ValueError):
        PredictionIndex(ttl_ms=10)
    with pytest.raises(ValueError):
        PredictionIndex(max_entries=5, ttl_ms=10, budget=IndexBudget(6))
    with pytest.raises(ValueError):
        IndexBudget(0)
