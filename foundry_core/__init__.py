"""Foundry core: a ROS-free 3D point-cloud foundation model (tokenizer, ViT teacher,
Point-JEPA pre-training, downstream heads, datasets and the training loop)."""

__version__ = "0.1.0"
