"""Budget-aware inference runtime (no ROS): raw points in, per-point labels/segments and token
embeddings out, with the token budget chosen per call."""
