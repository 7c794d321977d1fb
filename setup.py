"""foundry_ros: the pip-installable distribution (foundry_core + foundry_ros).

colcon builds the ROS 2 package from CMakeLists.txt instead (ament_cmake); it reads the console scripts
below (one per line, each written as a quoted name = module:function and a comma) and installs them
under lib/foundry_ros.
"""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "foundry_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    description="Foundry: a distilled 3D point-cloud foundation model for ROS 2 robots",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["foundry_core", "foundry_core.*", "foundry_ros", "foundry_ros.*"]),
    package_data={"foundry_core": ["weights/*.safetensors", "weights/*.json"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
    ],
    install_requires=[
        "torch>=2.4", "numpy", "scipy", "fpsample", "pykdtree", "threadpoolctl", "h5py", "safetensors", "pyyaml",
        "matplotlib", "tqdm", "scikit-learn", "pypcd4", "rosbags",
    ],
    extras_require={"test": ["pytest"]},
    entry_points={"console_scripts": [
        "foundry = foundry_core.cli:main",
        "foundry-node = foundry_ros.node:main",  # the ROS 2 node (ros2 run / launch: foundry_ros foundry-node)
        "foundry-bag = foundry_ros.bag_replay:main",  # bag play / record / pack (foundry_ros.bag_replay)
        "foundry-demo = foundry_ros.demo:main",  # the main job: node + default stream + summary
    ]},
    zip_safe=False,
)
