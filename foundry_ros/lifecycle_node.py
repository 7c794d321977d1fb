"""The managed (lifecycle) variant of the Foundry node, for systems that bring sensors up in order.

    foundry-node --lifecycle --params-file config/foundry.yaml
    ros2 launch foundry_ros foundry.launch.py lifecycle:=true

The node starts *unconfigured* with its parameters declared (they can be set and dumped), and
follows the standard ROS 2 state machine (``lifecycle_msgs``; ``ros2 lifecycle set /foundry configure``
or a lifecycle manager such as nav2's):

==============  ===========================================================================
transition      what the node does (:class:`~foundry_ros.node.FoundryNode` phases)
==============  ===========================================================================
configure       read and check the parameters, load the model, warm it up, calibrate the
                operating points, create the publishers, the diagnostics timer and the worker
activate        subscribe to ``input_topics``: frames flow
deactivate      unsubscribe; a frame still in the model is not published
cleanup         stop the worker, destroy the publishers and timer, free the model
shutdown        cleanup from any state, then the process exits 0
error           (an exception in a transition) cleanup, back to unconfigured
==============  ===========================================================================

A configure that fails (a missing model, a bad parameter) returns FAILURE with the reason logged
and leaves the node unconfigured, so the manager can fix the parameters and try again. Diagnostics
are published from configure on, with the state (``active`` / ``inactive``) in their values.
"""
from __future__ import annotations

import threading
from typing import Any

from rclpy.lifecycle import LifecycleNodeMixin, LifecycleState, TransitionCallbackReturn

from foundry_ros.model import PredictorFactory
from foundry_ros.node import FoundryNode

__all__ = ["FoundryLifecycleNode"]

#: How long after the shutdown transition the process stops spinning (the transition's service
#: response must reach the caller first).
SHUTDOWN_DELAY_S = 0.3


class FoundryLifecycleNode(LifecycleNodeMixin, FoundryNode):
    """ROS 2 managed node ``foundry``: :class:`~foundry_ros.node.FoundryNode` driven by lifecycle transitions."""

    def __init__(self, predictor_factory: PredictorFactory | None = None, **node_kwargs: Any) -> None:
        FoundryNode.__init__(self, predictor_factory, managed=True, **node_kwargs)
        LifecycleNodeMixin.__init__(self)
        self.finalized = threading.Event()
        self.get_logger().info("foundry lifecycle node unconfigured: waiting for the configure transition")

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.configure_pipeline()
        except Exception as e:
            self.get_logger().error(f"configure failed: {type(e).__name__}: {e}")
            self._safe_cleanup()
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.activate_pipeline()
        self.get_logger().info(f"active: subscribed to {self._p['input_topics']}")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.deactivate_pipeline()
        self.get_logger().info("inactive: unsubscribed, nothing is published")
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.cleanup_pipeline()
        self.get_logger().info("unconfigured: model freed")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._safe_cleanup()
        self.finalized.set()
        ctx = self.context
        timer = threading.Timer(SHUTDOWN_DELAY_S, ctx.try_shutdown)  # ends the spin once the reply is out
        timer.daemon = True
        timer.start()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f"error in state {state.label}: cleaning up")
        self._safe_cleanup()
        return TransitionCallbackReturn.SUCCESS

    def _safe_cleanup(self) -> None:
        try:
            self.cleanup_pipeline()
        except Exception as e:  # a half-built pipeline: free what exists
            self.get_logger().warning(f"cleanup: {type(e).__name__}: {e}")
            self._configured = self._active = False
            self._predictor = self._controller = None
