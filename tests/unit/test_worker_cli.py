"""``driftline worker`` flags, their environment variables, and the worker's settings per model."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from driftline.cli import build_parser
from driftline.streams.worker_cli import add_worker_arguments, options_from_args


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_worker_arguments(parser)
    return parser.parse_args(argv)


def test_flags_become_worker_options() -> None:
    options = options_from_args(
        parse(
            [
                "--app-id",
                "w",
                "--window-seconds",
                "5",
                "--idle-seconds",
                "never",
                "--baseline",
                "champion",
                "--no-raw",
                "--partitions",
                "4",
            ]
        )
    )
    assert (options.app_id, options.window_seconds, options.idle_seconds) == ("w", 5.0, None)
    assert (options.baseline, options.write_raw, options.partitions) == ("champion", False, 4)
    defaults = options_from_args(parse([]))
    assert defaults.window_seconds is None and defaults.idle_seconds == 30.0 and defaults.write_raw


def test_the_defaults_are_the_worker_options_and_the_flags_of_old(monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``driftline worker`` parses with no flag and no variable, written out as they were before the
    flags became a table, so that a slip in the table shows as a changed default."""
    import os

    for name in [n for n in os.environ if n.startswith("DRIFTLINE_WORKER_")]:
        monkeypatch.delenv(name)
    assert vars(parse([])) == {
        "app_id": "driftline-worker",
        "window_seconds": None,
        "lateness_seconds": None,
        "idle_seconds": 30.0,
        "release_idle_seconds": None,
        "tick_seconds": 1.0,
        "batch_size": 1000,
        "batch_within_seconds": 0.5,
        "max_poll_bytes": 16 * 1024 * 1024,
        "max_take_events": 50_000,
        "max_future_seconds": 3600.0,
        "min_event_time_ms": 946_684_800_000,  # 2000-01-01
        "baseline": "version",
        "web_host": "127.0.0.1",
        "web_port": 6066,
        "datadir": None,
        "partitions": 1,
        "session_timeout_seconds": 30.0,
        "index_ttl_hours": 24.0,
        "index_max_entries": 200_000,
        "task": None,
        "raw_insert_rows": 100_000,
        "raw_insert_bytes": 16 * 1024 * 1024,
        "write_raw": True,
        "keep_late_events": False,
        "health": False,
        "log_format": "json",
        "log_level": "info",
    }
    help_text = argparse.ArgumentParser()
    add_worker_arguments(help_text)
    text = " ".join(help_text.format_help().split())
    assert "events further ahead of the clock go to the DLQ (default 3600)" in text
    assert "--baseline {version,champion}" in text and "(default 200000, about 60 MiB)" in text
    assert (
        text.index("--raw-insert-rows") < text.index("--no-raw") < text.index("--health") < text.index("--log-format")
    )


def test_environment_variables_are_the_defaults_and_flags_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTLINE_WORKER_WINDOW_SECONDS", "7")
    monkeypatch.setenv("DRIFTLINE_WORKER_APP_ID", "from-env")
    monkeypatch.setenv("DRIFTLINE_WORKER_IDLE_SECONDS", "off")
    options = options_from_args(parse([]))
    assert (options.window_seconds, options.app_id, options.idle_seconds) == (7.0, "from-env", None)
    assert options_from_args(parse(["--window-seconds", "3"])).window_seconds == 3.0


def test_the_worker_verb_is_on_the_driftline_command_line() -> None:
    args = build_parser().parse_args(["--kafka", "k:9092", "worker", "--web-port", "7000"])
    assert args.command == "worker" and args.web_port == 7000 and callable(args.handler)


def test_worker_settings_follow_the_policy_unless_overridden() -> None:
    from driftline.retrainer.policy import parse_policy
    from driftline.streams.worker import WorkerOptions, monitor_settings

    policy = parse_policy(
        {
            "defaults": {
                "monitoring": {
                    "window_seconds": 120,
                    "allowed_lateness_seconds": 5,
                    "thresholds": {"*": {"psi": 0.3, "ks": 0.1}},
                }
            },
            "models": {"fast": {"monitoring": {"window_seconds": 10}}},
        }
    )
    slow, fast = monitor_settings(policy, WorkerOptions(), "any"), monitor_settings(policy, WorkerOptions(), "fast")
    assert (slow.windowing.size_ms, slow.windowing.lateness_ms, fast.windowing.size_ms) == (120_000, 5_000, 10_000)
    # the policy takes the drift engine's threshold keys, so every threshold reaches the engine as written
    assert slow.thresholds == policy.for_model("any").thresholds
    assert slow.thresholds["*"]["psi"] == 0.3 and slow.thresholds["*"]["ks"] == 0.1
    fixed = WorkerOptions(window_seconds=2, lateness_seconds=0)
    assert monitor_settings(policy, fixed, "fast").windowing == monitor_settings(policy, fixed, "any").windowing
    assert monitor_settings(policy, fixed, "fast").windowing.size_ms == 2_000


def test_the_worker_creates_its_data_directory_with_its_parents(tmp_path: Path) -> None:
    import faust

    from driftline.settings import Settings
    from driftline.streams.app import worker_datadir
    from driftline.streams.worker import WorkerOptions

    fresh = Settings(state_dir=str(tmp_path / "fresh" / "state"))
    default = worker_datadir(fresh, WorkerOptions(app_id="w"))
    assert default == tmp_path / "fresh" / "state" / "worker" / "w" and default.is_dir()
    given = worker_datadir(fresh, WorkerOptions(datadir=str(tmp_path / "a" / "b" / "faust")))
    assert given == tmp_path / "a" / "b" / "faust" and given.is_dir()
    # what faust.Worker does on start, which raised FileNotFoundError when the parents were missing
    faust.App("w", datadir=str(default), autodiscover=False)._create_directories()
