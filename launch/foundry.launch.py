"""Launch the Foundry perception node.

    ros2 launch foundry_ros foundry.launch.py model:=/path/model.pt input_topic:=/lidar/points device:=cuda \
        segments_topic:=/perception/segments

Launch arguments (an empty value keeps what the parameters file says):

* ``config``      -- ROS 2 parameters file (default: share/foundry_ros/config/foundry.yaml)
* ``model``       -- model_path (exported Foundry model)
* ``input_topic`` -- a single input PointCloud2 topic (replaces the ``input_topics`` parameter,
  default ``/points``)
* ``device``      -- torch device of the predictor ("auto", "cpu", "cuda", "cuda:0")
* ``backend``     -- inference backend ("auto", "tensorrt", "torch", "onnxruntime")
* ``precision``   -- "auto", "fp32" or "fp16" (foundry_ros.params.PRECISION_CHOICES)
* ``namespace``   -- namespace of the node (its outputs are node-private: <ns>/foundry/segments, ...)
* ``log_level``   -- rcutils log level of the node (default info)
* ``use_sim_time`` -- "true" when replaying bags with /clock
* ``lifecycle``   -- "true" starts the managed (lifecycle) node (``foundry-node --lifecycle``,
  foundry_ros.lifecycle_node): it comes up unconfigured; configure loads the model and calibrates,
  activate subscribes, deactivate stops publishing, cleanup frees the model (drive it with
  ``ros2 lifecycle set /foundry configure`` or a lifecycle manager)

Output remapping (the Autoware way: the node publishes node-private names, the launch file remaps
them). Each argument below defaults to the private name itself, i.e. no change; any other value is
passed as ``-r <private name>:=<value>`` (absolute, relative to the namespace, or ``~/...``):

* ``segments_topic`` (``~/segments``), ``report_topic`` (``~/report``), ``labels_topic``
  (``~/labels``), ``embeddings_topic`` (``~/embeddings``), ``debug_segments_rgb_topic``
  (``~/debug/segments_rgb``), ``debug_supertokens_topic`` (``~/debug/supertokens``)

``/diagnostics`` stays absolute. The input topics are ordinary names too, so instead of
``input_topic`` a remapping of the default works as well: ``foundry-node --ros-args -r
/points:=/lidar/points``.

The executable ``foundry-node`` is the console entry ``foundry_ros.node:main``; the package's
CMakeLists.txt (colcon build) and setup.cfg (pip) install it under lib/foundry_ros, where ``ros2 run``
/ ``ros2 launch`` look for it.
"""
from __future__ import annotations

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node

PACKAGE = "foundry_ros"
EXECUTABLE = "foundry-node"
#: launch argument -> the node-private output name it remaps (foundry_ros.node's *_TOPIC constants)
OUTPUT_REMAPS = {
    "segments_topic": "~/segments",
    "report_topic": "~/report",
    "labels_topic": "~/labels",
    "embeddings_topic": "~/embeddings",
    "debug_segments_rgb_topic": "~/debug/segments_rgb",
    "debug_supertokens_topic": "~/debug/supertokens",
}


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
    lifecycle = LaunchConfiguration("lifecycle").perform(context).strip().lower() in ("1", "true", "yes", "on")
    action = LifecycleNode if lifecycle else Node
    node = action(
        package=PACKAGE,
        executable=EXECUTABLE,
        name="foundry",
        namespace=LaunchConfiguration("namespace").perform(context),
        parameters=parameters,
        # substitutions, resolved by launch_ros (the defaults are identity remaps: ~/x:=~/x)
        remappings=[(private, LaunchConfiguration(arg)) for arg, private in OUTPUT_REMAPS.items()],
        ros_arguments=["--log-level", LaunchConfiguration("log_level").perform(context)],
        arguments=["--lifecycle"] if lifecycle else [],
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
        DeclareLaunchArgument("lifecycle", default_value="false",
                              description="true: the managed (lifecycle) node, started unconfigured"),
        *[DeclareLaunchArgument(arg, default_value=private, description=f"remap the output {private}")
          for arg, private in OUTPUT_REMAPS.items()],
        OpaqueFunction(function=_launch_node),
    ])
