"""rosbag2 helpers without ROS: read PointCloud2 messages, write and pack point-cloud bags.

Pure Python on top of the `rosbags <https://gitlab.com/ternaris/rosbags>`_ package (pinned
0.11.9) and numpy; importing this module does not import rclpy, so it works on machines without
ROS. :mod:`foundry_ros.bag_replay` builds the ROS side (player, recorder, CLI) on it.

Reading. A bag is a rosbag2 directory (``metadata.yaml`` plus one or more ``.mcap`` or ``.db3``
files) or a bare ``.mcap`` / ``.db3`` file; :class:`rosbags.rosbag2.Reader` picks the storage
plugin from the directory's metadata or from the file suffix. :func:`iter_pointclouds` yields
the serialized CDR bytes as stored, which an rclpy publisher sends unchanged
(``Publisher.publish(bytes)`` publishes a serialized message). Messages come in the order of their
bag timestamps (the time the recorder *received* them, not ``header.stamp``). Note: rosbags reads a
multi-file (split) bag file after file, which is time order for bags split by ``ros2 bag record``.

Writing. :func:`write_pointcloud_bag` and :func:`pack_scans` write rosbag2 version 9 bags (the
format of Jazzy and Kilted; Humble's rosbag2 cannot read them) with the message definitions of
the ROS 2 Kilted type store, in MCAP (``ros2 bag``'s default since Iron) or sqlite3 storage. The
output is always a *directory* (``OUT/metadata.yaml`` + ``OUT/OUT.mcap``); rosbags refuses to
overwrite an existing path.

Errors. Anything that makes a bag unreadable or unwritable raises :class:`BagError` naming the
path (:class:`BagNotFoundError`, also a ``FileNotFoundError``, when it does not exist); bad point
files raise :class:`ValueError` naming the file.
"""
from __future__ import annotations

import os
import shutil
import struct
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple, Sequence

import numpy as np
from rosbags.interfaces import Nodetype
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from foundry_ros.pointcloud2 import encode_pointcloud2_fields

__all__ = [
    "POINTCLOUD2",
    "STORAGES",
    "BagError",
    "BagNotFoundError",
    "BagMessage",
    "default_typestore",
    "new_typestore",
    "register_msg_types",
    "list_topics",
    "list_pointcloud_topics",
    "iter_messages",
    "iter_pointclouds",
    "pointcloud2_message",
    "write_pointcloud_bag",
    "read_scan",
    "pack_scans",
    "set_header_stamp",
    "open_writer",
]

POINTCLOUD2 = "sensor_msgs/msg/PointCloud2"
#: Storage plugins that can be written, by the names ``ros2 bag record --storage`` uses.
STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
#: rosbag2 metadata version written (9: Jazzy and later).
BAG_VERSION = 9
#: Type store of the ROS 2 distribution the project targets (rosbags 0.11.9 also has ROS2_LYRICAL).
TYPESTORE = Stores.ROS2_KILTED
#: Where this checkout keeps the project's .msg files (found too under <prefix>/share/<pkg>/msg).
_REPO_MSG_DIR = Path(__file__).resolve().parents[1] / "msg"
_PROJECT_MSG_PACKAGE = "foundry_msgs"
SCAN_SUFFIXES = (".bin", ".pcd", ".npy", ".npz")


class BagError(RuntimeError):
    """A bag cannot be read or written (the message names the path and the reason)."""


class BagNotFoundError(BagError, FileNotFoundError):
    """The bag path does not exist."""


class BagMessage(NamedTuple):
    """One stored message: topic, bag timestamp (receive time, ns), serialized CDR bytes, type."""

    topic: str
    stamp_ns: int
    rawdata: bytes
    msgtype: str

    def deserialize(self, typestore: Any = None) -> Any:
        """The message as a rosbags object (numpy arrays for primitive sequences)."""
        return (typestore or default_typestore()).deserialize_cdr(self.rawdata, self.msgtype)


# ------------------------------------------------------------------------------------------------
# type store


def new_typestore() -> Any:
    """A new ROS 2 Kilted type store (to register further types on, see :func:`register_msg_types`)."""
    return get_typestore(TYPESTORE)


@lru_cache(maxsize=1)
def default_typestore() -> Any:
    """The shared ROS 2 Kilted type store (register extra types on a :func:`new_typestore`)."""
    return new_typestore()


def _split_msgtype(msgtype: str) -> tuple[str, str]:
    parts = msgtype.split("/")
    if len(parts) == 2:
        parts = [parts[0], "msg", parts[1]]
    if len(parts) != 3 or parts[1] != "msg" or not all(parts):
        raise ValueError(f"message type {msgtype!r} is not of the form 'package/msg/Name'")
    return parts[0], parts[2]


def _msg_search_dirs(package: str, extra: Sequence[str | os.PathLike]) -> list[Path]:
    dirs = [Path(d) for d in extra]
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    prefixes.append(sys.prefix)
    dirs += [Path(p) / "share" / package / "msg" for p in prefixes]
    if package == _PROJECT_MSG_PACKAGE:
        dirs.append(_REPO_MSG_DIR)
    return dirs


def _referenced_types(fields: Iterable[tuple[str, Any]]) -> Iterator[str]:
    for _name, (nodetype, details) in fields:
        while nodetype in (Nodetype.ARRAY, Nodetype.SEQUENCE):
            nodetype, details = details[0]
        if nodetype == Nodetype.NAME:
            yield details


def register_msg_types(typestore: Any, msgtypes: Iterable[str],
                       msg_dirs: Sequence[str | os.PathLike] = ()) -> list[str]:
    """Make ``msgtypes`` (``pkg/msg/Name``) and the types they use known to ``typestore``.

    Types the store already has (all of ROS 2 Kilted's standard messages) are left alone. Others
    are read from ``<Name>.msg`` files in ``msg_dirs``, then ``<prefix>/share/<pkg>/msg`` for every
    prefix of ``AMENT_PREFIX_PATH`` and of this Python environment (where the project's build
    installs ``foundry_msgs``), and for ``foundry_msgs`` this checkout's ``msg/`` folder. Returns
    the names that were registered; raises :class:`ValueError` if a definition cannot be found.
    """
    added: list[str] = []
    visiting: set[str] = set()

    def load(name: str) -> None:
        if name in typestore.fielddefs:
            return
        if name in visiting:
            raise ValueError(f"circular message definitions around {name!r}")
        visiting.add(name)
        package, short = _split_msgtype(name)
        candidates = [d / f"{short}.msg" for d in _msg_search_dirs(package, msg_dirs)]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise ValueError(f"no message definition for {name!r}; looked for "
                             + ", ".join(str(p) for p in candidates))
        types = get_types_from_msg(path.read_text(encoding="utf-8"), name)
        for dep in _referenced_types(types[name][1]):
            load(dep)  # dependencies first: rosbags builds (de)serialisers from the whole tree
        typestore.register(types)
        added.append(name)

    for msgtype in msgtypes:
        load(_normalise_msgtype(msgtype))
    return added


def _normalise_msgtype(msgtype: str) -> str:
    package, short = _split_msgtype(msgtype)
    return f"{package}/msg/{short}"


# ------------------------------------------------------------------------------------------------
# reading


class _OpenBag:
    """Context manager around rosbags' Reader turning its errors into BagError with the path."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.reader: Reader | None = None

    def __enter__(self) -> Reader:
        if not self.path.exists():
            raise BagNotFoundError(f"bag {str(self.path)!r} does not exist")
        try:
            reader = Reader(self.path)
            reader.open()
        except Exception as e:  # rosbags raises ReaderError, OSError, apsw and YAML errors
            raise BagError(f"cannot open bag {str(self.path)!r}: {type(e).__name__}: {e}") from e
        self.reader = reader
        return reader

    def __exit__(self, *exc: object) -> None:
        if self.reader is not None:
            try:
                self.reader.close()
            except Exception:
                pass


def list_topics(path: str | os.PathLike) -> dict[str, tuple[str, int]]:
    """Every topic of the bag: ``{topic: (msgtype, message count)}`` (counts from the index)."""
    out: dict[str, tuple[str, int]] = {}
    with _OpenBag(path) as reader:
        for conn in reader.connections:
            msgtype, count = out.get(conn.topic, (conn.msgtype, 0))
            out[conn.topic] = (msgtype, count + conn.msgcount)
    return out


def list_pointcloud_topics(path: str | os.PathLike) -> dict[str, int]:
    """``{topic: message count}`` of the bag's ``sensor_msgs/msg/PointCloud2`` topics."""
    return {t: n for t, (msgtype, n) in list_topics(path).items() if msgtype == POINTCLOUD2}


def iter_messages(path: str | os.PathLike, topics: Iterable[str] | None = None,
                  msgtypes: Iterable[str] | None = None) -> Iterator[BagMessage]:
    """Messages of the given topics / types (default: all) in bag-timestamp order.

    Raises :class:`BagError` when the bag cannot be read (also midway, e.g. a truncated file)
    and when a requested topic is not in the bag.
    """
    path = Path(path)
    wanted_types = set(msgtypes) if msgtypes is not None else None
    with _OpenBag(path) as reader:
        conns = [c for c in reader.connections if wanted_types is None or c.msgtype in wanted_types]
        if topics is not None:
            topics = list(topics)
            missing = sorted(set(topics) - {c.topic for c in conns})
            if missing:
                what = "" if wanted_types is None else f" of type {'/'.join(sorted(wanted_types))}"
                raise BagError(f"bag {str(path)!r} has no topic(s){what} {missing}; it has "
                               f"{sorted({c.topic for c in conns})}")
            conns = [c for c in conns if c.topic in topics]
        if not conns:
            return
        it = reader.messages(connections=conns)
        while True:
            try:
                conn, stamp, raw = next(it)
            except StopIteration:
                return
            except Exception as e:
                raise BagError(f"cannot read bag {str(path)!r}: {type(e).__name__}: {e}") from e
            yield BagMessage(conn.topic, int(stamp), bytes(raw), conn.msgtype)


def iter_pointclouds(path: str | os.PathLike, topics: Iterable[str] | None = None) -> Iterator[BagMessage]:
    """The bag's PointCloud2 messages (of ``topics``, default all such topics) in time order."""
    return iter_messages(path, topics, msgtypes=(POINTCLOUD2,))


def set_header_stamp(rawdata: bytes, stamp_ns: int) -> bytes:
    """Copy of a serialized message whose *first field* is ``std_msgs/Header`` with a new stamp.

    True for ``sensor_msgs/PointCloud2`` and the foundry_msgs outputs: after the 4-byte CDR
    encapsulation header come ``stamp.sec`` (int32) and ``stamp.nanosec`` (uint32), so nothing
    has to be deserialised.
    """
    if len(rawdata) < 12 or rawdata[0] != 0 or rawdata[1] not in (0, 1):
        raise ValueError("not a plain CDR message (encapsulation header 00 00 or 00 01 expected)")
    sec, nsec = divmod(int(stamp_ns), 1_000_000_000)
    order = "<" if rawdata[1] == 1 else ">"
    return rawdata[:4] + struct.pack(order + "iI", sec, nsec) + rawdata[12:]


# ------------------------------------------------------------------------------------------------
# writing


def pointcloud2_message(points: Any, stamp_ns: int, frame_id: str, typestore: Any = None) -> Any:
    """A rosbags ``sensor_msgs/msg/PointCloud2`` of ``points``.

    ``points``: ``(N, 3|4)`` (unorganised, ``height = 1``) or ``(H, W, 3|4)`` (organised); columns
    x, y, z[, intensity], stored as little-endian FLOAT32 fields (16 bytes a point with intensity,
    12 without). ``is_dense`` is false when any x, y or z is not finite.
    """
    ts = typestore or default_typestore()
    pts = np.asarray(points)
    if pts.ndim == 2:
        height, width = 1, pts.shape[0]
    elif pts.ndim == 3:
        height, width = pts.shape[:2]
    else:
        raise ValueError(f"points must be (N, 3|4) or (H, W, 3|4), got shape {pts.shape}")
    if pts.shape[-1] not in (3, 4):
        raise ValueError(f"points must have 3 (x, y, z) or 4 (x, y, z, intensity) columns, got {pts.shape[-1]}")
    flat = pts.reshape(-1, pts.shape[-1]).astype(np.float32, copy=False)
    names = ["x", "y", "z", "intensity"][: flat.shape[1]]
    specs, point_step, data = encode_pointcloud2_fields({n: flat[:, i] for i, n in enumerate(names)})
    T = ts.types
    sec, nsec = divmod(int(stamp_ns), 1_000_000_000)
    header = T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=sec, nanosec=nsec),
                                      frame_id=str(frame_id))
    fields = [T["sensor_msgs/msg/PointField"](name=f.name, offset=f.offset, datatype=f.datatype, count=f.count)
              for f in specs]
    return T[POINTCLOUD2](header=header, height=int(height), width=int(width), fields=fields,
                          is_bigendian=False, point_step=point_step, row_step=point_step * int(width),
                          data=np.frombuffer(data, dtype=np.uint8),
                          is_dense=bool(np.isfinite(flat[:, :3]).all()))


def open_writer(path: str | os.PathLike, storage: str = "mcap") -> Writer:
    """An opened rosbags Writer for a new bag directory ``path`` (BagError if it exists)."""
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {sorted(STORAGES)}, got {storage!r}")
    path = Path(path)
    if path.exists():
        raise BagError(f"bag {str(path)!r} exists already; rosbag2 bags are never overwritten")
    writer = Writer(path, version=BAG_VERSION, storage_plugin=STORAGES[storage])
    try:
        writer.open()
    except Exception as e:
        raise BagError(f"cannot create bag {str(path)!r}: {type(e).__name__}: {e}") from e
    return writer


def write_pointcloud_bag(path: str | os.PathLike, frames: Iterable[tuple[int, str, Any, str]],
                         storage: str = "mcap") -> dict[str, int]:
    """Write ``(stamp_ns, topic, points, frame_id)`` frames as PointCloud2 messages to a new bag.

    ``stamp_ns`` is both the bag timestamp and ``header.stamp``; ``points`` as for
    :func:`pointcloud2_message`. Frames may come in any order (readers sort by timestamp).
    Returns ``{topic: count}``. On any error the partly written bag directory is removed.
    """
    ts = default_typestore()
    path = Path(path)
    writer = open_writer(path, storage)
    counts: dict[str, int] = {}
    conns: dict[str, Any] = {}
    try:
        for stamp_ns, topic, points, frame_id in frames:
            if int(stamp_ns) < 0:
                raise ValueError(f"stamp_ns must be >= 0, got {stamp_ns}")
            msg = pointcloud2_message(points, stamp_ns, frame_id, ts)
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, POINTCLOUD2, typestore=ts)
            writer.write(conns[topic], int(stamp_ns), ts.serialize_cdr(msg, POINTCLOUD2))
            counts[topic] = counts.get(topic, 0) + 1
        writer.close()
    except BaseException:
        try:
            writer.abort()
        finally:
            shutil.rmtree(path, ignore_errors=True)
        raise
    return counts


# ------------------------------------------------------------------------------------------------
# point files -> bag


def read_scan(path: str | os.PathLike) -> np.ndarray:
    """A point file as float32 ``(N, 3|4)`` or, for organised PCD files, ``(H, W, 3|4)``.

    * ``.bin``: KITTI velodyne scan, float32 x, y, z, intensity records.
    * ``.pcd`` (ascii, binary, binary_compressed, via pypcd4): x, y, z and ``intensity`` when the
      file has it; a cloud with ``HEIGHT > 1`` keeps its ``height x width`` layout (and its NaNs).
    * ``.npy`` / ``.npz`` (key ``points`` or a single array): ``(N, >=3)``, columns x, y, z[,
      intensity]; further columns are dropped.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".bin":
            raw = np.fromfile(path, dtype="<f4")
            if raw.size % 4:
                raise ValueError(f"size {raw.size * 4} bytes is not a multiple of 16 "
                                 f"(KITTI records: float32 x, y, z, intensity)")
            return raw.reshape(-1, 4).astype(np.float32)
        if suffix == ".pcd":
            from foundry_core.data.formats.pointfiles import read_pcd_raw

            data, width, height = read_pcd_raw(path)
            names = data.dtype.names or ()
            if not all(n in names for n in "xyz"):
                raise ValueError(f"PCD fields x, y, z required, found {list(names)}")
            cols = ["x", "y", "z"] + (["intensity"] if "intensity" in names else [])
            pts = np.stack([np.asarray(data[c], dtype=np.float32) for c in cols], axis=1)
            return pts.reshape(height, width, len(cols)) if height > 1 else pts
        if suffix in (".npy", ".npz"):
            from foundry_core.data.formats.pointfiles import read_point_file

            arr = read_point_file(path)
            return arr[:, :4]
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    raise ValueError(f"{path}: unsupported point file suffix {suffix!r}; use one of {SCAN_SUFFIXES}")


def pack_scans(files: Sequence[str | os.PathLike], out: str | os.PathLike, topic: str = "/points",
               rate_hz: float = 10.0, storage: str = "mcap", frame_id: str = "sensor", repeat: int = 1,
               start_ns: int = 1_000_000_000) -> int:
    """Pack point files (see :func:`read_scan`) into a new bag: one PointCloud2 per file.

    The files are written in the given order, ``repeat`` times over, ``1 / rate_hz`` seconds
    apart starting at ``start_ns`` (bag time and ``header.stamp``). Each file is read once per
    pass, so memory stays at one cloud. Returns the number of messages written.
    """
    files = [Path(f) for f in files]
    if not files:
        raise ValueError("no point files given")
    if not rate_hz > 0:
        raise ValueError(f"rate_hz must be > 0, got {rate_hz}")
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"point file {str(f)!r} does not exist")
    period_ns = round(1e9 / rate_hz)

    def frames() -> Iterator[tuple[int, str, np.ndarray, str]]:
        for i in range(repeat * len(files)):
            yield start_ns + i * period_ns, topic, read_scan(files[i % len(files)]), frame_id

    return sum(write_pointcloud_bag(out, frames(), storage=storage).values())
