"""The decoders against 20,000 hostile messages: nothing but DecodeError, nothing slower than 100 ms.

The mutator and the harness are in tests/fuzz/ (README there); ``make fuzz`` runs them for longer.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fuzz"))

from harness import fuzz  # noqa: E402
from mutations import MUTATION_KINDS, Corpus  # noqa: E402

from driftline.streams.codec.schemas import SchemaSet  # noqa: E402

SEED = 20261207
COUNT = 20_000
SLOW_MS = 100.0


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return Corpus(big=False)


def test_the_seeds_cover_every_record_kind_in_avro_and_json(corpus: Corpus) -> None:
    assert corpus.kinds == sorted(v.short_name for v in SchemaSet.load().versions())
    for seed in corpus.seeds:
        decoded = corpus.codec.decode(seed.avro)
        assert type(decoded) is type(seed.record)
        if seed.json is not None:
            assert decoded == seed.record
            assert corpus.codec.decode(seed.json) == seed.record
    batches = {"PredictionBatch", "FeatureBatch", "LabelBatch"}
    assert {type(s.record).__name__ for s in corpus.seeds if s.json is None} == batches


def test_the_mutator_is_deterministic(corpus: Corpus) -> None:
    def draw() -> list[bytes]:
        rng = random.Random(SEED)
        return [corpus.mutant(rng)[1] for _ in range(300)]

    assert draw() == draw()


def test_twenty_thousand_mutants_raise_only_decode_errors_and_none_is_slow(corpus: Corpus) -> None:
    report = fuzz(corpus, random.Random(SEED), COUNT, slow_ms=SLOW_MS)
    print(report.summary())
    assert report.messages >= COUNT
    assert set(report.by_kind) == set(MUTATION_KINDS)
    assert not report.failures, "\n".join(str(f) for f in report.failures[:20])
    assert not report.slow, [(round(ms), data[:80]) for ms, data in report.slow]
    assert report.fallbacks == 0  # decode_bulk's fast path never had to be rescued
    assert report.slowest_ms < SLOW_MS
    # the mutants reach deep: most reasons show up, and some mutants are still valid records
    assert {
        "avro_body",
        "json_syntax",
        "json_schema",
        "unknown_fingerprint",
        "column_length",
        "invalid_value",
        "reserved_feature_name",
        "value_too_long",
    } <= set(report.reasons)
    assert report.accepted > 0
