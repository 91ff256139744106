"""A small inline SVG bar chart (no script, no external file). Pure."""

from __future__ import annotations

from markupsafe import Markup, escape


def bars(title: str, labels: list[str], series: list[tuple[str, str, list[int]]], height: int = 140) -> Markup:
    """Grouped bars: `series` is (name, CSS class, one value per label). Labels and names are escaped."""
    groups = max(1, len(labels))
    per_group = max(1, len(series))
    width = 60 * groups + 40
    top = max([1, *(v for _name, _css, values in series for v in values)])
    plot = height - 30
    parts = [f'<svg class="chart" role="img" aria-label="{escape(title)}" viewBox="0 0 {width} {height}" '
             f'width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>']
    bar = 40 / per_group
    for g, label in enumerate(labels):
        x0 = 30 + g * 60
        for s, (name, css, values) in enumerate(series):
            value = values[g] if g < len(values) else 0
            h = round(plot * value / top, 1)
            x = round(x0 + s * bar, 1)
            parts.append(f'<rect class="{escape(css)}" x="{x}" y="{round(10 + plot - h, 1)}" width="{round(bar - 2, 1)}"'
                         f' height="{h}"><title>{escape(name)} {escape(label)}: {value}</title></rect>')
            if value:
                parts.append(f'<text x="{round(x + bar / 2 - 1, 1)}" y="{round(8 + plot - h, 1)}" '
                             f'text-anchor="middle">{value}</text>')
        parts.append(f'<text x="{x0 + 20}" y="{height - 6}" text-anchor="middle">{escape(label)}</text>')
    parts.append(f'<line x1="25" y1="{10 + plot}" x2="{width - 5}" y2="{10 + plot}" class="axis"/></svg>')
    return Markup("".join(parts))
