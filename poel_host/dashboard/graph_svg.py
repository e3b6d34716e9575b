"""The workflow page's picture as inline SVG markup, from :func:`.graph.lay_out`'s boxes.

Written here rather than in a template because every coordinate and label is computed:
each text that comes from the database (a step's name, its error) goes through
:func:`html.escape` with quotes, whether it lands in an element or in an attribute, and is
cut to what fits its box (whitespace and control characters folded to spaces first), the
whole text left to the box's tooltip and to the table under the picture. Colours are
presentation attributes, not a stylesheet, and the state is written out too, so the
picture does not speak by colour alone. Each step's box links to its job's page.
"""

from __future__ import annotations

from html import escape

from poel_host.dashboard.graph import BOX_H, BOX_W, Arrow, Box, Picture

# fill, stroke, text of a state's box
COLOURS = {
    "waiting": ("#f4f4f4", "#9a9a9a", "#555"),
    "queued": ("#eef2f8", "#6b7f99", "#334"),
    "running": ("#dcebff", "#0559b3", "#033b78"),
    "succeeded": ("#dff5e3", "#2f7d3a", "#1d4d24"),
    "failed": ("#fde2e2", "#b00020", "#7a0016"),
    "cancelled": ("#ececec", "#6f6f6f", "#444"),
}
MORE = ("#ffffff", "#8a8a8a", "#333")
NAME_CHARS = 24  # what fits a box's line, in the default font at 13px
LINE_CHARS = 26  # the same at 11px


def short(text: object, limit: int) -> str:
    """``text`` on one line, cut to ``limit`` characters with an ellipsis."""
    line = " ".join("".join(c if c.isprintable() else " " for c in str(text)).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def took(seconds: float | None) -> str:
    """A step's duration: 12ms, 4.2s, 3m 10s, 2h 5m."""
    if seconds is None:
        return ""
    s = max(0.0, seconds)
    if s < 1:
        return f"{int(s * 1000)}ms"
    if s < 60:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{int(s // 60)}m {int(s % 60)}s"
    return f"{int(s // 3600)}h {int(s % 3600 // 60)}m"


def _a(text: object) -> str:
    return escape(str(text), quote=True)


def svg(picture: Picture, *, root: str, title: str) -> str:
    """The picture as an ``<svg>`` element, every text escaped; ``root`` is the dashboard's
    mount point (the links to the steps' jobs start with it)."""
    w, h = max(picture.width, 1), max(picture.height, 1)
    parts = [
        f'<svg id="graph" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
        f'viewBox="0 0 {w} {h}" role="img" aria-labelledby="graph-title" '
        'font-family="system-ui, sans-serif">',
        f'<title id="graph-title">{_a(title)}</title>',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#667"/>'
        "</marker></defs>",
        '<g class="edges">',
        *(_arrow(a) for a in picture.arrows),
        "</g>",
        '<g class="nodes">',
        *(_box(b, root) for b in picture.boxes),
        "</g>",
        "</svg>",
    ]
    return "\n".join(parts)


def _ends(box: Box) -> str:
    return f'data-step="{_a(box.node.name)}"' if box.node else f'data-more="{box.layer}"'


def _arrow(arrow: Arrow) -> str:
    """A curve from the source's right side to the target's left side; an arrow that
    skips layers runs straight through its lane in each layer between and bends only in
    the empty space between layers (each curve's control points lie in that space)."""
    source = _ends(arrow.source).replace("data-", "data-from-", 1)
    target = _ends(arrow.target).replace("data-", "data-to-", 1)
    x, y = arrow.x1, arrow.y1
    d = [f"M{x},{y}"]
    for left, right, lane in arrow.via:
        middle = (x + left) // 2
        d.append(f"C{middle},{y} {middle},{lane} {left},{lane} L{right},{lane}")
        x, y = right, lane
    middle = (x + arrow.x2) // 2
    d.append(f"C{middle},{y} {middle},{arrow.y2} {arrow.x2 - 1},{arrow.y2}")
    return (
        f'<path class="edge" {source} {target} fill="none" stroke="#667" stroke-width="1.3" '
        f'marker-end="url(#arrow)" d="{" ".join(d)}"/>'
    )


def _box(box: Box, root: str) -> str:
    if box.node is None:
        fill, stroke, ink = MORE
        counts = ", ".join(f"{n} {state}" for state, n in box.states.items())
        lines = [(f"+ {box.more} more", 13, "bold"), (short(counts, LINE_CHARS), 11, "normal")]
        tip = f"{box.more} more steps in this layer ({counts}): see the table"
        return (
            f'<g class="more" data-more="{box.layer}"><title>{_a(tip)}</title>'
            f'<rect x="{box.x}" y="{box.y}" width="{BOX_W}" height="{BOX_H}" rx="6" '
            f'fill="{fill}" stroke="{stroke}" stroke-dasharray="4 3"/>'
            f"{_text(box, lines, ink)}</g>"
        )
    node = box.node
    fill, stroke, ink = COLOURS.get(node.state, MORE)
    status = f"{node.state} {took(node.duration)}".strip()
    lines = [(short(node.name, NAME_CHARS), 13, "bold"), (status, 11, "normal")]
    if node.state == "failed" and node.error:
        lines.append((short(node.error, LINE_CHARS), 11, "normal"))
    tip = f"{node.name}: {status}" + (f"\n{short(node.error, 500)}" if node.error else "")
    dashed = ' stroke-dasharray="4 3"' if node.state == "waiting" else ""
    return (
        f'<a class="node" href="{_a(root)}/jobs/{node.job_id}" data-step="{_a(node.name)}" '
        f'data-state="{_a(node.state)}"><title>{_a(tip)}</title>'
        f'<rect x="{box.x}" y="{box.y}" width="{BOX_W}" height="{BOX_H}" rx="6" '
        f'fill="{fill}" stroke="{stroke}" stroke-width="1.5"{dashed}/>'
        f"{_text(box, lines, ink)}</a>"
    )


def _text(box: Box, lines: list[tuple[str, int, str]], ink: str) -> str:
    """The box's lines, one ``<text>`` each, from its top."""
    out = []
    y = box.y + 18
    for text, size, weight in lines:
        out.append(
            f'<text x="{box.x + 9}" y="{y}" font-size="{size}" font-weight="{weight}" '
            f'fill="{ink}">{_a(text)}</text>'
        )
        y += 17
    return "".join(out)
