"""Small server-rendered SVG charts (bars and lines) with accessible titles; no JavaScript needed."""

from html import escape

PALETTE = ("#2563eb", "#d97706", "#059669", "#db2777", "#7c3aed", "#0891b2")
W, H = 560, 220
LEFT, RIGHT, TOP, BOTTOM = 44, 26, 18, 40


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    for step in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10_000, 50_000, 100_000):
        if value <= step * 4:
            return step * 4 if step * 4 >= value else value
    return value


def _frame(title: str, body: str, legend: list[tuple[str, str]]) -> str:
    items = "".join(
        f'<span class="legend-item"><svg class="swatch" viewBox="0 0 10 10" aria-hidden="true">'
        f'<rect width="10" height="10" rx="2" fill="{c}"/></svg>{escape(n)}</span>'
        for n, c in legend
    )
    legend_html = f'<div class="legend">{items}</div>' if len(legend) > 1 else ""
    return (f'<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="{escape(title)}" '
            f'preserveAspectRatio="xMidYMid meet"><title>{escape(title)}</title>{body}</svg>{legend_html}')


def _axes(ymax: float, percent: bool) -> str:
    out = []
    for i in range(5):
        v = ymax * i / 4
        y = TOP + (H - TOP - BOTTOM) * (1 - i / 4)
        label = f"{v:.0%}" if percent else (f"{v:g}" if v < 1000 else f"{v / 1000:g}k")
        out.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                   f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">{label}</text>')
    return "".join(out)


def bars(title: str, labels: list[str], series: dict[str, list[float]], *, percent: bool = False) -> str:
    """Grouped bar chart: one group per label, one bar per series."""
    if not labels:
        return f'<p class="empty">No data yet for “{escape(title)}”.</p>'
    names = list(series)
    ymax = 1.0 if percent else _nice_max(max((max(v) if v else 0) for v in series.values()))
    plot_w, plot_h = W - LEFT - RIGHT, H - TOP - BOTTOM
    group = plot_w / len(labels)
    bar_w = max(2.0, min(36.0, group * 0.75 / len(names)))
    body = [_axes(ymax, percent)]
    every = max(1, len(labels) // 10)
    for i, label in enumerate(labels):
        x0 = LEFT + group * i + (group - bar_w * len(names)) / 2
        for j, name in enumerate(names):
            v = series[name][i] or 0
            h = plot_h * (v / ymax if ymax else 0)
            shown = f"{v:.0%}" if percent else f"{v:g}"
            body.append(f'<rect x="{x0 + j * bar_w:.1f}" y="{TOP + plot_h - h:.1f}" width="{bar_w - 1:.1f}" '
                        f'height="{h:.1f}" fill="{PALETTE[j % len(PALETTE)]}" rx="2">'
                        f'<title>{escape(name)} · {escape(label)}: {shown}</title></rect>')
            if len(labels) * len(names) <= 16:  # few bars: print the value on top
                body.append(f'<text x="{x0 + j * bar_w + bar_w / 2:.1f}" y="{TOP + plot_h - h - 4:.1f}" '
                            f'text-anchor="middle" class="value">{shown}</text>')
        if i % every == 0:
            cx = LEFT + group * (i + 0.5)
            short = label if len(label) <= 14 else label[:13] + "…"
            body.append(f'<text x="{cx:.1f}" y="{H - BOTTOM + 16}" text-anchor="middle" class="tick">'
                        f'{escape(short)}</text>')
    return _frame(title, "".join(body), [(n, PALETTE[j % len(PALETTE)]) for j, n in enumerate(names)])


def lines(title: str, labels: list[str], series: dict[str, list[float]]) -> str:
    """Line chart over ordered labels (days)."""
    if not labels:
        return f'<p class="empty">No data yet for “{escape(title)}”.</p>'
    names = list(series)
    ymax = _nice_max(max((max(v) if v else 0) for v in series.values()))
    plot_w, plot_h = W - LEFT - RIGHT, H - TOP - BOTTOM
    step = plot_w / max(1, len(labels) - 1)
    body = [_axes(ymax, False)]
    for j, name in enumerate(names):
        color = PALETTE[j % len(PALETTE)]
        pts = [(LEFT + step * i, TOP + plot_h * (1 - (v or 0) / ymax)) for i, v in enumerate(series[name])]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
        body.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2.2"/>')
        for (x, y), v, label in zip(pts, series[name], labels, strict=True):
            body.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}">'
                        f'<title>{escape(name)} · {escape(label)}: {v:g}</title></circle>')
    every = max(1, len(labels) // 7)
    for i, label in enumerate(labels):
        if i % every == 0 or i == len(labels) - 1:
            body.append(f'<text x="{LEFT + step * i:.1f}" y="{H - BOTTOM + 16}" text-anchor="middle" '
                        f'class="tick">{escape(label[5:] if len(label) == 10 else label)}</text>')
    return _frame(title, "".join(body), [(n, PALETTE[j % len(PALETTE)]) for j, n in enumerate(names)])
