"""Where the workflow page draws each step (issue 20): a layered layout, computed on the
server from the steps alone, so the picture needs no JavaScript and nothing from a CDN.

A step's *layer* is 0 when it waits for nothing, else 1 + the largest layer of the steps it
waits for, so every arrow points to a later layer (left to right). Within a layer, steps
are ordered by the mean height of their dependencies (one barycentre pass down the
layers), which keeps most arrows short without the cost of a full crossing minimisation.

A workflow can have thousands of steps (a fan-out of 1,000); a picture of them all would
be unreadable and slow. So at most ``per_layer`` steps a layer are drawn (failed and
running ones first: what an operator looks for) and the rest become one "+ N more" box,
which arrows reach in their stead; at most ``max_layers`` layers are drawn, and the
picture says how many steps it left out. The table under the picture lists every step.

An arrow that skips layers (a step waiting on one two layers back) would cross the boxes of
the layers between if drawn straight. It goes through them in a lane instead: in each layer
it crosses, at the height nearest its straight line that no box of that layer covers (a gap
between two boxes, or above or below them), bending only in the empty space between
layers; so no arrow crosses a box.

Pure functions of the steps: no database, no markup (:mod:`.graph_svg` draws the result).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

PER_LAYER = 10  # steps drawn in one layer; the rest are counted in a "+ N more" box
MAX_LAYERS = 25  # layers drawn; later ones are counted under the picture
BOX_W, BOX_H = 180, 58  # a step's box
GAP_X, GAP_Y, PAD = 56, 14, 8
# Which steps of a crowded layer are drawn first: what went wrong or is happening.
_SHOWN_FIRST = {"failed": 0, "running": 1, "cancelled": 2, "queued": 3, "waiting": 4}


@dataclass(frozen=True)
class Node:
    """One step as the picture needs it."""

    name: str
    after: tuple[str, ...]
    state: str
    job_id: int
    duration: float | None = None  # seconds it ran (so far, while running)
    error: str | None = None


@dataclass(frozen=True)
class Box:
    """A drawn box: a step (``node``), or the steps of a layer left out (``more`` of them,
    counted by state in ``states``)."""

    layer: int
    x: int
    y: int
    node: Node | None = None
    more: int = 0
    states: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Arrow:
    """An arrow from the right side of box ``source`` to the left side of box ``target``,
    with its end points."""

    source: Box
    target: Box
    x1: int
    y1: int
    x2: int
    y2: int
    # the layers it crosses between source and target: (left x, right x, lane's height)
    via: tuple[tuple[int, int, int], ...] = ()


@dataclass(frozen=True)
class Picture:
    width: int
    height: int
    boxes: list[Box]
    arrows: list[Arrow]
    steps: int  # steps in the workflow
    drawn: int  # steps drawn as their own box
    hidden_layers: int  # layers past max_layers, not drawn at all
    hidden_steps: int  # steps in those layers


def layers(nodes: Sequence[Node]) -> dict[str, int]:
    """Each step's layer: 0 without dependencies, else 1 + its dependencies' largest.

    Computed in topological order (Kahn's), so the steps may come in any order (a
    workflow enqueued from SQL may name a later step). A dependency the workflow lacks is
    ignored; steps on a cycle (which the database refuses) go after all the others."""
    names = {n.name for n in nodes}
    waits = {n.name: [d for d in dict.fromkeys(n.after) if d in names] for n in nodes}
    dependents: dict[str, list[str]] = defaultdict(list)
    for name, deps in waits.items():
        for dep in deps:
            dependents[dep].append(name)
    left = {name: len(deps) for name, deps in waits.items()}
    layer = {n.name: 0 for n in nodes}
    ready = [n.name for n in nodes if left[n.name] == 0]
    done = set(ready)
    while ready:
        name = ready.pop()
        for dependent in dependents[name]:
            layer[dependent] = max(layer[dependent], layer[name] + 1)
            left[dependent] -= 1
            if left[dependent] == 0:
                ready.append(dependent)
                done.add(dependent)
    last = max((layer[name] for name in done), default=-1)
    for n in nodes:
        if n.name not in done:
            layer[n.name] = last + 1
    return layer


def lay_out(
    nodes: Sequence[Node], *, per_layer: int = PER_LAYER, max_layers: int = MAX_LAYERS
) -> Picture:
    """Where each drawn box and arrow goes (see the module's docstring)."""
    layer_of = layers(nodes)
    by_layer: dict[int, list[Node]] = defaultdict(list)
    for n in nodes:
        by_layer[layer_of[n.name]].append(n)
    order = {n.name: i for i, n in enumerate(nodes)}
    count = len(by_layer)
    drawn_layers = min(count, max_layers)
    # slot of each step name: (layer, position), or the layer's "more" box's
    slot: dict[str, tuple[int, int]] = {}
    centre: dict[str, float] = {}  # a placed step's height, from its layer's middle, in boxes
    columns: list[tuple[list[Node], list[Node]]] = []  # drawn, left out: a layer's steps
    for k in range(drawn_layers):
        members = by_layer[k]
        kept = sorted(members, key=lambda n: (_SHOWN_FIRST.get(n.state, 5), order[n.name]))
        kept, rest = kept[:per_layer], kept[per_layer:]
        kept.sort(key=lambda n: (_barycentre(n, centre), order[n.name]))
        middle = (len(kept) + (1 if rest else 0) - 1) / 2  # layers are centred vertically
        for position, n in enumerate(kept):
            slot[n.name] = (k, position)
            centre[n.name] = position - middle
        for n in rest:
            slot[n.name] = (k, len(kept))
            centre[n.name] = len(kept) - middle
        columns.append((kept, rest))
    tallest = max((len(kept) + (1 if rest else 0) for kept, rest in columns), default=0)
    boxes: list[Box] = []
    where: dict[tuple[int, int], Box] = {}
    for k, (kept, rest) in enumerate(columns):
        height = len(kept) + (1 if rest else 0)
        top = PAD + (tallest - height) * (BOX_H + GAP_Y) // 2
        x = PAD + k * (BOX_W + GAP_X)
        for position, n in enumerate(kept):
            box = Box(k, x, top + position * (BOX_H + GAP_Y), node=n)
            boxes.append(box)
            where[k, position] = box
        if rest:
            states = dict(Counter(n.state for n in rest).most_common())
            y = top + len(kept) * (BOX_H + GAP_Y)
            box = Box(k, x, y, more=len(rest), states=states)
            boxes.append(box)
            where[k, len(kept)] = box
    height = PAD * 2 + max(0, tallest * (BOX_H + GAP_Y) - GAP_Y)
    arrows = _arrows(nodes, slot, where, _free_heights(boxes, drawn_layers, height))
    hidden = sum(len(by_layer[k]) for k in range(drawn_layers, count))
    return Picture(
        width=PAD * 2 + max(0, drawn_layers * (BOX_W + GAP_X) - GAP_X),
        height=height,
        boxes=boxes,
        arrows=arrows,
        steps=len(nodes),
        drawn=sum(len(kept) for kept, _ in columns),
        hidden_layers=count - drawn_layers,
        hidden_steps=hidden,
    )


def _barycentre(node: Node, centre: dict[str, float]) -> float:
    """The mean height of the step's placed dependencies (0, the middle, without any)."""
    heights = [centre[d] for d in node.after if d in centre]
    return sum(heights) / len(heights) if heights else 0.0


def _free_heights(boxes: list[Box], layers: int, height: int) -> list[list[tuple[int, int]]]:
    """Each layer's free heights, as (top, bottom) intervals: where no box is, with half a
    gap kept clear of every box (so a lane between two boxes runs down the gap's middle)."""
    clear = GAP_Y // 2
    free: list[list[tuple[int, int]]] = []
    for k in range(layers):
        spans, top = [], 0
        for box in sorted((b for b in boxes if b.layer == k), key=lambda b: b.y):
            if box.y - clear >= top:
                spans.append((top, box.y - clear))
            top = box.y + BOX_H + clear
        if height >= top:
            spans.append((top, height))
        free.append(spans)
    return free


def _lane(free: list[tuple[int, int]], ideal: float) -> int:
    """The free height nearest ``ideal`` (the higher one of two as near)."""
    heights = [min(max(round(ideal), top), bottom) for top, bottom in free]
    return min(heights, key=lambda y: (abs(y - ideal), y))


def _route(source: Box, target: Box, free: list[list[tuple[int, int]]]) -> Arrow:
    """The arrow from ``source`` to ``target``, through a lane in each layer between."""
    x1, y1 = source.x + BOX_W, source.y + BOX_H // 2
    x2, y2 = target.x, target.y + BOX_H // 2
    via = []
    for k in range(source.layer + 1, target.layer):
        left = PAD + k * (BOX_W + GAP_X)
        ideal = y1 + (y2 - y1) * (left + BOX_W / 2 - x1) / (x2 - x1)
        via.append((left, left + BOX_W, _lane(free[k], ideal)))
    return Arrow(source, target, x1, y1, x2, y2, tuple(via))


def _arrows(
    nodes: Sequence[Node],
    slot: dict[str, tuple[int, int]],
    where: dict[tuple[int, int], Box],
    free: list[list[tuple[int, int]]],
) -> list[Arrow]:
    """One arrow for each pair of drawn boxes a dependency joins: a step left out is
    reached through its layer's "+ N more" box, so 1,000 dependencies make a few arrows."""
    seen: set[tuple[tuple[int, int], tuple[int, int]]] = set()
    arrows: list[Arrow] = []
    for n in nodes:
        if n.name not in slot:
            continue
        to = slot[n.name]
        for dep in n.after:
            if dep not in slot or slot[dep] == to or (slot[dep], to) in seen:
                continue
            seen.add((slot[dep], to))
            arrows.append(_route(where[slot[dep]], where[to], free))
    return arrows
