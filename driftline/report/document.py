"""The report as a file: collect from the warehouse and the registry, render, write atomically."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from driftline.report.page import render
from driftline.report.queries import DEFAULT_DAYS, collect
from driftline.retrainer.registry import Registry, validate_name

if TYPE_CHECKING:
    from driftline.settings import Settings
    from driftline.streams.warehouse import Warehouse


def render_report(
    warehouse: Warehouse, registry: Registry | None, model_id: str, *, days: float | None = DEFAULT_DAYS
) -> str:
    """The report of ``model_id`` as one self-contained HTML document (the last ``days`` of windows)."""
    return render(collect(warehouse, registry, model_id, days=days))


def write_report(
    settings: Settings, model_id: str, out_path: str | os.PathLike[str], *, days: float | None = DEFAULT_DAYS
) -> Path:
    """Write the report of ``model_id`` to ``out_path`` (atomically) and return the path.

    The warehouse and the registry come from ``settings``. A SQLite registry
    file that does not exist is not created: the report then takes lineage
    from the warehouse mirror and says so.
    """
    from driftline.streams.warehouse import Warehouse

    validate_name(model_id)
    out = Path(out_path)
    registry = _open_registry(settings)
    with Warehouse.from_settings(settings) as warehouse:
        html = render_report(warehouse, registry, model_id, days=days)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    partial.write_text(html, encoding="utf-8")
    partial.replace(out)
    return out


def _open_registry(settings: Settings) -> Registry | None:
    prefix = "sqlite:///"
    if settings.registry.startswith(prefix) and not Path(settings.registry[len(prefix) :]).exists():
        return None
    return Registry.from_settings(settings)
