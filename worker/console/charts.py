"""Inline SVG charts for the health page (pure: numbers in, markup out)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from html import escape

WIDTH = 320
HEIGHT = 120
PAD_LEFT = 48
PAD_BOTTOM = 18
PAD_TOP = 8


def _time_label(first: datetime, last: datetime) -> str:
    """The left end of the time axis; with the day when the window crosses midnight, so that
    yesterday's 17:27 is not read as later than today's 16:27."""
    return f"{first:%d %b %H:%M}" if first.date() != last.date() else f"{first:%H:%M}"


def _label(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 or value == int(value) else f"{value:.1f}"


def line_chart(
    title: str, times: Sequence[datetime], values: Sequence[float | None], unit: str = ""
) -> str:
    """An SVG line chart of values over times; an empty chart says "no data"."""
    points = [(t, float(v)) for t, v in zip(times, values, strict=True) if v is not None]
    head = (
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{escape(title)}</title>"
    )
    plot_w = WIDTH - PAD_LEFT - 4
    plot_h = HEIGHT - PAD_BOTTOM - PAD_TOP
    axis = (
        f'<line x1="{PAD_LEFT}" y1="{PAD_TOP + plot_h}" x2="{WIDTH - 4}" y2="{PAD_TOP + plot_h}" '
        'class="axis"/>'
        f'<line x1="{PAD_LEFT}" y1="{PAD_TOP}" x2="{PAD_LEFT}" y2="{PAD_TOP + plot_h}" '
        'class="axis"/>'
    )
    if not points:
        return (
            head + axis + f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" '
            'class="empty">no data in this window</text></svg>'
        )
    first, last = min(t for t, _ in points), max(t for t, _ in points)
    start, end = first.timestamp(), last.timestamp()
    span = max(end - start, 1.0)
    top = max(max(v for _, v in points), 1.0)

    def xy(t: datetime, v: float) -> str:
        x = PAD_LEFT + (t.timestamp() - start) / span * plot_w
        y = PAD_TOP + plot_h - v / top * plot_h
        return f"{x:.1f},{y:.1f}"

    line = " ".join(xy(t, v) for t, v in points)
    dots = "".join(
        f'<circle cx="{xy(t, v).split(",")[0]}" cy="{xy(t, v).split(",")[1]}" r="1.8"/>'
        for t, v in points[-1:]
    )
    labels = (
        f'<text x="{PAD_LEFT - 4}" y="{PAD_TOP + 8}" text-anchor="end">{_label(top)}{unit}</text>'
        f'<text x="{PAD_LEFT - 4}" y="{PAD_TOP + plot_h}" text-anchor="end">0</text>'
        f'<text x="{PAD_LEFT}" y="{HEIGHT - 4}">{_time_label(first, last)}</text>'
        f'<text x="{WIDTH - 4}" y="{HEIGHT - 4}" text-anchor="end">{last:%H:%M} UTC</text>'
    )
    return head + axis + labels + f'<polyline points="{line}" class="line"/>' + dots + "</svg>"
