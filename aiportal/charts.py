"""Small inline-SVG charts for self-contained pages (the audit report, the server's dashboard):
no script, no external file, so a page opens offline and can be archived as it is."""

from __future__ import annotations

from html import escape

WIDTH, HEIGHT, MARGIN = 520, 220, 44
COLOURS = {"accepted": "#2e7d32", "modified": "#f9a825", "rejected": "#c62828"}
PALETTE = ("#1565c0", "#6a1b9a", "#00838f", "#ef6c00", "#4e342e", "#37474f")


def _frame(title: str, body: str, height: int = HEIGHT) -> str:
    return (f'<figure><figcaption>{escape(title)}</figcaption>'
            f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{escape(title)}" '
            f'width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" '
            f'font-size="11">{body}</svg></figure>')


def stacked_bars(title: str, rows: list[tuple[str, dict[str, float]]],
                 colours: dict[str, str] | None = None) -> str:
    """One horizontal bar per row, its parts (shares 0..1) side by side, coloured by name."""
    colours = colours or COLOURS
    if not rows:
        return _frame(title, '<text x="10" y="20">no data</text>', 40)
    bar, gap, left = 18, 8, 150
    height = MARGIN + len(rows) * (bar + gap)
    parts = []
    for index, (label, shares) in enumerate(rows):
        y, x = 10 + index * (bar + gap), float(left)
        parts.append(f'<text x="4" y="{y + 13}">{escape(label[:24])}</text>')
        for name, share in shares.items():
            width = share * (WIDTH - left - 10)
            if width > 0:
                parts.append(f'<rect class="part-{escape(name)}" x="{x:.1f}" y="{y}" width="{width:.1f}" '
                             f'height="{bar}" fill="{colours.get(name, "#888")}"><title>{escape(name)} '
                             f'{share:.0%}</title></rect>')
            x += width
    legend_y = height - 12
    step = (WIDTH - left) // len(colours)
    for index, name in enumerate(colours):
        parts.append(f'<rect x="{left + index * step}" y="{legend_y - 9}" width="10" height="10" '
                     f'fill="{colours[name]}"/><text x="{left + index * step + 14}" y="{legend_y}">{name}</text>')
    return _frame(title, "".join(parts), height)


def _scale(values: list[float], low: float | None = None, high: float | None = None) -> tuple[float, float]:
    low = min(values) if low is None else low
    high = max(values) if high is None else high
    return (low, high) if high > low else (low, low + 1.0)


def lines(title: str, series: list[tuple[str, list[float]]], y_range: tuple[float, float] | None = None,
          dashed: list[tuple[str, list[float]]] | None = None, y_label: str = "") -> str:
    """Lines over their index (time order); ``dashed`` ones drawn as references (baseline, limit)."""
    everything = [value for _, values in (*series, *(dashed or [])) for value in values]
    if not everything:
        return _frame(title, '<text x="10" y="20">no data</text>', 40)
    low, high = y_range or _scale(everything)
    longest = max(len(values) for _, values in (*series, *(dashed or [])))
    plot_w, plot_h = WIDTH - MARGIN - 10, HEIGHT - MARGIN - 10

    def point(index: int, value: float) -> str:
        x = MARGIN + (index / max(longest - 1, 1)) * plot_w
        y = 10 + plot_h - (min(max(value, low), high) - low) / (high - low) * plot_h
        return f"{x:.1f},{y:.1f}"

    parts = [f'<line x1="{MARGIN}" y1="{10 + plot_h}" x2="{WIDTH - 10}" y2="{10 + plot_h}" stroke="#999"/>',
             f'<line x1="{MARGIN}" y1="10" x2="{MARGIN}" y2="{10 + plot_h}" stroke="#999"/>',
             f'<text x="2" y="16">{high:.3g}</text><text x="2" y="{10 + plot_h}">{low:.3g}</text>',
             f'<text x="{MARGIN}" y="{HEIGHT - 8}">{escape(y_label)}</text>']
    for index, (name, values) in enumerate(series):
        colour = PALETTE[index % len(PALETTE)]
        parts.append(f'<polyline class="series" fill="none" stroke="{colour}" stroke-width="2" points="'
                     + " ".join(point(i, v) for i, v in enumerate(values)) + f'"><title>{escape(name)}</title>'
                     "</polyline>")
        parts.append(f'<text x="{WIDTH - 150}" y="{22 + 13 * index}" fill="{colour}">{escape(name[:24])}</text>')
    for name, values in dashed or []:
        parts.append('<polyline fill="none" stroke="#555" stroke-dasharray="4 3" points="'
                     + " ".join(point(i, v) for i, v in enumerate(values)) + f'"><title>{escape(name)}</title>'
                     "</polyline>")
    return _frame(title, "".join(parts))


def histogram(title: str, values: list[float], bins: int = 10, value_range: tuple[float, float] | None = None,
              x_label: str = "") -> str:
    """Counts of ``values`` in equal bins."""
    if not values:
        return _frame(title, '<text x="10" y="20">no data</text>', 40)
    low, high = value_range or _scale(values)
    counts = [0] * bins
    for value in values:
        counts[min(bins - 1, max(0, int((value - low) / (high - low) * bins)))] += 1
    plot_w, plot_h, top = WIDTH - MARGIN - 10, HEIGHT - MARGIN - 10, max(counts)
    width = plot_w / bins
    parts = [f'<text x="2" y="16">{top}</text><text x="{MARGIN}" y="{HEIGHT - 8}">{low:.3g}</text>',
             f'<text x="{WIDTH - 40}" y="{HEIGHT - 8}">{high:.3g}</text>',
             f'<text x="{WIDTH / 2 - 40:.0f}" y="{HEIGHT - 8}">{escape(x_label)}</text>']
    for index, count in enumerate(counts):
        bar_h = count / top * plot_h
        parts.append(f'<rect class="bin" x="{MARGIN + index * width + 1:.1f}" y="{10 + plot_h - bar_h:.1f}" '
                     f'width="{width - 2:.1f}" height="{bar_h:.1f}" fill="#1565c0"><title>{count}</title></rect>')
    return _frame(title, "".join(parts))
