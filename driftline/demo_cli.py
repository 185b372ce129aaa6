"""``driftline demo`` (the whole loop on a simulated model) and ``driftline simulate`` (synthetic traffic).

``driftline demo`` is what ``make demo`` runs (``python -m driftline.demo_cli``):

1. ``driftline stack up``: Kafka and the embedded ClickHouse, where nothing answers yet;
2. the worker and the retrainer as background processes, logging to
   ``STATE_DIR/demo/<model>/``, with the demo policy (``driftline/demo-policy.yaml``)
   unless a policy is configured;
3. the scenario of :mod:`driftline.demo`, with live progress and a summary;
4. the HTML report (``driftline report``), then the worker and the retrainer
   are stopped, also after a failure or Ctrl-C. The stack keeps running
   (``driftline stack down`` stops it).

Exit codes: 0 when the loop closed (checked in the warehouse and the
registry), 1 when a step did not happen in time, 2 when the demo could not
start, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from driftline.redaction import redact, redact_url

if TYPE_CHECKING:
    from driftline.settings import Settings
    from driftline.stack.process import ManagedProcess

DEMO_POLICY = Path(__file__).resolve().with_name("demo-policy.yaml")  # package data
BAD_INPUT = 2
FAILED = 1
INTERRUPTED = 130


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="the whole loop on a simulated credit-scoring model, with an HTML report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--model", help="model id (default credit-HHMMSS, new each run)")
    demo.add_argument("--rate", type=_positive, default=400.0, help="requests per second (default %(default)g)")
    demo.add_argument(
        "--warmup",
        type=_positive,
        default=20.0,
        metavar="SECONDS",
        help="traffic before the drift (default %(default)g)",
    )
    demo.add_argument(
        "--label-delay",
        type=_non_negative,
        metavar="SECONDS",
        help="how late labels arrive (default: one window of the policy, 5 s)",
    )
    demo.add_argument("--seed", type=int, default=7, help="simulation seed (default %(default)s)")
    demo.add_argument(
        "--timeout",
        type=_positive,
        default=300.0,
        metavar="SECONDS",
        help="give up after this long (default %(default)g)",
    )
    demo.add_argument(
        "--patience",
        type=_positive,
        default=1.0,
        metavar="FACTOR",
        help="multiply every step's deadline, for slow machines (default %(default)g)",
    )
    demo.add_argument("--report", metavar="FILE", help="HTML report (default STATE_DIR/demo/report-<model>.html)")
    demo.add_argument(
        "--no-stack",
        dest="stack",
        action="store_false",
        help="do not run `stack up` (Kafka and ClickHouse already run elsewhere)",
    )
    demo.add_argument(
        "--no-services",
        dest="services",
        action="store_false",
        help="do not start a worker and a retrainer (they already run, with a demo-like policy)",
    )
    demo.set_defaults(handler=_demo)

    sim = subparsers.add_parser(
        "simulate",
        help="synthetic credit-scoring predictions and labels through the SDK, with drift on demand",
        description="Score simulated applicants in real time and log them with the SDK: predictions now, "
        "labels --label-delay seconds later. Scores come from the registry's model (the champion, or "
        "--version) when it has an artifact, else from the pre-drift world's true probabilities.",
    )
    sim.add_argument("--model", required=True, help="model id")
    sim.add_argument("--version", help="model version to log (default: the registry's champion, else 1)")
    sim.add_argument("--rate", type=_positive, default=100.0, help="events per second (default %(default)g)")
    sim.add_argument("--duration", type=_positive, default=60.0, metavar="SECONDS", help="default %(default)g")
    sim.add_argument(
        "--drift-at",
        type=_non_negative,
        metavar="SECONDS",
        help="from this many seconds after the start, covariate and concept drift (simulation.AFTER)",
    )
    sim.add_argument(
        "--label-delay",
        type=_non_negative,
        default=3.0,
        metavar="SECONDS",
        help="labels this many seconds after their predictions (default %(default)g)",
    )
    sim.add_argument("--no-labels", action="store_true", help="log predictions only")
    sim.add_argument("--seed", type=int, default=0, help="default %(default)s")
    sim.add_argument(
        "--oracle",
        action="store_true",
        help="score with the pre-drift world's true probabilities, even if the registry has the model",
    )
    sim.add_argument(
        "--follow-champion",
        action="store_true",
        help="switch to each new champion announced on the models topic, as a real service would",
    )
    sim.set_defaults(handler=_simulate)


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def _say(message: str) -> None:
    print(message, flush=True)


# --------------------------------------------------------------------------- driftline demo


def new_model_id(registry: Any, now: datetime | None = None) -> str:
    """``credit-HHMMSS``, with a suffix if the registry already has that model (a run at the same time of day)."""
    from driftline.retrainer.registry import ModelNotFoundError

    base = f"credit-{(now or datetime.now()).strftime('%H%M%S')}"
    for n in range(1, 100):
        candidate = base if n == 1 else f"{base}-{n}"
        try:
            registry.list_versions(candidate)
        except ModelNotFoundError:
            return candidate
    raise RuntimeError(f"the registry already has models {base} to {base}-99")


def service_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a child process these settings (variables win over a config file).

    >>> from driftline.settings import Settings
    >>> env = service_env(Settings(topic_prefix="t.", kafka_extra={"security.protocol": "SSL"}, policy="p.yaml"))
    >>> env["DRIFTLINE_TOPIC_PREFIX"], env["DRIFTLINE_KAFKA_SECURITY_PROTOCOL"], env["DRIFTLINE_POLICY"]
    ('t.', 'SSL', 'p.yaml')
    """
    return {**os.environ, **settings.to_env()}


@dataclass
class Services:
    """The worker and the retrainer of one demo run, as background processes.

    >>> import tempfile
    >>> from driftline.stack.process import ManagedProcess
    >>> d = Path(tempfile.mkdtemp())
    >>> never = Services(ManagedProcess("worker", d / "w.pid", d / "w.log"),
    ...                  ManagedProcess("retrainer", d / "r.pid", d / "r.log"), 6066)
    >>> never.health().splitlines()[0].startswith("the worker exited; last lines of")
    True
    """

    worker: ManagedProcess
    retrainer: ManagedProcess
    web_port: int

    def health(self) -> str | None:
        """Why the loop cannot close any more (a process died, with its log), or None."""
        from driftline.stack.process import tail

        for name, proc in (("worker", self.worker), ("retrainer", self.retrainer)):
            if proc.crashed():
                return f"the {name} exited; last lines of {proc.log_file}:\n{tail(proc.log_file, 20)}"
        return None


def _group_prefix(settings: Settings) -> str:
    # consumer groups are per broker: demos on other topic prefixes must not share them
    prefix = re.sub(r"[^A-Za-z0-9_-]+", "-", settings.topic_prefix).strip("-")
    return f"{prefix}-demo" if prefix else "demo"


@contextmanager
def running_services(settings: Settings, logs: Path, *, startup_timeout: float = 90.0) -> Iterator[Services]:
    """Start the worker and the retrainer with ``settings``; stop both on the way out, whatever happens."""
    from driftline.stack.process import ManagedProcess, StackError, free_port, port_answers, wait_until

    logs.mkdir(parents=True, exist_ok=True)
    env = service_env(settings)
    group = _group_prefix(settings)
    port = free_port()
    worker = ManagedProcess("worker", logs / "worker.pid", logs / "worker.log")
    retrainer = ManagedProcess("retrainer", logs / "driftline.retrainer.pid", logs / "driftline.retrainer.log")
    services = Services(worker, retrainer, port)
    try:
        worker.spawn(
            [
                sys.executable,
                "-m",
                "driftline.cli",
                "worker",
                "--app-id",
                f"{group}-worker",
                "--web-port",
                str(port),
                "--session-timeout-seconds",
                "10",
                "--log-format",
                "text",
            ],
            env=env,
        )
        retrainer.spawn(
            [sys.executable, "-m", "driftline.cli", "retrainer", "--group-id", f"{group}-retrainer"], env=env
        )
        _say(f"worker and retrainer started (pids {worker.pid()}, {retrainer.pid()}); logs in {logs}")
        wait_until(lambda: port_answers("127.0.0.1", port), startup_timeout, worker, "the worker")
        problem = services.health()
        if problem:
            raise StackError(problem)
        yield services
    finally:
        stopped = [name for name, proc in (("worker", worker), ("retrainer", retrainer)) if proc.stop(timeout=20)]
        if stopped:
            _say(f"stopped the {' and the '.join(stopped)}")


def _preflight() -> str | None:
    """What would make the loop fail for certain, found before anything starts."""
    from aiokafka import codec

    # the SDK compresses with lz4, and the worker's Kafka client (aiokafka) reads lz4 through cramjam
    if not codec.has_lz4():
        return (
            "the worker could not read the SDK's lz4-compressed batches: aiokafka needs the cramjam package "
            "(pip install cramjam)"
        )
    return None


def _report(settings: Settings, model_id: str, out_path: Path) -> str | None:
    """Write the HTML report if the report module is installed; returns a problem, or None."""
    try:
        from driftline import report
    except ImportError:
        _say("report: driftline.report is not available in this version; no HTML report written")
        return None
    try:
        report.write_report(settings, model_id, out_path)
    except Exception as exc:  # the loop's verdict stands; the report's failure is reported with it
        return f"the HTML report could not be written: {type(exc).__name__}: {redact(exc)}"
    _say(f"report: {out_path.resolve()}")
    return None


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from confluent_kafka import KafkaException

    from driftline.demo import DemoOptions, StepTimeouts, run_scenario, summary_table
    from driftline.retrainer.registry import Registry, RegistryError, validate_name

    problem = _preflight()
    if problem:
        print(f"driftline demo: {problem}", file=sys.stderr)
        return BAD_INPUT
    if not settings.policy:
        if not DEMO_POLICY.is_file():
            print(f"driftline demo: the demo policy {DEMO_POLICY} is missing; pass --policy FILE", file=sys.stderr)
            return BAD_INPUT
        settings = settings.replace(policy=str(DEMO_POLICY))
    if args.stack:
        from driftline.stack import manage

        for status in manage.up(settings):
            _say(status.line())
    registry = Registry.from_settings(settings)
    try:
        model_id = validate_name(args.model) if args.model else new_model_id(registry)
    except RegistryError as exc:
        print(f"driftline demo: {redact(exc)}", file=sys.stderr)
        return BAD_INPUT
    if args.model and model_id in {m.model_id for m in registry.list_models()}:
        print(f"driftline demo: model {model_id} is already registered; the demo needs a new model id", file=sys.stderr)
        return BAD_INPUT
    demo_dir = Path(settings.state_dir) / "demo"
    logs = demo_dir / model_id
    report_path = Path(args.report) if args.report else demo_dir / f"report-{model_id}.html"
    options = DemoOptions(
        model_id=model_id,
        rate=args.rate,
        warmup_s=args.warmup,
        label_delay_s=args.label_delay,
        seed=args.seed,
        timeout_s=args.timeout * args.patience,
        timeouts=StepTimeouts().scaled(args.patience),
    )
    _say(
        f"driftline demo: model {model_id}, policy {settings.policy}, warehouse {redact_url(settings.warehouse)}, "
        f"Kafka {settings.kafka_bootstrap} (topics {settings.topic_prefix}*)"
    )
    started = time.monotonic()
    where = f"logs: {logs}" if args.services else "logs: those of your worker and retrainer"
    try:
        with _terminate_as_interrupt():
            if args.services:
                with running_services(settings, logs) as services:
                    result = run_scenario(settings, options, out=_say, health=services.health)
            else:
                result = run_scenario(settings, options, out=_say)
    except (RuntimeError, RegistryError, KafkaException, OSError) as exc:  # v1 could not be trained or registered
        print(
            f"driftline demo: the demo could not start: {type(exc).__name__}: {redact(exc)}\n{where}", file=sys.stderr
        )
        return BAD_INPUT
    elapsed = time.monotonic() - started
    report_problem = _report(settings, model_id, report_path)
    _say("")
    _say(summary_table(result.steps, result.started_ms))
    _say("")
    if args.stack:
        _say("Kafka and ClickHouse keep running for a look around (`driftline stack down` stops them)")
    if result.interrupted:
        _say(f"interrupted after {elapsed:.0f} s; {where}")
        return INTERRUPTED
    if result.closed and report_problem is None:
        _say(
            f"the loop closed in {elapsed:.0f} s: drift detected, v{result.service.version} trained, promoted "
            f"and serving, performance recovered. {where}"
        )
        return 0
    missing = next((s for s in result.steps if not s.done), None)
    reason = result.failure or report_problem or "the checks above did not pass"
    step = f"step {missing.number} ({missing.name}) did not happen: " if missing else ""
    if args.services and missing is not None:
        from driftline.stack.process import tail

        for name in ("worker", "retrainer"):
            _say(f"last lines of {logs / (name + '.log')}:\n{tail(logs / (name + '.log'), 8)}\n")
    print(f"driftline demo: {step}{reason}\n{where}", file=sys.stderr, flush=True)
    return FAILED


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM ends the demo like Ctrl-C does, so that the worker and the retrainer are still stopped."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# --------------------------------------------------------------------------- driftline simulate


def _simulate(args: argparse.Namespace, settings: Settings) -> int:
    from driftline.retrainer.registry import CHAMPION, ModelNotFoundError, Registry, RegistryError, validate_name
    from driftline.service_sim import ChampionWatcher, SimulatedService, artifact_scorer, oracle_scorer
    from driftline.streams import kafka
    from driftline.streams.sdk import PredictionLogger

    model_id = validate_name(args.model)
    registry = Registry.from_settings(settings)
    scorer = None
    if not args.oracle:
        try:
            chosen = registry.get(model_id, args.version) if args.version else registry.alias(model_id, CHAMPION)
            if chosen is not None and chosen.artifact_sha256 is not None:
                scorer = artifact_scorer(chosen.version, registry.load_artifact(model_id, chosen.version))
        except ModelNotFoundError:
            pass
        except RegistryError as exc:
            print(f"driftline simulate: {redact(exc)}", file=sys.stderr)
            return BAD_INPUT
    if scorer is None:
        scorer = oracle_scorer(args.version or "1")
    label_delay = None if args.no_labels else args.label_delay
    kafka.ensure_topics(settings)
    logger = PredictionLogger(settings, linger_ms=100)
    service = SimulatedService(logger, model_id, scorer, rate=args.rate, label_delay_s=label_delay, seed=args.seed)
    watcher = None
    if args.follow_champion:
        watcher = ChampionWatcher(settings, registry, service)
        watcher.start()
    started_ms = service.now_ms()
    if args.drift_at is not None:
        service.inject_drift(started_ms + int(args.drift_at * 1000))
    _say(
        f"simulate: {model_id} v{scorer.version} ({scorer.source}), {args.rate:g} events/s for {args.duration:g} s"
        + (f", drift at +{args.drift_at:g} s" if args.drift_at is not None else "")
        + ("" if label_delay is None else f", labels {label_delay:g} s late")
        + f"; topics {settings.topic_prefix}*"
    )
    interrupted = False
    try:
        service.start(started_ms)
        stats = service.run(args.duration)
    except KeyboardInterrupt:
        interrupted = True
        service.drain_labels()
        stats = service.stats()
    finally:
        if watcher is not None:
            watcher.stop()
        sent = logger.close(timeout=30)
    _say(
        f"simulate: {stats.predictions:,} predictions ({stats.by_version_line()}; "
        f"{stats.after_drift:,} after the drift), "
        f"{stats.labels:,} labels; delivered {sent.delivered:,}, failed {sent.failed:,}, dropped {sent.dropped:,}"
        + (f" ({sent.last_error})" if sent.last_error and (sent.failed or sent.dropped) else "")
    )
    if interrupted:
        return INTERRUPTED
    return 0 if sent.failed == 0 and sent.dropped == 0 else FAILED


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m driftline.demo_cli [demo flags]``: what ``make demo`` runs."""
    from driftline.cli import main as cli_main

    return cli_main(["demo", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
