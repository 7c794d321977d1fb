"""Launch the Foundry perception node.

    ros2 launch foundry_ros foundry.launch.py model:=/path/model.pt input_topic:=/lidar/points device:=cuda

Launch arguments (an empty value keeps what the parameters file says):

* ``config``      -- ROS 2 parameters file (default: share/foundry_ros/config/foundry.yaml)
* ``model``       -- model_path (exported Foundry model)
* ``input_topic`` -- a single input PointCloud2 topic (replaces input_topics)
* ``device``      -- torch device of the predictor ("cpu", "cuda", "cuda:0"); ``backend`` is an alias
* ``precision``   -- "auto", "fp32", "fp16", "bf16"
* ``namespace``   -- namespace of the node (its outputs are relative: <ns>/foundry/segments, ...)
* ``log_level``   -- rcutils log level of the node (default info)
* ``use_sim_time`` -- "true" when replaying bags with /clock

The executable ``foundry-node`` is the console entry ``foundry_ros.node:main``; setup.cfg installs
it under lib/foundry_ros, where ``ros2 run`` / ``ros2 launch`` look for it.
"""
from __future__ import annotations

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = "foundry_ros"
EXECUTABLE = "foundry-node"


def _default_config() -> str:
    return os.path.join(get_package_share_directory(PACKAGE), "config", "foundry.yaml")


def _overrides(context) -> dict:
    """Parameter overrides from the non-empty launch arguments."""
    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context).strip()

    out: dict = {}
    if arg("model"):
        out["model_path"] = arg("model")
    if arg("device"):
        out["device"] = arg("device")
    if arg("backend"):
        out["backend"] = arg("backend")
    if arg("precision"):
        out["precision"] = arg("precision")
    if arg("input_topic"):
        out["input_topics"] = [arg("input_topic")]
    if arg("use_sim_time"):
        out["use_sim_time"] = arg("use_sim_time").lower() in ("1", "true", "yes", "on")
    return out


def _launch_node(context, *args, **kwargs):
    config = LaunchConfiguration("config").perform(context)
    if not os.path.isfile(config):
        raise RuntimeError(f"foundry.launch.py: parameters file {config!r} not found")
    parameters: list = [config]
    overrides = _overrides(context)
    if overrides:
        parameters.append(overrides)  # later entries win over the file
    node = Node(
        package=PACKAGE,
        executable=EXECUTABLE,
        name="foundry",
        namespace=LaunchConfiguration("namespace").perform(context),
        parameters=parameters,
        ros_arguments=["--log-level", LaunchConfiguration("log_level").perform(context)],
        output="screen",
        emulate_tty=True,
    )
    return [node]


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription([
        DeclareLaunchArgument("config", default_value=_default_config(),
                              description="ROS 2 parameters file of the foundry node"),
        DeclareLaunchArgument("model", default_value="", description="model_path override (exported model)"),
        DeclareLaunchArgument("input_topic", default_value="",
                              description="single input PointCloud2 topic (replaces input_topics)"),
        DeclareLaunchArgument("device", default_value="",
                              description="predictor device override: cpu, cuda, cuda:0, ..."),
        DeclareLaunchArgument("backend", default_value="",
                              description="inference backend override: auto, tensorrt, torch, onnxruntime"),
        DeclareLaunchArgument("precision", default_value="", description="auto, fp32 or fp16"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node"),
        DeclareLaunchArgument("log_level", default_value="info", description="debug, info, warn, error"),
        DeclareLaunchArgument("use_sim_time", default_value="", description="true to follow /clock"),
        OpaqueFunction(function=_launch_node),
    ])
