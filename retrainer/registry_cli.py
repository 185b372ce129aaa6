"""``driftline registry``: register, list, show, promote, roll back and reject model versions.

Every handler has the signature ``handler(args, settings) -> int``. Exit code
2 means bad input (a missing file, bad JSON, an unknown model or version);
the reason is one line on stderr.

Publishing the resulting ``ModelEvent`` records on the ``models`` topic is a
seam: pass ``publish`` to :func:`add_commands`. Without it the registry is
changed and nothing is published.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from driftline.redaction import redact
from driftline.retrainer.registry import (
    CHALLENGER,
    CHAMPION,
    Lineage,
    ModelVersion,
    Registry,
    RegistryError,
    validate_name,
    version_number,
)
from driftline.streams.records import PREDICTION_FEATURE, ModelEvent

if TYPE_CHECKING:
    import pandas as pd

    from driftline.settings import Settings

Publish = Callable[[ModelEvent, "Settings"], None]

LABEL_COLUMN = "label"
PREDICTION_COLUMN = "prediction"
# identify rows rather than describe them, so they are not features
EVENT_ID_COLUMN = "event_id"
EVENT_TIME_COLUMN = "event_time"
_RESERVED = {LABEL_COLUMN, PREDICTION_COLUMN, EVENT_ID_COLUMN, EVENT_TIME_COLUMN}

BAD_INPUT = 2


class InputError(ValueError):
    """A command-line value that cannot be used."""


def no_publish(event: ModelEvent, settings: Settings) -> None:
    """The default publisher: the registry change is made, the event goes nowhere."""


def add_commands(subparsers: argparse._SubParsersAction, publish: Publish | None = None) -> None:
    """Add ``registry`` and its verbs; ``publish`` receives every ModelEvent a verb produces."""
    publish = publish or no_publish
    registry = subparsers.add_parser("registry", help="the model registry: versions, lineage, champion")
    verbs = registry.add_subparsers(dest="registry_verb", metavar="VERB", required=True)

    reg = verbs.add_parser("register", help="register an externally trained model version")
    reg.add_argument("--model", required=True, help="model id")
    reg.add_argument(
        "--dataset",
        required=True,
        help="training data, CSV or Parquet: one column per feature, "
        "optional label, prediction, event_id and event_time (epoch ms) columns",
    )
    reg.add_argument("--artifact", help="the model file to store (content-addressed)")
    reg.add_argument("--params", help="hyperparameters as a JSON object (or @FILE)")
    reg.add_argument("--metrics", help="holdout metrics as a JSON object (or @FILE)")
    reg.add_argument("--trainer", default="external", help="trainer name (default: external)")
    reg.add_argument("--parent", help="the version this one was derived from")
    reg.add_argument("--version-note", dest="note", help="a free-text note stored with the version")
    reg.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="a tag (repeatable)")
    reg.add_argument("--promote", action="store_true", help="make the new version the champion")
    _add_who(reg)
    reg.set_defaults(handler=_guarded(functools.partial(_register, publish=publish)))

    lst = verbs.add_parser("list", help="models, or the versions of one model")
    lst.add_argument("--model", help="list this model's versions")
    lst.add_argument("--json", action="store_true", help="machine-readable output")
    lst.set_defaults(handler=_guarded(_list))

    show = verbs.add_parser("show", help="one version with its complete lineage")
    show.add_argument("model")
    show.add_argument("--version", help="default: the champion, else the newest version")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(handler=_guarded(_show))

    promote = verbs.add_parser("promote", help="make a version the champion")
    promote.add_argument("model")
    promote.add_argument("--version", required=True)
    _add_who(promote)
    promote.set_defaults(handler=_guarded(functools.partial(_promote, publish=publish)))

    rollback = verbs.add_parser("rollback", help="restore the previous champion")
    rollback.add_argument("model")
    _add_who(rollback)
    rollback.set_defaults(handler=_guarded(functools.partial(_rollback, publish=publish)))

    reject = verbs.add_parser("reject", help="mark a version unfit (it loses its aliases)")
    reject.add_argument("model")
    reject.add_argument("--version", required=True)
    _add_who(reject)
    reject.set_defaults(handler=_guarded(functools.partial(_reject, publish=publish)))


def _add_who(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--actor", help="who makes the change (default: the OS user)")
    parser.add_argument("--reason", default="", help="why, for the audit log")


def _guarded(
    handler: Callable[[argparse.Namespace, Settings], int],
) -> Callable[[argparse.Namespace, Settings], int]:
    @functools.wraps(handler)
    def run(args: argparse.Namespace, settings: Settings) -> int:
        try:
            return handler(args, settings)
        except (RegistryError, InputError) as exc:
            print(f"driftline registry: {redact(exc)}", file=sys.stderr)
            return BAD_INPUT

    return run


# -- register -------------------------------------------------------------------------
def _register(args: argparse.Namespace, settings: Settings, *, publish: Publish) -> int:
    model_id = validate_name(args.model)
    params = _json_object(args.params, "--params")
    metrics = _json_object(args.metrics, "--metrics")
    tags = _tags(args.tag)
    parent = None if args.parent is None else str(version_number(args.parent))
    dataset_path = _existing_file(args.dataset, "--dataset")
    artifact = None if args.artifact is None else _existing_file(args.artifact, "--artifact").read_bytes()
    frame = read_dataset(dataset_path)
    columns = split_columns(frame)
    start_ms, end_ms = _time_range(frame)

    registry = Registry.from_settings(settings)
    dataset_sha256 = registry.artifacts.put_file(dataset_path)  # a copy, so the lineage can be replayed
    lineage = Lineage(
        dataset_uri=dataset_path.resolve().as_uri(),
        dataset_sha256=dataset_sha256,
        dataset_rows=len(frame),
        dataset_start_ms=start_ms,
        dataset_end_ms=end_ms,
        trainer=args.trainer,
        hyperparameters=params,
        holdout_metrics=metrics,
        parent_version=parent,
    )
    version = registry.register(
        model_id,
        lineage=lineage,
        artifact_bytes=artifact,
        reference_profile=functools.partial(_profile, model_id, columns),
        tags=tags,
        note=args.note,
        actor=args.actor,
        reason=args.reason or "registered from the command line",
    )
    publish(version.registered_event(), settings)
    print(
        f"registered {model_id} version {version.version}: {len(frame)} rows, "
        f"{len(columns['numeric'])} numeric and {len(columns['categorical'])} categorical features, "
        f"dataset sha256 {dataset_sha256[:12]}, "
        + (f"artifact sha256 {version.artifact_sha256[:12]}" if version.artifact_sha256 else "no artifact")
    )
    if args.promote:
        event = registry.promote(model_id, version.version, actor=args.actor, reason=args.reason or "--promote")
        publish(event, settings)
        print(f"promoted {model_id} version {version.version} to {CHAMPION}")
    return 0


def read_dataset(path: Path) -> pd.DataFrame:
    """A CSV or Parquet file as a data frame; the format is chosen by the file name."""
    import pandas as pd

    name = path.name.lower()
    try:
        if name.endswith((".parquet", ".pq")):
            frame = pd.read_parquet(path)
        elif name.endswith((".csv", ".csv.gz")):
            frame = pd.read_csv(path)
        else:
            raise InputError(f"--dataset {path}: unknown format; use a .csv or .parquet file")
    except InputError:
        raise
    except Exception as exc:  # pandas and pyarrow raise many kinds for unreadable files
        raise InputError(f"--dataset {path} cannot be read: {exc}") from exc
    if frame.empty:
        raise InputError(f"--dataset {path} has no rows")
    return frame


def split_columns(frame: pd.DataFrame) -> dict[str, Any]:
    """Numeric dtypes become numeric features, everything else categorical; ``prediction`` is the output.

    >>> import pandas as pd
    >>> cols = split_columns(pd.DataFrame({"age": [30, 41], "city": ["a", None], "label": [0, 1]}))
    >>> cols["numeric"]["age"].tolist(), cols["categorical"]["city"], cols["predictions"]
    ([30.0, 41.0], ['a', None], None)
    """
    import numpy as np
    import pandas as pd

    numeric: dict[str, np.ndarray] = {}
    categorical: dict[str, list[str | None]] = {}
    for name in frame.columns:
        if not isinstance(name, str):
            raise InputError(f"dataset column names must be text, got {name!r}")
        if name in _RESERVED:
            continue
        if name == PREDICTION_FEATURE:
            raise InputError(f"dataset column {name!r} is reserved for the model output; name it {PREDICTION_COLUMN!r}")
        column = frame[name]
        if pd.api.types.is_numeric_dtype(column):
            numeric[name] = column.to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            categorical[name] = column.astype("string").to_numpy(dtype=object, na_value=None).tolist()
    if not numeric and not categorical:
        raise InputError("the dataset has no feature columns (only label/prediction/event columns)")
    predictions = None
    if PREDICTION_COLUMN in frame.columns:
        column = frame[PREDICTION_COLUMN]
        if not pd.api.types.is_numeric_dtype(column):
            raise InputError(f"dataset column {PREDICTION_COLUMN!r} must be numeric (a score or a regression output)")
        predictions = column.to_numpy(dtype=np.float64, na_value=np.nan)
    labels = None
    if LABEL_COLUMN in frame.columns and pd.api.types.is_numeric_dtype(frame[LABEL_COLUMN]):
        labels = frame[LABEL_COLUMN].to_numpy(dtype=np.float64, na_value=np.nan)
    return {"numeric": numeric, "categorical": categorical, "predictions": predictions, "labels": labels}


def _profile(model_id: str, columns: dict[str, Any], version: str) -> dict[str, Any]:
    # imported here: the profile module lives in the monitoring side and is
    # needed only by this verb
    try:
        from driftline.retrainer.evaluation import fit_calibrator
        from driftline.retrainer.reference import build_reference, registered_form
    except ImportError as exc:
        raise InputError(f"cannot compute the reference profile: {exc}") from exc
    try:
        profile = build_reference(model_id, version, columns["numeric"], columns["categorical"], columns["predictions"])
    except ValueError as exc:
        raise InputError(f"cannot compute the reference profile of the dataset: {exc}") from exc
    # a binary classifier's dataset with both label and prediction calibrates the label-free estimate
    calibrator = fit_calibrator("classification", columns.get("labels"), columns["predictions"])
    return registered_form(profile, calibrator)


def _time_range(frame: pd.DataFrame) -> tuple[int | None, int | None]:
    import pandas as pd

    if EVENT_TIME_COLUMN not in frame.columns:
        return None, None
    column = frame[EVENT_TIME_COLUMN]
    if pd.api.types.is_datetime64_any_dtype(column):
        ms = pd.to_datetime(column, utc=True).dropna().dt.as_unit("ms").astype("int64")
    elif pd.api.types.is_numeric_dtype(column):
        ms = column.dropna().astype("int64")
    else:
        raise InputError(f"dataset column {EVENT_TIME_COLUMN!r} must hold epoch milliseconds or timestamps")
    if ms.empty:
        return None, None
    return int(ms.min()), int(ms.max())


def _existing_file(value: str, flag: str) -> Path:
    path = Path(value)
    if not path.is_file():
        raise InputError(f"{flag} {value}: no such file")
    return path


def _json_object(value: str | None, flag: str) -> dict[str, Any]:
    if value is None:
        return {}
    text = value
    if value.startswith("@"):
        text = _existing_file(value[1:], flag).read_text()
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{flag} is not valid JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise InputError(f'{flag} must be a JSON object like {{"lr": 0.1}}, got {type(parsed).__name__}')
    return parsed


def _tags(values: list[str]) -> dict[str, str]:
    tags = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"--tag {item!r}: expected KEY=VALUE")
        tags[key] = value
    return tags


# -- list, show -----------------------------------------------------------------------
def _list(args: argparse.Namespace, settings: Settings) -> int:
    registry = Registry.from_settings(settings)
    if args.model is None:
        models = registry.list_models()
        if args.json:
            print(json.dumps([dataclasses.asdict(m) for m in models], indent=2))
            return 0
        if not models:
            print("no models registered")
            return 0
        rows = [["MODEL", "VERSIONS", "LATEST", CHAMPION.upper(), CHALLENGER.upper()]]
        for m in models:
            rows.append(
                [
                    m.model_id,
                    str(m.versions),
                    m.latest_version or "-",
                    m.aliases.get(CHAMPION, "-"),
                    m.aliases.get(CHALLENGER, "-"),
                ]
            )
        _print_table(rows)
        return 0
    versions = registry.list_versions(args.model)
    if args.json:
        print(json.dumps([v.to_dict() for v in versions], indent=2))
        return 0
    rows = [["VERSION", "STATUS", "ALIASES", "CREATED (UTC)", "ROWS", "TRAINER", "HOLDOUT METRICS"]]
    for v in versions:
        rows.append(
            [
                v.version,
                v.status,
                ",".join(v.aliases) or "-",
                _time(v.created_at),
                "-" if v.lineage.dataset_rows is None else str(v.lineage.dataset_rows),
                v.lineage.trainer or "-",
                _compact(v.lineage.holdout_metrics),
            ]
        )
    _print_table(rows)
    return 0


def _show(args: argparse.Namespace, settings: Settings) -> int:
    registry = Registry.from_settings(settings)
    if args.version is not None:
        version = registry.get(args.model, args.version)
    else:
        version = registry.alias(args.model, CHAMPION) or registry.list_versions(args.model)[-1]
    if args.json:
        print(json.dumps(version.to_dict(), indent=2))
    else:
        print(describe(version))
    return 0


def describe(v: ModelVersion) -> str:
    """The complete lineage of a version, for people."""
    lin = v.lineage
    lines = [
        f"model      {v.model_id}",
        f"version    {v.version}",
        f"status     {v.status}",
        f"aliases    {', '.join(v.aliases) or '-'}",
        f"created    {_utc(v.created_at)} by {v.created_by}",
        f"note       {v.note or '-'}",
        f"artifact   {('sha256 ' + v.artifact_sha256) if v.artifact_sha256 else '- (none stored)'}",
        "dataset",
        f"  uri      {lin.dataset_uri or '-'}",
        f"  sha256   {lin.dataset_sha256 or '-'}",
        f"  rows     {'-' if lin.dataset_rows is None else lin.dataset_rows}",
        f"  from     {_utc(lin.dataset_start_ms)}",
        f"  to       {_utc(lin.dataset_end_ms)}",
        f"code       {lin.code_version or '-'}",
        f"trainer    {lin.trainer or '-'}",
        f"params     {_compact(lin.hyperparameters)}",
        f"metrics    train {_compact(lin.train_metrics)}",
        f"           holdout {_compact(lin.holdout_metrics)}",
        f"parent     {lin.parent_version or '-'}",
        f"request    {lin.request_id or '-'}",
        f"profile    {('sha256 ' + v.reference_profile_sha256) if v.reference_profile_sha256 else '-'}",
        f"tags       {', '.join(f'{k}={val}' for k, val in sorted(v.tags.items())) or '-'}",
        f"evidence   {'-' if not lin.evidence else ''}",
    ]
    for e in lin.evidence:
        lines.append(
            f"  {e.metric} {e.feature} = {e.value:g} (threshold {e.threshold:g}) "
            f"in window {_time(e.window_start)} .. {_utc(e.window_end)}"
        )
    return "\n".join(line.rstrip() for line in lines)


def _time(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _utc(ms: int | None) -> str:
    return "-" if ms is None else f"{_time(ms)} UTC"


def _compact(value: dict[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, separators=(", ", ": ")) if value else "-"


def _print_table(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


# -- promote, rollback, reject ------------------------------------------------------------
def _announced(
    settings: Settings, publish: Publish, change: Callable[[Registry], ModelEvent], done: Callable[[ModelEvent], str]
) -> int:
    """Make a registry change, announce its event, and say what it did."""
    event = change(Registry.from_settings(settings))
    publish(event, settings)
    print(done(event))
    return 0


def _promote(args: argparse.Namespace, settings: Settings, *, publish: Publish) -> int:
    return _announced(
        settings,
        publish,
        lambda r: r.promote(args.model, args.version, actor=args.actor, reason=args.reason),
        lambda e: f"{args.model}: version {e.version} is the {CHAMPION}",
    )


def _rollback(args: argparse.Namespace, settings: Settings, *, publish: Publish) -> int:
    return _announced(
        settings,
        publish,
        lambda r: r.rollback(args.model, actor=args.actor, reason=args.reason),
        lambda e: f"{args.model}: rolled back; version {e.version} is the {CHAMPION} again",
    )


def _reject(args: argparse.Namespace, settings: Settings, *, publish: Publish) -> int:
    return _announced(
        settings,
        publish,
        lambda r: r.reject(args.model, args.version, actor=args.actor, reason=args.reason),
        lambda e: f"{args.model}: version {e.version} is rejected",
    )
