"""Foundry ROS: ROS 2 glue (PointCloud2 I/O, token-budget control) around foundry_core."""
