"""Analytic ray casting against simple solids (numpy, vectorised over rays).

Primitives live in the world frame (z up) and carry a semantic ``class_id``:

* ``Plane``    horizontal plane z = height, infinite or a (yawed) rectangle
* ``Box``      box rotated by ``yaw`` about z (walls, table slabs and legs, boxes)
* ``Cylinder`` vertical capped cylinder between z0 and z1
* ``Sphere``

``cast_rays(origins, directions, primitives)`` returns the nearest hit of every ray.  Rays are
processed in bundles of consecutive rays (``bundle`` of them): each bundle gets a bounding cone,
each primitive a bounding sphere, and a primitive is only intersected with the rays of the bundles
whose cone reaches its sphere and whose current nearest hit lies beyond it.  Results are exact
whatever the ray order; coherent orders (see ``tile_order``) make the culling effective, and an
incoherent ray set is first regrouped by direction (``direction_order``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np

EPS = 1e-4          # hits closer than this (m) are ignored (self-intersection guard)
_TINY = 1e-12       # direction components below this are treated as parallel


def _safe(v: np.ndarray) -> np.ndarray:
    """v with near-zero entries replaced by _TINY (keeps divisions finite, signs irrelevant there)."""
    return np.where(np.abs(v) < _TINY, np.float32(_TINY), v)


def _split(o: np.ndarray, d: np.ndarray, center: Sequence[float]):
    """Origins relative to `center` and direction components; o (3,) or (K, 3), d (K, 3)."""
    oz = o[..., 2] - np.float32(center[2])
    return (o[..., 0] - np.float32(center[0]), o[..., 1] - np.float32(center[1]), oz,
            d[:, 0], d[:, 1], d[:, 2])


def _rotate_in(x, y, yaw: float):
    """World xy offsets -> primitive-local xy (rotation by -yaw)."""
    c, s = np.float32(math.cos(yaw)), np.float32(math.sin(yaw))
    return c * x + s * y, c * y - s * x


@dataclass(frozen=True)
class Plane:
    """Horizontal plane z = height; infinite when half_extent is None, else the rectangle of half sizes
    half_extent (hx, hy) centred at center_xy and rotated by yaw about z."""

    height: float = 0.0
    class_id: int = 0
    center_xy: tuple[float, float] = (0.0, 0.0)
    half_extent: tuple[float, float] | None = None
    yaw: float = 0.0

    def bounding_sphere(self) -> tuple[np.ndarray, float]:
        c = np.array([self.center_xy[0], self.center_xy[1], self.height])
        return c, (math.inf if self.half_extent is None else math.hypot(*self.half_extent))

    def intersect(self, o: np.ndarray, d: np.ndarray) -> np.ndarray:
        """Distances (K,) float32 along unit rays d (K, 3) from o ((3,) or (K, 3)); inf for a miss."""
        oz = o[..., 2] - np.float32(self.height)
        t = -oz / _safe(d[:, 2])
        ok = t > EPS
        if self.half_extent is not None:
            x = o[..., 0] + t * d[:, 0] - np.float32(self.center_xy[0])
            y = o[..., 1] + t * d[:, 1] - np.float32(self.center_xy[1])
            lx, ly = _rotate_in(x, y, self.yaw)
            ok &= (np.abs(lx) <= self.half_extent[0]) & (np.abs(ly) <= self.half_extent[1])
        return np.where(ok, t, np.float32(np.inf)).astype(np.float32, copy=False)

    def normals(self, p: np.ndarray) -> np.ndarray:
        """Unit normals (K, 3) at surface points p (K, 3)."""
        n = np.zeros_like(p)
        n[:, 2] = 1.0
        return n


@dataclass(frozen=True)
class Box:
    """Box with centre `center` (x, y, z), half sizes `half` (hx, hy, hz), rotated by `yaw` about z."""

    center: tuple[float, float, float]
    half: tuple[float, float, float]
    yaw: float = 0.0
    class_id: int = 3

    def bounding_sphere(self) -> tuple[np.ndarray, float]:
        return np.asarray(self.center, dtype=np.float64), float(np.linalg.norm(self.half))

    def intersect(self, o: np.ndarray, d: np.ndarray) -> np.ndarray:
        """Distances (K,) float32 along unit rays d (K, 3) from o ((3,) or (K, 3)); inf for a miss."""
        ox, oy, oz, dx, dy, dz = _split(o, d, self.center)
        ox, oy = _rotate_in(ox, oy, self.yaw)
        dx, dy = _rotate_in(dx, dy, self.yaw)
        tmin = tmax = None
        for lo, ld, h in ((ox, dx, self.half[0]), (oy, dy, self.half[1]), (oz, dz, self.half[2])):
            inv = np.float32(1.0) / _safe(ld)
            t1 = (np.float32(-h) - lo) * inv
            t2 = (np.float32(h) - lo) * inv
            near, far = np.minimum(t1, t2), np.maximum(t1, t2)
            tmin = near if tmin is None else np.maximum(tmin, near, out=tmin)
            tmax = far if tmax is None else np.minimum(tmax, far, out=tmax)
        t = np.where(tmin > EPS, tmin, tmax)
        return np.where((tmax >= tmin) & (t > EPS), t, np.float32(np.inf)).astype(np.float32, copy=False)

    def normals(self, p: np.ndarray) -> np.ndarray:
        """Unit outward normals (K, 3) at surface points p (K, 3): the face whose slab p is closest to."""
        x, y = _rotate_in(p[:, 0] - self.center[0], p[:, 1] - self.center[1], self.yaw)
        z = p[:, 2] - self.center[2]
        rel = np.stack([np.abs(x) / self.half[0], np.abs(y) / self.half[1], np.abs(z) / self.half[2]], 1)
        axis = rel.argmax(1)
        sign = np.sign(np.stack([x, y, z], 1)[np.arange(len(p)), axis])
        local = np.zeros_like(p)
        local[np.arange(len(p)), axis] = sign
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        n = local.copy()
        n[:, 0] = c * local[:, 0] - s * local[:, 1]
        n[:, 1] = s * local[:, 0] + c * local[:, 1]
        return n


@dataclass(frozen=True)
class Cylinder:
    """Vertical cylinder of `radius` around the axis through (x, y), from z0 to z1 (capped)."""

    x: float
    y: float
    radius: float
    z0: float
    z1: float
    class_id: int = 4

    def bounding_sphere(self) -> tuple[np.ndarray, float]:
        c = np.array([self.x, self.y, 0.5 * (self.z0 + self.z1)])
        return c, math.hypot(self.radius, 0.5 * (self.z1 - self.z0))

    def intersect(self, o: np.ndarray, d: np.ndarray) -> np.ndarray:
        """Distances (K,) float32 along unit rays d (K, 3) from o ((3,) or (K, 3)); inf for a miss."""
        ox, oy, oz, dx, dy, dz = _split(o, d, (self.x, self.y, 0.0))
        r2 = np.float32(self.radius ** 2)
        inf = np.float32(np.inf)
        a = dx * dx + dy * dy
        b = ox * dx + oy * dy
        c = ox * ox + oy * oy - r2
        disc = b * b - a * c
        sq = np.sqrt(np.maximum(disc, 0))
        a_safe = np.where(a > _TINY, a, np.float32(1.0))
        t1 = (-b - sq) / a_safe
        t = np.where(t1 > EPS, t1, (-b + sq) / a_safe)
        z = oz + t * dz
        side = (disc >= 0) & (a > _TINY) & (t > EPS) & (z >= self.z0) & (z <= self.z1)
        best = np.where(side, t, inf)
        inv = np.float32(1.0) / _safe(dz)
        for zc in (self.z0, self.z1):
            tc = (np.float32(zc) - oz) * inv
            px, py = ox + tc * dx, oy + tc * dy
            ok = (tc > EPS) & (px * px + py * py <= r2)
            best = np.where(ok & (tc < best), tc, best)
        return best.astype(np.float32, copy=False)

    def normals(self, p: np.ndarray) -> np.ndarray:
        """Unit outward normals (K, 3) at surface points p (K, 3) (side or cap, whichever is nearer)."""
        x, y = p[:, 0] - self.x, p[:, 1] - self.y
        zc, hz = 0.5 * (self.z0 + self.z1), 0.5 * (self.z1 - self.z0)
        rho = np.sqrt(x * x + y * y)
        cap = np.abs(p[:, 2] - zc) / max(hz, 1e-9) >= rho / self.radius
        n = np.zeros_like(p)
        safe = np.maximum(rho, 1e-9)
        n[:, 0], n[:, 1] = x / safe, y / safe
        n[cap] = 0.0
        n[cap, 2] = np.sign(p[cap, 2] - zc)
        return n


@dataclass(frozen=True)
class Sphere:
    """Sphere of `radius` around `center` (x, y, z)."""

    center: tuple[float, float, float]
    radius: float
    class_id: int = 5

    def bounding_sphere(self) -> tuple[np.ndarray, float]:
        return np.asarray(self.center, dtype=np.float64), float(self.radius)

    def intersect(self, o: np.ndarray, d: np.ndarray) -> np.ndarray:
        """Distances (K,) float32 along unit rays d (K, 3) from o ((3,) or (K, 3)); inf for a miss."""
        ox, oy, oz, dx, dy, dz = _split(o, d, self.center)
        b = ox * dx + oy * dy + oz * dz
        c = ox * ox + oy * oy + oz * oz - np.float32(self.radius ** 2)
        disc = b * b - c
        sq = np.sqrt(np.maximum(disc, 0))
        t1 = -b - sq
        t = np.where(t1 > EPS, t1, -b + sq)
        return np.where((disc >= 0) & (t > EPS), t, np.float32(np.inf)).astype(np.float32, copy=False)

    def normals(self, p: np.ndarray) -> np.ndarray:
        """Unit outward normals (K, 3) at surface points p (K, 3)."""
        return (p - np.asarray(self.center, dtype=p.dtype)) / np.float32(self.radius)


Primitive = Union[Plane, Box, Cylinder, Sphere]


@dataclass
class RayHits:
    """Nearest hit per ray (R rays).

    distance:  (R,) float32, inf for a miss (or a hit beyond max_range)
    class_id:  (R,) int32 semantic class of the hit primitive, -1 for a miss
    index:     (R,) int32 index of the hit primitive in the list, -1 for a miss
    cos_incidence: (R,) float32 |cos| of the angle between ray and surface normal (NaN for a miss),
                   only with ``with_incidence=True``
    """

    distance: np.ndarray
    class_id: np.ndarray
    index: np.ndarray
    cos_incidence: np.ndarray | None = None

    @property
    def hit(self) -> np.ndarray:
        """(R,) bool: the ray hit something within range."""
        return self.index >= 0


def tile_order(rows: int, cols: int, tile_rows: int = 4, tile_cols: int = 16) -> np.ndarray:
    """Permutation (rows*cols,) int64 of a row-major (rows, cols) grid that lists it tile by tile, so
    that consecutive rays are angular neighbours (good bundles for ``cast_rays``)."""
    r, c = np.divmod(np.arange(rows * cols), cols)
    tiles_per_row = -(-cols // tile_cols)
    tile = (r // tile_rows) * tiles_per_row + c // tile_cols
    return np.argsort(tile, kind="stable")


def direction_order(directions: np.ndarray, bundle: int = 64) -> np.ndarray:
    """Permutation (R,) int64 grouping unit directions (R, 3) by cells of an equal-area
    (z, azimuth) grid with about `bundle` rays per cell, rows traversed in serpentine order."""
    n = directions.shape[0]
    n_z = max(1, int(math.sqrt(max(n / bundle, 1.0) / 2.0)))
    n_az = 2 * n_z
    z = np.clip(((directions[:, 2] + 1.0) * (0.5 * n_z)).astype(np.int64), 0, n_z - 1)
    az = np.arctan2(directions[:, 1], directions[:, 0])
    az = np.clip(((az + np.pi) * (n_az / (2 * np.pi))).astype(np.int64), 0, n_az - 1)
    az = np.where(z % 2 == 1, n_az - 1 - az, az)
    return np.argsort(z * n_az + az, kind="stable")


def _pad(a: np.ndarray, pad: int) -> np.ndarray:
    return a if pad == 0 else np.concatenate([a, np.repeat(a[-1:], pad, 0)])


def _bundles(origins: np.ndarray, dirs: np.ndarray, bundle: int):
    """Per-bundle bounding cone: apex (nb, 3), origin spread (nb,), axis (nb, 3), half angle (nb,)."""
    nb = dirs.shape[0] // bundle
    db = dirs.reshape(nb, bundle, 3)
    axis = db.sum(1, dtype=np.float64)
    norm = np.linalg.norm(axis, axis=1)
    coherent = norm > 1e-6 * bundle
    axis /= np.where(coherent, norm, 1.0)[:, None]
    cos_t = np.einsum("nbk,nk->nb", db, axis.astype(np.float32)).min(1)
    theta = np.where(coherent, np.arccos(np.clip(cos_t, -1.0, 1.0)), np.pi) + 1e-4
    if origins.ndim == 1:
        apex = np.broadcast_to(origins.astype(np.float64), (nb, 3))
        spread = np.zeros(nb)
    else:
        ob = origins.reshape(nb, bundle, 3).astype(np.float64)
        apex = ob.mean(1)
        spread = np.linalg.norm(ob - apex[:, None], axis=2).max(1)
    return apex, spread, axis, theta


def _cull_table(primitives: Sequence[Primitive], apex, spread, axis, theta):
    """Unbounded primitive indices, bounded ones nearest first, and for those (P, nb) arrays: whether
    the bundle's cone reaches the bounding sphere, and a lower bound on the hit distance."""
    spheres = [p.bounding_sphere() for p in primitives]
    unbounded = [i for i, (_, r) in enumerate(spheres) if not math.isfinite(r)]
    bounded = [i for i, (_, r) in enumerate(spheres) if math.isfinite(r)]
    if not bounded:
        return unbounded, bounded, None, None
    centers = np.stack([spheres[i][0] for i in bounded])                        # (P, 3)
    radii = np.array([spheres[i][1] for i in bounded])                           # (P,)
    v = centers[:, None, :] - apex[None]                                         # (P, nb, 3)
    dist = np.maximum(np.linalg.norm(v, axis=2), 1e-12)
    rad = radii[:, None] + spread[None]
    cos_phi = np.einsum("pnk,nk->pn", v, axis) / dist
    alpha = np.arcsin(np.clip(rad / dist, 0.0, 1.0))
    reach = (dist <= rad) | (np.arccos(np.clip(cos_phi, -1.0, 1.0)) <= theta[None] + alpha)
    near = (dist - rad).astype(np.float32)
    order = np.argsort(near.min(1), kind="stable")
    return unbounded, [bounded[k] for k in order], reach[order], near[order]


def _incidence(o: np.ndarray, d: np.ndarray, distance: np.ndarray, index: np.ndarray,
               primitives: Sequence[Primitive]) -> np.ndarray:
    """|cos| between each ray and the normal at its hit (R,) float32, NaN for a miss."""
    cos_inc = np.full(d.shape[0], np.nan, dtype=np.float32)
    hit_rays = np.flatnonzero(index >= 0)
    by_prim = hit_rays[np.argsort(index[hit_rays], kind="stable")]
    prims, starts = np.unique(index[by_prim], return_index=True)
    for pi, j in zip(prims, np.split(by_prim, starts[1:])):
        oj = o if o.ndim == 1 else o[j]
        nrm = primitives[pi].normals((oj + d[j] * distance[j, None]).astype(np.float32))
        cos_inc[j] = np.abs((nrm * d[j]).sum(1))
    return cos_inc


def cast_rays(origins: np.ndarray, directions: np.ndarray, primitives: Sequence[Primitive],
              max_range: float = math.inf, with_incidence: bool = False, bundle: int = 64,
              sort: bool | None = None) -> RayHits:
    """Nearest intersection of R rays with `primitives`.

    origins:    (3,) one origin for all rays, or (R, 3)
    directions: (R, 3) unit vectors
    Hits at distance >= max_range count as misses.  sort: regroup the rays by direction before
    casting (None: only when consecutive rays are not already angular neighbours).  Returns ``RayHits``.
    """
    d = np.ascontiguousarray(directions, dtype=np.float32)
    o = np.ascontiguousarray(origins, dtype=np.float32)
    if d.ndim != 2 or d.shape[1] != 3 or not (o.shape == (3,) or o.shape == d.shape):
        raise ValueError(f"origins {o.shape} / directions {d.shape}: expected (3,) or (R, 3) and (R, 3)")
    n_rays = d.shape[0]
    if n_rays == 0 or not primitives:
        return RayHits(np.full(n_rays, np.inf, np.float32), np.full(n_rays, -1, np.int32),
                       np.full(n_rays, -1, np.int32),
                       np.full(n_rays, np.nan, np.float32) if with_incidence else None)
    bundle = max(1, int(bundle))
    nb = -(-n_rays // bundle)
    pad = nb * bundle - n_rays
    cones = _bundles(o if o.ndim == 1 else _pad(o, pad), _pad(d, pad), bundle)
    if sort is None:
        sort = n_rays >= 8 * bundle and float(np.median(cones[3])) > 0.35
    perm = None
    if sort:
        perm = direction_order(d, bundle)
        d = d[perm]
        o = o if o.ndim == 1 else o[perm]
        cones = _bundles(o if o.ndim == 1 else _pad(o, pad), _pad(d, pad), bundle)
    dp, op = _pad(d, pad), (o if o.ndim == 1 else _pad(o, pad))
    unbounded, bounded, reach, near = _cull_table(primitives, *cones)

    limit = np.float32(min(max_range, np.finfo(np.float32).max))
    best = np.full(nb * bundle, limit, dtype=np.float32)
    index = np.full(nb * bundle, -1, dtype=np.int32)
    bmax = np.full(nb, limit, dtype=np.float32)
    lane = np.arange(bundle)
    for k, pi in enumerate(unbounded + bounded):
        if k < len(unbounded):
            sel = np.arange(nb)
        else:
            kb = k - len(unbounded)
            sel = np.flatnonzero(reach[kb] & (near[kb] < bmax))
            if sel.size == 0:
                continue
        rays = None if sel.size == nb else (sel[:, None] * bundle + lane).ravel()
        t = primitives[pi].intersect(op if (op.ndim == 1 or rays is None) else op[rays],
                                     dp if rays is None else dp[rays])
        better = t < (best if rays is None else best[rays])
        if not better.any():
            continue
        j = np.flatnonzero(better) if rays is None else rays[better]
        best[j] = t[better]
        index[j] = pi
        bmax[sel] = best.reshape(nb, bundle)[sel].max(1)

    best, index = best[:n_rays], index[:n_rays]
    hit = index >= 0
    distance = np.where(hit, best, np.float32(np.inf)).astype(np.float32)
    class_ids = np.array([p.class_id for p in primitives], dtype=np.int32)
    class_id = np.where(hit, class_ids[np.maximum(index, 0)], -1).astype(np.int32)
    cos_inc = _incidence(o, d, distance, index, primitives) if with_incidence else None
    if perm is not None:
        inv = np.empty_like(perm)
        inv[perm] = np.arange(n_rays)
        distance, class_id, index = distance[inv], class_id[inv], index[inv]
        cos_inc = None if cos_inc is None else cos_inc[inv]
    return RayHits(distance=distance, class_id=class_id, index=index.astype(np.int32), cos_incidence=cos_inc)
