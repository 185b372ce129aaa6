"""A poll's messages added as runs (``_hold_runs`` + ``AckLedger.add_run``) leave the ledger as adding
them one by one does: the same sizes, runs, oldest offsets and released tokens (made at release, from
the partition and offset alone)."""

from __future__ import annotations

import numpy as np
import pytest

from driftline.streams.core.ledger import AckLedger, Hold
from driftline.streams.messages import Incoming, Messages
from driftline.streams.worker import _hold_runs


def state(ledger: AckLedger[tuple[object, int]], ends: list[int]) -> list[object]:
    out: list[object] = [len(ledger), ledger.runs, ledger.oldest_offsets()]
    for end in ends:
        released = ledger.release(lambda hold, end=end: hold.window_end <= end)
        # per partition in release order (acknowledgements are per partition; across them order is free)
        out.append({p: [t for t in released if t[0] == p] for p in {t[0] for t in released}})
    return out


@pytest.mark.parametrize("seed", range(20))
def test_runs_match_message_by_message(seed: int) -> None:
    rng = np.random.default_rng(seed)
    holds = [(Hold("predictions", "m", "1", end),) for end in (10, 20, 30)]
    one: AckLedger[tuple[object, int]] = AckLedger()
    runs: AckLedger[tuple[object, int]] = AckLedger()
    next_offset = {0: 0, 1: 0, 2: 0}
    for _ in range(4):  # polls
        n = int(rng.integers(1, 60))
        partitions = rng.integers(0, int(rng.integers(1, 4)), n).tolist()
        messages = []
        for p in partitions:
            next_offset[p] += int(rng.integers(1, 3))  # gaps, as compaction or markers leave
            messages.append(Incoming("p", p, next_offset[p], None, b"", full_topic="t.p"))
        # mostly stretches of one window, some with nothing to wait for, a few with more
        window = np.sort(rng.integers(-1, 3, n))[rng.permutation(n) if rng.random() < 0.3 else np.arange(n)]
        alone = {int(i): holds[0] + holds[2] for i in rng.choice(n, int(rng.integers(0, 3)), replace=False)}
        for i, m in enumerate(messages):
            held = alone.get(i, holds[window[i]] if window[i] >= 0 else ())
            one.add((m.full_topic, m.partition), m.offset, held)
        for run in _hold_runs(Messages.of("p", messages, "t.p"), window, holds, alone):
            runs.add_run(*run)
    assert state(runs, [5, 10, 25, 30]) == state(one, [5, 10, 25, 30])


def test_a_run_that_does_not_pass_the_tail_is_refused() -> None:
    ledger: AckLedger[tuple[object, int]] = AckLedger()
    ledger.add_run("p0", 10, 14, (), 5)
    with pytest.raises(ValueError, match="offsets must increase"):
        ledger.add_run("p0", 14, 16, (), 3)
    with pytest.raises(ValueError, match="at least one message"):
        ledger.add_run("p0", 20, 19, (), 1)
    assert len(ledger) == 5
