"""The Foundry perception node: PointCloud2 in, per-point labels / segments / reports out.

Usage (console entry ``foundry-node``, also ``python -m foundry_ros.node``; arguments, signals and
shutdown in :mod:`foundry_ros.node_main`)::

    foundry-node --params-file config/foundry.yaml [--ros-args -p deadline_ms:=80.0 ...]

The node holds no model logic: it decodes clouds, asks a predictor (``Predictor.from_checkpoint``
of :mod:`foundry_core.runtime.predictor`, or any object with the same contract injected through
``predictor_factory``) for a prediction that fits the deadline, maps the per-point results back onto
the input grid and publishes them. A model with operating points runs every frame at the point
chosen by :class:`foundry_ros.operating_points.OperatingPointController` (seeded at start with the
points' calibrated costs, ``predictor.calibrate()``; or at the fixed ``operating_point``); a model
without them at the token budget of :class:`foundry_ros.budget.BudgetController`. Either is fed with
the measured latency receive -> publish. The logic lives in ROS-free modules: parameters
(:mod:`~foundry_ros.params`), model input / outputs (:mod:`~foundry_ros.frame_io`), counters
(:mod:`~foundry_ros.frame_stats`), the report (:mod:`~foundry_ros.report`), diagnostics
(:mod:`~foundry_ros.diagnostics`); this file only wires them to topics, timers and threads.

Threads. Subscription callbacks only store ``(msg, receive time)`` in a single newest-frame slot
(a frame still waiting there when a newer one arrives is overwritten and counted as stale) and
wake the worker thread. The worker decodes, runs the predictor, publishes and feeds the
controller, so a slow model never blocks the executor (parameter services, diagnostics, QoS
events stay responsive), and the node always works on the newest cloud.

Topics. Outputs are node-private (``~/x``: ``/foundry/x`` in the root namespace, ``<ns>/foundry/x``
under a namespace) and remappable like any name: ``--ros-args -r ~/segments:=/perception/segments``
(``-r foundry/segments:=...`` and ``-r /foundry/segments:=...`` match too; ``-r __node:=name`` moves them
all to ``/name/...``; ``-r __ns:=/robot1`` to ``/robot1/foundry/...``). The inputs are the names in
``input_topics`` (default the absolute ``/points``; a relative entry resolves in the namespace,
``~/input/points`` is private), remappable as well: ``-r /points:=/lidar/points``.

==================================  ========================================  =====================
topic                               type                                      QoS
==================================  ========================================  =====================
``input_topics`` (``/points``)      sensor_msgs/PointCloud2 (in)              ``qos_reliability``,
                                                                              KEEP_LAST ``qos_depth``
``~/segments``                      sensor_msgs/PointCloud2                   reliable, depth 1
``~/report``                        foundry_msgs/InferenceReport              reliable, depth 10
``~/embeddings``                    foundry_msgs/TokenEmbeddings (optional)   reliable, depth 1
``~/labels``                        foundry_msgs/LabelMap (once)              reliable, transient
                                                                              local, depth 1
``~/debug/segments_rgb``            sensor_msgs/PointCloud2 (while            reliable, depth 1
                                    subscribed)
``~/debug/supertokens``             visualization_msgs/MarkerArray (while     reliable, depth 1
                                    subscribed)
``/diagnostics``                    diagnostic_msgs/DiagnosticArray           reliable, depth 10
==================================  ========================================  =====================

``~/segments`` keeps the input's header (stamp; frame_id unless ``frame_id_override``)
and layout: ``height x width`` of the input, one output point per input point, fields ``x, y, z``
(FLOAT32), ``label`` (INT32: class id of the label map, -1 for invalid points), ``confidence``
(FLOAT32, 0 for invalid points), ``segment`` (INT32 SuperToken id, -1 for invalid points),
little-endian, 24-byte points, ``row_step = width * 24``. Invalid input points (NaN/Inf x, y or z)
keep NaN coordinates, so organised clouds stay organised and ``is_dense`` is true only when the
input had no invalid point. ``label`` is INT32 (not UINT32) so that -1 can mark invalid points;
LabelMap ids are uint32 and always >= 0.

Debug outputs for RViz (:mod:`~foundry_ros.debug_outputs`), built only while they have a subscriber,
so they cost nothing otherwise (their time is part of the measured latency when they are built).
``~/debug/segments_rgb``: the segments cloud as ``x, y, z`` FLOAT32 plus ``rgb`` (FLOAT32 at offset 12
holding a packed ``0x00RRGGBB``, 16-byte points; RViz's PointCloud2 display picks its ``RGB8`` colour
transformer for it by itself), coloured with the label map's colours; invalid points NaN and grey.
``~/debug/supertokens``: one SPHERE_LIST marker, a sphere at the mean xyz of each SuperToken segment,
coloured by segment id.

QoS choice. Inputs default to best-effort (the sensor-data convention): a best-effort
subscription matches both best-effort and reliable publishers, and with a newest-frame slot a
lost frame costs nothing that a retransmission would recover in time. Caveat measured on this
project's machines: best-effort clouds of 100k-300k points are mostly LOST (90-100 %) when they
travel over UDP fragments (Fast DDS default transports, whose shared-memory segment is too small
for them); with a shared-memory transport large enough for a cloud (the 64 MiB profile of
:mod:`foundry_ros.dds`) nothing was lost. So for big clouds either give the node (and the driver)
such a profile (``FASTDDS_DEFAULT_PROFILES_FILE``), or set ``qos_reliability: reliable`` when the
driver publishes reliable. A reliable subscription cannot match a best-effort publisher: the node
then logs the incompatible-QoS event. Outputs are published reliable, which matches subscribers
of either reliability.
"""
from __future__ import annotations

import gc
import sys
import threading
import time
import traceback
from types import SimpleNamespace
from typing import Any

from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.parameter import Parameter

from foundry_core.runtime.types import CalibrationStopped, FrameAbandoned
from foundry_ros import params as P
from foundry_ros import debug_outputs as debug
from foundry_ros.budget import BudgetController
from foundry_ros.diagnostics import diagnostic_values, infeasible_message, key_values
from foundry_ros.embeddings import embeddings_fields
from foundry_ros.frame_io import SEGMENT_FIELDS, aligned_outputs, check_result, model_input, output_header
from foundry_ros.frame_slot import Frame, NewestFrameSlot, frame_age_s, receive_time
from foundry_ros.dds import profile_segment_bytes
from foundry_ros.frame_stats import FrameStats
from foundry_ros.label_map import label_rows
from foundry_ros.model import ModelInfo, PredictorFactory, check_channels, default_predictor_factory
from foundry_ros.msg_values import fill_message
from foundry_ros.operating_points import OperatingPointController, calibration_table, point_costs
from foundry_ros.pointcloud2 import DecodedCloud, PointCloud2Error, decode_pointcloud2, make_pointcloud2
from foundry_ros.qos import input_qos, latched, reliable, subscribe_with_events
from foundry_ros.report import StageTimes, build_report
from foundry_ros.sequence_gaps import SequenceGaps
from foundry_ros.ros_params import declare_parameters, read_parameters

__all__ = ["FoundryNode", "PredictorFactory", "default_predictor_factory", "main",
           "SEGMENTS_TOPIC", "REPORT_TOPIC", "EMBEDDINGS_TOPIC", "LABELS_TOPIC", "DIAGNOSTICS_TOPIC",
           "DEBUG_SEGMENTS_RGB_TOPIC", "DEBUG_SUPERTOKENS_TOPIC"]

# Outputs are node-private names (/foundry/segments under the root namespace, <ns>/foundry/segments
# under a namespace), remappable with --ros-args -r ~/segments:=/perception/segments.
SEGMENTS_TOPIC = "~/segments"
REPORT_TOPIC = "~/report"
EMBEDDINGS_TOPIC = "~/embeddings"
LABELS_TOPIC = "~/labels"
DEBUG_SEGMENTS_RGB_TOPIC = "~/debug/segments_rgb"
DEBUG_SUPERTOKENS_TOPIC = "~/debug/supertokens"
DIAGNOSTICS_TOPIC = "/diagnostics"
NODE_NAME = "foundry"
_LOG_THROTTLE_S = 5.0


class _SkipFrame(Exception):
    """The frame is dropped (too old, undecodable, predictor failure): counted and logged already."""


def _message_types() -> SimpleNamespace:
    """The message classes the node uses (imported here: importing this module needs no foundry_msgs)."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
    from foundry_msgs.msg import InferenceReport, LabelEntry, LabelMap, TokenEmbeddings
    from geometry_msgs.msg import Point
    from sensor_msgs.msg import PointCloud2, PointField
    from std_msgs.msg import ColorRGBA
    from visualization_msgs.msg import Marker, MarkerArray

    return SimpleNamespace(
        PointCloud2=PointCloud2, PointField=PointField, InferenceReport=InferenceReport,
        TokenEmbeddings=TokenEmbeddings, LabelMap=LabelMap, LabelEntry=LabelEntry, ColorRGBA=ColorRGBA,
        DiagnosticArray=DiagnosticArray, DiagnosticStatus=DiagnosticStatus, KeyValue=KeyValue,
        Marker=Marker, MarkerArray=MarkerArray, Point=Point)


class FoundryNode(Node):
    """ROS 2 node ``foundry``: see the module docstring for topics, QoS and threading."""

    def __init__(self, predictor_factory: PredictorFactory | None = None, *, start_worker: bool = True,
                 managed: bool = False, **node_kwargs: Any) -> None:
        """Declare and check the parameters; unless ``managed`` (the lifecycle variant,
        :mod:`foundry_ros.lifecycle_node`), also configure (model, controller, outputs, worker) and
        activate (input subscriptions) at once."""
        super().__init__(NODE_NAME, **node_kwargs)
        self._msg = _message_types()
        self._factory = predictor_factory or default_predictor_factory
        self._start_worker = start_worker
        self._lock = threading.RLock()  # controller, parameters, period estimator
        self._infeasible = False  # last feasibility logged (see _log_feasibility)
        self._p = self._init_parameters()
        self._configured = False
        self._active = False
        self._subs: list[Any] = []
        self.add_on_set_parameters_callback(self._on_set_parameters)
        if not managed:
            self.configure_pipeline()
            self.activate_pipeline()

    # ============================================================================================
    # phases (a plain node runs configure + activate in __init__; the lifecycle node on transitions)

    def configure_pipeline(self) -> None:
        """Load the model (warm-up, calibration), build the controller, the outputs and the worker."""
        p = read_parameters(self)
        errors = P.validate_params(p)
        if errors:
            raise ValueError("invalid foundry parameters: " + "; ".join(errors))
        self._p = p
        self._predictor, self._model = self._init_predictor(self._factory)
        self._period = P.PeriodEstimator()
        self._controller = self._init_controller(self._period.deadline_s(self._p["deadline_ms"]))
        self._stats = FrameStats(initial_budget=self._initial_budget())
        self._init_publishers()
        self._slot = NewestFrameSlot()
        self._gaps = SequenceGaps()                 # publications that never reached the callback
        self._shm_segment_bytes = profile_segment_bytes()
        self._integer_xyz_topics: set[str] = set()   # topics already warned about integer xyz
        self._worker = threading.Thread(target=self._run_worker, name="foundry-worker", daemon=True)
        self._input_group = ReentrantCallbackGroup()
        self._timer_group = MutuallyExclusiveCallbackGroup()
        self._diag_timer = self.create_timer(self._p["diagnostics_period_s"], self._publish_diagnostics,
                                             callback_group=self._timer_group)
        if self._start_worker:
            self._worker.start()
        self._configured = True
        self._log_start()

    def activate_pipeline(self) -> None:
        """Subscribe to the inputs: frames flow from now on."""
        qos = input_qos(self._p)
        self._subs = [self._subscribe(topic, qos) for topic in self._p["input_topics"]]
        self._active = True

    def deactivate_pipeline(self) -> None:
        """Unsubscribe; a frame still being processed is not published."""
        self._active = False
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []

    def cleanup_pipeline(self) -> None:
        """Stop the worker, destroy the outputs and the timer, and free the model."""
        if self._active:
            self.deactivate_pipeline()
        if not self._configured:
            return
        self._configured = False
        self.stop_worker()
        self._diag_timer.cancel()
        self.destroy_timer(self._diag_timer)
        for pub in (self._pub_segments, self._pub_report, self._pub_labels, self._pub_diag, self._pub_debug_rgb,
                    self._pub_debug_tokens, self._pub_embeddings):
            if pub is not None:
                self.destroy_publisher(pub)
        self._pub_embeddings = None
        self._predictor = self._controller = None
        gc.collect()

    @property
    def configured(self) -> bool:
        return self._configured

    @property
    def active(self) -> bool:
        return self._active

    # ============================================================================================
    # set-up

    def _init_parameters(self) -> dict[str, Any]:
        """Declare, check and read the parameters (ValueError with every problem); names the node does
        not know are logged, integers for float parameters are accepted at run time too."""
        from foundry_ros.ros_params import ints_as_floats, unknown_parameters

        declare_parameters(self)
        for warning in unknown_parameters(self):
            self.get_logger().warning(warning)
        p = read_parameters(self)
        errors = P.validate_params(p)
        if errors:
            raise ValueError("invalid foundry parameters: " + "; ".join(errors))
        self.add_pre_set_parameters_callback(ints_as_floats)  # `ros2 param set /foundry deadline_ms 80`
        return p

    def _init_predictor(self, factory: PredictorFactory) -> tuple[Any, ModelInfo]:
        p = self._p
        predictor = factory(p["model_path"], p["device"], p["precision"], p["backend"])
        model = ModelInfo.of(predictor)
        warning = check_channels(model.in_channels, p["extra_fields"])
        if warning:
            self.get_logger().warning(warning)
        error = P.check_operating_point(p["operating_point"], model.point_names)
        if error:
            raise ValueError(error)
        warm_up = getattr(predictor, "warm_up", None)
        if callable(warm_up):                # first-call set-up costs off the first sensor frame
            self.get_logger().info(f"predictor warm-up: {warm_up():.0f} ms")
        return predictor, model

    def _init_controller(self, deadline_s: float) -> BudgetController | OperatingPointController:
        """The OperatingPointController seeded with calibrated costs (a model with operating points), else
        the BudgetController."""
        m = self._model
        if not m.operating_points:
            return BudgetController(P.controller_config(self._p, deadline_s, m.min_budget, m.max_budget))
        try:
            measured = self._predictor.calibrate(should_stop=lambda: not self.context.ok())
        except CalibrationStopped:  # a shutdown during start-up: no costs to fall back on, stop starting
            raise
        except Exception as e:  # a failed calibration falls back on the model card's latencies
            self.get_logger().warning(f"predictor.calibrate() failed ({type(e).__name__}: {e}); operating point "
                                      f"costs from the model card or estimated")
            measured = {}
        costs, source = point_costs(m.operating_points, measured)
        controller = OperatingPointController(costs, P.op_controller_config(self._p, deadline_s))
        self.get_logger().info("operating points (cheapest first):\n"
                               + calibration_table(m.operating_points, costs, source, controller.ladder,
                                                   getattr(self._predictor, "overlap_by_point", None)))
        return controller

    def _initial_budget(self) -> int:
        if isinstance(self._controller, BudgetController):
            return self._controller.budget
        op = self._model.point(P.frame_control(self._controller, self._p, self._controller.deadline_s).operating_point)
        return int(op.budget if op.budget is not None else op.centers)

    def _control_summary(self) -> str:
        ctl = self._controller
        if isinstance(ctl, OperatingPointController):
            point = ctl.point if self._p["operating_point"] == P.AUTO else self._p["operating_point"]
            return f"operating point {point} ({self._p['operating_point']}), deadline {ctl.deadline_s * 1e3:.1f} ms"
        return f"budget {ctl.budget}, deadline {ctl.deadline_s * 1e3:.1f} ms"

    def _init_publishers(self) -> None:
        M = self._msg
        self._pub_segments = self.create_publisher(M.PointCloud2, SEGMENTS_TOPIC, reliable(1))
        self._pub_report = self.create_publisher(M.InferenceReport, REPORT_TOPIC, reliable(10))
        self._pub_labels = self.create_publisher(M.LabelMap, LABELS_TOPIC, latched())
        self._pub_diag = self.create_publisher(M.DiagnosticArray, DIAGNOSTICS_TOPIC, reliable(10))
        # debug outputs: always advertised, built only while subscribed (foundry_ros.debug_outputs)
        self._pub_debug_rgb = self.create_publisher(M.PointCloud2, DEBUG_SEGMENTS_RGB_TOPIC, reliable(1))
        self._pub_debug_tokens = self.create_publisher(M.MarkerArray, DEBUG_SUPERTOKENS_TOPIC, reliable(1))
        self._palette = debug.predictor_palette(self._predictor)
        self._pub_embeddings = None
        if self._p["publish_embeddings"]:
            self._ensure_embeddings_publisher()
        self._publish_label_map()

    def _log_start(self) -> None:
        p, m, ctl = self._p, self._model, self._controller
        deadline = "auto (sensor period)" if p["deadline_ms"] <= 0 else f"{p['deadline_ms']} ms"
        if isinstance(ctl, BudgetController):
            control = f"budget={ctl.budget} in [{ctl.config.min_budget}, {ctl.config.max_budget}]"
        else:
            control = f"operating_point={p['operating_point']} (now {ctl.point}) of {list(m.point_names)}"
        self.get_logger().info(
            f"foundry node up: backend={m.backend} precision={m.precision} model={m.model_hash or '?'} "
            f"inputs={p['input_topics']} qos={p['qos_reliability']}/depth {p['qos_depth']} "
            f"{control} deadline={deadline}")

    # ============================================================================================
    # parameters

    @property
    def params(self) -> dict[str, Any]:
        """Current (validated) parameter values."""
        return dict(self._p)

    @property
    def controller(self) -> BudgetController | OperatingPointController:
        return self._controller

    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        changes = {p.name: p.value for p in parameters if p.name in P.SPECS_BY_NAME}
        if not changes:
            return SetParametersResult(successful=True)
        if not self._configured:  # lifecycle node before configure: the rules alone (no model yet)
            return self._set_unconfigured(changes)
        with self._lock:
            try:
                new_p, ctl = P.plan_change(self._p, changes, self._period, self._model.min_budget,
                                           self._model.max_budget, self._model.point_names)
            except ValueError as e:
                self.get_logger().warning(f"rejected parameter change {changes}: {e}")
                return SetParametersResult(successful=False, reason=str(e))
            try:
                if ctl:
                    self._controller.reconfigure(**ctl)
            except ValueError as e:
                return SetParametersResult(successful=False, reason=str(e))
            self._p = new_p
        self._apply_output_changes(changes)
        self.get_logger().info(f"parameters changed: {P.normalise(changes)}; now {self._control_summary()}")
        return SetParametersResult(successful=True)

    def _set_unconfigured(self, changes: dict[str, Any]) -> SetParametersResult:
        try:
            new_p = {**self._p, **P.normalise(changes)}
        except ValueError as e:
            return SetParametersResult(successful=False, reason=str(e))
        errors = P.validate_params(new_p)
        if errors:
            return SetParametersResult(successful=False, reason="; ".join(errors))
        self._p = new_p
        return SetParametersResult(successful=True)

    def _apply_output_changes(self, changes: dict[str, Any]) -> None:
        """Embeddings publisher and diagnostics timer after an accepted change."""
        if "publish_embeddings" in changes and self._p["publish_embeddings"]:
            self._ensure_embeddings_publisher()
        if "diagnostics_period_s" in changes:
            self._diag_timer.cancel()
            self.destroy_timer(self._diag_timer)
            self._diag_timer = self.create_timer(self._p["diagnostics_period_s"], self._publish_diagnostics,
                                                 callback_group=self._timer_group)

    # ============================================================================================
    # inputs

    def _subscribe(self, topic: str, qos: Any) -> Any:
        def on_incompatible(event: Any) -> None:
            policy = getattr(event, "last_policy_kind", "?")
            policy = str(getattr(policy, "name", policy)).replace("RMW_QOS_POLICY_", "")
            reason = (f"a publisher on {topic} offers {policy} incompatible with qos_reliability="
                      f"{self._p['qos_reliability']}, depth {self._p['qos_depth']}")
            self._stats.incompatible_qos(reason)
            self.get_logger().warning(
                f"input {topic}: {reason} ({getattr(event, 'total_count', '?')} so far): its clouds are not "
                f"received. A reliable subscription cannot receive a best-effort publisher: use "
                f"qos_reliability: best_effort.")

        def on_lost(event: Any) -> None:
            self._stats.messages_lost(int(getattr(event, "total_count_change", 1) or 0))

        def on_cloud(msg: Any, info: Any) -> None:  # two arguments: rclpy passes MessageInfo
            self._on_cloud(msg, info, topic)

        return subscribe_with_events(self, self._msg.PointCloud2, topic, on_cloud, qos, self._input_group,
                                     incompatible_qos=on_incompatible, message_lost=on_lost)

    def _on_cloud(self, msg: Any, info: Any, topic: str) -> None:
        """Subscription callback: timestamp, count the publications it shows lost, and park the
        message in the newest-frame slot."""
        recv = receive_time(time.monotonic(), info, time.time_ns())
        lost = self._gaps.observe(topic, info)
        self._stats.received(replaced_stale=self._slot.put(Frame(msg, recv, topic)), lost_before=lost,
                             nbytes=len(msg.data))
        if lost:
            self.get_logger().warning(
                f"{lost} cloud(s) from a publisher on {topic} never arrived (sequence gap; {self._stats.lost_total} "
                f"so far): lost in transport or overwritten in the reader history while the node was busy "
                f"(qos_depth {self._p['qos_depth']})", throttle_duration_sec=_LOG_THROTTLE_S)
        with self._lock:  # the estimator is read under this lock by the worker and the parameter callback
            self._period.tick(recv)

    # ============================================================================================
    # worker

    def _run_worker(self) -> None:
        while (frame := self._slot.take()) is not None:
            try:
                self._process(frame)
            except Exception:  # never let one frame kill the worker
                self._stats.publish_error()
                if self._slot.stopped or not self.context.ok():
                    return
                self.get_logger().error(f"unexpected error processing a frame:\n{traceback.format_exc()}",
                                        throttle_duration_sec=_LOG_THROTTLE_S)

    def _process(self, frame: Frame) -> None:
        p = self._p  # snapshot (replaced, never mutated, by the parameter callback)
        times = StageTimes(received=frame.recv_mono, started=time.monotonic())
        try:
            self._check_age(frame, p)
            decoded, points = self._decode(frame, p)
            times.decoded = time.monotonic()
            with self._lock:
                control = P.frame_control(self._controller, p, self._period.deadline_s(p["deadline_ms"]))
            result = self._predict(frame, decoded, points, control, p)
        except _SkipFrame:
            return
        times.predicted = time.monotonic()
        if not self._active:  # deactivated while the frame was in the model: publish nothing
            return
        header = output_header(frame.msg.header, p["frame_id_override"])
        self._publish_outputs(header, decoded, result, p, times)
        self._finish_frame(header, decoded, result, control, times, p)

    def _check_age(self, frame: Frame, p: dict[str, Any]) -> None:
        if p["max_age_s"] <= 0.0:
            return
        age = frame_age_s(frame.msg.header.stamp, frame.recv_mono, time.monotonic(),
                          self.get_clock().now().nanoseconds)
        if age > p["max_age_s"]:
            self._stats.dropped_age()
            self.get_logger().warning(
                f"dropping a cloud from {frame.topic}: {age:.3f} s old > max_age_s {p['max_age_s']} "
                f"(clock mismatch or overload?)", throttle_duration_sec=_LOG_THROTTLE_S)
            raise _SkipFrame

    def _decode(self, frame: Frame, p: dict[str, Any]) -> tuple[DecodedCloud, Any]:
        try:
            decoded = decode_pointcloud2(frame.msg, extra=p["extra_fields"])
            points, missing = model_input(decoded, p["extra_fields"])
        except Exception as e:  # PointCloud2Error and anything a broken message may raise
            self._stats.decode_error()
            kind = "malformed" if isinstance(e, PointCloud2Error) else "undecodable"
            self.get_logger().warning(f"skipping {kind} PointCloud2 on {frame.topic}: {e}",
                                      throttle_duration_sec=_LOG_THROTTLE_S)
            raise _SkipFrame from e
        if decoded.integer_xyz and frame.topic not in self._integer_xyz_topics:
            self._integer_xyz_topics.add(frame.topic)
            self.get_logger().warning(f"{frame.topic} has integer x/y/z fields: the values are taken as metres "
                                      "unchanged (scale them in the driver if they are not)")
        if missing:
            self._stats.missing_extra()
            self.get_logger().warning(f"cloud on {frame.topic} lacks extra field(s) {missing}: zeros fed to the "
                                      f"model", throttle_duration_sec=_LOG_THROTTLE_S)
        return decoded, points

    def _predict(self, frame: Frame, decoded: DecodedCloud, points: Any, control: P.FrameControl,
                 p: dict[str, Any]) -> Any:
        """The predictor's result, None for a cloud without valid points."""
        if decoded.num_points == 0:
            return None
        if control.operating_point:
            how: dict[str, Any] = {"operating_point": control.operating_point}
        else:
            how = {"budget": control.budget}
        try:
            result = self._predictor(points, **how, fusion_threshold=P.fusion_threshold_arg(p["fusion_threshold"]),
                                     abandon=self._abandon_check(frame, control, p))
            check_result(result, decoded.num_points)
        except FrameAbandoned:
            self._stats.abandoned_late()
            if p["controller_enabled"]:      # a late frame the controller must see, or it would stay too rich
                with self._lock:
                    self._controller.late_frame()   # both controllers have it
            self.get_logger().info(f"abandoned a late cloud from {frame.topic} for a newer one "
                                   f"({self._stats.abandoned_total} so far)", throttle_duration_sec=_LOG_THROTTLE_S)
            raise _SkipFrame from None
        except Exception as e:
            self._stats.predictor_error()
            self.get_logger().error(
                f"predictor failed on a {decoded.num_points}-point cloud from {frame.topic} "
                f"({', '.join(f'{k} {v}' for k, v in how.items())}): {type(e).__name__}: {e}",
                throttle_duration_sec=_LOG_THROTTLE_S)
            raise _SkipFrame from e
        return result

    def _abandon_check(self, frame: Frame, control: P.FrameControl, p: dict[str, Any]) -> Any:
        """The predictor's abandon callback (abandon_late_frames): the frame is past its deadline and a
        newer cloud is waiting in the slot. None when the parameter is off."""
        if not p["abandon_late_frames"]:
            return None

        def late_and_superseded() -> bool:
            return self._slot.waiting and frame_age_s(frame.msg.header.stamp, frame.recv_mono, time.monotonic(),
                                                      self.get_clock().now().nanoseconds) > control.deadline_s
        return late_and_superseded

    def _publish_outputs(self, header: Any, decoded: DecodedCloud, result: Any, p: dict[str, Any],
                         times: StageTimes) -> None:
        """Segments (and embeddings, debug outputs while subscribed) of the frame."""
        M = self._msg
        outputs = aligned_outputs(decoded, result)
        times.mapped = time.monotonic()
        self._pub_segments.publish(make_pointcloud2(
            M.PointCloud2, M.PointField, outputs, height=decoded.height, width=decoded.width,
            order=SEGMENT_FIELDS, header=header, is_dense=decoded.num_dropped == 0))
        pub = self._pub_embeddings
        if result is not None and p["publish_embeddings"] and pub is not None and pub.get_subscription_count() > 0:
            pub.publish(fill_message(M.TokenEmbeddings, header=header,
                                     **embeddings_fields(result, self._model.model_hash)))
        if self._pub_debug_rgb.get_subscription_count() > 0:
            self._pub_debug_rgb.publish(make_pointcloud2(
                M.PointCloud2, M.PointField, debug.segments_rgb_arrays(outputs, self._palette),
                height=decoded.height, width=decoded.width, order=debug.RGB_FIELDS, header=header,
                is_dense=decoded.num_dropped == 0))
        if self._pub_debug_tokens.get_subscription_count() > 0:
            centres = debug.segment_centres(decoded.xyz, None if result is None else result.segments)
            self._pub_debug_tokens.publish(debug.supertoken_markers(M, header, centres))
        times.published = time.monotonic()

    def _finish_frame(self, header: Any, decoded: DecodedCloud, result: Any, control: P.FrameControl,
                      times: StageTimes, p: dict[str, Any]) -> None:
        """Count the frame, feed the controller, publish the report."""
        fr = result.report if result is not None else None
        tokens = int(fr.tokens_in_encoder) if fr is not None else 0
        point = control.operating_point
        if point and fr is not None:
            point = fr.operating_point or point  # the point the predictor ran at
        budget = control.budget
        if budget is None:
            budget = int(fr.token_budget) if fr is not None else 0
        record = self._stats.frame_done(times.latency_s, control.deadline_s, tokens, budget)
        if result is not None and p["controller_enabled"]:
            with self._lock:
                P.observe_frame(self._controller, times.latency_s, tokens, point, times.overhead_beyond_point_s(fr))
                self._log_feasibility()
        self._pub_report.publish(build_report(
            self._msg.InferenceReport, header, fr, times=times, points_in=decoded.num_points, budget=budget,
            deadline_s=control.deadline_s, record=record, model=self._model, operating_point=point))

    def _log_feasibility(self) -> None:
        """One warning when the deadline becomes infeasible for every operating point, one info when it
        is feasible again (the diagnostics status says it on every period meanwhile)."""
        why = infeasible_message(self._controller)
        if bool(why) != self._infeasible:
            self._infeasible = bool(why)
            if why:
                self.get_logger().warning(why)
            else:
                self.get_logger().info("the deadline is feasible again (the cheapest operating point fits)")

    # ============================================================================================
    # once and periodic outputs

    def _ensure_embeddings_publisher(self) -> None:
        if self._pub_embeddings is None:
            self._pub_embeddings = self.create_publisher(self._msg.TokenEmbeddings, EMBEDDINGS_TOPIC, reliable(1))

    def _publish_label_map(self) -> None:
        M = self._msg
        try:
            infos = list(self._predictor.label_info())
        except Exception as e:
            self.get_logger().error(f"predictor.label_info() failed ({e}); publishing an empty label map")
            infos = []
        rows, warnings = label_rows(infos)
        for warning in warnings:
            self.get_logger().warning(warning)
        m = M.LabelMap(model_hash=self._model.model_hash, entries=[
            M.LabelEntry(id=row.id, name=row.name, color=M.ColorRGBA(**dict(zip("rgba", row.rgba)))) for row in rows])
        m.header.stamp = self.get_clock().now().to_msg()
        self._pub_labels.publish(m)

    def diagnostics_snapshot(self) -> dict[str, Any]:
        """``level_msg`` and the values of the next diagnostics status (see :mod:`foundry_ros.diagnostics`)."""
        with self._lock:
            values = diagnostic_values(self._stats.snapshot(), self._controller, self._p, self._model,
                                       self._period.period_s, self._shm_segment_bytes)
        values["state"] = "active" if self._active else "inactive"
        if not self._active and values["level_msg"][0] == P.OK:
            values["level_msg"] = (P.OK, "inactive (lifecycle): not subscribed to the inputs")
        return values

    def _publish_diagnostics(self) -> None:
        M = self._msg
        snap = self.diagnostics_snapshot()
        level, message = snap.pop("level_msg")
        levels = {P.OK: M.DiagnosticStatus.OK, P.WARN: M.DiagnosticStatus.WARN, P.ERROR: M.DiagnosticStatus.ERROR}
        status = M.DiagnosticStatus(level=levels[level], name=f"{self.get_name()}: inference", message=message,
                                    hardware_id=self._model.backend,
                                    values=[M.KeyValue(key=k, value=v) for k, v in key_values(snap)])
        arr = M.DiagnosticArray(status=[status])
        arr.header.stamp = self.get_clock().now().to_msg()
        try:
            self._pub_diag.publish(arr)
        except Exception as e:  # context shutting down
            self.get_logger().debug(f"diagnostics not published: {e}")

    # ============================================================================================
    # life cycle

    def stop_worker(self, timeout: float = 5.0) -> None:
        self._slot.stop()
        if self._worker.is_alive() and threading.current_thread() is not self._worker:
            self._worker.join(timeout)

    def destroy_node(self) -> None:
        try:
            self.cleanup_pipeline()
        finally:
            super().destroy_node()


def main(argv: list[str] | None = None, predictor_factory: PredictorFactory | None = None) -> int:
    """Console entry ``foundry-node`` (see :func:`foundry_ros.node_main.main`)."""
    from foundry_ros.node_main import main as run

    return run(argv, predictor_factory)


if __name__ == "__main__":
    sys.exit(main())
