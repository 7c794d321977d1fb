"""The node's parameter services as ``ros2 param dump`` / ``ros2 param set`` use them, against a
running node (FakePredictor, shipped config: ``extra_fields: []``) over local-only DDS.

Before the fix ``extra_fields`` was declared as an empty STRING_ARRAY type without a value (NOT_SET):
GetParameters then answers with no values at all for a request that names it, so a dump printed
``ros__parameters: {}``. And an INTEGER for a float parameter (``ros2 param set /foundry deadline_ms 80``)
was refused as the wrong type.
"""
from __future__ import annotations

import pytest

pytest.importorskip("rclpy", reason="ROS 2 wheels not installed (scripts/build_msgs.sh)")
pytest.importorskip("foundry_msgs.msg", reason="foundry_msgs not built (scripts/build_msgs.sh)")

from rcl_interfaces.msg import ParameterType  # noqa: E402
from rcl_interfaces.srv import GetParameters, ListParameters  # noqa: E402
from rclpy.parameter import parameter_value_to_python  # noqa: E402

from foundry_ros import params as P  # noqa: E402
from foundry_ros.ros_params import descriptor  # noqa: E402
from support.node_harness import TIMEOUT_S, TOPIC, node_harness  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:module 'sre_:DeprecationWarning")

FAKE_NODE = ["-m", "support.fake_node"]  # no channel check: the shipped extra_fields [] starts
OVERRIDES = f"""
foundry:
  ros__parameters:
    input_topics: ["{TOPIC}"]
    deadline_ms: 200.0
"""


@pytest.fixture(scope="module")
def h(tmp_path_factory):
    with node_harness(tmp_path_factory.mktemp("param_services"), FAKE_NODE, OVERRIDES) as harness:
        yield harness


def _call(h, srv_type, name: str, request):
    client = h.node.create_client(srv_type, name)
    try:
        assert client.wait_for_service(timeout_sec=TIMEOUT_S), name
        fut = client.call_async(request)
        h.ex.spin_until_future_complete(fut, timeout_sec=TIMEOUT_S)
        assert fut.done(), f"{name} did not answer"
        return fut.result()
    finally:
        h.node.destroy_client(client)


def _get_all(h) -> dict:
    """name -> ParameterValue of every parameter, the way `ros2 param dump /foundry` asks for them."""
    names = list(_call(h, ListParameters, "/foundry/list_parameters", ListParameters.Request()).result.names)
    values = _call(h, GetParameters, "/foundry/get_parameters", GetParameters.Request(names=names)).values
    assert len(values) == len(names), f"{len(values)} values for {len(names)} names"
    return dict(zip(names, values))


def test_every_parameter_reads_back_with_a_value_of_its_type(h):
    got = _get_all(h)
    assert set(P.SPECS_BY_NAME) <= set(got) and "use_sim_time" in got
    unset = [name for name, v in got.items() if v.type == ParameterType.PARAMETER_NOT_SET]
    assert not unset, f"parameters without a value: {unset}"
    for spec in P.PARAM_SPECS:
        assert got[spec.name].type == descriptor(spec).type, spec.name
    assert got["extra_fields"].type == ParameterType.PARAMETER_STRING_ARRAY
    assert list(got["extra_fields"].string_array_value) == []
    values = {name: parameter_value_to_python(v) for name, v in got.items()}
    assert values["input_topics"] == [TOPIC] and values["deadline_ms"] == 200.0
    assert values["qos_reliability"] == "best_effort" and values["controller_enabled"] is True


def test_integer_for_a_float_parameter_is_accepted_at_run_time(h):
    [res] = h.set_params(deadline_ms=80)  # an INTEGER, as `ros2 param set /foundry deadline_ms 80` sends
    assert res.successful, res.reason
    value = _get_all(h)["deadline_ms"]
    assert value.type == ParameterType.PARAMETER_DOUBLE and value.double_value == 80.0
    [res] = h.set_params(deadline_ms=-5)  # converted, then refused by the range like a float
    assert not res.successful
    [res] = h.set_params(deadline_ms="fast")  # other types are still refused
    assert not res.successful
    [res] = h.set_params(qos_depth=2)  # read-only integers are untouched by the conversion
    assert not res.successful
    [res] = h.set_params(deadline_ms=200.0)
    assert res.successful, res.reason
    assert _get_all(h)["deadline_ms"].double_value == 200.0
