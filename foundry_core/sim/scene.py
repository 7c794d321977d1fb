"""Procedural labelled scenes (a room or a yard) built from ray-castable primitives.

    scene = generate_scene(seed=3)
    scene.primitives      # list of Plane / Box / Cylinder / Sphere, each with a class id
    SIM_CLASSES[i]        # name of class id i

World frame: z up, ground at z = 0.  A disc of radius ``SceneConfig.free_radius`` around the origin
(the sensor path) holds no object.  Objects are placed by rejection sampling of 2D footprint
circles, so they do not overlap.  The same seed (and config) gives the same scene.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .primitives import Box, Cylinder, Plane, Primitive, Sphere

SIM_CLASSES: list[str] = ["ground", "wall", "table", "box", "cylinder", "sphere", "clutter"]
GROUND, WALL, TABLE, BOX, CYLINDER, SPHERE, CLUTTER = range(len(SIM_CLASSES))

Range = tuple[float, float]


@dataclass
class SceneConfig:
    """Ranges are (low, high), drawn uniformly (counts inclusive)."""

    half_size: Range = (5.0, 12.0)          # half side of the square room / yard (m)
    indoor_prob: float = 0.6                # else a yard: no enclosing walls
    wall_height: Range = (2.4, 3.5)
    wall_thickness: float = 0.2
    yard_walls: tuple[int, int] = (0, 2)    # free-standing wall segments in a yard
    tables: tuple[int, int] = (1, 4)
    table_items: tuple[int, int] = (0, 3)   # boxes / cans / balls on each table
    boxes: tuple[int, int] = (4, 10)
    cylinders: tuple[int, int] = (3, 8)
    spheres: tuple[int, int] = (2, 5)
    clutter: tuple[int, int] = (15, 40)
    free_radius: float = 2.5                # object-free disc around the origin (m)
    gap: float = 0.15                       # minimum clearance between footprints (m)
    max_tries: int = 60


@dataclass
class Scene:
    """primitives: list of P primitives (index 0 is the ground); the rest describes the layout."""

    primitives: list[Primitive]
    indoor: bool
    half_size: float
    room_yaw: float
    seed: object = None
    classes: list[str] = field(default_factory=lambda: list(SIM_CLASSES))

    def class_ids(self) -> np.ndarray:
        """(P,) int32 class id of every primitive."""
        return np.array([p.class_id for p in self.primitives], dtype=np.int32)


class _Layout:
    """Rejection sampler of non-overlapping footprint circles inside the room, outside the free disc."""

    def __init__(self, rng: np.random.Generator, cfg: SceneConfig, half: float, yaw: float, inner: float):
        self.rng, self.cfg, self.half, self.inner = rng, cfg, half, inner
        self.c, self.s = math.cos(yaw), math.sin(yaw)
        self.circles: list[tuple[float, float, float]] = []

    def place(self, radius: float, gap: float | None = None) -> tuple[float, float] | None:
        gap = self.cfg.gap if gap is None else gap
        lim = self.inner - radius
        if lim <= 0:
            return None
        for _ in range(self.cfg.max_tries):
            u, v = self.rng.uniform(-lim, lim, size=2)
            x, y = self.c * u - self.s * v, self.s * u + self.c * v
            if math.hypot(x, y) < self.cfg.free_radius + radius:
                continue
            if all(math.hypot(x - cx, y - cy) >= radius + cr + gap for cx, cy, cr in self.circles):
                self.circles.append((x, y, radius))
                return x, y
        return None


def _count(rng: np.random.Generator, lo_hi: tuple[int, int]) -> int:
    return int(rng.integers(lo_hi[0], lo_hi[1] + 1))


def _walls(rng: np.random.Generator, cfg: SceneConfig, half: float, yaw: float) -> list[Primitive]:
    """Four walls enclosing the square room (inner faces at +-half in the room frame)."""
    h = float(rng.uniform(*cfg.wall_height))
    t = cfg.wall_thickness
    out: list[Primitive] = []
    for k in range(4):
        a = yaw + k * math.pi / 2
        d = half + t / 2
        cx, cy = d * math.cos(a), d * math.sin(a)
        out.append(Box(center=(cx, cy, h / 2), half=(t / 2, half + t, h / 2), yaw=a, class_id=WALL))
    return out


def _yard_wall(rng: np.random.Generator, cfg: SceneConfig, lay: _Layout) -> list[Primitive]:
    length = float(rng.uniform(2.0, 6.0))
    pos = lay.place(length / 2)
    if pos is None:
        return []
    h = float(rng.uniform(1.0, 2.5))
    return [Box(center=(pos[0], pos[1], h / 2), half=(length / 2, cfg.wall_thickness / 2, h / 2),
                yaw=float(rng.uniform(0, math.pi)), class_id=WALL)]


def _table(rng: np.random.Generator, cfg: SceneConfig, lay: _Layout) -> list[Primitive]:
    """Top slab + 4 legs (class table) and a few items on the top (boxes, cans, balls)."""
    hl, hw = float(rng.uniform(0.4, 1.0)), float(rng.uniform(0.3, 0.5))
    pos = lay.place(math.hypot(hl, hw))
    if pos is None:
        return []
    x, y = pos
    height, slab, leg = float(rng.uniform(0.68, 0.8)), 0.02, 0.025
    yaw = float(rng.uniform(0, math.pi))
    c, s = math.cos(yaw), math.sin(yaw)

    def world(u: float, v: float) -> tuple[float, float]:
        return x + c * u - s * v, y + s * u + c * v

    out: list[Primitive] = [Box(center=(x, y, height - slab), half=(hl, hw, slab), yaw=yaw, class_id=TABLE)]
    leg_h = (height - 2 * slab) / 2
    for su in (-1, 1):
        for sv in (-1, 1):
            out.append(Box(center=(*world(su * (hl - 0.06), sv * (hw - 0.06)), leg_h),
                           half=(leg, leg, leg_h), yaw=yaw, class_id=TABLE))
    placed: list[tuple[float, float, float]] = []
    for _ in range(_count(rng, cfg.table_items)):
        kind = rng.integers(3)
        r = float(rng.uniform(0.05, 0.18)) if kind == 0 else float(rng.uniform(0.03, 0.08))
        if r > min(hl, hw) - 0.02:
            continue
        u, v = rng.uniform(-(hl - r), hl - r), rng.uniform(-(hw - r), hw - r)
        if any(math.hypot(u - pu, v - pv) < r + pr + 0.03 for pu, pv, pr in placed):
            continue
        placed.append((u, v, r))
        wx, wy = world(u, v)
        if kind == 0:
            hz = float(rng.uniform(0.04, 0.2))
            out.append(Box(center=(wx, wy, height + hz), half=(r / math.sqrt(2),) * 2 + (hz,),
                           yaw=float(rng.uniform(0, math.pi)), class_id=BOX))
        elif kind == 1:
            out.append(Cylinder(wx, wy, r, height, height + float(rng.uniform(0.08, 0.3)), class_id=CYLINDER))
        else:
            out.append(Sphere(center=(wx, wy, height + r), radius=r, class_id=SPHERE))
    return out


def _ground_box(rng: np.random.Generator, lay: _Layout) -> list[Primitive]:
    hx, hy, hz = rng.uniform(0.15, 0.6), rng.uniform(0.15, 0.6), rng.uniform(0.15, 0.6)
    pos = lay.place(float(math.hypot(hx, hy)))
    if pos is None:
        return []
    yaw = float(rng.uniform(0, math.pi))
    out: list[Primitive] = [Box(center=(pos[0], pos[1], hz), half=(hx, hy, hz), yaw=yaw, class_id=BOX)]
    if rng.random() < 0.3:          # a smaller box stacked on top
        k = float(rng.uniform(0.4, 0.9))
        hz2 = float(rng.uniform(0.1, 0.4))
        out.append(Box(center=(pos[0], pos[1], 2 * hz + hz2), half=(k * hx, k * hy, hz2),
                       yaw=yaw + float(rng.uniform(-0.5, 0.5)), class_id=BOX))
    return out


def _cylinder(rng: np.random.Generator, lay: _Layout) -> list[Primitive]:
    kind = rng.integers(3)
    if kind == 0:      # pole
        r, h = rng.uniform(0.04, 0.12), rng.uniform(2.0, 4.0)
    elif kind == 1:    # bin
        r, h = rng.uniform(0.2, 0.4), rng.uniform(0.5, 1.0)
    else:              # barrel / pillar
        r, h = rng.uniform(0.25, 0.5), rng.uniform(0.8, 2.5)
    pos = lay.place(float(r))
    return [] if pos is None else [Cylinder(pos[0], pos[1], float(r), 0.0, float(h), class_id=CYLINDER)]


def _sphere(rng: np.random.Generator, lay: _Layout) -> list[Primitive]:
    r = float(rng.uniform(0.15, 0.6))
    pos = lay.place(r)
    return [] if pos is None else [Sphere(center=(pos[0], pos[1], r), radius=r, class_id=SPHERE)]


def _clutter(rng: np.random.Generator, lay: _Layout) -> list[Primitive]:
    if rng.random() < 0.5:
        hx, hy, hz = rng.uniform(0.03, 0.15, size=3)
        pos = lay.place(float(math.hypot(hx, hy)), gap=0.05)
        if pos is None:
            return []
        return [Box(center=(pos[0], pos[1], float(hz)), half=(float(hx), float(hy), float(hz)),
                    yaw=float(rng.uniform(0, math.pi)), class_id=CLUTTER)]
    r = float(rng.uniform(0.03, 0.12))
    pos = lay.place(r, gap=0.05)
    return [] if pos is None else [Sphere(center=(pos[0], pos[1], r), radius=r, class_id=CLUTTER)]


def generate_scene(seed: int | tuple[int, ...] = 0, cfg: SceneConfig | None = None) -> Scene:
    """A random room (walls) or yard (no enclosing walls) with tables, boxes, cylinders, spheres and
    clutter on an infinite ground plane.  Deterministic in (seed, cfg)."""
    cfg = cfg or SceneConfig()
    rng = np.random.default_rng(seed)
    half = float(rng.uniform(*cfg.half_size))
    indoor = bool(rng.random() < cfg.indoor_prob)
    room_yaw = float(rng.uniform(0, math.pi / 2))
    prims: list[Primitive] = [Plane(height=0.0, class_id=GROUND)]
    lay = _Layout(rng, cfg, half, room_yaw, inner=half - (0.1 if indoor else 0.0))
    if indoor:
        prims += _walls(rng, cfg, half, room_yaw)
    else:
        for _ in range(_count(rng, cfg.yard_walls)):
            prims += _yard_wall(rng, cfg, lay)
    for _ in range(_count(rng, cfg.tables)):
        prims += _table(rng, cfg, lay)
    for _ in range(_count(rng, cfg.boxes)):
        prims += _ground_box(rng, lay)
    for _ in range(_count(rng, cfg.cylinders)):
        prims += _cylinder(rng, lay)
    for _ in range(_count(rng, cfg.spheres)):
        prims += _sphere(rng, lay)
    for _ in range(_count(rng, cfg.clutter)):
        prims += _clutter(rng, lay)
    return Scene(primitives=prims, indoor=indoor, half_size=half, room_yaw=room_yaw, seed=seed)
