"""foundry_ros.dds: the local-only DDS environment (no rclpy needed)."""
from __future__ import annotations

import fcntl
import ipaddress
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from foundry_ros import dds

NS = {"f": "http://www.eprosima.com"}


def _env(tmp_path, base=None, **kw):
    return dds.ros_env(base if base is not None else {"HOME": "/home/x", "PATH": "/usr/bin"},
                       workdir=tmp_path / "ros", **kw)


def test_sets_every_variable(tmp_path):
    env = _env(tmp_path)
    for key in dds.ROS_ENV_KEYS:
        assert env.get(key), key
    assert env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    assert env["RMW_IMPLEMENTATION"] == "rmw_fastrtps_cpp"
    lo, hi = dds.DOMAIN_ID_RANGE
    assert lo <= int(env["ROS_DOMAIN_ID"]) <= hi
    assert Path(env["ROS_LOG_DIR"]).is_dir()
    assert Path(env["ROS_LOG_DIR"]).is_relative_to(tmp_path / "ros")
    profile = Path(env["FASTDDS_DEFAULT_PROFILES_FILE"])
    assert profile.is_file() and profile.is_relative_to(tmp_path / "ros")
    assert dds.LEGACY_PROFILE_VAR not in env


def test_legacy_profile_variable_on_request(tmp_path):
    env = _env(tmp_path, legacy_profile_var=True)
    assert env[dds.LEGACY_PROFILE_VAR] == env["FASTDDS_DEFAULT_PROFILES_FILE"]
    assert dds.LEGACY_PROFILE_VAR in dds.ros_overrides(env)


def test_default_workdir_is_private_temp_dir():
    env = dds.ros_env({})
    workdir = Path(env["FASTDDS_DEFAULT_PROFILES_FILE"]).parent
    try:
        assert workdir.name.startswith("foundry-ros-")
        assert (workdir.stat().st_mode & 0o077) == 0  # mkdtemp: owner only
    finally:
        for p in sorted(workdir.rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() else p.unlink()
        workdir.rmdir()


def test_parent_environment_otherwise_unchanged(tmp_path):
    base = {"HOME": "/h", "PATH": "/p", "FOO": "bar", "LD_LIBRARY_PATH": "/venv/lib",
            "_ROS_WHEELS_BOOTSTRAP_COMPLETE": "1", "ROS_DOMAIN_ID": "0",
            "ROS_LOCALHOST_ONLY": "1", "ROS_STATIC_PEERS": "10.0.0.1", "ROS_DISCOVERY_SERVER": "x:1",
            "FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA", "FASTRTPS_DEFAULT_PROFILES_FILE": "/other.xml"}
    env = _env(tmp_path, dict(base))
    for key in ("HOME", "PATH", "FOO", "LD_LIBRARY_PATH", "_ROS_WHEELS_BOOTSTRAP_COMPLETE"):
        assert env[key] == base[key]
    for key in ("ROS_LOCALHOST_ONLY", "ROS_STATIC_PEERS", "ROS_DISCOVERY_SERVER",
                "FASTDDS_BUILTIN_TRANSPORTS", "FASTRTPS_DEFAULT_PROFILES_FILE"):
        assert key not in env
    assert set(env) - set(base) <= set(dds.ROS_ENV_KEYS)
    assert env["ROS_DOMAIN_ID"] != "0"  # never the default domain shared by every other ROS user


def test_default_base_is_os_environ(tmp_path, monkeypatch):
    monkeypatch.setenv("FOUNDRY_TEST_MARKER", "42")
    env = dds.ros_env(workdir=tmp_path)
    assert env["FOUNDRY_TEST_MARKER"] == "42"
    assert "FOUNDRY_TEST_MARKER" not in dds.ros_overrides(env)


def test_bootstrap_flag_without_library_path_is_dropped(tmp_path):
    env = _env(tmp_path, {"_ROS_WHEELS_BOOTSTRAP_COMPLETE": "1"})
    assert "_ROS_WHEELS_BOOTSTRAP_COMPLETE" not in env


def test_domain_id(tmp_path):
    assert _env(tmp_path, domain_id=7)["ROS_DOMAIN_ID"] == "7"
    with pytest.raises(ValueError):
        _env(tmp_path, domain_id=233)
    assert dds.pick_domain_id(seed=1234) == dds.pick_domain_id(seed=1234)
    lo, hi = dds.DOMAIN_ID_RANGE
    assert {dds.pick_domain_id(seed=s) for s in range(500)} == set(range(lo, hi + 1))
    assert all(lo <= dds.pick_domain_id() <= hi for _ in range(100))


def test_apply_in_process(tmp_path):
    target = {"ROS_LOCALHOST_ONLY": "1", "FASTRTPS_DEFAULT_PROFILES_FILE": "/x.xml", "KEEP": "1"}
    env = _env(tmp_path)
    dds.apply_in_process(env, target)
    assert target["KEEP"] == "1"
    assert "ROS_LOCALHOST_ONLY" not in target and "FASTRTPS_DEFAULT_PROFILES_FILE" not in target
    for key in dds.ROS_ENV_KEYS:
        assert target[key] == env[key]


def _profile_root(tmp_path, **kw) -> ET.Element:
    env = _env(tmp_path, **kw)
    return ET.parse(env["FASTDDS_DEFAULT_PROFILES_FILE"]).getroot()


def test_profile_is_valid_xml_with_shm_and_loopback_udp(tmp_path):
    root = _profile_root(tmp_path)
    assert root.tag == "{http://www.eprosima.com}dds"
    descriptors = {d.findtext("f:transport_id", namespaces=NS): d
                   for d in root.iterfind("f:profiles/f:transport_descriptors/f:transport_descriptor", NS)}
    kinds = {tid: d.findtext("f:type", namespaces=NS) for tid, d in descriptors.items()}
    assert sorted(kinds.values()) == ["SHM", "UDPv4"]
    shm = next(d for d in descriptors.values() if d.findtext("f:type", namespaces=NS) == "SHM")
    assert int(shm.findtext("f:segment_size", namespaces=NS)) == 64 * 1024 * 1024
    udp = next(d for d in descriptors.values() if d.findtext("f:type", namespaces=NS) == "UDPv4")
    assert [a.text for a in udp.iterfind("f:interfaceWhiteList/f:address", NS)] == ["127.0.0.1"]

    participants = root.findall("f:profiles/f:participant", NS)
    assert len(participants) == 1 and participants[0].get("is_default_profile") == "true"
    rtps = participants[0].find("f:rtps", NS)
    assert rtps.findtext("f:useBuiltinTransports", namespaces=NS) == "false"
    used = [t.text for t in rtps.iterfind("f:userTransports/f:transport_id", NS)]
    assert sorted(used) == sorted(descriptors)


def test_profile_segment_size_is_configurable(tmp_path):
    root = _profile_root(tmp_path, shm_segment_bytes=8 * 1024 * 1024)
    sizes = [e.text for e in root.iter("{http://www.eprosima.com}segment_size")]
    assert sizes == [str(8 * 1024 * 1024)]
    with pytest.raises(ValueError):
        dds.fastdds_profile_xml(0)


def test_profile_has_no_multicast_and_no_non_loopback_address(tmp_path):
    root = _profile_root(tmp_path)
    addresses = [e.text.strip() for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "address"]
    assert addresses, "the profile should pin its locators/allow-list to loopback"
    for text in addresses:
        ip = ipaddress.ip_address(text)
        assert ip.is_loopback and not ip.is_multicast, text
    tags = {e.tag.rsplit("}", 1)[-1] for e in root.iter()}
    assert not {t for t in tags if "ulticast" in t}, tags  # no (metatraffic)MulticastLocatorList
    assert "metatrafficUnicastLocatorList" in tags  # which stops Fast DDS adding a default multicast one
    raw = Path(dds.ros_env({}, workdir=tmp_path / "raw")["FASTDDS_DEFAULT_PROFILES_FILE"]).read_text()
    assert "239.255" not in raw and "0.0.0.0" not in raw


def test_module_does_not_import_rclpy():
    code = "import sys, foundry_ros.dds; assert 'rclpy' not in sys.modules, 'rclpy imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def _fake_segment(root: Path, name: str, age_s: float) -> Path:
    for f in (name, f"{name}_el", f"sem.{name}_mutex"):
        (root / f).write_bytes(b"")
        then = time.time() - age_s
        os.utime(root / f, (then, then))
    return root / f"{name}_el"


def test_remove_stale_shm_segments(tmp_path):
    _fake_segment(tmp_path, "fastdds_dead", age_s=60)
    _fake_segment(tmp_path, "fastdds_young", age_s=0)
    alive = _fake_segment(tmp_path, "fastdds_alive", age_s=60)
    (tmp_path / "other_file").write_bytes(b"")
    fd = os.open(alive, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a live Fast DDS participant does
        removed = dds.remove_stale_shm_segments(tmp_path, min_age_s=5.0)
    finally:
        os.close(fd)
    assert sorted(removed) == ["fastdds_dead", "fastdds_dead_el", "sem.fastdds_dead_mutex"]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert "fastdds_alive" in left and "fastdds_young" in left and "other_file" in left
    assert dds.remove_stale_shm_segments(tmp_path / "missing") == []
