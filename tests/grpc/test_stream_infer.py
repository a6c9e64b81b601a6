"""ModelStreamInfer through the gateway's gRPC port: Triton's streaming client
(``start_stream`` / ``async_stream_infer`` / ``stop_stream``) and raw grpcio streams against
``meshgate up`` and the reference model servers; the per-stream bound in one process."""

from __future__ import annotations

import asyncio
import itertools
import queue

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from tritonclient.grpc import service_pb2

from gateway.grpc.server import DEFAULT_STREAM_MAX_IN_FLIGHT
from models.oip_proto import ModelInferRequest, ModelInferResponse
from tests.support import await_for
from tests.support.procs import HOST
from tests.support.wait import wait_for

from .harness import channel_to, upstream
from .messages import INFER, MAX_MESSAGE, STREAM_INFER, infer_request


@pytest.fixture
def client(mesh):
    triton = tgrpc.InferenceServerClient(f"{HOST}:{mesh.grpc_port}")
    yield triton
    triton.close()


def _input(rows: int) -> tgrpc.InferInput:
    pixels = np.random.default_rng(rows).random((rows, 64), dtype=np.float32)
    tensor = tgrpc.InferInput("pixels", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels)
    return tensor


def _stream(client: tgrpc.InferenceServerClient, calls: list[dict], headers=None) -> dict:
    """One stream with an async_stream_infer per item of `calls` (its keyword arguments, with
    ``request_id``); the answers by request id, (result, error) each."""
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)), headers=headers)
    try:
        for call in calls:
            client.async_stream_infer(**call)
        got = [answers.get(timeout=20) for _ in calls]
    finally:
        client.stop_stream()
    by_id = {}
    for result, error in got:
        rid = result.get_response().id if result is not None else str(error)
        by_id[rid] = (result, error)
    return by_id


def test_a_stream_answers_as_unary_calls_do(client):
    calls = [
        {"model_name": "digits", "inputs": [_input(rows)], "request_id": f"r{i}", "model_version": version}
        for i, (rows, version) in enumerate([(1, ""), (3, "v1"), (5, "v2"), (2, "v1"), (7, "v2"), (4, "")])
    ]
    answers = _stream(client, calls)
    assert sorted(answers) == [call["request_id"] for call in calls]  # each id echoed, once
    for call in calls:
        result, error = answers[call["request_id"]]
        assert error is None
        if call["model_version"]:  # pinned
            assert result.get_response().model_version == call["model_version"]
        want = client.infer("digits", call["inputs"], model_version=result.get_response().model_version)
        for name in ("label", "probabilities"):
            np.testing.assert_array_equal(result.as_numpy(name), want.as_numpy(name))


def test_an_unknown_model_fails_its_message_and_the_others_succeed(client):
    calls = [{"model_name": "digits", "inputs": [_input(2)], "request_id": f"ok{i}"} for i in range(4)]
    calls.insert(2, {"model_name": "nope", "inputs": [_input(2)], "request_id": "bad"})
    answers = _stream(client, calls)
    errors = [str(error) for result, error in answers.values() if error is not None]
    assert len(errors) == 1 and "model_not_found" in errors[0] and "nope" in errors[0], errors
    assert sorted(rid for rid, (result, _) in answers.items() if result is not None) == [
        "ok0",
        "ok1",
        "ok2",
        "ok3",
    ]


def _responses(channel: grpc.Channel, messages: list[bytes], **kwargs) -> list:
    call = channel.stream_stream(STREAM_INFER)(iter(messages), **kwargs)
    return [service_pb2.ModelStreamInferResponse.FromString(raw) for raw in call]


def _with_id(message: bytes, rid: str) -> bytes:
    request = ModelInferRequest.FromString(message)
    request.id = rid
    return request.SerializeToString()


def test_a_malformed_message_is_answered_with_its_error_and_the_stream_goes_on(mesh):
    good = _with_id(infer_request(rows=2), "good")
    with grpc.insecure_channel(f"{HOST}:{mesh.grpc_port}") as channel:
        answers = _responses(channel, [good, b"\x0a\xff\xff", good], timeout=20)
        assert len(answers) == 3
        errors = [a.error_message for a in answers if a.error_message]
        assert len(errors) == 1 and errors[0].startswith("bad_request: ") and "ModelInferRequest" in errors[0]
        assert [a.infer_response.id for a in answers if not a.error_message] == ["good", "good"]
        # the stream itself ended OK; a message above the limit ends one with RESOURCE_EXHAUSTED
        with pytest.raises(grpc.RpcError) as info:
            _responses(channel, [good, infer_request(rows=MAX_MESSAGE // 256 + 1)], timeout=20)
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert dict(info.value.trailing_metadata())["x-meshgate-error"] == "payload_too_large"
        assert ModelInferResponse.FromString(channel.unary_unary(INFER)(good, timeout=10)).id == "good"


def test_an_experiment_splits_streams_stickily_by_key(mesh, client):
    body = {"name": "digits-stream-ab", "model": "digits", "arms": {"v1": 50, "v2": 50}, "control": "v1"}
    assert mesh.admin.post("/v1/experiments", json=body).status_code == 201
    try:
        with grpc.insecure_channel(f"{HOST}:{mesh.grpc_port}") as channel:

            def unary_arm(key: str) -> str | None:
                _, state = channel.unary_unary(INFER).with_call(
                    infer_request(), metadata=[("x-meshgate-key", key)], timeout=10
                )
                return dict(state.initial_metadata()).get("x-meshgate-arm")

            wait_for(lambda: unary_arm("k"), what="the experiment routes gRPC traffic")
            arms = set()
            for i in range(16):
                key = f"user-{i}"
                calls = [
                    {"model_name": "digits", "inputs": [_input(1)], "request_id": str(n)} for n in range(3)
                ]
                answers = _stream(client, calls, headers={"x-meshgate-key": key})
                versions = {result.get_response().model_version for result, error in answers.values()}
                assert versions == {unary_arm(key)}  # every message of the stream: the key's arm
                arms |= versions
            assert arms == {"v1", "v2"}
    finally:
        mesh.admin.post("/v1/experiments/digits-stream-ab/stop")


def _parameters(response) -> dict[str, str]:
    """A ModelInferResponse's string parameters, as a dict."""
    return {name: value.string_param for name, value in response.parameters.items()}


_experiments = itertools.count()


@pytest.fixture
def measured(mesh):
    """A 50/50 experiment on digits with a metric (feedback joins its arms) routing gRPC
    traffic; yields (its name, the arm of a routing key as a unary call gets it)."""
    name = f"digits-stream-fb{next(_experiments)}"
    body = {"name": name, "model": "digits", "arms": {"v1": 50, "v2": 50}, "control": "v1"}
    body["metrics"] = [{"name": "accuracy", "kind": "binary"}]
    assert mesh.admin.post("/v1/experiments", json=body).status_code == 201
    try:
        with grpc.insecure_channel(f"{HOST}:{mesh.grpc_port}") as channel:

            def arm_of(key: str) -> str | None:
                _, state = channel.unary_unary(INFER).with_call(
                    infer_request(), metadata=[("x-meshgate-key", key)], timeout=10
                )
                head = dict(state.initial_metadata())
                return head["x-meshgate-arm"] if head.get("x-meshgate-experiment") == name else None

            wait_for(lambda: arm_of("probe"), what="the experiment routes gRPC traffic")
            yield name, arm_of
    finally:
        mesh.admin.post(f"/v1/experiments/{name}/stop")


def _joined(mesh, rid: str) -> str:
    """POST /v1/feedback for request `rid`: the arm it joined."""
    fb = mesh.data.post("/v1/feedback", json={"request_id": rid, "metric": "accuracy", "value": 1})
    assert fb.status_code == 200 and fb.json()["accepted"] == 1, fb.text
    return fb.json()["results"][0]["arm"]


def test_each_answer_carries_its_routing_metadata_and_feedback_joins_its_request_id(mesh, client, measured):
    experiment, arm_of = measured
    calls = [{"model_name": "digits", "inputs": [_input(3)], "request_id": str(n)} for n in range(3)]
    answers = _stream(client, calls, headers={"x-meshgate-key": "fb-user"})
    arm = arm_of("fb-user")
    rids = set()
    want = client.infer("digits", [_input(3)], model_version=arm)
    for result, error in answers.values():
        assert error is None
        response = result.get_response()
        params = _parameters(response)  # tritonclient decodes the appended map entries
        assert params["x-meshgate-version"] == response.model_version == arm
        assert params["x-meshgate-experiment"] == experiment
        assert params["x-meshgate-arm"] == arm and "x-meshgate-error" not in params
        rids.add(params["x-meshgate-request-id"])
        for name in ("label", "probabilities"):  # the upstream's tensors, as it sent them
            np.testing.assert_array_equal(result.as_numpy(name), want.as_numpy(name))
    assert len(rids) == 3  # one request id per message: the gateway's, signed with the arm
    assert all(_joined(mesh, rid) == arm for rid in rids)
    # a failed message: its reason among the parameters (a raw stream: tritonclient hands an
    # error_message to the callback as an exception, without the response)
    with grpc.insecure_channel(f"{HOST}:{mesh.grpc_port}") as channel:
        failed = _responses(channel, [_with_id(infer_request(version="v9"), "bad")], timeout=20)
    assert len(failed) == 1 and failed[0].error_message.startswith("version_not_found: ")
    assert failed[0].infer_response.id == "bad"
    assert _parameters(failed[0].infer_response)["x-meshgate-error"] == "version_not_found"


def test_a_streams_x_request_id_is_each_messages_numbered_in_order(mesh, client, measured):
    _, arm_of = measured
    calls = [{"model_name": "digits", "inputs": [_input(2)], "request_id": str(n)} for n in range(3)]
    calls.insert(1, {"model_name": "nope", "inputs": [_input(2)], "request_id": "lost"})
    answers = _stream(client, calls, headers={"x-meshgate-key": "rid-user", "x-request-id": "strm-42"})
    arm = arm_of("rid-user")
    got = {rid: _parameters(result.get_response()) for rid, (result, _) in answers.items() if result}
    # the message refused (an unknown model) was the second: numbered, so the others keep theirs
    assert {rid: params["x-meshgate-request-id"] for rid, params in got.items()} == {
        "0": "strm-42.1",
        "1": "strm-42.3",
        "2": "strm-42.4",
    }
    assert _joined(mesh, "strm-42.3") == arm  # the caller's own id: joined through its record
    log = wait_for(mesh.proc.output, lambda out: '"request_id":"strm-42.4"' in out, what="the log line")
    assert '"request_id":"strm-42.2"' in log and '"request_id":"strm-42"' not in log


def test_messages_the_port_refuses_carry_their_numbered_request_id(mesh):
    """An unreadable message (refused by the service) and an oversize one (refused by the port
    before the plane, ending the stream): each has its number, in its answer and its line."""
    good = _with_id(infer_request(rows=2), "good")
    messages = [good, b"\x0a\xff\xff", infer_request(rows=MAX_MESSAGE // 256 + 1)]
    with grpc.insecure_channel(f"{HOST}:{mesh.grpc_port}") as channel:
        metadata = [("x-request-id", "rf-7")]
        call = channel.stream_stream(STREAM_INFER)(iter(messages), metadata=metadata, timeout=20)
        answers = []
        with pytest.raises(grpc.RpcError) as info:
            for raw in call:
                answers.append(service_pb2.ModelStreamInferResponse.FromString(raw))
    by_rid = {_parameters(a.infer_response)["x-meshgate-request-id"]: a for a in answers}  # completion order
    assert sorted(by_rid) == ["rf-7.1", "rf-7.2"]
    assert not by_rid["rf-7.1"].error_message and by_rid["rf-7.2"].error_message.startswith("bad_request: ")
    assert _parameters(by_rid["rf-7.2"].infer_response)["x-meshgate-error"] == "bad_request"
    assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    trailers = dict(info.value.trailing_metadata())
    assert trailers["x-meshgate-error"] == "payload_too_large"
    assert trailers["x-meshgate-request-id"] == "rf-7.3"
    log = wait_for(mesh.proc.output, lambda out: '"request_id":"rf-7.3"' in out, what="the refusal's line")
    ours = [line for line in log.splitlines() if '"request_id":"rf-7' in line]
    lines = {line.split('"request_id":"')[1].split('"')[0]: line for line in ours}
    assert sorted(lines) == ["rf-7.1", "rf-7.2", "rf-7.3"]  # the stream's own id on none
    assert '"reason":"bad_request"' in lines["rf-7.2"] and '"reason":"payload_too_large"' in lines["rf-7.3"]


def _in_flight(mesh, model: str) -> int:
    health = mesh.admin.get(f"/v1/models/{model}/health").json()
    return sum(version["limits"]["in_flight"] for version in health["versions"].values())


def test_cancelling_a_stream_cancels_its_calls_in_flight(mesh, client):
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    for i in range(3):
        client.async_stream_infer("slow", [_input(1)], request_id=str(i))
    wait_for(lambda: _in_flight(mesh, "slow"), lambda n: n == 3, what="three calls in flight upstream")
    client.stop_stream(cancel_requests=True)
    wait_for(lambda: _in_flight(mesh, "slow"), lambda n: n == 0, what="the upstream calls cancelled")
    assert client.is_server_live()


def test_the_streams_deadline_ends_it_with_deadline_exceeded(mesh):
    with grpc.insecure_channel(f"{HOST}:{mesh.grpc_port}") as channel:
        with pytest.raises(grpc.RpcError) as info:
            _responses(channel, [infer_request(model="slow")], timeout=0.5)
        assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    wait_for(lambda: _in_flight(mesh, "slow"), lambda n: n == 0, what="the upstream call ended")


@pytest.mark.anyio
@pytest.mark.parametrize("bound", [None, 3])
async def test_a_stream_has_at_most_its_bound_in_flight_and_loses_nothing(bound: int | None) -> None:
    release = asyncio.Event()
    state = {"now": 0, "most": 0}

    async def infer(body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        state["now"] += 1
        state["most"] = max(state["most"], state["now"])
        await release.wait()
        state["now"] -= 1
        return ModelInferResponse(id=ModelInferRequest.FromString(body).id).SerializeToString()

    most = bound or DEFAULT_STREAM_MAX_IN_FLIGHT  # None: the port's default
    total = most * 2 + 5
    messages = [_with_id(infer_request(model="m"), str(i)) for i in range(total)]
    options = {"stream_max_in_flight": bound} if bound else {}
    async with upstream(infer) as url, channel_to(url, **options) as (_, channel):
        call = channel.stream_stream(STREAM_INFER)(iter(messages), timeout=30)
        await await_for(lambda: state["now"] == most, what="the stream's bound in flight")
        release.set()
        ids = [service_pb2.ModelStreamInferResponse.FromString(raw).infer_response.id async for raw in call]
        assert await call.code() is grpc.StatusCode.OK
    assert sorted(ids, key=int) == [str(i) for i in range(total)]
    assert state["most"] == most
