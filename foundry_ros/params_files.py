"""Stacking ROS 2 parameter files (pure Python, PyYAML; no rclpy).

Why. rcl parses every ``--params-file`` into one table of node entries (a key such as ``foundry``,
``/foundry``, ``/**`` or ``robot1/foundry``). When two files assign the same parameter of the same
entry, rcl (Kilted, rcl_yaml_param_parser) writes the second value into the first one's variant
without clearing it, and rclpy reads the variant's fields in a fixed order (bool, integer, double,
string, arrays). Measured: ``deadline_ms: 10.0`` then ``deadline_ms: fast`` reads back 10.0,
``input_topics: ["/points"]`` then ``input_topics: []`` reads back ``["/points"]``; the later file is
silently lost whenever its value has another type (or is an empty list).

What. :func:`merge_params_files` merges the files here, later ones overriding earlier ones per
(node entry, parameter name), and :func:`merged_yaml` writes the result as one parameters file, so
rcl sees every assignment once. Values keep their YAML text and style (``1e3``, ``yes``, ``"80"``
are read by rcl exactly as in the original file: nothing is re-typed by PyYAML). Nested parameter
namespaces (``a: {b: 1}``) and dotted names (``a.b: 1``) are the same parameter; nested node
namespaces (``robot1: {foundry: ...}``) and ``robot1/foundry`` are the same entry.
"""
from __future__ import annotations

import os
from typing import Iterable

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode

__all__ = ["ParamsFileError", "ROS_PARAMETERS", "read_params_file", "merge_params_files", "merged_yaml"]

ROS_PARAMETERS = "ros__parameters"
_STR = "tag:yaml.org,2002:str"
_MAP = "tag:yaml.org,2002:map"
_NULL = "tag:yaml.org,2002:null"

#: node entry -> parameter name -> the value's YAML node (insertion order = first appearance)
Entries = dict[str, dict[str, Node]]


class ParamsFileError(ValueError):
    """A file that is not a ROS 2 parameters file (the message names the file and the place)."""


def _key(node: Node, path: str, where: str) -> str:
    if not isinstance(node, ScalarNode):
        raise ParamsFileError(f"{path}: a key under {where!r} is not a plain name")
    return str(node.value)


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _NULL


def _parameters(node: Node, prefix: str, out: dict[str, Node], path: str, entry: str) -> None:
    if _is_null(node):  # `ros__parameters:` with nothing under it
        return
    if not isinstance(node, MappingNode):
        raise ParamsFileError(f"{path}: {entry!r} {ROS_PARAMETERS} must be a mapping of parameter names")
    for k, v in node.value:
        name = prefix + _key(k, path, entry)
        if isinstance(v, MappingNode):  # a parameter namespace: a: {b: 1} is a.b
            _parameters(v, name + ".", out, path, entry)
        else:
            out.pop(name, None)  # a repeated name moves to its last place, like a later file
            out[name] = v


def _entries(node: Node, names: list[str], out: Entries, path: str) -> None:
    where = "/".join(names) or "the top level"
    if not isinstance(node, MappingNode):
        raise ParamsFileError(f"{path}: {where!r} must be a mapping (node names, then {ROS_PARAMETERS})")
    for k, v in node.value:
        key = _key(k, path, where)
        if key == ROS_PARAMETERS:
            if not names:
                raise ParamsFileError(f"{path}: {ROS_PARAMETERS} must be under a node name (e.g. foundry:)")
            _parameters(v, "", out.setdefault("/".join(names), {}), path, "/".join(names))
        else:
            _entries(v, names + [key], out, path)


def read_params_file(path: str | os.PathLike) -> Entries:
    """The node entries and parameters of one file (ParamsFileError / OSError when it cannot be read)."""
    path = os.fspath(path)
    with open(path, encoding="utf-8") as f:
        try:
            root = yaml.compose(f, Loader=yaml.SafeLoader)
        except yaml.YAMLError as e:
            raise ParamsFileError(f"{path}: not valid YAML: {e}") from e
    out: Entries = {}
    if root is not None and not _is_null(root):
        _entries(root, [], out, path)
    return out


def merge_params_files(paths: Iterable[str | os.PathLike]) -> Entries:
    """The files' entries merged in order: a later file's value replaces an earlier one's (whatever
    its type), per node entry and parameter name."""
    merged: Entries = {}
    for path in paths:
        for entry, params in read_params_file(path).items():
            target = merged.setdefault(entry, {})
            for name, value in params.items():
                target.pop(name, None)
                target[name] = value
    return merged


def merged_yaml(entries: Entries) -> str:
    """``entries`` as the text of one ROS 2 parameters file (one key per node entry, dotted names)."""
    def s(text: str) -> ScalarNode:
        return ScalarNode(_STR, text)

    root = MappingNode(_MAP, [
        (s(entry), MappingNode(_MAP, [(s(ROS_PARAMETERS), MappingNode(_MAP, [(s(n), v) for n, v in params.items()]))]))
        for entry, params in entries.items()])
    return yaml.serialize(root, Dumper=yaml.SafeDumper) if entries else "{}\n"
