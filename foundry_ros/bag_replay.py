"""Replay PointCloud2 bags into ROS 2, record the node's outputs, pack point files into bags.

Console entry ``foundry-bag`` (also ``python -m foundry_ros.bag_replay``)::

    foundry-bag play BAG [--topic T ...] [--topic-map OLD:NEW ...] [--rate R] [--loop]
                         [--duration S] [--start-delay S] [--wait-for-subscribers N] [--restamp]
    foundry-bag record OUT --topics /foundry/segments /foundry/report ... [--duration S]
                         [--max-messages N] [--storage mcap|sqlite3]
    foundry-bag pack OUT FILES... [--topic /points] [--rate-hz 10] [--repeat N]
    foundry-bag info BAG

``BAG`` is a rosbag2 directory (sqlite3 or MCAP storage) or a bare ``.mcap`` / ``.db3`` file;
reading and writing use the ``rosbags`` package (:mod:`foundry_ros.bag`), not rosbag2.

**play** publishes the bag's ``sensor_msgs/PointCloud2`` messages (all PointCloud2 topics, or those
named by ``--topic``) as the serialized bytes that are stored: nothing is deserialised, so
subscribers get the recorded payload unchanged (Fast DDS may append up to 3 zero bytes of CDR
padding, as it does for any message). They go out on their original topics unless ``--topic-map
OLD:NEW`` renames them. Message *i* is sent ``(t_i - t_0) / rate`` seconds after the first, ``t``
being the bag timestamps (receive times at recording); ``--rate 0`` sends as fast as possible. The
schedule is absolute, so one late message does not delay the following ones. With ``--loop`` the
bag starts over one mean message period after its last message (0.1 s for a one-message bag).
``header.stamp`` is left as recorded unless ``--restamp`` sets it to the player's clock at
publication: the Foundry node drops clouds older than its ``max_age_s`` parameter (node clock minus
stamp), so an old bag needs ``--restamp`` or ``max_age_s:=0``.

QoS of the player: RELIABLE, VOLATILE, KEEP_LAST depth 5 (``--qos best_effort`` to change the
reliability). A reliable publisher matches reliable *and* best-effort subscriptions (the node's
input default is best effort), and with the 64 MiB shared-memory segment of :mod:`foundry_ros.dds`
whole clouds travel in one piece. Keep-last 5 bounds what is kept for retransmission to a slow
reliable subscriber; before exiting, the player waits (up to 5 s) until reliable subscribers have
acknowledged every message, so the last ones are not lost with the process. Publishers need a
moment to match their subscribers: playback starts ``--start-delay`` seconds (default 1) after the
publishers are created, or as soon as every publisher has ``--wait-for-subscribers N`` matched
subscriptions (the delay is then the upper bound; playback starts anyway with a warning).

**record** subscribes to the given topics as soon as they appear in the ROS graph (their type is
taken from the graph; any type works whose ``.msg`` definition can be found: the standard
messages, and ``foundry_msgs`` from the installed share folder or this checkout's ``msg/``) and
writes the serialized messages unchanged into a new rosbag2 bag (MCAP by default, version 9)
with the receive time as bag timestamp. The subscription's QoS follows the publishers seen at
that moment: reliable unless one of them is best effort, transient-local if all of them are (so a
latched ``foundry/labels`` map published before the recorder started is still recorded),
KEEP_LAST 100. The bag's metadata carries no offered-QoS profiles.

DDS: ``play`` and ``record`` always run on the local-only Fast DDS setup of
:mod:`foundry_ros.dds` (shared memory + loopback UDP, no multicast, nothing leaves this host),
applied to this process before rclpy starts. The domain is ``--domain-id``, else
``$ROS_DOMAIN_ID``, else 0 (ROS' default), so that the player reaches a node started in the same
shell setup. ``pack`` and ``info`` do not use ROS.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from foundry_ros import bag as B
from foundry_ros import dds

PLAYER_NODE = "foundry_bag_player"
RECORDER_NODE = "foundry_bag_recorder"
PLAYER_DEPTH = 5
RECORDER_DEPTH = 100
#: After the last message, wait at most this long for reliable subscribers to acknowledge it all.
FLUSH_TIMEOUT_S = 5.0


def _qos_module():
    from rclpy import qos

    return qos


def _sleep_until(deadline: float, stop: Callable[[], bool], step: float = 0.05) -> bool:
    """Sleep until time.monotonic() >= deadline; False if stop() became true first."""
    while True:
        if stop():
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return True
        time.sleep(min(step, remaining))


# ------------------------------------------------------------------------------------------------
# player


class BagPlayer:
    """Publish a bag's PointCloud2 messages with their recorded timing (see the module doc).

    ``topics``: bag topics to play (default: every PointCloud2 topic); ``topic_map``: bag topic ->
    published topic; ``rate``: time scale (1.0 real time, 2.0 twice as fast, 0 as fast as
    possible); ``restamp``: replace ``header.stamp`` with the node clock at publication.
    """

    def __init__(self, node: Any, bag_path: str | os.PathLike, topics: Iterable[str] | None = None,
                 topic_map: Mapping[str, str] | None = None, rate: float = 1.0, loop: bool = False,
                 reliability: str = "reliable", depth: int = PLAYER_DEPTH, restamp: bool = False) -> None:
        from sensor_msgs.msg import PointCloud2

        if not rate >= 0:
            raise ValueError(f"rate must be >= 0 (0: as fast as possible), got {rate}")
        self.node, self.bag_path, self.rate, self.loop, self.restamp = node, Path(bag_path), float(rate), loop, restamp
        available = B.list_pointcloud_topics(self.bag_path)
        if topics is None:
            self.topics = sorted(available)
        else:
            self.topics = list(dict.fromkeys(topics))
            missing = [t for t in self.topics if t not in available]
            if missing:
                raise B.BagError(f"bag {str(self.bag_path)!r} has no PointCloud2 topic(s) {missing}; "
                                 f"it has {sorted(available)}")
        if not self.topics:
            raise B.BagError(f"bag {str(self.bag_path)!r} has no PointCloud2 topic")
        topic_map = dict(topic_map or {})
        unknown = sorted(set(topic_map) - set(self.topics))
        if unknown:
            raise ValueError(f"--topic-map names topic(s) {unknown} that are not played ({self.topics})")
        self.topic_map = {t: topic_map.get(t, t) for t in self.topics}
        self.qos = _player_qos(reliability, depth)
        self.publishers = {out: node.create_publisher(PointCloud2, out, self.qos)
                           for out in dict.fromkeys(self.topic_map.values())}
        self.counts: dict[str, int] = {out: 0 for out in self.publishers}

    def subscriber_counts(self) -> dict[str, int]:
        return {t: p.get_subscription_count() for t, p in self.publishers.items()}

    def wait_for_subscribers(self, count: int, timeout: float, stop: Callable[[], bool] = lambda: False) -> bool:
        """Wait until every publisher has >= count matched subscriptions (True) or timeout (False)."""
        deadline = time.monotonic() + timeout
        while True:
            if min(self.subscriber_counts().values()) >= count:
                return True
            if time.monotonic() >= deadline or stop():
                return False
            time.sleep(0.02)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until reliable subscribers acknowledged everything (call before exiting)."""
        from rclpy.duration import Duration

        deadline = time.monotonic() + timeout
        return all(p.wait_for_all_acked(Duration(seconds=max(deadline - time.monotonic(), 0.0)))
                   for p in self.publishers.values())

    def play(self, duration: float | None = None, stop: Callable[[], bool] = lambda: False) -> int:
        """Play (once, or until ``duration`` s / ``stop()`` with ``loop``); return messages published."""
        t_start = time.monotonic()
        end = t_start + duration if duration is not None else float("inf")

        def halted() -> bool:
            return stop() or time.monotonic() >= end

        published = 0
        pass_start = t_start
        while True:
            first_ns = last_ns = None
            n_pass = 0
            for msg in B.iter_pointclouds(self.bag_path, self.topics):
                if first_ns is None:
                    first_ns = msg.stamp_ns
                last_ns = msg.stamp_ns
                if self.rate > 0:
                    due = pass_start + (msg.stamp_ns - first_ns) / 1e9 / self.rate
                    if due > end:
                        return published
                    if not _sleep_until(due, halted):
                        return published
                elif halted():
                    return published
                raw = msg.rawdata
                if self.restamp:
                    raw = B.set_header_stamp(raw, self.node.get_clock().now().nanoseconds)
                out = self.topic_map[msg.topic]
                self.publishers[out].publish(raw)
                self.counts[out] += 1
                published += 1
                n_pass += 1
            if not self.loop or n_pass == 0:
                return published
            if self.rate > 0:
                span = (last_ns - first_ns) / 1e9 / self.rate
                period = span / (n_pass - 1) if n_pass > 1 else 0.1 / self.rate
                pass_start += span + period


def _player_qos(reliability: str, depth: int):
    q = _qos_module()
    rel = {"reliable": q.ReliabilityPolicy.RELIABLE, "best_effort": q.ReliabilityPolicy.BEST_EFFORT}
    if reliability not in rel:
        raise ValueError(f"reliability must be 'reliable' or 'best_effort', got {reliability!r}")
    return q.QoSProfile(depth=depth, reliability=rel[reliability], durability=q.DurabilityPolicy.VOLATILE,
                        history=q.HistoryPolicy.KEEP_LAST)


# ------------------------------------------------------------------------------------------------
# recorder


def message_class(msgtype: str) -> type:
    """The rclpy message class of ``pkg/msg/Name`` (ImportError/AttributeError if not installed)."""
    package, _, name = msgtype.partition("/msg/")
    if not package or not name or "/" in name:
        raise ValueError(f"message type {msgtype!r} is not of the form 'package/msg/Name'")
    return getattr(importlib.import_module(f"{package}.msg"), name)


class BagRecorder:
    """Record topics (serialized, unchanged) into a new bag; see the module doc for QoS rules.

    Topics are subscribed when they first appear in the graph (checked every ``poll_s``);
    :meth:`close` must be called to finish the bag (the metadata and MCAP index are written then).
    """

    def __init__(self, node: Any, out: str | os.PathLike, topics: Sequence[str], storage: str = "mcap",
                 poll_s: float = 0.2, msg_dirs: Sequence[str | os.PathLike] = ()) -> None:
        if not topics:
            raise ValueError("no topics to record")
        self.node, self.out, self.msg_dirs = node, Path(out), msg_dirs
        self.pending = list(dict.fromkeys(t if t.startswith("/") else "/" + t for t in topics))
        self.typestore = B.new_typestore()  # own store: types get registered on it
        self.writer = B.open_writer(self.out, storage)
        self.counts: dict[str, int] = {}
        self.types: dict[str, str] = {}
        self._subs: list[Any] = []
        self._closed = False
        self._discover()
        self._timer = node.create_timer(poll_s, self._discover)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def _discover(self) -> None:
        if self._closed or not self.pending:
            return
        graph = dict(self.node.get_topic_names_and_types())
        for topic in list(self.pending):
            types = graph.get(topic)
            if not types:
                continue
            if len(types) > 1:
                self.node.get_logger().error(f"not recording {topic}: it has several types {types}")
                self.pending.remove(topic)
                continue
            self._subscribe(topic, types[0])
            self.pending.remove(topic)

    def _subscribe(self, topic: str, msgtype: str) -> None:
        cls = message_class(msgtype)
        B.register_msg_types(self.typestore, [msgtype], self.msg_dirs)
        conn = self.writer.add_connection(topic, msgtype, typestore=self.typestore)
        qos = self._qos_for(topic)
        clock = self.node.get_clock()
        self.counts[topic] = 0
        self.types[topic] = msgtype

        def on_message(raw: bytes) -> None:
            if self._closed:
                return
            self.writer.write(conn, clock.now().nanoseconds, raw)
            self.counts[topic] += 1

        self._subs.append(self.node.create_subscription(cls, topic, on_message, qos, raw=True))
        self.node.get_logger().info(
            f"recording {topic} ({msgtype}, {qos.reliability.name.lower()}, {qos.durability.name.lower()})")

    def _qos_for(self, topic: str):
        q = _qos_module()
        infos = self.node.get_publishers_info_by_topic(topic)
        rel = q.ReliabilityPolicy.RELIABLE
        dur = q.DurabilityPolicy.VOLATILE
        if infos:
            if any(i.qos_profile.reliability == q.ReliabilityPolicy.BEST_EFFORT for i in infos):
                rel = q.ReliabilityPolicy.BEST_EFFORT
            if all(i.qos_profile.durability == q.DurabilityPolicy.TRANSIENT_LOCAL for i in infos):
                dur = q.DurabilityPolicy.TRANSIENT_LOCAL
        return q.QoSProfile(depth=RECORDER_DEPTH, reliability=rel, durability=dur,
                            history=q.HistoryPolicy.KEEP_LAST)

    def close(self) -> None:
        """Stop recording and finish the bag (idempotent)."""
        if self._closed:
            return
        self._closed = True  # callbacks that still run write nothing
        try:
            self.writer.close()
        except Exception as e:
            raise B.BagError(f"cannot finish bag {str(self.out)!r}: {type(e).__name__}: {e}") from e
        finally:
            destroy = [(self.node.destroy_timer, self._timer)] + [(self.node.destroy_subscription, s)
                                                                   for s in self._subs]
            for fn, entity in destroy:
                try:
                    fn(entity)
                except Exception:  # the context may already be shut down (SIGINT)
                    pass


# ------------------------------------------------------------------------------------------------
# CLI


def _apply_local_dds(domain_id: int | None) -> None:
    """Local-only DDS for this process (before rclpy.init), keeping the user's domain id."""
    if domain_id is None:
        domain_id = int(os.environ.get("ROS_DOMAIN_ID") or 0)
    dds.apply_in_process(dds.ros_env(domain_id=domain_id))


def _topic_map(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        old, sep, new = item.partition(":")
        if not sep or not old or not new:
            raise argparse.ArgumentTypeError(f"--topic-map expects OLD:NEW, got {item!r}")
        out[old] = new
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="foundry-bag", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    play = sub.add_parser("play", help="publish a bag's PointCloud2 messages with their timing")
    play.add_argument("bag", help="rosbag2 directory, .mcap or .db3 file")
    play.add_argument("--topic", action="append", default=None, help="bag topic to play (repeatable; default all)")
    play.add_argument("--topic-map", action="append", default=[], metavar="OLD:NEW",
                      help="publish bag topic OLD on NEW (repeatable)")
    play.add_argument("--rate", type=float, default=1.0, help="time scale; 0 = as fast as possible (default 1)")
    play.add_argument("--loop", action="store_true", help="start over at the end")
    play.add_argument("--duration", type=float, default=None, help="stop after S seconds of playback")
    play.add_argument("--start-delay", type=float, default=1.0,
                      help="seconds between creating the publishers and the first message (default 1)")
    play.add_argument("--wait-for-subscribers", type=int, default=0, metavar="N",
                      help="start as soon as each publisher has N subscribers (start-delay is then the limit)")
    play.add_argument("--restamp", action="store_true", help="set header.stamp to the time of publication")
    play.add_argument("--qos", choices=["reliable", "best_effort"], default="reliable",
                      help="reliability of the publishers (default reliable)")
    play.add_argument("--domain-id", type=int, default=None, help="ROS domain (default $ROS_DOMAIN_ID or 0)")

    rec = sub.add_parser("record", help="record topics into a new bag")
    rec.add_argument("out", help="new bag directory")
    rec.add_argument("--topics", nargs="+", required=True, help="topics to record")
    rec.add_argument("--duration", type=float, default=None, help="stop after S seconds")
    rec.add_argument("--max-messages", type=int, default=0, help="stop after N messages in all (0: no limit)")
    rec.add_argument("--storage", choices=sorted(B.STORAGES), default="mcap")
    rec.add_argument("--domain-id", type=int, default=None, help="ROS domain (default $ROS_DOMAIN_ID or 0)")

    pack = sub.add_parser("pack", help="pack point files (.bin KITTI, .pcd, .npy, .npz) into a new bag")
    pack.add_argument("out", help="new bag directory")
    pack.add_argument("files", nargs="+", help="point files, one message each, in this order")
    pack.add_argument("--topic", default="/points")
    pack.add_argument("--rate-hz", type=float, default=10.0)
    pack.add_argument("--frame-id", default="sensor")
    pack.add_argument("--repeat", type=int, default=1, help="write the file list N times over")
    pack.add_argument("--storage", choices=sorted(B.STORAGES), default="mcap")

    info = sub.add_parser("info", help="list a bag's topics")
    info.add_argument("bag")
    return p


def _run_ros(fn: Callable[[Any], int], node_name: str, domain_id: int | None) -> int:
    _apply_local_dds(domain_id)
    import rclpy
    from rclpy.executors import ExternalShutdownException

    rclpy.init(args=["foundry-bag"])  # SIGINT/SIGTERM shut the context down
    node = rclpy.create_node(node_name)
    try:
        return fn(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        return 0
    finally:
        try:
            node.destroy_node()
        except Exception:  # already gone with the context (SIGINT/SIGTERM)
            pass
        rclpy.try_shutdown()


def _cmd_play(ns: argparse.Namespace) -> int:
    topic_map = _topic_map(ns.topic_map)

    def run(node: Any) -> int:
        ok = node.context.ok
        player = BagPlayer(node, ns.bag, topics=ns.topic, topic_map=topic_map, rate=ns.rate, loop=ns.loop,
                           reliability=ns.qos, restamp=ns.restamp)
        log = node.get_logger()
        if ns.wait_for_subscribers > 0:
            if not player.wait_for_subscribers(ns.wait_for_subscribers, ns.start_delay, lambda: not ok()):
                log.warning(f"starting without {ns.wait_for_subscribers} subscriber(s) on every topic: "
                            f"{player.subscriber_counts()}")
        else:
            _sleep_until(time.monotonic() + ns.start_delay, lambda: not ok())
        t0 = time.monotonic()
        try:
            n = player.play(duration=ns.duration, stop=lambda: not ok())
        except KeyboardInterrupt:  # rclpy's SIGINT handler shuts the context down, then raises this
            n = sum(player.counts.values())
        if ok() and not player.flush(FLUSH_TIMEOUT_S):
            log.warning(f"reliable subscribers did not acknowledge every message within {FLUSH_TIMEOUT_S} s")
        print(f"published {n} messages in {time.monotonic() - t0:.2f} s: {player.counts}", flush=True)
        return 0

    return _run_ros(run, PLAYER_NODE, ns.domain_id)


def _cmd_record(ns: argparse.Namespace) -> int:
    def run(node: Any) -> int:
        from rclpy.executors import SingleThreadedExecutor

        rec = BagRecorder(node, ns.out, ns.topics, storage=ns.storage)
        executor = SingleThreadedExecutor(context=node.context)
        executor.add_node(node)
        end = time.monotonic() + ns.duration if ns.duration is not None else float("inf")
        try:
            print(f"recording {rec.pending} to {ns.out}", flush=True)
            while node.context.ok() and time.monotonic() < end and not (0 < ns.max_messages <= rec.total):
                executor.spin_once(timeout_sec=0.05)
        finally:
            rec.close()
            executor.shutdown(timeout_sec=1.0)
            print(f"recorded {rec.total} messages to {ns.out}: {rec.counts}", flush=True)
        return 0

    return _run_ros(run, RECORDER_NODE, ns.domain_id)


def main(argv: Sequence[str] | None = None) -> int:
    ns = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        if ns.command == "play":
            return _cmd_play(ns)
        if ns.command == "record":
            return _cmd_record(ns)
        if ns.command == "pack":
            n = B.pack_scans(ns.files, ns.out, topic=ns.topic, rate_hz=ns.rate_hz, storage=ns.storage,
                             frame_id=ns.frame_id, repeat=ns.repeat)
            print(f"wrote {n} messages on {ns.topic} to {ns.out}")
            return 0
        for topic, (msgtype, count) in sorted(B.list_topics(ns.bag).items()):
            print(f"{topic}\t{msgtype}\t{count}")
        return 0
    except (B.BagError, ValueError, OSError) as e:
        print(f"foundry-bag {ns.command}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
