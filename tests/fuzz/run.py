"""The long fuzz run of the decoders (``make fuzz``); see tests/fuzz/README.md.

    python tests/fuzz/run.py --seconds 600            # the structure-aware mutator, for ten minutes
    python tests/fuzz/run.py --count 1000000 --seed 7
    python tests/fuzz/run.py --atheris --seconds 600  # coverage-guided, when atheris is installed

Without ``--atheris`` it runs the mutator of the CI test (``tests/unit/test_fuzz.py``)
for longer, with megabyte strings and 10,000-entry maps. With it, atheris
(libFuzzer for Python) mutates bytes guided by the coverage of the Python code
of ``streams/`` (fastavro and numpy are compiled and not instrumented), starting
from every seed message; any exception other than DecodeError, or a message
slower than ``--slow-ms``, stops the run with the message saved by libFuzzer.
Exits 1 when anything was found.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))


def _mutator(args: argparse.Namespace) -> int:
    from harness import fuzz
    from mutations import Corpus

    report = fuzz(
        Corpus(big=True),
        random.Random(args.seed),
        args.count or sys.maxsize,
        slow_ms=args.slow_ms,
        seconds=args.seconds,
    )
    print(report.summary())
    for failure in report.failures[:50]:
        print("FAILURE", failure)
    for ms, data in sorted(report.slow, key=lambda item: -item[0])[:20]:
        print(f"SLOW {ms:.1f} ms: {data[:120]!r} ({len(data)} bytes)")
    if args.save and (report.failures or report.slow):
        out = Path(args.save)
        out.mkdir(parents=True, exist_ok=True)
        for i, failure in enumerate(report.failures):
            (out / f"failure-{i}.bin").write_bytes(failure.data)
        for i, (_, data) in enumerate(report.slow):
            (out / f"slow-{i}.bin").write_bytes(data)
    return 1 if report.failures or report.slow else 0


def _atheris(args: argparse.Namespace, rest: list[str]) -> int:
    import time

    import atheris

    with atheris.instrument_imports(include=["streams"]):
        from driftline.streams.codec import TOPIC_RECORDS, Codec, DecodeError, decode_bulk
    from mutations import Corpus

    codec = Codec()
    corpus_dir = Path(args.corpus)
    corpus_dir.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(Corpus(codec).seeds):  # a leading 0: no topic (see one_input)
        (corpus_dir / f"seed-{i}-avro.bin").write_bytes(b"\x00" + seed.avro)
        if seed.json is not None:
            (corpus_dir / f"seed-{i}-json.bin").write_bytes(b"\x00" + seed.json)
    topics = [None, *TOPIC_RECORDS]

    def both(value: bytes, topic: str | None) -> float:
        started = time.perf_counter()
        with contextlib.suppress(DecodeError):
            codec.decode(value, topic=topic)
        decode_bulk(codec, [value], topic=topic)  # DecodeErrors land in its result
        return (time.perf_counter() - started) * 1000

    def one_input(data: bytes) -> None:
        # the first byte picks the topic, the rest is the message
        topic = topics[data[0] % len(topics)] if data else None
        value = data[1:]
        ms = both(value, topic)
        if ms > args.slow_ms:  # a busy machine is not a slow message: the best of three decides
            ms = min(ms, both(value, topic), both(value, topic))
            if ms > args.slow_ms:
                raise RuntimeError(f"{ms:.0f} ms for one message of {len(value)} bytes")

    findings = Path(args.save)
    findings.mkdir(parents=True, exist_ok=True)
    libfuzzer = [sys.argv[0], str(corpus_dir), f"-artifact_prefix={findings}/", *rest]
    if args.seconds:
        libfuzzer.append(f"-max_total_time={int(args.seconds)}")
    if args.count:
        libfuzzer.append(f"-runs={args.count}")
    atheris.Setup(libfuzzer, one_input)
    atheris.Fuzz()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=0, help="messages to try (0: until --seconds)")
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long")
    parser.add_argument("--seed", type=int, default=0, help="the mutator's random seed")
    parser.add_argument("--slow-ms", type=float, default=100.0, help="a message slower than this is a finding")
    parser.add_argument("--save", default=".driftline/fuzz/findings", help="where the mutator saves findings")
    parser.add_argument("--atheris", action="store_true", help="coverage-guided with atheris (pip install atheris)")
    parser.add_argument("--corpus", default=".driftline/fuzz/corpus", help="atheris' corpus directory")
    args, rest = parser.parse_known_args(argv)
    if not args.count and args.seconds is None:
        args.seconds = 300.0
    if args.atheris:
        return _atheris(args, rest)
    if rest:
        parser.error(f"unknown arguments {rest} (libFuzzer flags need --atheris)")
    return _mutator(args)


if __name__ == "__main__":
    sys.exit(main())
