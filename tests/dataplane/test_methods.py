"""Methods on the data port: HEAD wherever GET is served (RFC 9110 9.3.2), 405s that say what is allowed."""

from __future__ import annotations

import pytest

from tests.support.engine import exchange, raw_connection, read_response

from .upstreams import Upstream, answer, gateway, one_model

pytestmark = pytest.mark.anyio

METADATA = b'{"name":"m","versions":["v1"],"platform":"x"}'


def request(method: bytes, path: bytes) -> bytes:
    return b"%b %b HTTP/1.1\r\nhost: gw\r\ncontent-length: 0\r\n\r\n" % (method, path)


async def test_head_is_answered_like_get_without_the_body() -> None:
    async with (
        Upstream(lambda got: answer(200, METADATA)).running() as model,
        gateway(one_model({"v1": ([model.url], {})})) as (_plane, port),
        raw_connection(port) as (reader, writer),
    ):
        # pipelined: a body after the HEAD's head would be read as the second response
        writer.write(request(b"HEAD", b"/v2/models/m") + request(b"GET", b"/v2/models/m"))
        head = await read_response(reader, head_request=True)
        get = await read_response(reader)
    assert head.status == 200 and head.header("content-length") == str(len(METADATA)) and head.body == b""
    assert get.status == 200 and get.body == METADATA
    assert [got.line.split()[0] for got in model.received] == ["GET", "GET"]  # HEAD goes up as GET


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        (b"DELETE", b"/v2/models/m", "GET, HEAD"),
        (b"POST", b"/v2/models/m/ready", "GET, HEAD"),
        (b"GET", b"/v2/models/m/infer", "POST"),
        (b"HEAD", b"/v2/models/m/infer", "POST"),
        (b"GET", b"/ofrep/v1/evaluate/flags", "POST"),
    ],
)
async def test_a_405_names_the_allowed_methods(method: bytes, path: bytes, allow: str) -> None:
    async with (
        Upstream(lambda got: answer()).running() as model,
        gateway(one_model({"v1": ([model.url], {})})) as (_plane, port),
    ):
        response = await exchange(port, request(method, path), head_request=method == b"HEAD")
    assert response.status == 405 and response.header("x-meshgate-error") == "method_not_allowed"
    assert response.header("allow") == allow
    assert model.received == []
