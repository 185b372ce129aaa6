"""The ``driftline`` command line.

Each area of the project adds its own verbs through an ``add_commands``
function, so this module only parses the global options and dispatches.
Handlers have the signature ``handler(args, settings) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

from driftline.redaction import redact
from driftline.settings import Settings, SettingsError, load_settings
from driftline.stack.process import StackError

# modules that contribute verbs; each defines add_commands(subparsers)
COMMAND_MODULES = (
    "driftline.cli",
    "driftline.streams.worker_cli",
    "driftline.retrainer.registry_cli",
    "driftline.retrainer.service_cli",
    "driftline.demo_cli",
    "driftline.report_cli",
    "driftline.explain_cli",
)

Handler = Callable[[argparse.Namespace, Settings], int]


def _stack(args: argparse.Namespace, settings: Settings) -> int:
    from driftline.stack import manage

    if args.action == "up":
        for s in manage.up(settings):
            print(s.line())
        return 0
    if args.action == "down":
        stopped = manage.down(settings)
        print("stopped: " + (", ".join(stopped) if stopped else "nothing that driftline started was running"))
        return 0
    statuses = manage.status(settings)
    for s in statuses:
        print(s.line())
    return 0 if all(s.alive for s in statuses) else 1


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    stack = subparsers.add_parser("stack", help="a local Kafka broker and the embedded ClickHouse, without Docker")
    stack.add_argument("action", choices=["up", "down", "status"])
    stack.set_defaults(handler=_stack)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="driftline", description="Event-driven model monitoring and retraining.")
    parser.add_argument("--config", help="YAML settings file (also DRIFTLINE_CONFIG)")
    parser.add_argument("--kafka", dest="kafka_bootstrap", help="Kafka bootstrap servers (DRIFTLINE_KAFKA_BOOTSTRAP)")
    parser.add_argument("--topic-prefix", dest="topic_prefix", help="topic prefix (DRIFTLINE_TOPIC_PREFIX)")
    parser.add_argument("--warehouse", help="ClickHouse URL: http(s)://... or chdb://PATH (DRIFTLINE_WAREHOUSE)")
    parser.add_argument("--registry", help="registry database URL (DRIFTLINE_REGISTRY)")
    parser.add_argument("--artifacts", help="artifact store directory (DRIFTLINE_ARTIFACTS)")
    parser.add_argument("--policy", help="policy file (DRIFTLINE_POLICY)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = sys.modules[__name__] if name == __name__ else _import(name)
        if module is not None:
            module.add_commands(sub, **_wiring(name))
    return parser


def _wiring(module: str) -> dict[str, object]:
    """Adapters that a verb module receives from here, the composition root."""
    if module == "driftline.retrainer.registry_cli":
        from driftline.retrainer.announce import announce_from_cli

        return {"publish": announce_from_cli}
    return {}


def _import(name: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        # a verb whose module is absent is simply not offered; any other import error is a bug to see
        if exc.name != name:
            raise
        return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        settings = load_settings(
            args.config,
            kafka_bootstrap=args.kafka_bootstrap,
            topic_prefix=args.topic_prefix,
            warehouse=args.warehouse,
            registry=args.registry,
            artifacts=args.artifacts,
            policy=args.policy,
        )
        return int(args.handler(args, settings) or 0)
    except (SettingsError, StackError) as exc:
        print(f"driftline: {redact(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
