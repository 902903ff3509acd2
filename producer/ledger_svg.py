"""Line charts as inline SVG for the ledger page: no JavaScript, no CDN, one string per chart."""

from __future__ import annotations

from collections.abc import Callable
from html import escape

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f")
W, H, PAD_L, PAD_R, PAD_T, PAD_B = 460, 200, 56, 12, 26, 28


def line_chart(title: str, xs: list[float], series: dict[str, list[float | None]],
               fmt: Callable[[float], str], x_label: Callable[[float], str]) -> str:  # fmt: skip
    """`series`: name -> one y per x (None: no data in that bucket, the line breaks there)."""
    ys = [y for vals in series.values() for y in vals if y is not None]
    top = (max(ys) if ys else 0.0) or 1.0  # all zero: the axis still spans 0..1 (0%..100%)
    top *= 1.1
    x0, x1 = (xs[0], xs[-1]) if len(xs) > 1 else (0.0, 1.0)
    span = (x1 - x0) or 1.0

    def px(x: float) -> float:
        return PAD_L + (x - x0) / span * (W - PAD_L - PAD_R)

    def py(y: float) -> float:
        return H - PAD_B - y / top * (H - PAD_T - PAD_B)

    out = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
           f'role="img" aria-label="{escape(title)}">',
           f'<text x="{PAD_L}" y="16" font-size="13" font-weight="bold">{escape(title)}</text>',
           f'<line x1="{PAD_L}" y1="{H - PAD_B}" x2="{W - PAD_R}" y2="{H - PAD_B}" stroke="#999"/>',
           f'<line x1="{PAD_L}" y1="{PAD_T}" x2="{PAD_L}" y2="{H - PAD_B}" stroke="#999"/>']  # fmt: skip
    for frac in (0.0, 0.5, 1.0):
        y = top / 1.1 * frac
        out.append(f'<text x="{PAD_L - 4}" y="{py(y) + 4:.1f}" font-size="10" text-anchor="end">{escape(fmt(y))}</text>')
        out.append(f'<line x1="{PAD_L}" y1="{py(y):.1f}" x2="{W - PAD_R}" y2="{py(y):.1f}" stroke="#eee"/>')
    for x, anchor in ((x0, "start"), (x1, "end")):
        out.append(f'<text x="{px(x):.1f}" y="{H - 10}" font-size="10" text-anchor="{anchor}">{escape(x_label(x))}</text>')
    for i, (name, vals) in enumerate(sorted(series.items())):
        colour = COLOURS[i % len(COLOURS)]
        run: list[str] = []
        for x, maybe in zip(xs, vals, strict=True):
            if maybe is None:
                if len(run) > 1:
                    out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{" ".join(run)}"/>')
                run = []
                continue
            y = maybe
            run.append(f"{px(x):.1f},{py(y):.1f}")
            out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{colour}"/>')
        if len(run) > 1:
            out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{" ".join(run)}"/>')
        out.append(f'<text x="{W - PAD_R}" y="{PAD_T + 12 * i}" font-size="10" text-anchor="end" fill="{colour}">'
                   f"{escape(name)}</text>")  # fmt: skip
    out.append("</svg>")
    return "".join(out)
