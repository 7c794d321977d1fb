"""Per-frame geometry that needs only the preprocessed cloud, computed beside the network.

Two CPU jobs of a frame read the points preprocessing kept and nothing the network computes:

    point_features  LocalShape descriptors of the M used points, for heads that read them   (M, F)
    fill            the nearest used point of every in-region row the voxel filter or the cap
                    removed (postprocess labels those rows from it)                   (R,), (R,)

At sparse operating points they cost as much as the network itself (a 58k-point sweep at 1,024
used points: ~9 ms of LocalShape and ~17 ms of kd-tree queries for the 57k removed rows, one core).
``GeometryWorker.submit`` queues them on one worker thread as soon as preprocessing ends: LocalShape,
then the fill in FILL_CHUNKS slices of rows. They run on a second core while the tokenizer and the
encoder run (pykdtree, numpy and torch kernels release the GIL). ``FrameGeometry`` hands out each
result when it is first asked for, blocking until it is ready; when the caller asks for the fill,
it takes the slices the worker has not started and queries them itself, so neither thread idles
while the other still has slices (dense sweeps, where the fill outweighs the network). An exception
in the worker is raised in the accessor. The arrays are the ones the in-line computation gives
(same functions, one kd-tree over the used points, the same queries).

    worker = GeometryWorker()
    geometry = worker.submit(cloud, pre, local_shape_k=16, local_shape_voxels=(0.1, 0.3))
    ... network ...            geometry.point_features()    # (M, 14) float32
    ... postprocess ...        geometry.fill()              # (rows (R,), nearest used point (R,))
"""
from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np

from ..models.local_shape import local_shape
from .postprocess import FillQueries, fill_from_used
from .preprocess import Preprocessed

FILL_CHUNKS = 8          # slices of the removed rows; the caller takes those the worker has not started


_OPENMP: list = []


def one_openmp_thread():
    """Context: this thread's OpenMP regions (the kd-tree's) on one thread, restored on exit."""
    if not _OPENMP:
        from threadpoolctl import ThreadpoolController
        _OPENMP.append(ThreadpoolController().select(user_api="openmp"))
    return _OPENMP[0].limit(limits=1)


class FrameGeometry:
    """The geometry of one frame: results already computed or pending on the worker (see the module
    docstring). Each accessor returns the same array on every call."""

    def __init__(self, features: Future | Callable[[], np.ndarray] | None,
                 fill: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None,
                 queries: FillQueries | None = None, slices: Sequence[Future] = ()):
        """features: pending on the worker, or computed on first use; fill: computed on first use, or
        the queries and their slices pending on the worker."""
        self._features, self._compute_fill, self._queries, self._slices = features, fill, queries, list(slices)
        self._fill: tuple[np.ndarray, np.ndarray] | None = None
        self._stolen: dict[int, np.ndarray] = {}

    def point_features(self) -> np.ndarray | None:
        """(M, F) float32 LocalShape descriptors of the used points (None: the head reads none).
        While the worker is still on them, the caller queries fill slices it has not started."""
        if isinstance(self._features, Future):
            if not self._features.done() and self._slices:
                with one_openmp_thread():
                    while not self._features.done() and self._steal_one():
                        pass
            self._features = self._features.result()
        elif callable(self._features):
            self._features = self._features()
        return self._features

    def fill(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows (R,), nearest used point of each (R,)): see postprocess.fill_from_used. Slices the
        worker has not started are queried here, from the last one back."""
        if self._fill is None and self._compute_fill is not None:
            self._fill = self._compute_fill()
        if self._fill is None:
            if self._slices and not self._slices[-1].done():
                with one_openmp_thread():
                    while self._steal_one():
                        pass
            parts = [self._stolen.get(i) for i in range(len(self._slices))]
            parts = [p if p is not None else s.result() for p, s in zip(parts, self._slices)]
            self._fill = (self._queries.rows, np.concatenate(parts) if parts else np.zeros(0, np.int64))
        return self._fill

    def _steal_one(self) -> bool:
        """Query here the last fill slice the worker has not started (inside one_openmp_thread: the
        worker holds the other core); False when there is none."""
        for i in reversed(range(len(self._slices))):
            if i in self._stolen:
                continue
            if not self._slices[i].cancel():
                return False          # the worker has started it (and every slice before it)
            self._stolen[i] = self._queries.query(i)
            return True
        return False

    def cancel(self) -> None:
        """Cancel the jobs the worker has not started (the frame is abandoned; wait() still waits for
        the one it is running)."""
        for job in [self._features, *self._slices]:
            if isinstance(job, Future):
                job.cancel()

    def wait(self) -> None:
        """Block until the worker has finished this frame's jobs (errors are left to the accessors)."""
        for job in [self._features, *self._slices]:
            if isinstance(job, Future) and not job.cancelled():
                job.exception()


class GeometryWorker:
    """One worker thread for FrameGeometry jobs, started on first use. ``worker_threads``: the OpenMP
    threads of the worker's kd-tree queries (1: the network keeps the other cores; None: the library
    default); ``fill_chunks``: the slices of the fill. scripts/bench_frame_geometry.py measures both
    knobs (its "knobs" section) and the ways against each other."""

    def __init__(self, worker_threads: int | None = 1, fill_chunks: int = FILL_CHUNKS):
        self.worker_threads, self.fill_chunks = worker_threads, int(fill_chunks)
        self._pool: ThreadPoolExecutor | None = None
        self._pid = os.getpid()

    def submit(self, cloud: np.ndarray, pre: Preprocessed, local_shape_k: int = 0,
               local_shape_voxels: Sequence[float] = (0.0,), threaded: bool = True) -> FrameGeometry:
        """Start the frame's jobs: LocalShape of pre.xyz when local_shape_k > 0, and the fill of the
        removed rows (threaded=False: both computed here, in line). cloud (N, C) is the input the
        preprocessing ran on (it must not change before the results are read)."""
        voxels = tuple(float(v) for v in local_shape_voxels)
        features = (lambda: local_shape(pre.xyz, local_shape_k, voxels)) if local_shape_k else None
        if not threaded:                  # in line: each job when the stage that reads it asks
            return FrameGeometry(features, fill=lambda: fill_from_used(cloud, pre))
        if self._pool is None or self._pid != os.getpid():    # a forked child has no worker thread: a new pool
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="foundry-geometry",
                                            initializer=self._init_thread)
            self._pid = os.getpid()
        pending = None if features is None else self._pool.submit(features)
        queries = FillQueries(cloud, pre, self.fill_chunks)
        return FrameGeometry(pending, queries=queries,
                             slices=[self._pool.submit(queries.query, i) for i in range(queries.num_slices)])

    def _init_thread(self) -> None:
        if self.worker_threads:
            from threadpoolctl import threadpool_limits
            threadpool_limits(self.worker_threads, user_api="openmp")   # this thread's OpenMP regions only

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
