"""The sequence diagram of a :class:`~harness.report.timeline.Timeline` as inline SVG.

Drawn for people (issue [scenarios], "Report"): one lane per participant with a header,
time running down, one row per item with its time in the left margin, requests as solid
arrows and replies as dashed ones, verdicts as green or red pills on their lane, faults
as orange ⚡ pills, folded MQTT traffic as a thick two-way arrow, long pauses as a break
("1.52 s later"), and expectation outcomes as lines across the diagram, labelled at
the left. Every item links to its row in the event table (``#<id>-e<index>``) and
carries its full text as a tooltip (``<title>``).

The diagram is two ``<svg>`` elements: the lane headers (which the page keeps in view
while scrolling) and the body. Both are self-contained (their own ``<style>`` and arrow
heads), so :func:`render_svg` is also usable on its own. Every text goes through
:func:`harness.report.markup.escape`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from harness.report.markup import escape
from harness.report.timeline import Item, Lane, Mark, Timeline, Tone

__all__ = ["Layout", "render_svg", "render_svg_parts"]

_MULT = "\u00d7"

#: Estimated width of one character of the 11 px label font (DejaVu Sans / system-ui).
CHAR_PX = 6.4

_LANE_COLORS: dict[str, tuple[str, str]] = {
    # lane kind: (stroke, fill)
    "client": ("#1d4ed8", "#eff6ff"),
    "network": ("#475569", "#f1f5f9"),
    "gateway": ("#0f172a", "#e2e8f0"),
    "cognito": ("#c2410c", "#fff7ed"),
    "dyson-api": ("#7e22ce", "#faf5ff"),
    "service": ("#475569", "#f8fafc"),
    "device": ("#0f766e", "#f0fdfa"),
}
_LANE_CAPTIONS = {
    "client": "client",
    "network": "proxies",
    "gateway": "AWS IoT (fake)",
    "cognito": "identity",
    "dyson-api": "cloud REST",
    "service": "HTTP service",
    "device": "Dyson device",
}
_TONES: dict[Tone, tuple[str, str]] = {
    # tone: (stroke / text, pill fill)
    "neutral": ("#1e293b", "#ffffff"),
    "ok": ("#15803d", "#dcfce7"),
    "fail": ("#b91c1c", "#fee2e2"),
    "fault": ("#c2410c", "#ffedd5"),
    "muted": ("#64748b", "#f8fafc"),
}

STYLE = """
.tl text{font-family:"DejaVu Sans","Segoe UI",system-ui,-apple-system,sans-serif;font-size:11px}
.tl .cap{font-size:9.5px;letter-spacing:.04em;fill:#64748b}
.tl .title{font-size:12.5px;font-weight:700}
.tl .time{font-size:10px;fill:#64748b;font-variant-numeric:tabular-nums}
.tl .gap{font-size:10px;fill:#64748b;font-style:italic}
.tl .life{stroke:#cbd5e1;stroke-width:1.2;stroke-dasharray:4 4}
.tl .row:hover rect.hl{fill:#f1f5f9}
.tl .mark-label{font-size:11.5px;font-weight:700}
.tl text.lbl{paint-order:stroke;stroke:#fff;stroke-width:3px;stroke-linejoin:round}
.tl a{cursor:pointer}
"""


@dataclass(frozen=True)
class Layout:
    """Where things go: lane centres, row positions, sizes in pixels."""

    lane_w: float
    left: float
    right: float
    header_h: float
    row_h: float
    gap_h: float
    mark_h: float
    lanes: tuple[Lane, ...]
    #: y of each item row and of each mark row, in body coordinates.
    item_y: tuple[float, ...]
    mark_y: tuple[float, ...]
    #: (y, seconds) of each pause break.
    gaps: tuple[tuple[float, float], ...]
    height: float

    @property
    def width(self) -> float:
        return self.left + self.lane_w * len(self.lanes) + self.right

    def x(self, lane_id: str) -> float:
        for i, lane in enumerate(self.lanes):
            if lane.id == lane_id:
                return self.left + self.lane_w * (i + 0.5)
        raise KeyError(lane_id)

    @classmethod
    def of(cls, timeline: Timeline, *, gap: float = 0.5) -> Layout:
        n = max(len(timeline.lanes), 1)
        # Fit a 1400 px window where possible; narrow lanes cut labels (tooltips have all).
        lane_w = float(max(140, min(250, 1150 // n)))
        row_h, gap_h, mark_h = 24.0, 22.0, 24.0
        marks = list(timeline.marks)  # sorted by row (timeline.build_timeline)
        item_y: list[float] = []
        mark_y: list[float] = []
        gaps: list[tuple[float, float]] = []
        y = 10.0
        previous: float | None = None
        next_mark = 0
        for row, item in enumerate([*timeline.items, None]):
            # Expectation marks go on rows of their own, above the item they precede.
            while next_mark < len(marks) and marks[next_mark].row <= row:
                mark_y.append(y)
                y += mark_h
                next_mark += 1
            if item is None:
                break
            if previous is not None and math.isfinite(item.t):
                pause = item.t - previous
                if pause >= gap:
                    gaps.append((y, pause))
                    y += gap_h
            item_y.append(y)
            y += row_h
            end = item.t_end if item.t_end is not None else item.t
            previous = end if math.isfinite(end) else previous
        return cls(
            lane_w=lane_w,
            left=82.0,
            right=24.0,
            header_h=58.0,
            row_h=row_h,
            gap_h=gap_h,
            mark_h=mark_h,
            lanes=timeline.lanes,
            item_y=tuple(item_y),
            mark_y=tuple(mark_y),
            gaps=tuple(gaps),
            height=y + 16,
        )


def fit(text: str, px: float) -> str:
    """``text`` cut with an ellipsis to about ``px`` pixels of the label font."""
    chars = max(int(px / CHAR_PX), 3)
    return text if len(text) <= chars else text[: chars - 1] + "…"


def _defs(prefix: str) -> str:
    heads = []
    for tone, (color, _) in _TONES.items():
        heads.append(
            f'<marker id="{prefix}-ah-{tone}" viewBox="0 0 10 10" refX="9" refY="5" '
            f'markerUnits="userSpaceOnUse" markerWidth="9" markerHeight="9" '
            f'orient="auto-start-reverse">'
            f'<path d="M0,0 L10,5 L0,10 z" fill="{color}"/></marker>'
        )
    return f"<defs>{''.join(heads)}</defs>"


def _header(layout: Layout, prefix: str) -> str:
    parts: list[str] = []
    for lane in layout.lanes:
        stroke, fill = _LANE_COLORS[lane.kind]
        x = layout.x(lane.id)
        w = layout.lane_w - 18
        caption = _LANE_CAPTIONS[lane.kind].upper()
        if lane.conns:
            conns = " ".join(lane.conns)
            caption = f"{caption} · {conns}"
        title = "\n".join(x for x in (lane.title, " ".join(lane.conns)) if x)
        parts.append(
            f'<g class="lane lane-{escape(lane.kind)}"><title>{escape(title)}</title>'
            f'<rect x="{x - w / 2:.1f}" y="6" width="{w:.1f}" height="44" rx="8" '
            f'fill="{fill}" stroke="{stroke}" stroke-width="1.5"/>'
            f'<text class="cap" x="{x:.1f}" y="22" text-anchor="middle">'
            f"{escape(fit(caption, w - 12))}</text>"
            f'<text class="title" x="{x:.1f}" y="40" text-anchor="middle" fill="{stroke}">'
            f"{escape(fit(lane.title, (w - 12) * 0.75))}</text></g>"
        )
    return (
        f'<svg class="tl tl-head" id="{prefix}-head" xmlns="http://www.w3.org/2000/svg" '
        f'width="{layout.width:.0f}" height="{layout.header_h:.0f}" '
        f'viewBox="0 0 {layout.width:.0f} {layout.header_h:.0f}" role="img" '
        f'aria-label="lanes"><style>{STYLE}</style>'
        f'<rect width="100%" height="100%" fill="#ffffff"/>'
        f'<text class="cap" x="{layout.left - 10:.0f}" y="40" text-anchor="end">TIME (s)</text>'
        f"{''.join(parts)}</svg>"
    )


def _label_for(item: Item, timeline: Timeline) -> str:
    label = item.label
    if item.count > 1 and item.shape in ("arrow", "reply", "marker", "note"):
        label = f"{label} {_MULT}{item.count}"
    if item.conn is not None and item.shape in ("arrow", "reply", "marker", "note"):
        client = item.src if item.src.startswith("client:") else item.dst
        if client.startswith("client:"):
            lane = timeline.lane(client)
            # Only the gateway connections of a lane are told apart (c1, c2, ...).
            if len(lane.conns) > 1 and item.conn in lane.conns:
                label = f"{item.conn} · {label}"
    return label


def _item(item: Item, y: float, layout: Layout, timeline: Timeline, prefix: str) -> str:
    color, fill = _TONES[item.tone]
    label = _label_for(item, timeline)
    x1, x2 = layout.x(item.src), layout.x(item.dst)
    mid = (x1 + x2) / 2
    body: str
    if item.shape in ("arrow", "reply") and x1 != x2:
        dash = ' stroke-dasharray="6 4"' if item.shape == "reply" else ""
        end = x2 - 4 if x2 > x1 else x2 + 4
        weight = "1.6" if item.tone in ("fail", "fault") else "1.3"
        # The row is the item's own: a label may run half a lane past either end.
        text = fit(label, abs(x2 - x1) + layout.lane_w - 24)
        bold = ' font-weight="700"' if item.tone == "fail" else ""
        body = (
            f'<line x1="{x1:.1f}" y1="{y + 17:.1f}" x2="{end:.1f}" y2="{y + 17:.1f}" '
            f'stroke="{color}" stroke-width="{weight}"{dash} '
            f'marker-end="url(#{prefix}-ah-{item.tone})"/>'
            f'<text class="lbl" x="{mid:.1f}" y="{y + 12:.1f}" text-anchor="middle" '
            f'fill="{color}"{bold}>'
            f"{escape(text)}</text>"
        )
    elif item.shape == "traffic" and x1 != x2:
        lo, hi = min(x1, x2), max(x1, x2)
        text = fit(f"\u21c4 {label}", hi - lo + layout.lane_w - 24)
        body = (
            f'<line x1="{lo + 4:.1f}" y1="{y + 17:.1f}" x2="{hi - 4:.1f}" y2="{y + 17:.1f}" '
            f'stroke="#60a5fa" stroke-width="3.5" marker-start="url(#{prefix}-ah-neutral)" '
            f'marker-end="url(#{prefix}-ah-neutral)"/>'
            f'<text class="lbl" x="{mid:.1f}" y="{y + 12:.1f}" text-anchor="middle" '
            f'fill="#1e3a8a">'
            f"{escape(text)}</text>"
        )
    elif item.shape == "repeat" and x1 != x2:
        lo, hi = min(x1, x2), max(x1, x2)
        text = fit(label, hi - lo + layout.lane_w - 24)
        body = (
            f'<rect x="{lo - layout.lane_w / 2 + 8:.1f}" y="{y + 3:.1f}" '
            f'width="{hi - lo + layout.lane_w - 16:.1f}" height="18" rx="9" fill="{fill}" '
            f'stroke="{color}" stroke-dasharray="3 3"/>'
            f'<text x="{mid:.1f}" y="{y + 16:.1f}" text-anchor="middle" fill="{color}" '
            f'font-weight="700">{escape(text)}</text>'
        )
    else:
        # Markers and notes: a pill centred on the lane, so the lifeline never crosses text.
        # Alone on its row, a pill may spread over the neighbouring lanes' lifelines.
        width = 2 * layout.lane_w - 24
        text = fit(label, width - 14)
        pill = min(len(text) * CHAR_PX + 16, width)
        low, high = layout.left + 2, layout.left + layout.lane_w * len(layout.lanes) - 2
        x1 = min(max(x1, low + pill / 2), high - pill / 2)
        italic = ' font-style="italic"' if item.shape == "note" else ""
        stroke_w = "1.4" if item.tone in ("fail", "fault", "ok") else "1"
        body = (
            f'<rect x="{x1 - pill / 2:.1f}" y="{y + 3:.1f}" width="{pill:.1f}" height="18" '
            f'rx="9" fill="{fill}" stroke="{color}" stroke-width="{stroke_w}"/>'
            f'<text x="{x1:.1f}" y="{y + 16:.1f}" text-anchor="middle" fill="{color}"{italic}>'
            f"{escape(text)}</text>"
        )
    time = f"{item.t:.3f}" if math.isfinite(item.t) else "?"
    tone = escape(item.tone)
    return (
        f'<a href="#{prefix}-e{item.first}"><g class="row it tone-{tone} shape-{item.shape}">'
        f"<title>{escape(item.detail or label)}</title>"
        f'<rect class="hl" x="0" y="{y:.1f}" width="{layout.width:.0f}" '
        f'height="{layout.row_h:.0f}" fill="transparent"/>'
        f'<text class="time" x="{layout.left - 10:.0f}" y="{y + 16:.1f}" text-anchor="end">'
        f"{time}</text>{body}</g></a>"
    )


def _mark(mark: Mark, y: float, layout: Layout) -> str:
    """A line across every lane, labelled at its left end so it is seen without scrolling."""
    if mark.ok is None:
        color, sign, word = "#b45309", "…", "undecided"
    elif mark.ok:
        color, sign, word = "#15803d", "✓", "passed"
    else:
        color, sign, word = "#b91c1c", "✗", "failed"
    right = layout.left + layout.lane_w * len(layout.lanes)
    text = fit(f"{sign} expectation {word}: {mark.name}", max(right - layout.left - 16, 120))
    label_w = len(text) * CHAR_PX * 1.05 + 14
    return (
        f'<g class="mark mark-{word}"><title>{escape(f"expectation {word}: {mark.name}")}'
        f"</title>"
        f'<line x1="{layout.left - 4:.0f}" y1="{y + 12:.1f}" x2="{right:.0f}" '
        f'y2="{y + 12:.1f}" stroke="{color}" stroke-width="2" stroke-dasharray="8 4"/>'
        f'<text class="time" x="{layout.left - 10:.0f}" y="{y + 16:.1f}" text-anchor="end" '
        f'fill="{color}">{mark.t:.3f}</text>'
        f'<rect x="{layout.left + 6:.0f}" y="{y + 3:.1f}" width="{label_w:.0f}" height="18" '
        f'rx="4" fill="#ffffff" stroke="{color}"/>'
        f'<text class="mark-label" x="{layout.left + 13:.0f}" y="{y + 16:.1f}" fill="{color}">'
        f"{escape(text)}</text></g>"
    )


def _body(timeline: Timeline, layout: Layout, prefix: str) -> str:
    parts: list[str] = [_defs(prefix)]
    for lane in layout.lanes:
        x = layout.x(lane.id)
        parts.append(
            f'<line class="life" x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{layout.height:.0f}"/>'
        )
    for y, pause in layout.gaps:
        parts.append(
            f'<g class="pause"><rect x="0" y="{y + 4:.1f}" width="{layout.width:.0f}" '
            f'height="{layout.gap_h - 8:.0f}" fill="#f8fafc"/>'
            f'<text class="gap" x="{layout.left - 10:.0f}" y="{y + 15:.1f}" text-anchor="end">'
            f"⋯ {pause:.2f} s later</text></g>"
        )
    for item, y in zip(timeline.items, layout.item_y, strict=True):
        parts.append(_item(item, y, layout, timeline, prefix))
    for mark, y in zip(timeline.marks, layout.mark_y, strict=True):
        parts.append(_mark(mark, y, layout))
    if not timeline.items:
        parts.append(f'<text class="gap" x="{layout.left:.0f}" y="30">no events to draw</text>')
    return (
        f'<svg class="tl tl-body" id="{prefix}-body" xmlns="http://www.w3.org/2000/svg" '
        f'width="{layout.width:.0f}" height="{layout.height:.0f}" '
        f'viewBox="0 0 {layout.width:.0f} {layout.height:.0f}" role="img" '
        f'aria-label="sequence diagram"><style>{STYLE}</style>{"".join(parts)}</svg>'
    )


def render_svg_parts(
    timeline: Timeline, *, prefix: str = "tl", gap: float = 0.5
) -> tuple[str, str]:
    """The lane header ``<svg>`` and the body ``<svg>`` of ``timeline``.

    ``prefix`` makes element ids unique on a page with several diagrams (and names the
    event-table anchors the items link to); ``gap`` is the pause in seconds that gets a
    "later" break.
    """
    layout = Layout.of(timeline, gap=gap)
    return _header(layout, prefix), _body(timeline, layout, prefix)


def render_svg(timeline: Timeline, *, prefix: str = "tl", gap: float = 0.5) -> str:
    """Header and body as one standalone ``<svg>`` document (for files and tests)."""
    layout = Layout.of(timeline, gap=gap)
    head, body = _header(layout, prefix), _body(timeline, layout, prefix)
    total = layout.header_h + layout.height
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{layout.width:.0f}" '
        f'height="{total:.0f}" viewBox="0 0 {layout.width:.0f} {total:.0f}">'
        f"{head}"
        f'<g transform="translate(0 {layout.header_h:.0f})">{body}</g></svg>'
    )
