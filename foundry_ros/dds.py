"""A safe, local-only DDS environment for every process that starts rclpy.

Pure Python: importing this module does not import rclpy, so it can prepare the environment of a
child process (or of this process, before ``rclpy.init()``) without ROS being installed.

:func:`ros_env` returns a copy of the parent environment plus these variables:

* ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` -- rmw_fastrtps then discovers only via shared memory
  and unicast to 127.0.0.1 and never multicasts, even if the XML profile below could not be read
  (the fail-safe layer). (``ROS_LOCALHOST_ONLY`` is ignored by Kilted.)
* ``FASTDDS_DEFAULT_PROFILES_FILE`` -- a Fast DDS XML profile written to a private temporary
  folder: a shared-memory transport with a 64 MiB segment (large point clouds travel in one piece;
  the default segment is far smaller and best-effort clouds are then mostly lost) and a UDPv4
  transport restricted to the loopback interface, with the built-in transports switched off.
  ``FASTRTPS_DEFAULT_PROFILES_FILE`` (the pre-3.0 name) is set too only on request; see below.
* ``ROS_DOMAIN_ID`` -- a per-run domain (random in 1..101 unless given), so concurrent runs on the
  same machine (tests, CI, demos) never see each other's topics.
* ``ROS_LOG_DIR`` -- in the same temporary folder (rcl needs a writable log directory, and
  ``$HOME`` may be unset or read-only).
* ``RMW_IMPLEMENTATION=rmw_fastrtps_cpp`` -- the profile above is Fast DDS specific.

Measured with Kilted (rmw_fastrtps_cpp 9.3.3, Fast DDS 3.2.2): in LOCALHOST mode rmw_fastrtps
*appends* its own default shared-memory transport and a UDPv4 transport without an interface
allow-list to the profile's transports. That extra UDP transport opens two output sockets (random
ports, bound to 0.0.0.0 and to the network interface's address), but discovery stays shared
memory + unicast 127.0.0.1, so no peer off this host is ever discovered and nothing is addressed
to one; apart from those two, every socket is bound to 127.0.0.1. The
profile's 64 MiB segment does carry the data: best-effort 4 MB messages at 10 Hz between two
processes arrived 20/20 with the profile and 2/20 without it. Setting
``FASTRTPS_DEFAULT_PROFILES_FILE`` (even next to the new name) makes every process log a
deprecation warning, hence opt-in.

Everything else in the parent environment is passed through unchanged. In particular the
``ros-wheels-bootstrapper`` pair ``_ROS_WHEELS_BOOTSTRAP_COMPLETE`` / ``LD_LIBRARY_PATH`` must stay
together: a child that inherits the flag without the library path skips its bootstrap and then
fails to load the ROS libraries. The only change made to that pair is to drop the flag when the
library path is missing, so that the child bootstraps itself.

Use in a test or demo::

    env = ros_env()                                   # for subprocesses
    subprocess.Popen([sys.executable, "pub.py"], env=env)
    apply_in_process(env)                             # for this process, before rclpy.init()

Fast DDS loads the default profile file once per process (its participant factory is a
process-wide singleton), so a process should use one environment for all its rclpy contexts.
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Mapping, MutableMapping
from xml.sax.saxutils import escape

#: Variables set by :func:`ros_env` (FASTRTPS_DEFAULT_PROFILES_FILE only with ``legacy_profile_var``).
ROS_ENV_KEYS = (
    "ROS_AUTOMATIC_DISCOVERY_RANGE",
    "ROS_DOMAIN_ID",
    "ROS_LOG_DIR",
    "RMW_IMPLEMENTATION",
    "FASTDDS_DEFAULT_PROFILES_FILE",
)
LEGACY_PROFILE_VAR = "FASTRTPS_DEFAULT_PROFILES_FILE"

#: Default shared-memory segment: 64 MiB holds a 300k-point PointCloud2 with room to spare.
SHM_SEGMENT_BYTES = 64 * 1024 * 1024
#: Environment variable that overrides the default segment size (MiB) of :func:`ros_env`.
SHM_SEGMENT_ENV = "FOUNDRY_SHM_SEGMENT_MB"
#: A writer's segment holds the samples in flight, not just one: size it to this many messages.
SHM_MESSAGES_PER_SEGMENT = 3
#: ROS 2's domain ids that map to UDP ports outside the Linux ephemeral range.
DOMAIN_ID_RANGE = (1, 101)
LOOPBACK = "127.0.0.1"
PROFILE_NAME = "foundry_local_only"
_BOOTSTRAP_FLAG = "_ROS_WHEELS_BOOTSTRAP_COMPLETE"
#: Removed from the environment: settings of a parent's own ROS setup that would add peers,
#: servers or transports behind the profile's back (ROS_LOCALHOST_ONLY is obsolete and only warns).
REMOVED_KEYS = ("ROS_LOCALHOST_ONLY", "ROS_STATIC_PEERS", "ROS_DISCOVERY_SERVER",
                 "RMW_FASTRTPS_USE_QOS_FROM_XML", "FASTDDS_BUILTIN_TRANSPORTS", "FASTDDS_ENVIRONMENT_FILE")


def fastdds_profile_xml(shm_segment_bytes: int = SHM_SEGMENT_BYTES) -> str:
    """The Fast DDS (3.x) XML profile: shared memory + loopback-only UDPv4, nothing built in.

    The participant profile is the default one, so every participant created by rmw_fastrtps in a
    process that points ``FASTDDS_DEFAULT_PROFILES_FILE`` at this file uses it. UDPv4 is kept
    next to shared memory for processes that share no /dev/shm (other containers or mount
    namespaces); its interface allow-list holds only 127.0.0.1. The discovery (metatraffic)
    locator and the initial peer are 127.0.0.1 unicast: giving a unicast metatraffic locator
    stops Fast DDS from adding its default multicast one, so the profile is local-only even on
    its own (with ``ROS_AUTOMATIC_DISCOVERY_RANGE=SYSTEM_DEFAULT`` or a plain Fast DDS program).
    """
    if shm_segment_bytes <= 0:
        raise ValueError(f"shm_segment_bytes must be positive, got {shm_segment_bytes}")
    lo = escape(LOOPBACK)
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by foundry_ros.dds: local-only Fast DDS profile (shared memory + loopback UDPv4). -->
<dds xmlns="http://www.eprosima.com">
  <profiles>
    <transport_descriptors>
      <transport_descriptor>
        <transport_id>foundry_shm</transport_id>
        <type>SHM</type>
        <segment_size>{int(shm_segment_bytes)}</segment_size>
      </transport_descriptor>
      <transport_descriptor>
        <transport_id>foundry_udp_loopback</transport_id>
        <type>UDPv4</type>
        <interfaceWhiteList>
          <address>{lo}</address>
        </interfaceWhiteList>
      </transport_descriptor>
    </transport_descriptors>
    <participant profile_name="{PROFILE_NAME}" is_default_profile="true">
      <rtps>
        <userTransports>
          <transport_id>foundry_shm</transport_id>
          <transport_id>foundry_udp_loopback</transport_id>
        </userTransports>
        <useBuiltinTransports>false</useBuiltinTransports>
        <builtin>
          <initialPeersList>
            <locator>
              <udpv4>
                <address>{lo}</address>
              </udpv4>
            </locator>
          </initialPeersList>
          <metatrafficUnicastLocatorList>
            <locator>
              <udpv4>
                <address>{lo}</address>
              </udpv4>
            </locator>
          </metatrafficUnicastLocatorList>
        </builtin>
      </rtps>
    </participant>
  </profiles>
</dds>
"""


def recommended_segment_bytes(message_bytes: int) -> int:
    """Shared-memory segment for messages of ``message_bytes``: room for
    :data:`SHM_MESSAGES_PER_SEGMENT` of them, in whole MiB, never below :data:`SHM_SEGMENT_BYTES`.

    A Fast DDS sample larger than the *writer's* segment leaves shared memory for UDP fragments,
    where a best-effort reader loses most large messages: a driver publishing 4M-point clouds
    (64 MB) needs a segment of about 192 MiB, and the node the same for its outputs."""
    mib = 1 << 20
    need = -(-int(message_bytes) * SHM_MESSAGES_PER_SEGMENT // mib) * mib
    return max(SHM_SEGMENT_BYTES, need)


def default_segment_bytes(environ: Mapping[str, str] | None = None) -> int:
    """The segment :func:`ros_env` writes: ``$FOUNDRY_SHM_SEGMENT_MB`` MiB, else :data:`SHM_SEGMENT_BYTES`."""
    value = (os.environ if environ is None else environ).get(SHM_SEGMENT_ENV, "").strip()
    if not value:
        return SHM_SEGMENT_BYTES
    try:
        mb = float(value)
    except ValueError:
        raise ValueError(f"{SHM_SEGMENT_ENV} must be a number of MiB, got {value!r}") from None
    if not 1 <= mb <= 65536:
        raise ValueError(f"{SHM_SEGMENT_ENV} must be in 1..65536 MiB, got {value!r}")
    return int(mb * (1 << 20))


def profile_segment_bytes(environ: Mapping[str, str] | None = None) -> int | None:
    """The shared-memory segment_size of the Fast DDS profile this process uses
    (``FASTDDS_DEFAULT_PROFILES_FILE``), None when there is none or it sets no size (Fast DDS default)."""
    import xml.etree.ElementTree as ET

    env = os.environ if environ is None else environ
    path = env.get("FASTDDS_DEFAULT_PROFILES_FILE") or env.get(LEGACY_PROFILE_VAR)
    if not path or not os.path.isfile(path):
        return None
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError):
        return None
    sizes = [int(e.text) for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "segment_size"
             and e.text and e.text.strip().isdigit()]
    return max(sizes) if sizes else None


def write_fastdds_profile(path: str | os.PathLike, shm_segment_bytes: int = SHM_SEGMENT_BYTES) -> Path:
    """Write :func:`fastdds_profile_xml` to ``path`` (parent folders created) and return it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(fastdds_profile_xml(shm_segment_bytes), encoding="utf-8")
    return path


def pick_domain_id(seed: int | None = None) -> int:
    """A domain id in :data:`DOMAIN_ID_RANGE`: random, or derived from ``seed`` (e.g. a pid)."""
    lo, hi = DOMAIN_ID_RANGE
    if seed is not None:
        return lo + int(seed) % (hi - lo + 1)
    return random.SystemRandom().randint(lo, hi)


def ros_env(base: Mapping[str, str] | None = None, *, workdir: str | os.PathLike | None = None,
            domain_id: int | None = None, shm_segment_bytes: int | None = None,
            legacy_profile_var: bool = False) -> dict[str, str]:
    """A copy of ``base`` (default: ``os.environ``) set up for local-only ROS 2 communication.

    ``workdir`` receives the XML profile and the ``log/`` folder; by default a new private temporary
    folder (``foundry-ros-*``) is created and left for the caller/OS to clean up (processes may
    still log into it after this function returns). Pass the *same* returned dict to every process
    that must talk to each other: they share the domain id and the profile.

    ``shm_segment_bytes`` sizes the shared-memory segment (default ``$FOUNDRY_SHM_SEGMENT_MB`` MiB,
    else 64 MiB; see :func:`recommended_segment_bytes` for clouds of several million points).

    ``legacy_profile_var`` also sets ``FASTRTPS_DEFAULT_PROFILES_FILE`` for Fast DDS 2.x based
    distributions (Humble, Jazzy); Kilted's Fast DDS 3 reads only ``FASTDDS_DEFAULT_PROFILES_FILE``
    and its rmw warns about the legacy name.
    """
    env = dict(os.environ if base is None else base)
    if shm_segment_bytes is None:
        shm_segment_bytes = default_segment_bytes(env)
    if workdir is None:
        workdir = tempfile.mkdtemp(prefix="foundry-ros-")
    workdir = Path(workdir).resolve()
    profile = write_fastdds_profile(workdir / "fastdds_profile.xml", shm_segment_bytes)
    log_dir = workdir / "log"
    log_dir.mkdir(parents=True, exist_ok=True)
    if domain_id is None:
        domain_id = pick_domain_id()
    if not 0 <= int(domain_id) <= 232:
        raise ValueError(f"ROS_DOMAIN_ID must be in 0..232, got {domain_id}")

    env.update({
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "ROS_DOMAIN_ID": str(int(domain_id)),
        "ROS_LOG_DIR": str(log_dir),
        "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp",
        "FASTDDS_DEFAULT_PROFILES_FILE": str(profile),
    })
    for key in REMOVED_KEYS:
        env.pop(key, None)
    if legacy_profile_var:
        env[LEGACY_PROFILE_VAR] = str(profile)
    else:
        env.pop(LEGACY_PROFILE_VAR, None)
    _keep_bootstrap_consistent(env)
    return env


def ros_overrides(env: Mapping[str, str]) -> dict[str, str]:
    """The ROS-specific part of an environment made by :func:`ros_env` (to apply in-process)."""
    keys = ROS_ENV_KEYS + (LEGACY_PROFILE_VAR,)
    return {k: env[k] for k in keys if k in env}


def apply_in_process(env: Mapping[str, str], target: MutableMapping[str, str] | None = None) -> None:
    """Make this process use ``env``'s ROS settings (call before ``rclpy.init()``).

    Also removes the variables :func:`ros_env` removes, so the in-process and child settings agree.
    """
    target = os.environ if target is None else target
    for key in REMOVED_KEYS + (LEGACY_PROFILE_VAR,):
        if key not in env:
            target.pop(key, None)
    target.update(ros_overrides(env))


def _keep_bootstrap_consistent(env: MutableMapping[str, str]) -> None:
    """Drop a bootstrap flag that came without its library path (the child then bootstraps itself)."""
    if env.get(_BOOTSTRAP_FLAG) and not env.get("LD_LIBRARY_PATH"):
        env.pop(_BOOTSTRAP_FLAG, None)


def remove_stale_shm_segments(shm_dir: str | os.PathLike = "/dev/shm", min_age_s: float = 5.0) -> list[str]:
    """Delete Fast DDS shared-memory segments whose owning process is gone; return their names.

    Each Fast DDS segment ``fastdds_<id>`` comes with a lock file ``fastdds_<id>_el`` that its
    owner holds with ``flock`` while alive. A process killed with SIGKILL (or crashing) leaves both
    behind, and with the 64 MiB profile that is up to 64 MiB of RAM per participant until reboot.
    A segment is removed only when its lock file can be locked (no live owner) and is older than
    ``min_age_s`` seconds (so a participant that is just starting up is never touched).
    """
    import fcntl
    import time

    removed: list[str] = []
    root = Path(shm_dir)
    if not root.is_dir():
        return removed
    now = time.time()
    for lock in sorted(root.glob("fastdds_*_el")):
        try:
            if now - lock.stat().st_mtime < min_age_s:
                continue
            fd = os.open(lock, os.O_RDWR)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a live process owns it
            base = lock.name[: -len("_el")]
            for name in (base, f"sem.{base}_mutex", lock.name):
                try:
                    (root / name).unlink()
                    removed.append(name)
                except FileNotFoundError:
                    pass
        finally:
            os.close(fd)
    return removed
