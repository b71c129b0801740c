"""A hand-made SVG line chart: axes, series, horizontal reference lines and a legend.

:class:`Chart` draws on a log2 x axis (concurrency: powers of two) and a linear
y axis from 0; :func:`throughput_svg` is the benchmark's plot of execs/s
against concurrency.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field


def nice_step(span: float) -> float:
    """A round grid step (1, 2, 2.5, 5 times a power of ten) for about five lines."""
    raw = span / 5
    mag = 10 ** len(str(int(raw))) / 10 if raw >= 1 else 1
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


@dataclass(frozen=True)
class Series:
    label: str
    color: str
    dash: str
    points: dict[int, float]


@dataclass(frozen=True)
class RefLine:
    label: str
    color: str
    dash: str
    value: float


@dataclass
class Chart:
    """Lines against powers of two; ``svg()`` renders everything added."""

    title: str
    x_label: str
    y_label: str
    xs: list[int]
    w: int = 740
    h: int = 420
    left: int = 70
    right: int = 215
    top: int = 50
    bottom: int = 55
    series: list[Series] = field(default_factory=list)
    refs: list[RefLine] = field(default_factory=list)

    def add(self, label: str, color: str, points: dict[int, float], dash: str = "") -> None:
        if points:
            self.series.append(Series(label, color, dash, points))

    def ref(self, label: str, color: str, value: float, dash: str) -> None:
        self.refs.append(RefLine(label, color, dash, value))

    # -- geometry ------------------------------------------------------

    @property
    def pw(self) -> int:
        return self.w - self.left - self.right

    @property
    def ph(self) -> int:
        return self.h - self.top - self.bottom

    def _scale(self) -> tuple[float, float]:
        values = [v for s in self.series for v in s.points.values()]
        ymax = max([*values, *(x.value for x in self.refs), 1.0])
        step = nice_step(ymax * 1.1)
        return step, step * (int(ymax * 1.1 / step) + 1)

    def x(self, c: int) -> float:
        maxlx = max(1, max(self.xs).bit_length() - 1)
        return self.left + self.pw * (c.bit_length() - 1) / maxlx

    def y(self, v: float, ytop: float) -> float:
        return self.top + self.ph * (1 - v / ytop)

    # -- drawing -------------------------------------------------------

    def _axes(self, step: float, ytop: float) -> list[str]:
        left, top, pw, ph = self.left, self.top, self.pw, self.ph
        o = []
        v = 0.0
        while v <= ytop + 1e-9:
            y = self.y(v, ytop)
            o.append(
                f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" stroke="#e5e5e5"/>'
            )
            o.append(f'<text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end">{v:g}</text>')
            v += step
        for c in self.xs:
            x = self.x(c)
            o.append(
                f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + ph}" stroke="#f0f0f0"/>'
            )
            o.append(f'<text x="{x:.1f}" y="{top + ph + 18}" text-anchor="middle">{c}</text>')
        o.append(
            f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#444444"/>'
        )
        mid = left + pw / 2
        o.append(f'<text x="{mid}" y="{self.h - 12}" text-anchor="middle">{self.x_label}</text>')
        o.append(
            f'<text transform="translate(18,{top + ph / 2}) rotate(-90)" '
            f'text-anchor="middle">{self.y_label}</text>'
        )
        return o

    def _series(self, s: Series, ytop: float) -> list[str]:
        pts = sorted((c, v) for c, v in s.points.items() if c in self.xs)
        path = " ".join(f"{self.x(c):.1f},{self.y(v, ytop):.1f}" for c, v in pts)
        dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
        o = [f'<polyline points="{path}" fill="none" stroke="{s.color}" stroke-width="2.5"{dash}/>']
        for c, v in pts:
            x, y = self.x(c), self.y(v, ytop)
            o.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{s.color}"/>')
            o.append(
                f'<text x="{x + 5:.1f}" y="{y - 6:.1f}" fill="{s.color}" '
                f'font-size="10">{v:.0f}</text>'
            )
        return o

    def _ref(self, ref: RefLine, ytop: float) -> str:
        y = self.y(ref.value, ytop)
        return (
            f'<line x1="{self.left}" y1="{y:.1f}" x2="{self.left + self.pw}" y2="{y:.1f}" '
            f'stroke="{ref.color}" stroke-width="2" stroke-dasharray="{ref.dash}"/>'
        )

    def _legend(self) -> list[str]:
        entries = [(s.label, s.color, s.dash) for s in self.series]
        entries += [(x.label, x.color, x.dash) for x in self.refs]
        lx0 = self.left + self.pw + 15
        o = []
        for i, (label, color, dash) in enumerate(entries):
            ly = self.top + 10 + i * 22
            dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
            o.append(
                f'<line x1="{lx0}" y1="{ly}" x2="{lx0 + 24}" y2="{ly}" stroke="{color}" '
                f'stroke-width="2.5"{dash_attr}/>'
            )
            o.append(f'<text x="{lx0 + 30}" y="{ly + 4}" font-size="11">{label}</text>')
        return o

    def svg(self) -> str:
        step, ytop = self._scale()
        o = [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.w}" height="{self.h}" '
            f'viewBox="0 0 {self.w} {self.h}" font-family="sans-serif" font-size="12">',
            f'<rect width="{self.w}" height="{self.h}" fill="white"/>',
            f'<text x="{self.left}" y="22" font-size="15" font-weight="bold">{self.title}</text>',
            *self._axes(step, ytop),
        ]
        for s in self.series:
            o += self._series(s, ytop)
        o += [self._ref(x, ytop) for x in self.refs]
        o += self._legend()
        o.append("</svg>")
        return "\n".join(o) + "\n"


def _points(d: dict[str, float] | None) -> dict[int, float]:
    return {int(k): v for k, v in (d or {}).items() if v is not None}


def throughput_svg(
    spawn: dict[str, float] | None,
    agent: dict[str, float] | None,
    full: dict[str, float] | None,
    lean: dict[str, float] | None,
    celery_per_s: float | None,
    celery_n: int | None,
) -> str:
    """Execs/s against concurrency: the spawn limit, the agent alone, end to end with
    every lifecycle event (full) and with the exit notification only (lean), and the
    Celery baseline with the targets (1.5x lean, 1.2x full)."""
    curves = [_points(d) for d in (spawn, agent, full, lean)]
    xs = sorted({c for pts in curves for c in pts} or {1})
    chart = Chart(
        f"execbus: execs/s against concurrency (echo hi, {os.cpu_count()} cores)",
        "concurrency (execs in flight, log scale)",
        "execs per second",
        xs,
    )
    chart.add("spawn limit (asyncio)", "#888888", curves[0], "6,4")
    chart.add("agent alone", "#2a9d4a", curves[1])
    chart.add("end to end, all events", "#1f5fbf", curves[2])
    chart.add("end to end, lean", "#7b3fbf", curves[3])
    if celery_per_s:
        chart.ref(f"Celery, {celery_n or '?'} in flight", "#e07b00", celery_per_s, "2,3")
        chart.ref("target lean: 1.5x Celery", "#c0392b", 1.5 * celery_per_s, "8,3,2,3")
        chart.ref("target full: 1.2x Celery", "#e08080", 1.2 * celery_per_s, "8,3,2,3")
    return chart.svg()
