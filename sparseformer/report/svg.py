"""A small line/scatter plot written as plain SVG (no plotting dependency; any browser shows it).

    ax = Axes(title="...", xlabel="edges", ylabel="loss", xlog=2)
    ax.line([256, 1024], [1.3, 1.1], color=BLUE, label="sparse", texts=["w1", "w2"])
    path.write_text(ax.render())

Log axes take a base (2 or 10) and put ticks at its integer powers; linear axes get 1-2-5 ticks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape

BLUE, ORANGE, GREEN, RED, PURPLE, GREY = "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#7f7f7f"
PALETTE = (BLUE, ORANGE, GREEN, RED, PURPLE, "#8c564b", "#e377c2", "#17becf", "#bcbd22", GREY)


@dataclass
class _Series:
    xs: list[float]
    ys: list[float]
    color: str
    label: str | None
    dash: bool
    marker: str
    texts: list[str] | None


@dataclass
class Axes:
    title: str = ""
    subtitle: str = ""
    xlabel: str = ""
    ylabel: str = ""
    xlog: int | None = None       # None: linear; else the log base
    ylog: int | None = None
    width: int = 860
    height: int = 500
    xticks: list[float] | None = None   # explicit tick positions (data units)
    series: list[_Series] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)   # lines printed under the plot area

    def line(self, xs, ys, *, color: str = BLUE, label: str | None = None, dash: bool = False,
             marker: str = "circle", texts: list[str] | None = None) -> None:
        """Add a series; points with a None or non-positive (on a log axis) coordinate are skipped."""
        keep = [i for i, (x, y) in enumerate(zip(xs, ys)) if self._ok(x, self.xlog) and self._ok(y, self.ylog)]
        self.series.append(_Series([float(xs[i]) for i in keep], [float(ys[i]) for i in keep], color, label, dash,
                                   marker, [texts[i] for i in keep] if texts else None))

    @staticmethod
    def _ok(v, log) -> bool:
        return v is not None and math.isfinite(v) and (log is None or v > 0)

    # -- layout ------------------------------------------------------------------------------------------
    def render(self) -> str:
        W, H = self.width, self.height
        longest = max((len(s.label) for s in self.series if s.label), default=0)
        left, right, top = 78, max(60, 48 + int(6.4 * longest)), 58 if self.subtitle else 40
        W = max(W, left + right + 360)
        bottom = 56 + 16 * len(self.notes)
        pw, ph = W - left - right, H - top - bottom
        xs = [x for s in self.series for x in s.xs]
        ys = [y for s in self.series for y in s.ys]
        xr, xt = _scale(xs + (self.xticks or []), self.xlog)
        yr, yt = _scale(ys, self.ylog)
        if self.xticks:
            xt = [(v, _label(v, None)) for v in self.xticks]
            lo, hi = min(self.xticks + xs), max(self.xticks + xs)
            xr = (lo / 1.25, hi * 1.25) if self.xlog else (lo - 0.06 * (hi - lo), hi + 0.06 * (hi - lo))

        def px(x):
            return left + pw * _frac(x, xr, self.xlog)

        def py(y):
            return top + ph * (1 - _frac(y, yr, self.ylog))

        out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
               f'font-family="Helvetica, Arial, sans-serif" font-size="12">',
               f'<rect width="{W}" height="{H}" fill="white"/>',
               _text(W / 2, 22, self.title, size=15, anchor="middle", weight="bold")]
        if self.subtitle:
            out.append(_text(W / 2, 41, self.subtitle, size=12, anchor="middle", color="#444"))
        for v, lab in xt:
            x = px(v)
            out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + ph}" stroke="#e5e5e5"/>')
            out.append(_text(x, top + ph + 16, lab, anchor="middle"))
        for v, lab in yt:
            y = py(v)
            out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" stroke="#e5e5e5"/>')
            out.append(_text(left - 6, y + 4, lab, anchor="end"))
        out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>')
        out.append(_text(left + pw / 2, top + ph + 36, self.xlabel, anchor="middle", size=13))
        out.append(_text(18, top + ph / 2, self.ylabel, anchor="middle", size=13, rotate=True))
        for i, note in enumerate(self.notes):
            out.append(_text(left, top + ph + 56 + 16 * i, note, color="#444"))
        legend_y = top + 8
        for s in self.series:
            pts = [(px(x), py(y)) for x, y in zip(s.xs, s.ys)]
            dash = ' stroke-dasharray="6 4"' if s.dash else ""
            if len(pts) > 1:
                path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
                out.append(f'<polyline points="{path}" fill="none" stroke="{s.color}" stroke-width="2"{dash}/>')
            for j, (x, y) in enumerate(pts):
                out.append(_marker(x, y, s.marker, s.color))
                if s.texts:
                    out.append(_text(x + 7, y - 7, s.texts[j], size=10, color=s.color))
            if s.label:
                lx = left + pw + 16
                out.append(f'<line x1="{lx}" y1="{legend_y}" x2="{lx + 22}" y2="{legend_y}" stroke="{s.color}" '
                           f'stroke-width="2"{dash}/>')
                out.append(_marker(lx + 11, legend_y, s.marker, s.color))
                out.append(_text(lx + 28, legend_y + 4, s.label, size=11))
                legend_y += 18
        out.append("</svg>")
        return "\n".join(out) + "\n"


def _scale(values: list[float], log: int | None) -> tuple[tuple[float, float], list[tuple[float, str]]]:
    """(lo, hi) of the axis and its ticks [(value, label)]."""
    if not values:
        values = [1.0, 10.0] if log else [0.0, 1.0]
    lo, hi = min(values), max(values)
    if log:
        a, b = math.floor(math.log(lo, log) + 1e-9), math.ceil(math.log(hi, log) - 1e-9)
        if a == b:
            a, b = a - 1, b + 1
        stride = max(1, math.ceil((b - a) / 8))
        ticks = [(float(log) ** e, _label(float(log) ** e, log)) for e in range(a, b + 1, stride)]
        return (float(log) ** a, float(log) ** b), ticks
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    pad = 0.06 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / 6
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    ticks, v = [], first
    while v <= hi + 1e-12:
        ticks.append((v, _label(v, None, step)))
        v += step
    return (lo, hi), ticks


def _frac(v: float, rng: tuple[float, float], log: int | None) -> float:
    lo, hi = rng
    if log:
        return (math.log(v) - math.log(lo)) / (math.log(hi) - math.log(lo))
    return (v - lo) / (hi - lo)


def _label(v: float, log: int | None, step: float | None = None) -> str:
    if log == 2:
        return f"{int(v):,}" if 1 <= v < 100_000 else f"2^{round(math.log2(v))}"
    if step is not None:
        digits = max(0, -math.floor(math.log10(step)))
        return f"{v:.{digits}f}"
    return f"{v:g}"


def _marker(x: float, y: float, kind: str, color: str) -> str:
    if kind == "square":
        return f'<rect x="{x - 4:.1f}" y="{y - 4:.1f}" width="8" height="8" fill="{color}"/>'
    if kind == "triangle":
        return f'<polygon points="{x:.1f},{y - 5:.1f} {x - 5:.1f},{y + 4:.1f} {x + 5:.1f},{y + 4:.1f}" fill="{color}"/>'
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{color}"/>'


def _text(x: float, y: float, s: str, *, size: int = 12, anchor: str = "start", color: str = "#111",
          weight: str = "normal", rotate: bool = False) -> str:
    rot = f' transform="rotate(-90 {x:.1f} {y:.1f})"' if rotate else ""
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" fill="{color}" '
            f'font-weight="{weight}"{rot}>{escape(str(s))}</text>')
