"""Charts drawn as inline SVG, for the self-contained HTML report.

Pure functions: numbers in, markup out, no I/O and no plotting library, so
the report is one file that opens anywhere without a network. Times are
epoch milliseconds on a UTC axis. Every data mark (a heatmap cell, a line, a
point, a bar) has class ``mark``, so tests and scripts can count what was
drawn; series carry ``data-series`` so that the report's legend can hide
them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from html import escape

import numpy as np

__all__ = [
    "DASHES",
    "PALETTE",
    "Band",
    "Bars",
    "Domain",
    "Heatmap",
    "Marker",
    "Series",
    "bar_chart",
    "format_number",
    "heatmap",
    "heat_colors",
    "line_chart",
    "log_ticks",
    "nice_ticks",
    "time_ticks",
]

PALETTE = ("#2563eb", "#ea580c", "#059669", "#9333ea", "#0891b2", "#be123c", "#65a30d", "#a16207", "#475569")
DASHES = ("", "7 4", "2 3", "9 3 2 3")
MARKER_COLORS = {
    "retrain": "#b45309",
    "registered": "#6d28d9",
    "promoted": "#15803d",
    "rollback": "#b91c1c",
    "traffic": "#0369a1",
}
_FONT = 11
_CHAR_W = 6.2  # average width of an 11 px sans-serif character, to keep labels apart

SECOND = 1_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR
_TIME_STEPS = (
    SECOND,
    2 * SECOND,
    5 * SECOND,
    10 * SECOND,
    15 * SECOND,
    30 * SECOND,
    MINUTE,
    2 * MINUTE,
    5 * MINUTE,
    10 * MINUTE,
    15 * MINUTE,
    30 * MINUTE,
    HOUR,
    2 * HOUR,
    3 * HOUR,
    6 * HOUR,
    12 * HOUR,
    DAY,
    2 * DAY,
    7 * DAY,
    14 * DAY,
    30 * DAY,
    91 * DAY,
    365 * DAY,
)


@dataclass(frozen=True)
class Domain:
    """A time range on the x axis, in epoch milliseconds (``end_ms > start_ms``).

    >>> Domain.around([10_000, 70_000]).start_ms, Domain.around([5]).end_ms
    (10000, 1005)
    """

    start_ms: int
    end_ms: int

    def __post_init__(self) -> None:
        if self.end_ms <= self.start_ms:
            raise ValueError(f"a time domain needs end_ms > start_ms, got {self.start_ms}..{self.end_ms}")

    @classmethod
    def around(cls, times_ms: Sequence[int] | np.ndarray) -> Domain:
        """The smallest domain holding ``times_ms``; one second wide for a single instant."""
        times = np.asarray(times_ms, dtype=np.int64)
        if times.size == 0:
            raise ValueError("no times to span")
        lo, hi = int(times.min()), int(times.max())
        return cls(lo, hi if hi > lo else lo + SECOND)

    def contains(self, at_ms: int) -> bool:
        return self.start_ms <= at_ms <= self.end_ms


@dataclass(frozen=True)
class Series:
    """One line: ``ys`` over ``xs`` (epoch ms); NaN leaves a gap.

    >>> s = Series("v1", "version 1", np.array([0, 1000]), np.array([0.5, np.nan]), PALETTE[0])
    >>> len(s.xs), s.dash
    (2, '')
    """

    key: str
    label: str
    xs: np.ndarray
    ys: np.ndarray
    color: str
    dash: str = ""


@dataclass(frozen=True)
class Band:
    """A shaded range around a line: ``lo`` to ``hi`` over ``xs`` (epoch ms), e.g. an estimate's 95% band.

    ``key`` ties it to a series for the legend's show and hide.

    >>> Band("v1", np.array([0, 1000]), np.array([0.7, 0.72]), np.array([0.8, 0.82]), PALETTE[0]).key
    'v1'
    """

    key: str
    xs: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    color: str


@dataclass(frozen=True)
class Marker:
    """A moment worth a vertical line: a retrain request, a registration, a promotion, a version taking traffic.

    >>> Marker(5_000, "v2 promoted", "promoted").kind
    'promoted'
    """

    at_ms: int
    label: str
    kind: str


@dataclass(frozen=True)
class Heatmap:
    """Cells of rows (e.g. feature × version) by time windows.

    ``scores[i, j]`` colours the cell of row ``i`` in window ``j`` (NaN: no
    data, left blank); ``flags`` outlines cells (e.g. drifted); ``tips`` are
    the cells' tooltips. ``groups`` labels consecutive runs of rows.

    >>> h = Heatmap(["x"], [("v1", 1, PALETTE[0])], np.array([0]), np.array([60_000]),
    ...             np.array([[1.5]]), np.array([[True]]), [["x: psi 0.3"]])
    >>> h.scores.shape
    (1, 1)
    """

    rows: list[str]
    groups: list[tuple[str, int, str]]  # (label, number of rows, colour)
    starts: np.ndarray
    ends: np.ndarray
    scores: np.ndarray
    flags: np.ndarray
    tips: list[list[str]]


@dataclass(frozen=True)
class Bars:
    """Stacked bars: ``counts[k, j]`` of category ``k`` in the bucket starting at ``starts[j]``.

    >>> b = Bars(np.array([0, 60_000]), 60_000, ["bad_json"], np.array([[2, 0]]), [PALETTE[0]])
    >>> int(b.counts.sum())
    2
    """

    starts: np.ndarray
    width_ms: int
    categories: list[str]
    counts: np.ndarray
    colors: list[str]


# ---- scales and ticks ------------------------------------------------------------------------------------


def nice_ticks(lo: float, hi: float, target: int = 5) -> np.ndarray:
    """Round tick values covering ``[lo, hi]``, about ``target`` of them.

    >>> nice_ticks(0.0, 0.93).tolist()
    [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    >>> nice_ticks(3.0, 3.0).tolist()
    [2.5, 3.0, 3.5]
    >>> len(nice_ticks(0.0, 1e30))  # e-values grow that large
    3
    >>> nice_ticks(0.0, 2e-15).tolist()
    [0.0, 5e-16, 1e-15, 1.5e-15, 2e-15]
    """
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"ticks need finite bounds, got {lo}..{hi}")
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        pad = abs(lo) * 0.1 or 1.0
        step = _nice_step(2 * pad / 2)
        return np.array([lo - step, lo, lo + step])
    step = _nice_step((hi - lo) / max(target, 1))
    first = math.floor(lo / step + 1e-9) * step
    last = math.ceil(hi / step - 1e-9) * step
    # rounding drops the float noise of first + k * step (0.6000000000000001), at the step's own scale
    # so that ticks of tiny values (a metric of 1e-15) stay apart
    decimals = max(0, 3 - math.floor(math.log10(step)))
    return np.round(first + step * np.arange(int(round((last - first) / step)) + 1), decimals)


def log_ticks(lo: float, hi: float, target: int = 5) -> np.ndarray:
    """Whole decades (as exponents) covering ``[lo, hi]`` (exponents too), about ``target`` of them.

    >>> log_ticks(-0.3, 2.4).tolist()
    [-1.0, 0.0, 1.0, 2.0, 3.0]
    >>> log_ticks(0.0, 30.0).tolist()  # e-values of 1 to 1e30: every tenth decade
    [0.0, 10.0, 20.0, 30.0]
    """
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"ticks need finite bounds, got {lo}..{hi}")
    lo, hi = min(lo, hi), max(lo, hi)
    first, last = math.floor(lo), math.ceil(hi)
    if last == first:
        first, last = first - 1, last + 1
    step = max(1, math.ceil((last - first) / max(target, 1)))
    if step > 1:
        step = int(_nice_step(step))
    first = math.floor(first / step) * step
    last = math.ceil(last / step) * step
    return np.arange(first, last + step, step, dtype=np.float64)


def _decade_label(exponent: float) -> str:
    """``10^k`` in few characters: 0.01, 1, 1000, 1e+06.

    >>> [_decade_label(k) for k in (-2.0, 0.0, 3.0, 6.0, 30.0)]
    ['0.01', '1', '1000', '1e+06', '1e+30']
    """
    k = int(exponent)
    return f"{10.0**k:g}" if -4 <= k < 5 else f"1e{k:+03d}"


def _nice_step(raw: float) -> float:
    exponent = math.floor(math.log10(raw))
    fraction = raw / 10**exponent
    nice = 1 if fraction <= 1 else 2 if fraction <= 2 else 5 if fraction <= 5 else 10
    # a float: 10**exponent is a Python int for exponent >= 0, which numpy cannot hold past 2**63
    return nice * 10.0**exponent


def time_ticks(domain: Domain, target: int = 8) -> list[tuple[int, str]]:
    """Tick positions (epoch ms) on whole UTC minutes, hours or days, with their labels.

    >>> [label for _, label in time_ticks(Domain(0, 3 * HOUR), target=4)]
    ['00:00', '01:00', '02:00', '03:00']
    >>> time_ticks(Domain(0, 3 * DAY), target=4)[1][1]
    '01-02'
    """
    span = domain.end_ms - domain.start_ms
    step = next((s for s in _TIME_STEPS if span / s <= target), _TIME_STEPS[-1])
    first = -(-domain.start_ms // step) * step
    ticks = np.arange(first, domain.end_ms + 1, step, dtype=np.int64)
    if step >= DAY:
        fmt = "%m-%d"
    elif span > DAY:
        fmt = "%m-%d %H:%M"
    elif step < MINUTE:
        fmt = "%H:%M:%S"
    else:
        fmt = "%H:%M"
    return [(int(t), datetime.fromtimestamp(t / 1000, tz=UTC).strftime(fmt)) for t in ticks]


def format_number(value: float) -> str:
    """A short human form of a number for labels and tooltips.

    >>> format_number(0.123456), format_number(52000.0), format_number(200.0)
    ('0.1235', '52,000', '200')
    >>> format_number(float("nan")), format_number(3e-05)
    ('–', '3e-05')
    """
    if value is None or not math.isfinite(value):
        return "–"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.1f}".removesuffix(".0")
    if magnitude >= 0.001:
        return f"{value:.4g}"
    return f"{value:.1g}"


def format_time(at_ms: int) -> str:
    """UTC ``YYYY-MM-DD HH:MM:SS``.

    >>> format_time(1_764_000_000_000)
    '2025-11-24 16:00:00'
    """
    return datetime.fromtimestamp(at_ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def heat_colors(scores: np.ndarray) -> np.ndarray:
    """Fill colours for scores = value / threshold: pale below 1, a jump at the threshold, then darker red to 2.

    >>> heat_colors(np.array([0.0, 0.99, 1.0, 5.0, np.nan])).tolist()
    ['#f1f5f9', '#fcd34f', '#fb923c', '#991b1b', 'none']
    """
    s = np.asarray(scores, dtype=np.float64)
    below = np.array([[0xF1, 0xF5, 0xF9], [0xFC, 0xD3, 0x4D]], dtype=np.float64)
    above = np.array([[0xFB, 0x92, 0x3C], [0x99, 0x1B, 0x1B]], dtype=np.float64)
    clipped = np.clip(np.nan_to_num(s, nan=0.0), 0.0, 2.0)
    t_below = (clipped / 1.0)[..., None]
    t_above = (clipped - 1.0)[..., None]
    rgb = np.where(
        (clipped < 1.0)[..., None],
        below[0] + (below[1] - below[0]) * t_below,
        above[0] + (above[1] - above[0]) * t_above,
    )
    rgb = np.rint(rgb).astype(np.int64)
    hexes = np.char.add("#", np.char.add(_hex2(rgb[..., 0]), np.char.add(_hex2(rgb[..., 1]), _hex2(rgb[..., 2]))))
    return np.where(np.isnan(s), "none", hexes).astype(object)


def _hex2(channel: np.ndarray) -> np.ndarray:
    digits = np.array(list("0123456789abcdef"))
    return np.char.add(digits[channel // 16], digits[channel % 16])


# ---- charts -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Frame:
    """Where the plot area sits inside the SVG, and how times map onto it."""

    width: int
    height: int
    left: int
    right: int
    top: int
    bottom: int
    domain: Domain

    @property
    def plot_w(self) -> float:
        return self.width - self.left - self.right

    @property
    def plot_h(self) -> float:
        return self.height - self.top - self.bottom

    def x(self, at_ms: np.ndarray | int) -> np.ndarray:
        span = self.domain.end_ms - self.domain.start_ms
        return self.left + (np.asarray(at_ms, dtype=np.float64) - self.domain.start_ms) / span * self.plot_w


def _svg_open(width: int, height: int, label: str) -> str:
    return (
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="100%" role="img" aria-label="{escape(label)}" font-size="{_FONT}">'
    )


def _value_axis(
    frame: _Frame,
    ticks: np.ndarray,
    y: Callable[[float], np.ndarray],
    unit: str,
    label: Callable[[float], str] = format_number,
) -> list[str]:
    """Grid lines and labels at ``ticks`` (placed by ``y``, written by ``label``), and the ``unit`` above the axis."""
    out = []
    for t in ticks:
        yy = float(y(float(t)))
        out.append(
            f'<line class="grid" x1="{frame.left}" y1="{yy:.1f}" x2="{frame.width - frame.right}" y2="{yy:.1f}"/>'
        )
        out.append(
            f'<text class="tick-label" x="{frame.left - 6}" y="{yy + 4:.1f}" text-anchor="end">'
            f"{escape(label(float(t)))}</text>"
        )
    if unit:
        out.append(f'<text class="unit" x="4" y="{frame.top - 4}">{escape(unit)}</text>')
    return out


def _time_axis(frame: _Frame) -> list[str]:
    y = frame.height - frame.bottom
    out = [f'<line class="axis" x1="{frame.left}" y1="{y}" x2="{frame.width - frame.right}" y2="{y}"/>']
    ticks = time_ticks(frame.domain, target=max(3, int(frame.plot_w // 90)))
    for at, label in ticks:
        x = float(frame.x(at))
        out.append(f'<line class="tick" x1="{x:.1f}" y1="{y}" x2="{x:.1f}" y2="{y + 4}"/>')
        out.append(f'<text class="tick-label" x="{x:.1f}" y="{y + 15}" text-anchor="middle">{escape(label)}</text>')
    return out


def _marker_rows(markers: Sequence[Marker], frame: _Frame) -> list[tuple[Marker, float, int]]:
    """Each marker's x and the label row that keeps its label clear of its neighbours."""
    placed: list[tuple[Marker, float, int]] = []
    row_ends: list[float] = []
    for m in sorted(markers, key=lambda m: m.at_ms):
        if not frame.domain.contains(m.at_ms):
            continue
        x = float(frame.x(m.at_ms))
        width = len(m.label) * _CHAR_W + 8
        row = next((i for i, end in enumerate(row_ends) if end < x), len(row_ends))
        if row == len(row_ends):
            row_ends.append(x + width)
        else:
            row_ends[row] = x + width
        placed.append((m, x, row))
    return placed


def marker_label_rows(markers: Sequence[Marker], domain: Domain, width: int, left: int, right: int) -> int:
    """How many label rows ``markers`` need above a plot of this geometry.

    >>> marker_label_rows([Marker(10, "a", "retrain"), Marker(11, "b", "promoted")], Domain(0, 100), 500, 40, 10)
    2
    """
    frame = _Frame(width, 100, left, right, 0, 0, domain)
    placed = _marker_rows(markers, frame)
    return 1 + max(row for *_, row in placed) if placed else 0


def _markers(markers: Sequence[Marker], frame: _Frame, labels: bool) -> list[str]:
    out = []
    for m, x, row in _marker_rows(markers, frame):
        color = MARKER_COLORS.get(m.kind, "#334155")
        title = f"<title>{escape(m.label)} · {format_time(m.at_ms)} UTC</title>"
        out.append(
            f'<g class="marker marker-{escape(m.kind)}">{title}'
            f'<line x1="{x:.1f}" y1="{frame.top}" x2="{x:.1f}" y2="{frame.height - frame.bottom}" '
            f'stroke="{color}" stroke-width="1.2" stroke-dasharray="4 3"/>'
        )
        if labels:
            y = frame.top - 6 - row * 14
            out.append(f'<text x="{x + 3:.1f}" y="{y}" fill="{color}" font-weight="600">{escape(m.label)}</text>')
        out.append("</g>")
    return out


def line_chart(
    series: Sequence[Series],
    domain: Domain,
    *,
    title: str = "",
    unit: str = "",
    thresholds: Sequence[tuple[float, str]] = (),
    markers: Sequence[Marker] = (),
    marker_labels: bool = True,
    y_include: Sequence[float] = (),
    width: int = 960,
    height: int = 240,
    log_y: bool = False,
    bands: Sequence[Band] = (),
) -> str:
    """Lines over time with points, optional threshold lines, shaded bands and event markers.

    Points closer than the series' usual spacing are joined; a longer gap
    (a version that stopped serving) breaks the line. ``y_include`` values
    are kept inside the y range (0 for latency, say). ``log_y`` puts the
    values on a logarithmic axis (values of 0 or less are left out), for
    quantities that span decades such as e-values.

    >>> svg = line_chart([Series("a", "A", np.array([0, 60_000, 120_000]), np.array([0.1, 0.4, 0.2]), PALETTE[0])],
    ...                  Domain(0, 120_000), thresholds=[(0.3, "limit")])
    >>> svg.count('class="mark line"'), svg.count('class="mark point"'), "limit" in svg
    (1, 3, True)
    >>> e = line_chart([Series("a", "A", np.array([0, 60_000]), np.array([0.5, 1e12]), PALETTE[0])],
    ...                Domain(0, 60_000), thresholds=[(80.0, "alarm")], log_y=True)
    >>> ">1e+10</text>" in e, ">1</text>" in e  # decades 1e-05 to 1e+15, in steps of five
    (True, True)
    """
    label_rows = marker_label_rows(markers, domain, width, 56, 16) if marker_labels else 0
    frame = _Frame(width, height, 56, 16, 12 + 14 * label_rows if label_rows else 14, 26, domain)

    def scale(v: np.ndarray | float) -> np.ndarray:
        values = np.asarray(v, dtype=np.float64)
        if not log_y:
            return values
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(values > 0, np.log10(np.where(values > 0, values, 1.0)), np.nan)

    finite = np.concatenate(
        [scale(s.ys) for s in series]
        + [scale(b.lo) for b in bands]
        + [scale(b.hi) for b in bands]
        + [scale(np.array([t for t, _ in thresholds], dtype=np.float64)), scale(np.asarray(y_include))]
    )
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        finite = np.array([0.0, 1.0])
    lo, hi = float(finite.min()), float(finite.max())
    target = max(3, int(frame.plot_h // 40))
    ticks = log_ticks(lo, hi, target) if log_y else nice_ticks(lo, hi, target=target)
    y_lo, y_hi = float(ticks[0]), float(ticks[-1])

    def y(v: np.ndarray | float) -> np.ndarray:
        return frame.top + (1 - (scale(v) - y_lo) / (y_hi - y_lo)) * frame.plot_h

    def at_tick(t: float) -> np.ndarray:  # ticks are already on the axis' scale
        return frame.top + (1 - (np.asarray(t, dtype=np.float64) - y_lo) / (y_hi - y_lo)) * frame.plot_h

    out = [_svg_open(width, height, title or "line chart")]
    out.extend(_value_axis(frame, ticks, at_tick, unit, _decade_label if log_y else format_number))
    out.extend(_time_axis(frame))
    for band in bands:
        out.append(_band(band, frame, y))
    for value, label in thresholds:
        yy = float(y(value))
        out.append(
            f'<g class="threshold"><title>{escape(label)}: {escape(format_number(value))}</title>'
            f'<line x1="{frame.left}" y1="{yy:.1f}" x2="{width - frame.right}" y2="{yy:.1f}"/>'
            f'<text x="{width - frame.right - 2}" y="{yy - 3:.1f}" text-anchor="end">{escape(label)}</text></g>'
        )
    out.extend(_markers(markers, frame, marker_labels))
    for s in series:
        if log_y:  # a value of 0 or less has no place on a log axis: a gap, as for a missing one
            s = replace(s, ys=np.where(np.asarray(s.ys, dtype=np.float64) > 0, s.ys, np.nan))
        out.append(_series(s, frame, y))
    out.append("</svg>")
    return "".join(out)


def _band(band: Band, frame: _Frame, y: Callable[[np.ndarray], np.ndarray]) -> str:
    """The band as one closed shape: along ``hi`` forwards, back along ``lo``; missing points are left out."""
    order = np.argsort(band.xs, kind="stable")
    xs = np.asarray(band.xs, dtype=np.int64)[order]
    lo, hi = y(np.asarray(band.lo)[order]), y(np.asarray(band.hi)[order])
    ok = np.isfinite(lo) & np.isfinite(hi)
    if not ok.any():
        return ""
    px = frame.x(xs[ok])
    top = [f"{x:.1f},{v:.1f}" for x, v in zip(px, hi[ok])]
    bottom = [f"{x:.1f},{v:.1f}" for x, v in zip(px[::-1], lo[ok][::-1])]
    return (
        f'<path class="band" data-series="{escape(band.key)}" d="M{" L".join(top + bottom)} Z" '
        f'fill="{band.color}" fill-opacity="0.15" stroke="none"/>'
    )


def _series(s: Series, frame: _Frame, y) -> str:
    order = np.argsort(s.xs, kind="stable")
    xs, ys = np.asarray(s.xs, dtype=np.int64)[order], np.asarray(s.ys, dtype=np.float64)[order]
    ok = np.isfinite(ys)
    if not ok.any():
        return ""
    idx = np.flatnonzero(ok)
    xs, ys = xs[idx], ys[idx]
    px, py = frame.x(xs), y(ys)
    # a new run starts after a missing value, or after a gap of more than 1.5 usual steps
    new_run = np.ones(len(idx), dtype=bool)
    if len(idx) > 1:
        usual = float(np.median(np.diff(xs)))
        new_run[1:] = (np.diff(idx) > 1) | (np.diff(xs) > 1.5 * usual)
    d = " ".join(f"{'M' if m else 'L'}{x:.1f},{yy:.1f}" for m, x, yy in zip(new_run, px, py))
    dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
    out = [f'<g class="series" data-series="{escape(s.key)}"><title>{escape(s.label)}</title>']
    out.append(f'<path class="mark line" d="{d}" fill="none" stroke="{s.color}" stroke-width="1.8"{dash}/>')
    if len(idx) <= 120:
        for at, value, x, yy in zip(xs, ys, px, py):
            out.append(
                f'<circle class="mark point" cx="{x:.1f}" cy="{yy:.1f}" r="2.4" fill="{s.color}">'
                f"<title>{escape(s.label)} · {format_time(int(at))} · "
                f"{escape(format_number(float(value)))}</title></circle>"
            )
    out.append("</g>")
    return "".join(out)


def heatmap(
    grid: Heatmap,
    domain: Domain,
    *,
    title: str = "",
    markers: Sequence[Marker] = (),
    width: int = 960,
    row_height: int = 18,
) -> str:
    """Rows by time windows, each cell coloured by its score and outlined when flagged.

    >>> h = Heatmap(["income", "age"], [("v1", 2, PALETTE[0])], np.array([0, 60_000]), np.array([60_000, 120_000]),
    ...             np.array([[0.2, 1.4], [0.1, np.nan]]), np.array([[False, True], [False, False]]),
    ...             [["a", "b"], ["c", "d"]])
    >>> svg = heatmap(h, Domain(0, 120_000))
    >>> svg.count('class="mark cell"'), svg.count('class="mark cell flagged"')
    (2, 1)
    """
    label_w = 12 + int(max((len(r) for r in grid.rows), default=4) * _CHAR_W)
    group_w = 44
    left = group_w + label_w
    rows = max(1, marker_label_rows(markers, domain, width, left, 16))
    top = 10 + 14 * rows if markers else 10
    legend_h = 34
    height = top + row_height * len(grid.rows) + 26 + legend_h
    frame = _Frame(width, height - legend_h, left, 16, top, 26, domain)
    out = [_svg_open(width, height, title or "heatmap")]
    x0 = frame.x(grid.starts)
    x1 = frame.x(grid.ends)
    fills = heat_colors(grid.scores)
    row = 0
    for label, count, color in grid.groups:
        y_top = top + row * row_height
        out.append(
            f'<g class="group"><rect x="2" y="{y_top + 1}" width="{group_w - 8}" height="{count * row_height - 2}" '
            f'rx="3" fill="{color}" opacity="0.14"/>'
            f'<text x="{(group_w - 6) / 2:.1f}" y="{y_top + count * row_height / 2 + 4:.1f}" '
            f'text-anchor="middle" fill="{color}" font-weight="700">{escape(label)}</text></g>'
        )
        if row:
            out.append(f'<line class="group-rule" x1="2" y1="{y_top}" x2="{width - 16}" y2="{y_top}"/>')
        row += count
    for i, name in enumerate(grid.rows):
        y_top = top + i * row_height
        out.append(
            f'<text class="row-label" x="{left - 6}" y="{y_top + row_height / 2 + 4:.1f}" text-anchor="end">'
            f"{escape(name)}</text>"
        )
        present = np.flatnonzero(np.isfinite(grid.scores[i]))
        for j in present:
            w = max(float(x1[j] - x0[j]) - 1.0, 1.0)
            cls = "mark cell flagged" if grid.flags[i, j] else "mark cell"
            out.append(
                f'<rect class="{cls}" x="{x0[j] + 0.5:.1f}" y="{y_top + 1}" width="{w:.1f}" height="{row_height - 2}" '
                f'fill="{fills[i, j]}"><title>{escape(grid.tips[i][j])}</title></rect>'
            )
    out.extend(_time_axis(frame))
    out.extend(_markers(markers, frame, True))
    out.append(_heat_legend(left, height - legend_h + 8))
    out.append("</svg>")
    return "".join(out)


def _heat_legend(x: int, y: int) -> str:
    stops = [(0.0, "0"), (0.5, "½ threshold"), (0.99, "just below"), (1.0, "threshold"), (1.5, "1.5×"), (2.0, "≥ 2×")]
    colors = heat_colors(np.array([s for s, _ in stops]))
    out = [f'<g class="legend" transform="translate({x},{y})">']
    cx = 0.0
    for (_, label), color in zip(stops, colors):
        out.append(f'<rect x="{cx:.1f}" y="0" width="14" height="12" fill="{color}" stroke="#cbd5e1"/>')
        out.append(f'<text x="{cx + 18:.1f}" y="10">{escape(label)}</text>')
        cx += 28 + len(label) * _CHAR_W
    out.append(f'<rect x="{cx:.1f}" y="0" width="14" height="12" fill="#fb923c" class="flag-sample"/>')
    out.append(f'<text x="{cx + 18:.1f}" y="10">outlined: a metric crossed its threshold</text>')
    out.append("</g>")
    return "".join(out)


def bar_chart(
    bars: Bars,
    domain: Domain,
    *,
    title: str = "",
    unit: str = "",
    width: int = 960,
    height: int = 200,
) -> str:
    """Stacked bars per time bucket, one colour per category.

    >>> b = Bars(np.array([0, 60_000]), 60_000, ["a", "b"], np.array([[2, 0], [1, 3]]), PALETTE[:2])
    >>> bar_chart(b, Domain(0, 120_000)).count('class="mark bar"')
    3
    """
    frame = _Frame(width, height, 56, 16, 26, 26, domain)
    totals = bars.counts.sum(axis=0) if bars.counts.size else np.zeros(0)
    # at least 0..4, so that small counts get whole-number ticks
    ticks = nice_ticks(0.0, float(max(totals.max(initial=0), 4)), target=4)
    y_hi = float(ticks[-1])

    def y(v: np.ndarray | float) -> np.ndarray:
        return frame.top + (1 - np.asarray(v, dtype=np.float64) / y_hi) * frame.plot_h

    out = [_svg_open(width, height, title or "bar chart")]
    out.extend(_value_axis(frame, ticks, y, unit))
    out.extend(_time_axis(frame))
    x0 = frame.x(bars.starts)
    bar_w = max(float(frame.x(bars.starts[0] + bars.width_ms) - x0[0]) - 1.5, 1.0) if len(bars.starts) else 0.0
    base = np.zeros(len(bars.starts))
    for k, (category, color) in enumerate(zip(bars.categories, bars.colors)):
        counts = bars.counts[k]
        out.append(f'<g class="series" data-series="{escape(category)}">')
        for j in np.flatnonzero(counts):
            y_top, y_bottom = float(y(base[j] + counts[j])), float(y(base[j]))
            out.append(
                f'<rect class="mark bar" x="{x0[j] + 0.75:.1f}" y="{y_top:.1f}" width="{bar_w:.1f}" '
                f'height="{max(y_bottom - y_top, 0.5):.1f}" fill="{color}"><title>{escape(category)} · '
                f"{format_time(int(bars.starts[j]))} · {int(counts[j])}</title></rect>"
            )
        out.append("</g>")
        base = base + counts
    out.append("</svg>")
    return "".join(out)
