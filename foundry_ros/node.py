"""The Foundry perception node: PointCloud2 in, per-point labels / segments / reports out.

Usage (console entry ``foundry-node``, also ``python -m foundry_ros.node``)::

    foundry-node --params-file config/foundry.yaml [--ros-args -p deadline_ms:=80.0 ...]

The node holds no model logic: it decodes clouds, asks a predictor (``Predictor.from_checkpoint``
of :mod:`foundry_core.runtime.predictor`, or any object with the same contract injected through
``predictor_factory``) for a token-budgeted prediction, maps the per-point results back onto the
input grid and publishes them. The budget comes from :class:`foundry_ros.budget.BudgetController`,
fed with the measured latency receive -> publish.

Threads. Subscription callbacks only store ``(msg, receive time)`` in a single newest-frame slot
(a frame still waiting there when a newer one arrives is overwritten and counted as stale) and
wake the worker thread. The worker decodes, runs the predictor, publishes and feeds the
controller, so a slow model never blocks the executor (parameter services, diagnostics, QoS
events stay responsive), and the node always works on the newest cloud.

Topics (all names relative to the node's namespace)

================================  ==========================================  =====================
topic                             type                                        QoS
================================  ==========================================  =====================
``input_topics`` (``/points``)    sensor_msgs/PointCloud2 (in)                ``qos_reliability``,
                                                                              KEEP_LAST ``qos_depth``
``foundry/segments``              sensor_msgs/PointCloud2                     reliable, depth 1
``foundry/report``                foundry_msgs/InferenceReport                reliable, depth 10
``foundry/embeddings``            foundry_msgs/TokenEmbeddings (optional)     reliable, depth 1
``foundry/labels``                foundry_msgs/LabelMap (once)                reliable, transient
                                                                              local, depth 1
``/diagnostics``                  diagnostic_msgs/DiagnosticArray             reliable, depth 10
================================  ==========================================  =====================

``foundry/segments`` keeps the input's header (stamp; frame_id unless ``frame_id_override``)
and layout: ``height x width`` of the input, one output point per input point, fields ``x, y, z``
(FLOAT32), ``label`` (INT32: class id of the label map, -1 for invalid points), ``confidence``
(FLOAT32, 0 for invalid points), ``segment`` (INT32 SuperToken id, -1 for invalid points),
little-endian, 24-byte points, ``row_step = width * 24``. Invalid input points (NaN/Inf x, y or z)
keep NaN coordinates, so organised clouds stay organised and ``is_dense`` is true only when the
input had no invalid point. ``label`` is INT32 (not UINT32) so that -1 can mark invalid points;
LabelMap ids are uint32 and always >= 0.

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

import argparse
import math
import os
import sys
import threading
import time
import traceback
from typing import Any, Callable

import numpy as np
import rclpy
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType,
                                SetParametersResult)
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from foundry_ros import params as P
from foundry_ros.budget import BudgetController
from foundry_ros.pointcloud2 import (DecodedCloud, PointCloud2Error, decode_pointcloud2, encode_pointcloud2_fields,
                                     scatter_to_grid)

__all__ = ["FoundryNode", "PredictorFactory", "default_predictor_factory", "aligned_outputs", "main",
           "SEGMENTS_TOPIC", "REPORT_TOPIC", "EMBEDDINGS_TOPIC", "LABELS_TOPIC", "DIAGNOSTICS_TOPIC"]

SEGMENTS_TOPIC = "foundry/segments"
REPORT_TOPIC = "foundry/report"
EMBEDDINGS_TOPIC = "foundry/embeddings"
LABELS_TOPIC = "foundry/labels"
DIAGNOSTICS_TOPIC = "/diagnostics"
NODE_NAME = "foundry"
SEGMENT_FIELDS = ("x", "y", "z", "label", "confidence", "segment")
_UINT32_MAX = 2**32 - 1
_LOG_THROTTLE_S = 5.0

#: ``factory(model_path, device, precision, backend) -> predictor`` (see foundry_core.runtime.types).
PredictorFactory = Callable[[str, str, str, str], Any]


def default_predictor_factory(model_path: str, device: str, precision: str, backend: str = "auto") -> Any:
    """``Predictor.from_checkpoint(model_path, device=..., backend=..., [precision=...])``, imported lazily."""
    if not model_path:
        from foundry_core.weights import default_model_path
        model_path = str(default_model_path())          # the shipped default (raises with a fix if missing)
    if not os.path.exists(model_path):
        raise FileNotFoundError(f"model_path {model_path!r} does not exist")
    from foundry_core.runtime.predictor import Predictor  # heavy (torch): only when actually used

    overrides: dict[str, Any] = {"device": device, "backend": backend}
    if precision and precision != "auto":
        overrides["precision"] = precision
    return Predictor.from_checkpoint(model_path, **overrides)


def _u32(value: Any) -> int:
    """Clip a counter into uint32 (Kilted messages do not range-check unless asked to)."""
    try:
        v = int(value)
    except (TypeError, ValueError, OverflowError):
        return 0
    return min(max(v, 0), _UINT32_MAX)


def _f32(value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return math.nan
    return v


def aligned_outputs(decoded: DecodedCloud, labels: np.ndarray | None = None, confidence: np.ndarray | None = None,
                    segments: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-input-point arrays (``num_input`` rows, row-major grid order) for the segments cloud.

    ``labels / confidence / segments`` are aligned with ``decoded.xyz`` (the finite points);
    None means "no prediction" (every point invalid: -1 / 0 / -1).
    """
    n_in, idx, n = decoded.num_input, decoded.index, decoded.num_points
    if labels is None:
        labels = np.full(n, -1, np.int32)
    if confidence is None:
        confidence = np.zeros(n, np.float32)
    if segments is None:
        segments = np.full(n, -1, np.int32)
    xyz = scatter_to_grid(decoded.xyz, idx, n_in, np.nan, np.float32)
    return {
        "x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2],
        "label": scatter_to_grid(np.asarray(labels).astype(np.int32, copy=False), idx, n_in, -1, np.int32),
        "confidence": scatter_to_grid(np.asarray(confidence).astype(np.float32, copy=False), idx, n_in, 0.0,
                                      np.float32),
        "segment": scatter_to_grid(np.asarray(segments).astype(np.int32, copy=False), idx, n_in, -1, np.int32),
    }


def model_input(decoded: DecodedCloud, extra_fields: list[str]) -> tuple[np.ndarray, list[str]]:
    """(N, 3 + F) float32 predictor input (xyz then ``extra_fields`` in order) and missing fields.

    A requested field the cloud lacks is filled with zeros (the model still gets its channel
    count); fields with ``count > 1`` contribute ``count`` columns.
    """
    n = decoded.num_points
    cols = [decoded.xyz]
    missing = []
    for name in extra_fields:
        arr = decoded.extra.get(name)
        if arr is None:
            missing.append(name)
            cols.append(np.zeros((n, 1), np.float32))
        else:
            arr = np.asarray(arr, dtype=np.float32)
            cols.append(arr[:, None] if arr.ndim == 1 else arr.reshape(n, int(np.prod(arr.shape[1:]))))
    if len(cols) == 1:
        return np.ascontiguousarray(decoded.xyz, dtype=np.float32), missing
    return np.ascontiguousarray(np.concatenate(cols, axis=1), dtype=np.float32), missing


class _Frame:
    __slots__ = ("msg", "recv_mono", "topic")

    def __init__(self, msg: Any, recv_mono: float, topic: str) -> None:
        self.msg, self.recv_mono, self.topic = msg, recv_mono, topic


class FoundryNode(Node):
    """ROS 2 node ``foundry``: see the module docstring for topics, QoS and threading."""

    def __init__(self, predictor_factory: PredictorFactory | None = None, *, start_worker: bool = True,
                 **node_kwargs: Any) -> None:
        super().__init__(NODE_NAME, **node_kwargs)
        # Imported here so that importing this module needs no generated foundry_msgs.
        from diagnostic_msgs.msg import DiagnosticArray
        from foundry_msgs.msg import InferenceReport, LabelMap, TokenEmbeddings
        from sensor_msgs.msg import PointCloud2, PointField

        self._PointCloud2, self._PointField = PointCloud2, PointField
        self._InferenceReport, self._TokenEmbeddings, self._LabelMap = InferenceReport, TokenEmbeddings, LabelMap
        self._DiagnosticArray = DiagnosticArray

        self._declare_parameters()
        self._p = self._read_parameters()
        errors = P.validate_params(self._p)
        if errors:
            raise ValueError("invalid foundry parameters: " + "; ".join(errors))

        # ---- predictor ------------------------------------------------------------------------
        factory = predictor_factory or default_predictor_factory
        self._predictor = factory(self._p["model_path"], self._p["device"], self._p["precision"], self._p["backend"])
        self._backend = str(getattr(self._predictor, "backend", "unknown"))
        self._precision = str(getattr(self._predictor, "precision", "unknown"))
        self._model_hash = str(getattr(self._predictor, "model_hash", ""))
        self._model_min = getattr(self._predictor, "min_budget", None)
        self._model_max = getattr(self._predictor, "max_budget", None)
        self._check_channels(getattr(self._predictor, "in_channels", None))
        warm_up = getattr(self._predictor, "warm_up", None)
        if callable(warm_up):                # first-call set-up costs off the first sensor frame
            self.get_logger().info(f"predictor warm-up: {warm_up():.0f} ms")

        # ---- controller and statistics --------------------------------------------------------
        self._lock = threading.RLock()  # controller, parameters, counters
        self._period = P.PeriodEstimator()
        self._controller = BudgetController(P.controller_config(
            self._p, self._period.deadline_s(self._p["deadline_ms"]), self._model_min, self._model_max))
        self._latency = P.LatencyStats()
        self._frames = 0
        self._received = 0
        self._stale_total = 0
        self._stale_reported = 0
        self._dropped_age = 0
        self._decode_errors = 0
        self._decode_errors_diag = 0
        self._predictor_errors = 0
        self._predictor_failed_last = False
        self._publish_errors = 0
        self._missing_extra = 0
        self._last_over = False
        self._over_streak = 0
        self._messages_lost = 0
        self._incompatible_qos = 0
        self._last_latency_s = math.nan
        self._last_tokens = 0
        self._last_budget = self._controller.budget

        # ---- publishers -----------------------------------------------------------------------
        reliable1 = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE)
        reliable10 = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self._pub_segments = self.create_publisher(PointCloud2, SEGMENTS_TOPIC, reliable1)
        self._pub_report = self.create_publisher(InferenceReport, REPORT_TOPIC, reliable10)
        self._pub_labels = self.create_publisher(LabelMap, LABELS_TOPIC, latched)
        self._pub_diag = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, reliable10)
        self._emb_qos = reliable1
        self._pub_embeddings = None
        if self._p["publish_embeddings"]:
            self._ensure_embeddings_publisher()
        self._publish_label_map()

        # ---- worker ---------------------------------------------------------------------------
        self._cond = threading.Condition()
        self._slot: _Frame | None = None
        self._stop = False
        self._worker = threading.Thread(target=self._run_worker, name="foundry-worker", daemon=True)

        # ---- subscriptions, timers, parameter callback -----------------------------------------
        self._input_group = ReentrantCallbackGroup()
        self._timer_group = MutuallyExclusiveCallbackGroup()
        qos = self.input_qos(self._p)
        self._subs = [self._subscribe(topic, qos) for topic in self._p["input_topics"]]
        self._diag_timer = self.create_timer(self._p["diagnostics_period_s"], self._publish_diagnostics,
                                             callback_group=self._timer_group)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        if start_worker:
            self._worker.start()
        self.get_logger().info(
            f"foundry node up: backend={self._backend} precision={self._precision} model={self._model_hash or '?'} "
            f"inputs={self._p['input_topics']} qos={self._p['qos_reliability']}/depth {self._p['qos_depth']} "
            f"budget={self._controller.budget} in [{self._controller.config.min_budget}, "
            f"{self._controller.config.max_budget}] deadline="
            f"{'auto (sensor period)' if self._p['deadline_ms'] <= 0 else str(self._p['deadline_ms']) + ' ms'}")

    # ============================================================================================
    # parameters

    def _declare_parameters(self) -> None:
        overrides = getattr(self, "_parameter_overrides", None)
        for spec in P.PARAM_SPECS:
            # An integer written for a float parameter (``deadline_ms: 100``) would make rclpy
            # refuse to start; accept it as the float it obviously means.
            if spec.kind == "float" and isinstance(overrides, dict) and spec.name in overrides:
                ov = overrides[spec.name]
                if ov.type_ == Parameter.Type.INTEGER:
                    overrides[spec.name] = Parameter(spec.name, Parameter.Type.DOUBLE, float(ov.value))
            self.declare_parameter(spec.name, self._declared_default(spec), self._descriptor(spec))

    @staticmethod
    def _declared_default(spec: P.ParamSpec) -> Any:
        if spec.kind == "str[]" and not spec.default:
            return Parameter.Type.STRING_ARRAY  # rclpy would type [] as a byte array
        return list(spec.default) if isinstance(spec.default, list) else spec.default

    @staticmethod
    def _descriptor(spec: P.ParamSpec) -> ParameterDescriptor:
        types = {"bool": ParameterType.PARAMETER_BOOL, "int": ParameterType.PARAMETER_INTEGER,
                 "float": ParameterType.PARAMETER_DOUBLE, "str": ParameterType.PARAMETER_STRING,
                 "str[]": ParameterType.PARAMETER_STRING_ARRAY}
        d = ParameterDescriptor(name=spec.name, type=types[spec.kind], description=spec.description,
                                read_only=spec.read_only, additional_constraints=spec.constraints)
        if spec.lo is not None and spec.hi is not None:
            if spec.kind == "int":
                d.integer_range = [IntegerRange(from_value=int(spec.lo), to_value=int(spec.hi), step=1)]
            elif spec.kind == "float":
                d.floating_point_range = [FloatingPointRange(from_value=float(spec.lo), to_value=float(spec.hi),
                                                             step=0.0)]
        return d

    def _check_channels(self, in_channels: Any) -> None:
        """Fail fast when extra_fields gives the model fewer input channels than it needs."""
        if in_channels is None:
            return
        have = 3 + len(self._p["extra_fields"])
        if int(in_channels) > have:
            raise ValueError(f"the model needs {int(in_channels)} input channels (xyz + {int(in_channels) - 3}), "
                             f"extra_fields {self._p['extra_fields']} gives {have}: list the missing PointCloud2 "
                             f"fields in extra_fields")
        if int(in_channels) < have:
            self.get_logger().warning(f"extra_fields {self._p['extra_fields']} gives {have} channels, the model "
                                      f"uses {int(in_channels)}: the extra ones are ignored")

    def _read_parameters(self) -> dict[str, Any]:
        from rclpy.exceptions import ParameterUninitializedException

        out = {}
        for spec in P.PARAM_SPECS:
            try:
                value = self.get_parameter(spec.name).value
            except ParameterUninitializedException:  # typed, no value: `[]` in a params file
                value = None
            out[spec.name] = P.coerce_value(spec, value)
        return out

    @property
    def params(self) -> dict[str, Any]:
        """Current (validated) parameter values."""
        return dict(self._p)

    @property
    def controller(self) -> BudgetController:
        return self._controller

    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        changes = {}
        for p in parameters:
            if p.name in P.SPECS_BY_NAME:
                changes[p.name] = p.value
        if not changes:
            return SetParametersResult(successful=True)
        with self._lock:
            errors = P.validate_change(self._p, changes)
            if errors:
                reason = "; ".join(errors)
                self.get_logger().warning(f"rejected parameter change {changes}: {reason}")
                return SetParametersResult(successful=False, reason=reason)
            new_p = dict(self._p)
            new_p.update(P.normalise(changes))
            try:
                ctl = P.controller_changes(new_p, changes, self._model_min, self._model_max)
                if "deadline_ms" in changes:
                    ctl["deadline_s"] = self._period.deadline_s(new_p["deadline_ms"])
                if ctl:
                    self._controller.reconfigure(**ctl)
            except ValueError as e:
                return SetParametersResult(successful=False, reason=str(e))
            self._p = new_p
        if "publish_embeddings" in changes and new_p["publish_embeddings"]:
            self._ensure_embeddings_publisher()
        if "diagnostics_period_s" in changes:
            self._diag_timer.cancel()
            self.destroy_timer(self._diag_timer)
            self._diag_timer = self.create_timer(new_p["diagnostics_period_s"], self._publish_diagnostics,
                                                 callback_group=self._timer_group)
        self.get_logger().info(f"parameters changed: {P.normalise(changes)}; budget now {self._controller.budget}, "
                               f"deadline {self._controller.config.deadline_s * 1e3:.1f} ms")
        return SetParametersResult(successful=True)

    # ============================================================================================
    # inputs

    @staticmethod
    def input_qos(p: dict[str, Any]) -> QoSProfile:
        """QoS of the input subscriptions from the parameters (volatile, KEEP_LAST depth)."""
        reliability = (ReliabilityPolicy.RELIABLE if p["qos_reliability"] == "reliable"
                       else ReliabilityPolicy.BEST_EFFORT)
        return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=int(p["qos_depth"]), reliability=reliability,
                          durability=DurabilityPolicy.VOLATILE)

    def _subscribe(self, topic: str, qos: QoSProfile):
        def callback(msg: Any, info: Any) -> None:  # two arguments: rclpy passes MessageInfo
            self._on_cloud(msg, info, topic)

        def on_incompatible(event: Any) -> None:
            with self._lock:
                self._incompatible_qos += 1
            policy = getattr(event, "last_policy_kind", "?")
            self.get_logger().warning(
                f"input {topic}: a publisher offers QoS incompatible with this subscription "
                f"(policy {getattr(policy, 'name', policy)}, {getattr(event, 'total_count', '?')} so far); "
                f"qos_reliability={self._p['qos_reliability']}. A reliable subscription cannot receive a "
                f"best-effort publisher: use qos_reliability: best_effort.")

        def on_lost(event: Any) -> None:
            with self._lock:
                self._messages_lost += int(getattr(event, "total_count_change", 1) or 0)

        kwargs = dict(callback_group=self._input_group)
        try:
            from rclpy.event_handler import SubscriptionEventCallbacks
        except ImportError:  # older rclpy
            SubscriptionEventCallbacks = None
        attempts = []
        if SubscriptionEventCallbacks is not None:
            attempts = [dict(incompatible_qos=on_incompatible, message_lost=on_lost),
                        dict(incompatible_qos=on_incompatible)]
        for events in attempts:
            try:
                return self.create_subscription(self._PointCloud2, topic, callback, qos,
                                                event_callbacks=SubscriptionEventCallbacks(**events), **kwargs)
            except Exception as e:  # event type unsupported by this rmw
                self.get_logger().debug(f"QoS events {list(events)} unavailable on {topic}: {e}")
        return self.create_subscription(self._PointCloud2, topic, callback, qos, **kwargs)

    def _on_cloud(self, msg: Any, info: Any, topic: str) -> None:
        """Subscription callback: timestamp and park the message in the newest-frame slot."""
        now = time.monotonic()
        recv = now
        if info:  # rmw reception time (system clock): also count the time spent in the executor queue
            try:
                received_ns = int(info["received_timestamp"])
                if received_ns > 0:
                    delay = (time.time_ns() - received_ns) * 1e-9
                    if 0.0 < delay < 1.0:
                        recv = now - delay
            except (KeyError, TypeError, ValueError):
                pass
        with self._cond:
            if self._slot is not None:
                self._stale_total += 1
            self._slot = _Frame(msg, recv, topic)
            self._received += 1
            self._cond.notify()
        with self._lock:  # the estimator is read under this lock by the worker and the parameter callback
            self._period.tick(recv)

    # ============================================================================================
    # worker

    def _run_worker(self) -> None:
        while True:
            with self._cond:
                while self._slot is None and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                frame, self._slot = self._slot, None
            try:
                self._process(frame)
            except Exception:  # never let one frame kill the worker
                with self._lock:
                    self._publish_errors += 1
                if self._stop or not self.context.ok():
                    return
                self.get_logger().error(f"unexpected error processing a frame:\n{traceback.format_exc()}",
                                        throttle_duration_sec=_LOG_THROTTLE_S)

    def _frame_age_s(self, msg: Any, recv_mono: float) -> float:
        stamp = msg.header.stamp
        stamp_ns = int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)
        if stamp_ns == 0:
            return time.monotonic() - recv_mono
        age = (self.get_clock().now().nanoseconds - stamp_ns) * 1e-9
        return max(age, 0.0)

    def _process(self, frame: _Frame) -> None:
        msg = frame.msg
        p = self._p  # snapshot (replaced, never mutated, by the parameter callback)
        t0 = time.monotonic()
        if p["max_age_s"] > 0.0:
            age = self._frame_age_s(msg, frame.recv_mono)
            if age > p["max_age_s"]:
                with self._lock:
                    self._dropped_age += 1
                self.get_logger().warning(
                    f"dropping a cloud from {frame.topic}: {age:.3f} s old > max_age_s {p['max_age_s']} "
                    f"(clock mismatch or overload?)", throttle_duration_sec=_LOG_THROTTLE_S)
                return

        # ---- decode --------------------------------------------------------------------------
        try:
            decoded = decode_pointcloud2(msg, extra=p["extra_fields"])
            points, missing = model_input(decoded, p["extra_fields"])
        except Exception as e:  # PointCloud2Error and anything a broken message may raise
            with self._lock:
                self._decode_errors += 1
                self._decode_errors_diag += 1
            kind = "malformed" if isinstance(e, PointCloud2Error) else "undecodable"
            self.get_logger().warning(f"skipping {kind} PointCloud2 on {frame.topic}: {e}",
                                      throttle_duration_sec=_LOG_THROTTLE_S)
            return
        if missing:
            with self._lock:
                self._missing_extra += 1
            self.get_logger().warning(f"cloud on {frame.topic} lacks extra field(s) {missing}: zeros fed to the "
                                      f"model", throttle_duration_sec=_LOG_THROTTLE_S)
        t_decoded = time.monotonic()

        # ---- budget --------------------------------------------------------------------------
        with self._lock:
            ctl = self._controller
            deadline_s = self._period.deadline_s(p["deadline_ms"])
            if p["deadline_ms"] <= 0.0 and abs(deadline_s - ctl.config.deadline_s) > 0.02 * ctl.config.deadline_s:
                ctl.set_deadline(deadline_s)
            deadline_s = ctl.config.deadline_s
            if p["controller_enabled"]:
                budget = ctl.budget
            else:
                budget = min(max(ctl.config.initial_budget, ctl.config.min_budget), ctl.config.max_budget)

        # ---- predict -------------------------------------------------------------------------
        result = None
        if decoded.num_points > 0:
            try:
                result = self._predictor(points, budget=budget,
                                         fusion_threshold=P.fusion_threshold_arg(p["fusion_threshold"]))
                self._check_result(result, decoded.num_points)
            except Exception as e:
                with self._lock:
                    self._predictor_errors += 1
                    self._predictor_failed_last = True
                self.get_logger().error(
                    f"predictor failed on a {decoded.num_points}-point cloud from {frame.topic} "
                    f"(budget {budget}): {type(e).__name__}: {e}", throttle_duration_sec=_LOG_THROTTLE_S)
                return
        t_predicted = time.monotonic()

        # ---- map back onto the input grid and publish -----------------------------------------
        if result is not None:
            outputs = aligned_outputs(decoded, result.labels, result.confidence, result.segments)
        else:
            outputs = aligned_outputs(decoded)
        t_mapped = time.monotonic()
        header = msg.header
        if p["frame_id_override"]:
            header = type(msg.header)(stamp=msg.header.stamp, frame_id=p["frame_id_override"])
        self._pub_segments.publish(self._segments_msg(header, decoded, outputs))
        if result is not None and p["publish_embeddings"]:
            pub = self._pub_embeddings
            if pub is not None and pub.get_subscription_count() > 0:
                pub.publish(self._embeddings_msg(header, result))
        t_published = time.monotonic()

        # ---- report and controller ---------------------------------------------------------------
        latency = t_published - frame.recv_mono
        fr = result.report if result is not None else None
        tokens = int(fr.tokens_in_encoder) if fr is not None else 0
        with self._lock:
            index = self._frames
            self._frames += 1
            stale = self._stale_total - self._stale_reported
            self._stale_reported = self._stale_total
            self._predictor_failed_last = False
            over = latency > deadline_s
            self._last_over = over
            self._over_streak = self._over_streak + 1 if over else 0
            self._last_latency_s = latency
            self._last_tokens = tokens
            self._last_budget = budget
            self._latency.add(latency)
            if result is not None and p["controller_enabled"]:
                self._controller.update(latency, tokens)
        timings = dict(fr.timings_ms) if fr is not None else {}
        report = self._InferenceReport()
        report.header = header
        report.tokens_in_encoder = _u32(tokens)
        report.token_budget = _u32(budget)
        num_centers = int(getattr(fr, "num_centers", 0) or 0) if fr is not None else 0
        report.fusion_ratio = float(min(1.0, tokens / num_centers)) if num_centers > 0 and tokens > 0 else 1.0
        report.backend = self._backend
        report.precision = str(getattr(fr, "precision", self._precision)) if fr is not None else self._precision
        report.model_hash = self._model_hash
        report.points_in = _u32(decoded.num_points)
        used = int(fr.points_used) if fr is not None else 0
        report.points_used = _u32(used)
        report.points_dropped = _u32(decoded.num_points - used)
        report.latency_ms = float(latency * 1e3)
        report.deadline_ms = float(deadline_s * 1e3)
        report.preprocess_ms = float((t_decoded - t0) * 1e3 + _f32(timings.get("preprocess", 0.0)))
        report.tokenize_ms = _f32(timings.get("tokenize", 0.0))
        report.encode_ms = _f32(timings.get("encode", 0.0))
        report.head_ms = float(_f32(timings.get("head", 0.0)) + _f32(timings.get("postprocess", 0.0))
                               + (t_mapped - t_predicted) * 1e3)
        report.publish_ms = float((t_published - t_mapped) * 1e3)
        report.frame_index = _u32(index)
        report.frames_dropped_stale = _u32(stale)
        self._pub_report.publish(report)

    @staticmethod
    def _check_result(result: Any, n: int) -> None:
        for name in ("labels", "confidence", "segments"):
            arr = getattr(result, name, None)
            if arr is None or np.shape(arr)[:1] != (n,):
                raise ValueError(f"predictor result {name} has shape {np.shape(arr)}, expected ({n},)")
        if getattr(result, "report", None) is None:
            raise ValueError("predictor result has no report")

    def _segments_msg(self, header: Any, decoded: DecodedCloud, outputs: dict[str, np.ndarray]) -> Any:
        PointField = self._PointField
        specs, point_step, data = encode_pointcloud2_fields(outputs, order=SEGMENT_FIELDS)
        msg = self._PointCloud2()
        msg.header = header
        msg.height = int(decoded.height)
        msg.width = int(decoded.width)
        msg.fields = [PointField(name=s.name, offset=s.offset, datatype=s.datatype, count=s.count) for s in specs]
        msg.is_bigendian = False
        msg.point_step = int(point_step)
        msg.row_step = int(point_step * decoded.width)
        msg.data = data
        msg.is_dense = decoded.num_dropped == 0
        return msg

    def _embeddings_msg(self, header: Any, result: Any) -> Any:
        emb = np.asarray(result.embeddings, dtype=np.float32)
        emb = emb.reshape(emb.shape[0], -1) if emb.ndim != 2 else emb
        centers = np.asarray(result.centers, dtype=np.float32).reshape(-1, 3)
        seg = np.asarray(result.token_segments, dtype=np.int32).reshape(-1)
        m = self._TokenEmbeddings()
        m.header = header
        m.num_tokens = _u32(emb.shape[0])
        m.embedding_dim = _u32(emb.shape[1] if emb.ndim == 2 else 0)
        m.centers_xyz = np.ascontiguousarray(centers).ravel()
        m.features = np.ascontiguousarray(emb).ravel()
        m.segment_of_token = np.ascontiguousarray(seg)
        m.model_hash = self._model_hash
        return m

    def _ensure_embeddings_publisher(self) -> None:
        if self._pub_embeddings is None:
            self._pub_embeddings = self.create_publisher(self._TokenEmbeddings, EMBEDDINGS_TOPIC, self._emb_qos)

    def _publish_label_map(self) -> None:
        from foundry_msgs.msg import LabelEntry
        from std_msgs.msg import ColorRGBA

        entries = []
        try:
            infos = list(self._predictor.label_info())
        except Exception as e:
            self.get_logger().error(f"predictor.label_info() failed ({e}); publishing an empty label map")
            infos = []
        for info in sorted(infos, key=lambda i: int(i.id)):
            if int(info.id) < 0:
                self.get_logger().warning(f"label {info.name!r} has negative id {info.id}: left out of the map")
                continue
            r, g, b, a = (list(info.color) + [1.0] * 4)[:4]
            entries.append(LabelEntry(id=_u32(info.id), name=str(info.name),
                                      color=ColorRGBA(r=float(r), g=float(g), b=float(b), a=float(a))))
        m = self._LabelMap()
        m.header.stamp = self.get_clock().now().to_msg()
        m.model_hash = self._model_hash
        m.entries = entries
        self._pub_labels.publish(m)

    # ============================================================================================
    # diagnostics

    def diagnostics_snapshot(self) -> dict[str, Any]:
        with self._lock:
            st = self._controller.state
            snap = dict(
                level_msg=P.diagnostic_level(
                    frames=self._frames, last_over_deadline=self._last_over, over_streak=self._over_streak,
                    error_frames=self._p["diagnostics_error_frames"], predictor_failed=self._predictor_failed_last,
                    decode_errors_recent=self._decode_errors_diag),
                backend=self._backend, precision=self._precision, model_hash=self._model_hash,
                budget=self._last_budget, next_budget=st.budget, min_budget=self._controller.config.min_budget,
                max_budget=self._controller.config.max_budget, controller_enabled=self._p["controller_enabled"],
                deadline_ms=st.deadline_s * 1e3,
                deadline_source="parameter" if self._p["deadline_ms"] > 0 else "sensor period",
                sensor_period_ms=(self._period.period_s or math.nan) * 1e3,
                latency_last_ms=self._last_latency_s * 1e3,
                latency_p50_ms=self._latency.percentile(50) * 1e3,
                latency_p95_ms=self._latency.percentile(95) * 1e3,
                over_deadline_streak=self._over_streak, tokens_last=self._last_tokens,
                frames_received=self._received, frames_processed=self._frames,
                frames_dropped_stale=self._stale_total, frames_dropped_age=self._dropped_age,
                decode_errors=self._decode_errors, predictor_errors=self._predictor_errors,
                publish_errors=self._publish_errors, missing_extra_fields=self._missing_extra,
                messages_lost=self._messages_lost, incompatible_qos_events=self._incompatible_qos)
            self._decode_errors_diag = 0
        return snap

    def _publish_diagnostics(self) -> None:
        from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

        snap = self.diagnostics_snapshot()
        level, message = snap.pop("level_msg")
        status = DiagnosticStatus()
        status.level = {P.OK: DiagnosticStatus.OK, P.WARN: DiagnosticStatus.WARN,
                        P.ERROR: DiagnosticStatus.ERROR}[level]
        status.name = f"{self.get_name()}: inference"
        status.message = message
        status.hardware_id = self._backend
        values = []
        for key, value in snap.items():
            if isinstance(value, float):
                text = "nan" if math.isnan(value) else f"{value:.3f}"
            else:
                text = str(value)
            values.append(KeyValue(key=key, value=text))
        status.values = values
        arr = self._DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        arr.status = [status]
        try:
            self._pub_diag.publish(arr)
        except Exception as e:  # context shutting down
            self.get_logger().debug(f"diagnostics not published: {e}")

    # ============================================================================================
    # life cycle

    def stop_worker(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._worker.is_alive() and threading.current_thread() is not self._worker:
            self._worker.join(timeout)

    def destroy_node(self) -> None:
        self.stop_worker()
        super().destroy_node()


# ================================================================================================
# entry point


def _parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    from rclpy.utilities import remove_ros_args

    own = remove_ros_args(["foundry-node"] + list(argv))[1:]
    parser = argparse.ArgumentParser(
        prog="foundry-node", description="Foundry ROS 2 perception node (PointCloud2 -> labels/segments).",
        epilog="Further ROS arguments go after --ros-args, e.g. --ros-args -p deadline_ms:=80.0 "
               "-r /points:=/lidar/points")
    parser.add_argument("--params-file", action="append", default=[], metavar="YAML",
                        help="ROS 2 parameters file ('foundry: ros__parameters: {...}'); repeatable, later "
                             "files and --ros-args -p override earlier ones")
    return parser.parse_args(own), list(argv)


def main(argv: list[str] | None = None, predictor_factory: PredictorFactory | None = None) -> int:
    """Console entry ``foundry-node``: init rclpy, spin a MultiThreadedExecutor, exit 0 on SIGINT/SIGTERM."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ns, argv = _parse_args(argv)
    ros_argv = ["foundry-node"]
    for path in ns.params_file:
        if not os.path.isfile(path):
            print(f"foundry-node: params file {path!r} not found", file=sys.stderr)
            return 2
        ros_argv += ["--ros-args", "--params-file", os.path.abspath(path), "--"]
    ros_argv += argv  # the user's own --ros-args come last and take precedence
    rclpy.init(args=ros_argv)  # installs SIGINT/SIGTERM handlers that shut the context down
    node = None
    executor = None
    code = 0
    try:
        node = FoundryNode(predictor_factory)
        executor = MultiThreadedExecutor(num_threads=2)
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as e:
        rclpy.logging.get_logger(NODE_NAME).fatal(f"foundry node failed: {type(e).__name__}: {e}")
        code = 1
    finally:
        if node is not None:
            try:
                node.destroy_node()
            except Exception:
                pass
        if executor is not None:
            executor.shutdown(timeout_sec=1.0)
        rclpy.try_shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
