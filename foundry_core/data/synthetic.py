"""Procedural labelled shapes with labelled parts (no downloaded data needed).

Every object class is assembled from surface primitives (box, cylinder, frustum/cone,
ellipsoid/sphere cap, torus arc).  Points are drawn uniformly over the union of the
primitive surfaces (each primitive gets a multinomial share proportional to its area,
and every sampler is area-uniform on its own surface), so density is uniform over the
whole shape.  Each instance draws its own proportions / part counts / styles, then a
random pose (rotation about the up axis z plus a small tilt), an anisotropic scale,
Gaussian jitter and optional plane occlusion, and is finally centred and scaled to the
unit sphere.

    shapes = generate_shapes(1000, num_points=1024, seed=0)
    shapes.points[i]   # (1024, 3) float32, or (1024, 6) with with_normals=True
    shapes.seg[i]      # (1024,) int64 global part ids, names in shapes.seg_classes
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..geometry import rotation_about
from .shapeset import ShapeSet

# --------------------------------------------------------------------------- classes

CLASS_PARTS: dict[str, tuple[str, ...]] = {
    "table": ("top", "legs"),
    "chair": ("seat", "back", "legs"),
    "lamp": ("base", "pole", "shade"),
    "mug": ("body", "handle"),
    "airplane": ("fuselage", "wings", "tail"),
    "rocket": ("body", "fins", "nose"),
    "mushroom": ("cap", "stem"),
    "dumbbell": ("bar", "weights"),
    "bottle": ("body", "neck", "cap"),
    "car": ("body", "cabin", "wheels"),
}

SHAPE_CLASSES: list[str] = list(CLASS_PARTS)
"""Names of every class `generate_shapes` can produce (default order = label order)."""

_MAX_OCCLUSION = 0.4  # largest fraction of a cloud an occluding plane removes
_MIN_OCCLUSION = 0.1


# --------------------------------------------------------------------------- geometry helpers

def _align_z(d: np.ndarray) -> np.ndarray:
    """Rotation taking +z onto the direction d (Rodrigues)."""
    d = np.asarray(d, dtype=np.float64)
    d = d / np.linalg.norm(d)
    c = d[2]
    if c > 1.0 - 1e-12:
        return np.eye(3)
    if c < -1.0 + 1e-12:
        return rotation_about(0, math.pi)
    v = np.array([-d[1], d[0], 0.0])  # z x d
    vx = np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
    return np.eye(3) + vx + vx @ vx / (1.0 + c)


def _unit_rows(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.maximum(n, 1e-12)


def _disk(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Area-uniform samples on the unit disk: (x, y)."""
    r = np.sqrt(rng.random(n))
    t = rng.random(n) * (2.0 * math.pi)
    return r * np.cos(t), r * np.sin(t)


# --------------------------------------------------------------------------- primitives

@dataclass
class _Prim:
    """One surface primitive in its local frame, placed by x_world = rot @ x + trans."""

    kind: str
    params: dict
    part: int
    rot: np.ndarray = field(default_factory=lambda: np.eye(3))
    trans: np.ndarray = field(default_factory=lambda: np.zeros(3))


def _ellipsoid_area(a: float, b: float, c: float) -> float:
    p = 1.6075  # Knud Thomsen's approximation (< 1.1 % error)
    return 4.0 * math.pi * (((a * b) ** p + (a * c) ** p + (b * c) ** p) / 3.0) ** (1.0 / p)


def _area(p: _Prim) -> float:
    q = p.params
    if p.kind == "box":
        hx, hy, hz = q["half"]
        return 8.0 * (hx * hy + hx * hz + hy * hz)
    if p.kind == "cylinder":
        r, hh = q["r"], q["hh"]
        return 4.0 * math.pi * r * hh + math.pi * r * r * (q["cap0"] + q["cap1"])
    if p.kind == "frustum":
        r0, r1, h = q["r0"], q["r1"], q["h"]
        lat = math.pi * (r0 + r1) * math.hypot(r0 - r1, h)
        return lat + math.pi * (q["cap0"] * r0 * r0 + q["cap1"] * r1 * r1)
    if p.kind == "ellipsoid":
        a, b, c = q["axes"]
        zc = q["zcut"]
        area = _ellipsoid_area(a, b, c) * (1.0 - zc) / 2.0  # exact for spheres
        if q["cap"]:
            area += math.pi * a * b * (1.0 - zc * zc)
        return area
    if p.kind == "torus":
        return (q["u1"] - q["u0"]) * 2.0 * math.pi * q["R"] * q["r"]
    raise ValueError(p.kind)


def _sample_box(q: dict, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h = np.asarray(q["half"], dtype=np.float64)
    face_area = np.array([h[1] * h[2], h[0] * h[2], h[0] * h[1]]).repeat(2)
    face = rng.choice(6, size=n, p=face_area / face_area.sum())
    axis, sign = face // 2, np.where(face % 2 == 0, 1.0, -1.0)
    pts = rng.uniform(-1.0, 1.0, size=(n, 3)) * h
    rows = np.arange(n)
    pts[rows, axis] = sign * h[axis]
    nrm = np.zeros((n, 3))
    nrm[rows, axis] = sign
    return pts, nrm


def _sample_cylinder(q: dict, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    r, hh = q["r"], q["hh"]
    areas = np.array([4.0 * math.pi * r * hh, math.pi * r * r * q["cap0"], math.pi * r * r * q["cap1"]])
    comp = rng.choice(3, size=n, p=areas / areas.sum())
    t = rng.random(n) * (2.0 * math.pi)
    dx, dy = _disk(n, rng)
    z = rng.uniform(-hh, hh, size=n)
    lat = comp == 0
    pts = np.stack([np.where(lat, r * np.cos(t), r * dx),
                    np.where(lat, r * np.sin(t), r * dy),
                    np.where(lat, z, np.where(comp == 1, -hh, hh))], axis=1)
    nrm = np.stack([np.where(lat, np.cos(t), 0.0),
                    np.where(lat, np.sin(t), 0.0),
                    np.where(lat, 0.0, np.where(comp == 1, -1.0, 1.0))], axis=1)
    return pts, nrm


def _sample_frustum(q: dict, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Truncated cone, radius r0 at z=0 and r1 at z=h (r1=0: cone)."""
    r0, r1, h = q["r0"], q["r1"], q["h"]
    areas = np.array([math.pi * (r0 + r1) * math.hypot(r0 - r1, h),
                      math.pi * r0 * r0 * q["cap0"], math.pi * r1 * r1 * q["cap1"]])
    comp = rng.choice(3, size=n, p=areas / areas.sum())
    # lateral: density of the height fraction s is proportional to the radius r0 + (r1-r0) s
    u = rng.random(n)
    a, b = (r1 - r0) / 2.0, r0
    c = u * (r0 + r1) / 2.0
    s = np.clip(2.0 * c / np.maximum(b + np.sqrt(np.maximum(b * b + 4.0 * a * c, 0.0)), 1e-12), 0.0, 1.0)
    rho = r0 + (r1 - r0) * s
    t = rng.random(n) * (2.0 * math.pi)
    dx, dy = _disk(n, rng)
    lat = comp == 0
    cap_r = np.where(comp == 1, r0, r1)
    pts = np.stack([np.where(lat, rho * np.cos(t), cap_r * dx),
                    np.where(lat, rho * np.sin(t), cap_r * dy),
                    np.where(lat, s * h, np.where(comp == 1, 0.0, h))], axis=1)
    lat_n = _unit_rows(np.stack([h * np.cos(t), h * np.sin(t), np.full(n, r0 - r1)], axis=1))
    cap_n = np.zeros((n, 3))
    cap_n[:, 2] = np.where(comp == 1, -1.0, 1.0)
    nrm = np.where(lat[:, None], lat_n, cap_n)
    return pts, nrm


def _sample_ellipsoid(q: dict, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Ellipsoid surface with z/c >= zcut, optionally closed by the elliptical cut disk."""
    axes = np.asarray(q["axes"], dtype=np.float64)
    a, b, c = axes
    zc = q["zcut"]
    n_cap = 0
    if q["cap"]:
        cap_area = math.pi * a * b * (1.0 - zc * zc)
        shell_area = _ellipsoid_area(a, b, c) * (1.0 - zc) / 2.0
        n_cap = int(rng.binomial(n, cap_area / (cap_area + shell_area)))
    n_shell = n - n_cap
    # shell: map the unit sphere by diag(a, b, c) and correct the area element by rejection
    wmax = 1.0 / axes.min()
    got: list[np.ndarray] = []
    have = 0
    while have < n_shell:
        m = max(2 * (n_shell - have) + 16, 32)
        u = _unit_rows(rng.standard_normal((m, 3)))
        w = np.sqrt(((u / axes) ** 2).sum(axis=1))
        keep = (rng.random(m) * wmax < w) & (u[:, 2] >= zc)
        got.append(u[keep])
        have += int(keep.sum())
    u = np.concatenate(got)[:n_shell] if got else np.zeros((0, 3))
    shell = u * axes
    shell_n = _unit_rows(u / axes)
    dx, dy = _disk(n_cap, rng)
    s = math.sqrt(max(1.0 - zc * zc, 0.0))
    cap = np.stack([a * s * dx, b * s * dy, np.full(n_cap, zc * c)], axis=1)
    cap_n = np.tile([0.0, 0.0, -1.0], (n_cap, 1))
    return np.concatenate([shell, cap]), np.concatenate([shell_n, cap_n])


def _sample_torus(q: dict, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Torus arc in the xy plane: ring radius R, tube radius r, ring angle u in [u0, u1]."""
    R, r = q["R"], q["r"]
    got: list[np.ndarray] = []
    have = 0
    while have < n:
        m = max(2 * (n - have) + 16, 32)
        v = rng.random(m) * (2.0 * math.pi)
        keep = rng.random(m) * (R + r) < R + r * np.cos(v)  # area element ~ R + r cos v
        got.append(v[keep])
        have += int(keep.sum())
    v = np.concatenate(got)[:n]
    u = rng.uniform(q["u0"], q["u1"], size=n)
    nrm = np.stack([np.cos(v) * np.cos(u), np.cos(v) * np.sin(u), np.sin(v)], axis=1)
    pts = np.stack([(R + r * np.cos(v)) * np.cos(u), (R + r * np.cos(v)) * np.sin(u), r * np.sin(v)], axis=1)
    return pts, nrm


_SAMPLERS: dict[str, Callable] = {
    "box": _sample_box,
    "cylinder": _sample_cylinder,
    "frustum": _sample_frustum,
    "ellipsoid": _sample_ellipsoid,
    "torus": _sample_torus,
}


# primitive constructors (all positions in the object frame, z up) ---------------------------

def _box(part: int, center, half, rot=None) -> _Prim:
    return _Prim("box", {"half": tuple(float(h) for h in half)}, part,
                 np.eye(3) if rot is None else rot, np.asarray(center, dtype=np.float64))


def _cyl(part: int, center, r: float, hh: float, rot=None, caps=(True, True)) -> _Prim:
    return _Prim("cylinder", {"r": float(r), "hh": float(hh), "cap0": float(caps[0]), "cap1": float(caps[1])},
                 part, np.eye(3) if rot is None else rot, np.asarray(center, dtype=np.float64))


def _rod(part: int, p0, p1, r: float, caps=(True, True)) -> _Prim:
    p0, p1 = np.asarray(p0, dtype=np.float64), np.asarray(p1, dtype=np.float64)
    d = p1 - p0
    return _cyl(part, (p0 + p1) / 2.0, r, np.linalg.norm(d) / 2.0, _align_z(d), caps)


def _frustum(part: int, base, r0: float, r1: float, h: float, rot=None, caps=(True, True)) -> _Prim:
    return _Prim("frustum", {"r0": float(r0), "r1": float(r1), "h": float(h),
                             "cap0": float(caps[0]), "cap1": float(caps[1] and r1 > 0)},
                 part, np.eye(3) if rot is None else rot, np.asarray(base, dtype=np.float64))


def _ellipsoid(part: int, center, axes, zcut: float = -1.0, cap: bool = False, rot=None) -> _Prim:
    return _Prim("ellipsoid", {"axes": tuple(float(a) for a in axes), "zcut": float(zcut),
                               "cap": bool(cap and zcut > -1.0)},
                 part, np.eye(3) if rot is None else rot, np.asarray(center, dtype=np.float64))


def _torus(part: int, center, R: float, r: float, u0: float = 0.0, u1: float = 2 * math.pi, rot=None) -> _Prim:
    return _Prim("torus", {"R": float(R), "r": float(r), "u0": float(u0), "u1": float(u1)},
                 part, np.eye(3) if rot is None else rot, np.asarray(center, dtype=np.float64))


def _placed(prims: list[_Prim], rot: np.ndarray, trans) -> list[_Prim]:
    """Move primitives built in a sub-frame into the parent frame."""
    trans = np.asarray(trans, dtype=np.float64)
    for p in prims:
        p.rot = rot @ p.rot
        p.trans = rot @ p.trans + trans
    return prims


# --------------------------------------------------------------------------- class builders
# Each builder draws the instance's parameters from rng and returns its primitives
# (part = index into CLASS_PARTS[name]).  Objects stand on z=0 with z up.

def _table(rng: np.random.Generator) -> list[_Prim]:
    U = rng.uniform
    H, T = U(0.55, 0.85), U(0.03, 0.07)
    prims: list[_Prim] = []
    if rng.random() < 0.35:  # round table
        R = U(0.4, 0.7)
        prims.append(_cyl(0, (0, 0, H - T / 2), R, T / 2))
        if rng.random() < 0.5:  # pedestal + foot
            rp = U(0.035, 0.08)
            prims.append(_cyl(1, (0, 0, (H - T) / 2), rp, (H - T) / 2, caps=(False, False)))
            prims.append(_cyl(1, (0, 0, 0.015), R * U(0.35, 0.6), 0.015))
        else:
            k = int(rng.integers(3, 5))
            rl, ring, splay, ph = U(0.02, 0.045), R * U(0.55, 0.8), U(0.0, 0.12), U(0, 2 * math.pi)
            for i in range(k):
                a = ph + 2 * math.pi * i / k
                d = np.array([math.cos(a), math.sin(a), 0.0])
                prims.append(_rod(1, d * (ring + splay), d * ring + [0, 0, H - T], rl))
    else:  # rectangular table
        L, W = U(0.45, 0.8), U(0.25, 0.5)
        prims.append(_box(0, (0, 0, H - T / 2), (L, W, T / 2)))
        t, inset = U(0.02, 0.05), U(0.02, 0.12)
        xs = [L - inset - t, -(L - inset - t)]
        if L > 0.6 and rng.random() < 0.4:
            xs.append(0.0)
        round_legs = rng.random() < 0.5
        for x in xs:
            for y in (W - inset - t, -(W - inset - t)):
                if round_legs:
                    prims.append(_cyl(1, (x, y, (H - T) / 2), t, (H - T) / 2))
                else:
                    prims.append(_box(1, (x, y, (H - T) / 2), (t, t, (H - T) / 2)))
        if rng.random() < 0.3:  # stretchers between the legs
            zs = (H - T) * U(0.15, 0.4)
            for y in (W - inset - t, -(W - inset - t)):
                prims.append(_rod(1, (xs[0], y, zs), (xs[1], y, zs), t * 0.5))
    return prims


def _chair(rng: np.random.Generator) -> list[_Prim]:
    U = rng.uniform
    D, S = U(0.19, 0.28), U(0.19, 0.28)  # half depth (x), half width (y)
    hs, T = U(0.38, 0.5), U(0.03, 0.08)
    prims = [_box(0, (0, 0, hs - T / 2), (D, S, T / 2))]
    hb, tb, tilt = U(0.3, 0.6), U(0.02, 0.05), U(0.0, 0.3)
    back: list[_Prim] = []
    if rng.random() < 0.6:  # solid back
        back.append(_box(1, (0, 0, hb / 2), (tb / 2, S, hb / 2)))
    else:  # slats and a top rail
        k = int(rng.integers(2, 5))
        rail = U(0.04, 0.1)
        back.append(_box(1, (0, 0, hb - rail / 2), (tb / 2, S, rail / 2)))
        for y in np.linspace(-S * 0.85, S * 0.85, k):
            back.append(_box(1, (0, y, (hb - rail) / 2), (tb / 2, U(0.015, 0.04), (hb - rail) / 2)))
    prims += _placed(back, rotation_about(1, -tilt), (-D + tb / 2, 0, hs))
    t, inset, splay = U(0.015, 0.035), U(0.0, 0.05), U(0.0, 0.06)
    round_legs = rng.random() < 0.5
    for sx in (1, -1):
        for sy in (1, -1):
            top = np.array([sx * (D - inset - t), sy * (S - inset - t), hs - T])
            foot = top * [1, 1, 0] + [sx * splay, sy * splay, 0]
            if round_legs:
                prims.append(_rod(2, foot, top, t))
            else:
                d = top - foot
                rot = _align_z(d)
                prims.append(_box(2, (foot + top) / 2, (t, t, np.linalg.norm(d) / 2), rot))
    return prims


def _lamp(rng: np.random.Generator) -> list[_Prim]:
    U = rng.uniform
    prims: list[_Prim] = []
    hbase = U(0.01, 0.03)
    if rng.random() < 0.7:
        rb = U(0.1, 0.2)
        prims.append(_cyl(0, (0, 0, hbase), rb, hbase))
    else:
        rb = U(0.08, 0.16)
        prims.append(_box(0, (0, 0, hbase), (rb, rb * U(0.7, 1.0), hbase)))
    hp, rp = U(0.45, 0.9), U(0.008, 0.02)
    top = np.array([0.0, 0.0, 2 * hbase + hp])
    prims.append(_rod(1, (0, 0, 2 * hbase), top, rp, caps=(False, True)))
    hs = U(0.12, 0.28)
    if rng.random() < 0.4:  # bent arm, shade hanging down at its end
        a, ang = U(0.15, 0.35), U(-0.3, 0.5)
        end = top + a * np.array([math.cos(ang), 0.0, math.sin(ang)])
        prims.append(_rod(1, top, end, rp))
        prims.append(_frustum(2, end, U(0.02, 0.05), U(0.1, 0.18), hs, rot=rotation_about(0, math.pi), caps=(True, False)))
    else:  # classic shade around the pole top
        r0 = U(0.12, 0.25)
        prims.append(_frustum(2, top - [0, 0, hs * U(0.3, 0.7)], r0, r0 * U(0.35, 0.8), hs, caps=(False, False)))
    return prims


def _mug(rng: np.random.Generator) -> list[_Prim]:
    U = rng.uniform
    r, h = U(0.28, 0.45), U(0.6, 1.1)
    r1 = r * U(0.92, 1.18)
    prims = [_frustum(0, (0, 0, 0), r, r1, h, caps=(True, False))]
    Rh, rt = h * U(0.17, 0.3), U(0.025, 0.055)
    arc = U(0.5, 0.6) * math.pi
    zc = h * U(0.45, 0.58)
    rz = r + (r1 - r) * zc / h
    prims.append(_torus(1, (rz * 0.95, 0, zc), Rh, rt, -arc, arc, rot=rotation_about(0, math.pi / 2)))
    return prims


def _airplane(rng: np.random.Generator) -> list[_Prim]:
    U = rng.uniform
    L, rf = U(1.6, 2.6), U(0.07, 0.14)
    hh = L * U(0.3, 0.38)
    along_x, back_x = rotation_about(1, math.pi / 2), rotation_about(1, -math.pi / 2)
    ln, lt = L * U(0.08, 0.16), L * U(0.15, 0.25)
    prims = [
        _cyl(0, (0, 0, 0), rf, hh, rot=along_x, caps=(False, False)),
        _frustum(0, (hh, 0, 0), rf, rf * U(0.0, 0.3), ln, rot=along_x),
        _frustum(0, (-hh, 0, 0), rf, rf * U(0.15, 0.45), lt, rot=back_x),
    ]
    span, chord = L * U(0.35, 0.6), L * U(0.1, 0.18)
    thick, sweep, dih = rf * U(0.15, 0.3), U(0.0, 0.6), U(0.0, 0.12)
    xw, zw = L * U(-0.12, 0.12), rf * U(-0.5, 0.3)
    engines = rng.random() < 0.5
    for sign in (1, -1):
        R = rotation_about(0, sign * dih) @ rotation_about(2, sign * sweep)
        root = np.array([xw, sign * rf * 0.5, zw])
        prims.append(_box(1, root + R @ [0, sign * span / 2, 0], (chord / 2, span / 2, thick / 2), R))
        if engines:
            c = root + R @ [0, sign * span * 0.4, 0] + [chord * 0.3, 0, -rf * 0.6]
            prims.append(_cyl(1, c, rf * U(0.35, 0.5), chord * 0.45, rot=along_x))
    xt = -hh - lt * 0.5
    ts, tc, ft = span * U(0.25, 0.4), chord * U(0.5, 0.8), thick * 0.7
    for sign in (1, -1):
        R = rotation_about(2, sign * sweep)
        root = np.array([xt, 0.0, 0.0])
        prims.append(_box(2, root + R @ [0, sign * ts / 2, 0], (tc / 2, ts / 2, ft / 2), R))
    hf, fs = span * U(0.2, 0.35), U(0.1, 0.6)
    R = rotation_about(1, -fs)
    prims.append(_box(2, np.array([xt, 0.0, rf * 0.5]) + R @ [0, 0, hf / 2], (tc / 2, ft / 2, hf / 2), R))
    return prims


def _rocket(rng: np.random.Generator) -> list[_Prim]:
    U = rng.uniform
    r, H = U(0.1, 0.2), U(0.9, 1.7)
    prims = [_cyl(0, (0, 0, H / 2), r, H / 2, caps=(True, False))]
    if rng.random() < 0.5:  # engine nozzle
        prims.append(_frustum(0, (0, 0, 0), r * 0.6, r * U(0.7, 0.95), r * U(0.3, 0.8), rot=rotation_about(0, math.pi),
                              caps=(False, True)))
    hn = r * U(1.5, 4.0)
    if rng.random() < 0.6:
        prims.append(_frustum(2, (0, 0, H), r, 0.0, hn, caps=(False, False)))
    else:  # ogive-like nose
        prims.append(_ellipsoid(2, (0, 0, H), (r, r, hn), zcut=0.0))
    k = int(rng.integers(3, 5))
    fl, fh, ft, z0, ph = r * U(0.6, 1.6), H * U(0.12, 0.3), U(0.01, 0.025), H * U(0.0, 0.08), U(0, 2 * math.pi)
    for i in range(k):
        R = rotation_about(2, ph + 2 * math.pi * i / k)
        prims.append(_box(1, R @ [r + fl / 2, 0, z0 + fh / 2], (fl / 2, ft / 2, fh / 2), R))
    return prims


def _mushroom(rng: np.random.Generator) -> list[_Prim]:
    U = rng.uniform
    r0, h = U(0.07, 0.18), U(0.3, 0.8)
    Rs = rotation_about(1, U(-0.2, 0.2))
    prims = _placed([_frustum(1, (0, 0, 0), r0, r0 * U(0.55, 1.0), h, caps=(True, False))], Rs, (0, 0, 0))
    a, c, zc = U(0.25, 0.6), U(0.12, 0.45), U(-0.35, 0.1)
    cap = _ellipsoid(0, (0, 0, -zc * c), (a, a * U(0.9, 1.1), c), zcut=zc, cap=True)
    prims += _placed([cap], Rs, Rs @ [0, 0, h])
    return prims


def _dumbbell(rng: np.random.Generator) -> list[_Prim]:
    U = rng.uniform
    Lb, rb = U(0.8, 1.4), U(0.025, 0.05)
    prims = [_rod(0, (-Lb / 2, 0, 0), (Lb / 2, 0, 0), rb)]
    along_x = rotation_about(1, math.pi / 2)
    style = rng.random()
    inner = Lb / 2 * U(0.45, 0.75)
    k, rw, tw = int(rng.integers(1, 4)), U(0.15, 0.3), U(0.04, 0.1)  # plates
    rs = U(0.13, 0.25)  # spheres
    hw, rot = U(0.1, 0.2), rotation_about(0, U(0, math.pi / 2))  # blocks
    for sign in (1, -1):
        if style < 0.5:  # stacked plates, radius decreasing outwards
            x = inner
            for j in range(k):
                prims.append(_cyl(1, (sign * (x + tw / 2), 0, 0), rw * (1 - 0.18 * j), tw / 2, rot=along_x))
                x += tw * 1.02
        elif style < 0.75:  # spherical weights
            prims.append(_ellipsoid(1, (sign * (inner + rs * 0.8), 0, 0), (rs, rs, rs)))
        else:  # block weights
            prims.append(_box(1, (sign * (inner + hw * 0.7), 0, 0), (hw * 0.7, hw, hw), rot))
    return prims


def _bottle(rng: np.random.Generator) -> list[_Prim]:
    U = rng.uniform
    r, hb = U(0.12, 0.25), U(0.45, 0.9)
    prims: list[_Prim] = []
    if rng.random() < 0.25:  # square bottle
        prims.append(_box(0, (0, 0, hb / 2), (r, r * U(0.6, 1.0), hb / 2)))
    else:
        prims.append(_cyl(0, (0, 0, hb / 2), r, hb / 2, caps=(True, False)))
    rn, hs = U(0.035, 0.07), U(0.05, 0.25)
    prims.append(_frustum(0, (0, 0, hb), r, rn, hs, caps=(False, False)))
    hn = U(0.1, 0.3)
    prims.append(_cyl(1, (0, 0, hb + hs + hn / 2), rn, hn / 2, caps=(False, False)))
    hc = U(0.03, 0.08)
    prims.append(_cyl(2, (0, 0, hb + hs + hn + hc / 2 - 0.01), rn * U(1.05, 1.35), hc / 2))
    return prims


def _car(rng: np.random.Generator) -> list[_Prim]:
    U = rng.uniform
    L, W, Hb = U(0.8, 1.2), U(0.33, 0.45), U(0.1, 0.18)
    rw, ww = U(0.12, 0.2), U(0.06, 0.12)
    zb = rw * U(0.8, 1.0) + Hb
    prims = [_box(0, (0, 0, zb), (L, W, Hb))]
    Lc, Hc = L * U(0.3, 0.6), U(0.08, 0.15)
    xc = L * U(-0.35, 0.2)
    wc = W * U(0.8, 0.95)
    slope = U(0.0, 0.5)  # raked windscreen: a second, rotated cabin slab
    prims.append(_box(1, (xc, 0, zb + Hb + Hc), (Lc, wc, Hc)))
    if slope > 0.15:
        R = rotation_about(1, slope)
        prims.append(_box(1, (xc + Lc, 0, zb + Hb + Hc * 0.8), (Hc * 0.6, wc, Hc * 0.8), R))
    wheel_rot = rotation_about(0, math.pi / 2)
    inset = L * U(0.15, 0.3)
    xs = [L - inset, -(L - inset)]
    if rng.random() < 0.15:  # truck-like extra rear axle
        xs.append(-(L - inset) + 2.2 * rw)
    for x in xs:
        for sy in (1, -1):
            prims.append(_cyl(2, (x, sy * (W - ww / 2 + 0.02), rw), rw, ww / 2, rot=wheel_rot))
    return prims


_BUILDERS: dict[str, Callable[[np.random.Generator], list[_Prim]]] = {
    "table": _table, "chair": _chair, "lamp": _lamp, "mug": _mug, "airplane": _airplane,
    "rocket": _rocket, "mushroom": _mushroom, "dumbbell": _dumbbell, "bottle": _bottle, "car": _car,
}


# --------------------------------------------------------------------------- sampling

def _sample_prims(prims: list[_Prim], n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n area-uniform surface points over the union of prims: (xyz, normals, local part)."""
    areas = np.array([_area(p) for p in prims])
    counts = rng.multinomial(n, areas / areas.sum())
    pts, nrm, part = [], [], []
    for p, k in zip(prims, counts):
        if k == 0:
            continue
        x, nn = _SAMPLERS[p.kind](p.params, int(k), rng)
        pts.append(x @ p.rot.T + p.trans)
        nrm.append(nn @ p.rot.T)
        part.append(np.full(int(k), p.part, dtype=np.int64))
    return np.concatenate(pts), np.concatenate(nrm), np.concatenate(part)


def _normalize(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=0)
    r = np.sqrt((x * x).sum(axis=1)).max()
    return x / r if r > 0 else x


def _make_shape(name: str, num_points: int, rng: np.random.Generator, noise: float, occlusion_prob: float,
                rotate: bool, max_tilt: float, scale_range: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    prims = _BUILDERS[name](rng)
    occlude = occlusion_prob > 0 and rng.random() < occlusion_prob
    frac = rng.uniform(_MIN_OCCLUSION, _MAX_OCCLUSION) if occlude else 0.0
    m = int(math.ceil(num_points / (1.0 - frac))) if occlude else num_points
    x, nrm, part = _sample_prims(prims, m, rng)
    # pose: anisotropic scale, small tilt about a random horizontal axis, yaw about z
    s = rng.uniform(scale_range[0], scale_range[1], size=3)
    ta = rng.uniform(0, 2 * math.pi)
    tilt = rotation_about(2, ta) @ rotation_about(0, rng.uniform(0.0, max_tilt)) @ rotation_about(2, -ta)
    yaw = rotation_about(2, rng.uniform(0, 2 * math.pi)) if rotate else np.eye(3)
    R = yaw @ tilt
    x = (x * s) @ R.T
    nrm = _unit_rows((nrm / s) @ R.T)  # normals follow the inverse-transpose
    x = _normalize(x)
    if noise > 0:
        x = x + rng.normal(0.0, noise, size=x.shape)
    if occlude:  # drop everything on one side of a random plane, keeping exactly num_points
        d = _unit_rows(rng.standard_normal((1, 3)))[0]
        keep = np.argpartition(-(x @ d), num_points - 1)[:num_points]
        keep.sort()
        x, nrm, part = x[keep], nrm[keep], part[keep]
    return _normalize(x), nrm, part


def generate_shapes(num_shapes: int, num_points: int = 1024, seed: int = 0, classes: list[str] | None = None,
                    noise: float = 0.005, occlusion_prob: float = 0.0, *, with_normals: bool = False,
                    rotate: bool = True, max_tilt: float = 0.1,
                    scale_range: tuple[float, float] = (0.85, 1.15)) -> ShapeSet:
    """Generate `num_shapes` labelled part-segmented clouds of exactly `num_points` points.

    classes:        subset of SHAPE_CLASSES (label i = classes[i]); default all of them.
    noise:          std of Gaussian jitter, in units of the unit-sphere radius.
    occlusion_prob: probability that a cloud loses 10-40 % of its surface behind a random plane
                    (the surviving region is still sampled with num_points points).
    with_normals:   add analytic surface normals as channels 3:6.
    rotate:         random yaw about z; max_tilt: largest tilt (radians) of the up axis;
    scale_range:    per-axis anisotropic scale factors (applied before normalisation).

    Classes are balanced (label = i % C); shape i depends only on (seed, i, class, options),
    so the same seed gives identical arrays.  seg holds global part ids (names in seg_classes,
    e.g. "table/top"); category_of_seg maps each part id to its class label.
    """
    if num_shapes < 0 or num_points < 1 or int(seed) < 0:
        raise ValueError(f"need num_shapes >= 0, num_points >= 1, seed >= 0; got {num_shapes}, {num_points}, {seed}")
    names = list(SHAPE_CLASSES if classes is None else classes)
    unknown = [c for c in names if c not in CLASS_PARTS]
    if unknown or not names:
        raise ValueError(f"unknown synthetic classes {unknown}; valid: {SHAPE_CLASSES}")
    seg_classes: list[str] = []
    category_of_seg: list[int] = []
    part_offset: list[int] = []
    for ci, c in enumerate(names):
        part_offset.append(len(seg_classes))
        seg_classes += [f"{c}/{p}" for p in CLASS_PARTS[c]]
        category_of_seg += [ci] * len(CLASS_PARTS[c])
    labels = np.arange(num_shapes, dtype=np.int64) % len(names)
    points, segs = [], []
    for i in range(num_shapes):
        rng = np.random.default_rng([int(seed), i])
        c = int(labels[i])
        x, nrm, part = _make_shape(names[c], num_points, rng, noise, occlusion_prob, rotate, max_tilt, scale_range)
        feats = np.concatenate([x, nrm], axis=1) if with_normals else x
        points.append(feats.astype(np.float32))
        segs.append(part + part_offset[c])
    return ShapeSet(
        points=points, labels=labels, classes=names, seg=segs, seg_classes=seg_classes,
        category_of_seg=np.asarray(category_of_seg, dtype=np.int64), name="synthetic",
        meta={"seed": seed, "num_points": num_points, "noise": noise, "occlusion_prob": occlusion_prob,
              "with_normals": with_normals, "rotate": rotate, "max_tilt": max_tilt,
              "scale_range": tuple(scale_range)},
    )
