"""QoS profiles of the node's topics and subscriptions with QoS-event callbacks (rclpy)."""
from __future__ import annotations

from typing import Any, Callable, Mapping

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

__all__ = ["input_qos", "reliable", "latched", "subscribe_with_events"]


def input_qos(p: Mapping[str, Any]) -> QoSProfile:
    """QoS of the input subscriptions from the parameters (volatile, KEEP_LAST ``qos_depth``)."""
    reliability = (ReliabilityPolicy.RELIABLE if p["qos_reliability"] == "reliable"
                   else ReliabilityPolicy.BEST_EFFORT)
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=int(p["qos_depth"]), reliability=reliability,
                      durability=DurabilityPolicy.VOLATILE)


def reliable(depth: int) -> QoSProfile:
    """Reliable, volatile, KEEP_LAST ``depth`` (the outputs)."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=ReliabilityPolicy.RELIABLE)


def latched() -> QoSProfile:
    """Reliable, transient local, depth 1: late joiners get the last message (the label map)."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


def subscribe_with_events(node: Any, msg_type: Any, topic: str, callback: Callable, qos: QoSProfile,
                          callback_group: Any, **events: Callable) -> Any:
    """``node.create_subscription`` with QoS event callbacks (e.g. ``incompatible_qos``, ``message_lost``).

    Events this rmw does not support are dropped from the last one on (each failure is logged at
    debug level); in the end the subscription is made without any.
    """
    try:
        from rclpy.event_handler import SubscriptionEventCallbacks
    except ImportError:  # older rclpy
        SubscriptionEventCallbacks = None
    names = list(events) if SubscriptionEventCallbacks is not None else []
    for k in range(len(names), 0, -1):
        wanted = {name: events[name] for name in names[:k]}
        try:
            return node.create_subscription(msg_type, topic, callback, qos, callback_group=callback_group,
                                            event_callbacks=SubscriptionEventCallbacks(**wanted))
        except Exception as e:  # event type unsupported by this rmw
            node.get_logger().debug(f"QoS events {list(wanted)} unavailable on {topic}: {e}")
    return node.create_subscription(msg_type, topic, callback, qos, callback_group=callback_group)
