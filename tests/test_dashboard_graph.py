"""The workflow page's picture (issue 20) without a database: the layered layout
(:mod:`poel_host.dashboard.graph`) and its SVG (:mod:`poel_host.dashboard.graph_svg`):
layers by dependency depth, short arrows, a crowded layer capped with a "+ N more" box,
and every text from the database escaped."""

from __future__ import annotations

import html
import re
import time
import xml.dom.minidom

from hypothesis import given
from hypothesis import strategies as st

from poel_host.dashboard.graph import BOX_W, Node, lay_out, layers
from poel_host.dashboard.graph_svg import short, svg, took


def node(name: str, *after: str, state: str = "succeeded", **kw) -> Node:
    return Node(name, tuple(after), state, job_id=len(name), **kw)


def diamond() -> list[Node]:
    return [node("a"), node("b", "a"), node("c", "a"), node("d", "b", "c", state="waiting")]


def test_a_steps_layer_is_one_more_than_its_deepest_dependency():
    assert layers(diamond()) == {"a": 0, "b": 1, "c": 1, "d": 2}
    # in any order (from SQL a step may name a later one), and a skipped layer
    shuffled = [node("d", "b", "a"), node("b", "c"), node("c", "a"), node("a")]
    assert layers(shuffled) == {"a": 0, "c": 1, "b": 2, "d": 3}
    # a missing dependency is ignored; a cycle (the database refuses one) goes last
    odd = [node("x", "nowhere"), node("p", "q"), node("q", "p")]
    assert layers(odd) == {"x": 0, "p": 1, "q": 1}


def test_a_diamond_is_drawn_left_to_right_with_one_arrow_per_dependency():
    picture = lay_out(diamond())
    boxes = {b.node.name: b for b in picture.boxes if b.node}
    assert [boxes[n].layer for n in "abcd"] == [0, 1, 1, 2]
    assert boxes["a"].x < boxes["b"].x == boxes["c"].x < boxes["d"].x
    assert boxes["b"].y < boxes["c"].y  # in the order they were added
    # a and d sit level with the middle of b and c
    assert boxes["a"].y == boxes["d"].y == (boxes["b"].y + boxes["c"].y) // 2
    pairs = {(a.source.node.name, a.target.node.name) for a in picture.arrows}
    assert pairs == {("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")}
    for arrow in picture.arrows:
        assert arrow.x1 == arrow.source.x + BOX_W and arrow.x2 == arrow.target.x
    assert (picture.steps, picture.drawn, picture.hidden_steps) == (4, 4, 0)


def test_the_barycentre_pass_keeps_arrows_from_crossing():
    # two chains, whose second layer is added in the opposite order
    steps = [node("top"), node("bottom"), node("under-bottom", "bottom"), node("under-top", "top")]
    boxes = {b.node.name: b for b in lay_out(steps).boxes}
    assert boxes["under-top"].y < boxes["under-bottom"].y


def test_a_fan_in_of_1000_draws_a_capped_layer_quickly():
    steps = [node("a")]
    steps += [node(f"b[{i}]", "a") for i in range(1000)]
    steps[500] = node("b[499]", "a", state="failed", error="boom")
    steps += [node("d", *(f"b[{i}]" for i in range(1000)), state="cancelled")]
    started = time.perf_counter()
    picture = lay_out(steps, per_layer=10)
    drawing = svg(picture, root="", title="fan")
    assert time.perf_counter() - started < 1.0
    middle = [b for b in picture.boxes if b.layer == 1]
    assert len(middle) == 11 and middle[-1].node is None
    assert middle[-1].more == 990 and middle[-1].states == {"succeeded": 990}
    assert "b[499]" in {b.node.name for b in middle[:-1]}  # the failed one is drawn
    assert len(picture.arrows) == 22  # a to 11 boxes, 11 boxes to d
    assert (picture.steps, picture.drawn) == (1002, 12)
    assert "+ 990 more" in drawing and "990 succeeded" in drawing
    assert drawing.count('class="node"') == 12 and len(drawing) < 40_000


def test_a_long_chain_draws_its_first_layers_and_counts_the_rest():
    steps = [node("s0")] + [node(f"s{i}", f"s{i - 1}") for i in range(1, 100)]
    picture = lay_out(steps, max_layers=25)
    assert picture.drawn == 25 and (picture.hidden_layers, picture.hidden_steps) == (75, 75)
    assert len(picture.arrows) == 24


def test_every_text_is_escaped_and_cut():
    hostile = "<script>alert('x')</script>\"&"
    steps = [
        node(hostile),
        node("b" * 200, hostile, state="failed", error=hostile + " then a long\n\ttrace" * 50),
    ]
    drawing = svg(lay_out(steps), root="/mount", title=hostile)
    assert "<script" not in drawing and "'x'" not in drawing
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;&quot;&amp;" in drawing
    xml.dom.minidom.parseString(drawing)  # well formed: no quote broke out of an attribute
    assert ">" + "b" * 23 + "…</text>" in drawing  # the whole name is in its tooltip
    assert 'href="/mount/jobs/' in drawing
    texts = re.findall(r"<text [^>]*>([^<]*)</text>", drawing)
    assert texts and all(len(html.unescape(t)) <= 28 for t in texts)  # each line is cut


def test_short_folds_control_characters_and_took_reads_like_a_person():
    assert short("a\x07b\n\n c", 10) == "a b c"
    assert short("x" * 30, 10) == "x" * 9 + "…"
    assert [took(s) for s in (None, 0.012, 4.23, 190, 7500)] == [
        "",
        "12ms",
        "4.2s",
        "3m 10s",
        "2h 5m",
    ]


@given(st.lists(st.lists(st.integers(0, 30), max_size=4), min_size=1, max_size=30))
def test_any_dag_lays_out_with_arrows_pointing_right(afters):
    steps = [
        node(f"s{i}", *(f"s{j}" for j in after if j < i), state="queued")
        for i, after in enumerate(afters)
    ]
    picture = lay_out(steps, per_layer=3, max_layers=6)
    assert all(a.x1 < a.x2 for a in picture.arrows)
    spots = [(b.x, b.y) for b in picture.boxes]
    assert len(spots) == len(set(spots))  # no two boxes on one spot
    assert all(b.x >= 0 and b.x + BOX_W <= picture.width for b in picture.boxes)
    assert picture.drawn + picture.hidden_steps + sum(b.more for b in picture.boxes) == len(steps)


def _rects(drawing: str) -> list[tuple[float, float, float, float]]:
    """Every box of the drawing: (left, top, right, bottom)."""
    found = re.findall(r'<rect x="(\d+)" y="(\d+)" width="(\d+)" height="(\d+)"', drawing)
    return [(float(x), float(y), float(x) + float(w), float(y) + float(h)) for x, y, w, h in found]


def _points(d: str, samples: int = 40) -> list[tuple[float, float]]:
    """Points along an edge's path (M, then C and L segments, absolute), sampled."""
    tokens = re.findall(r"[MCL]|-?\d+(?:\.\d+)?", d)
    points: list[tuple[float, float]] = []
    at = (0.0, 0.0)
    i = 0
    while i < len(tokens):
        op = tokens[i]
        take = {"M": 2, "L": 2, "C": 6}[op]
        v = [float(t) for t in tokens[i + 1 : i + 1 + take]]
        i += 1 + take
        if op == "M":
            at = (v[0], v[1])
            points.append(at)
            continue
        ends = [at, (v[0], v[1])] if op == "L" else [at, *zip(v[::2], v[1::2], strict=True)]
        for s in range(1, samples + 1):
            t = s / samples
            if op == "L":
                p = (at[0] + (ends[1][0] - at[0]) * t, at[1] + (ends[1][1] - at[1]) * t)
            else:
                (x0, y0), (x1, y1), (x2, y2), (x3, y3) = ends
                u = 1 - t
                p = (
                    u**3 * x0 + 3 * u * u * t * x1 + 3 * u * t * t * x2 + t**3 * x3,
                    u**3 * y0 + 3 * u * u * t * y1 + 3 * u * t * t * y2 + t**3 * y3,
                )
            points.append(p)
        at = ends[-1]
    return points


def crossings(drawing: str) -> list[tuple[str, tuple[float, float, float, float]]]:
    """Each (edge, box) where a point of the edge's path lies inside the box."""
    rects = _rects(drawing)
    found = []
    for edge in re.findall(r'<path class="edge" [^>]*d="([^"]*)"', drawing):
        for left, top, right, bottom in rects:
            if any(left < x < right and top < y < bottom for x, y in _points(edge)):
                found.append((edge, (left, top, right, bottom)))
    return found


def test_an_arrow_that_skips_layers_goes_around_the_boxes_between():
    # a -> c skips b's layer, where b sits level with a (the straight line's height) and
    # two more steps fill the layer above and below it
    steps = [node("a"), node("x", "a"), node("b", "a"), node("y", "a"), node("c", "b", "a")]
    picture = lay_out(steps)
    boxes = {b.node.name: b for b in picture.boxes}
    assert boxes["a"].y == boxes["b"].y == boxes["c"].y  # a straight arrow would cross b
    long = next(
        a for a in picture.arrows if a.source.node.name == "a" and a.target.node.name == "c"
    )
    assert len(long.via) == 1
    left, right, lane = long.via[0]
    assert (left, right) == (boxes["b"].x, boxes["b"].x + BOX_W)
    # through a gap of b's layer: between b and the box above or below it
    assert lane in {boxes["b"].y - 7, boxes["b"].y + 58 + 7}
    drawing = svg(picture, root="", title="skip")
    assert crossings(drawing) == []
    assert all(not a.via for a in picture.arrows if a is not long)  # the short ones as before
    xml.dom.minidom.parseString(drawing)
    assert "<script" not in drawing
    assert svg(lay_out(steps), root="", title="skip") == drawing  # deterministic


def test_a_long_arrow_over_a_crowded_layer_passes_beside_it():
    # 12 steps in the middle layer (10 drawn and a "+ 2 more" box), and one arrow over them
    steps = [node("a")] + [node(f"m{i}", "a") for i in range(12)]
    steps += [node("z", "a", *(f"m{i}" for i in range(12)))]
    drawing = svg(lay_out(steps), root="", title="crowded")
    assert crossings(drawing) == []


@given(st.lists(st.lists(st.integers(0, 30), max_size=4), min_size=1, max_size=30))
def test_no_arrow_crosses_a_box(afters):
    steps = [
        node(f"s{i}", *(f"s{j}" for j in after if j < i), state="queued")
        for i, after in enumerate(afters)
    ]
    picture = lay_out(steps, per_layer=3, max_layers=6)
    drawing = svg(picture, root="", title="any")
    assert crossings(drawing) == []
    for arrow in picture.arrows:
        assert all(0 <= lane <= picture.height for _, _, lane in arrow.via)
