"""The pool over TLS: who answered is checked before any request leaves, and sessions resume.

Run on both event loops: the session is handed to the handshake through the context the loop is
given (`create_connection` has no `session=`), which asyncio's and uvloop's SSL protocols both use.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from benchmarks.pki import Pki
from gateway.http import Request, Responder, Server, UpstreamError, UpstreamPool
from tests.support import await_for
from tests.support.engine import HOST, serving

pytestmark = pytest.mark.anyio


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {"use_uvloop": False}), id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict]:
    return request.param


class Upstream:
    """A TLS upstream that counts the requests that reached it."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []

    def __call__(self, request: Request, responder: Responder) -> None:
        self.requests.append(request.body or b"")
        responder.respond(200, [(b"content-type", b"text/plain")], b"ok")


@asynccontextmanager
async def tls_upstream(pki: Pki) -> AsyncIterator[tuple[Server, Upstream]]:
    upstream = Upstream()
    async with serving(upstream, ssl_context=pki.server_context()) as server:
        yield server, upstream


@asynccontextmanager
async def pool_for(**kwargs: object) -> AsyncIterator[UpstreamPool]:
    pool = UpstreamPool(**kwargs)  # type: ignore[arg-type]
    try:
        yield pool
    finally:
        await pool.aclose()


class Verifier:
    """Accepts a peer whose certificate names `san`; records every certificate it was shown."""

    def __init__(self, san: tuple[str, str]) -> None:
        self.san = san
        self.seen: list[dict | None] = []

    def __call__(self, peer_cert: dict | None) -> UpstreamError | None:
        self.seen.append(peer_cert)
        if peer_cert is not None and self.san in peer_cert.get("subjectAltName", ()):
            return None
        return UpstreamError("peer_identity_mismatch", f"the endpoint does not present {self.san}")


async def test_a_wrong_peer_gets_no_request_and_the_caller_a_502(tmp_path) -> None:
    pki = Pki(tmp_path)
    verifier = Verifier(("URI", "spiffe://meshgate.test/model/echo/v9"))
    async with tls_upstream(pki) as (server, upstream), pool_for() as pool:
        url = f"https://{HOST}:{server.port}"
        endpoint = pool.endpoint(url, ssl=pki.client_context(), verify_peer=verifier)
        for _ in range(2):  # each fresh connection is checked, and refused again
            with pytest.raises(UpstreamError) as caught:
                await endpoint.request(b"POST", b"/secret", [], b"the body must not leave", 5)
            assert caught.value.reason == "peer_identity_mismatch"
            assert caught.value.status == 502
            assert "spiffe://meshgate.test/model/echo/v9" in caught.value.message
        assert upstream.requests == []  # nothing reached the wrong peer
        assert len(verifier.seen) == 2
        assert ("IP Address", HOST) in verifier.seen[0]["subjectAltName"]  # the verified certificate
        assert endpoint.tls_handshakes == 2
        await await_for(
            lambda: repr(endpoint), lambda r: "active=0 idle=0" in r, what="the refused connections closed"
        )


async def test_an_accepted_peer_is_checked_once_per_connection_not_per_request(tmp_path) -> None:
    pki = Pki(tmp_path)
    verifier = Verifier(("IP Address", HOST))
    async with tls_upstream(pki) as (server, upstream), pool_for() as pool:
        url = f"https://{HOST}:{server.port}"
        endpoint = pool.endpoint(url, ssl=pki.client_context(), verify_peer=verifier)
        assert pool.endpoint(url, verify_peer=verifier) is endpoint
        assert pool.endpoint(url) is not endpoint  # another check (or none) is another endpoint
        for i in range(3):
            response = await endpoint.request(b"POST", b"/", [], b"%d" % i, 5)
            assert response.status == 200
        assert upstream.requests == [b"0", b"1", b"2"]
        assert len(verifier.seen) == 1
        plain = pool.endpoint(f"http://{HOST}:{server.port}", verify_peer=verifier)
        with pytest.raises(UpstreamError) as caught:  # plaintext proves no identity at all
            await plain.request(b"GET", b"/", [], b"", 5)
        assert caught.value.reason == "peer_identity_mismatch"
        assert verifier.seen[-1] is None


@pytest.mark.parametrize("reuse", [True, False], ids=["resumption", "no-resumption"])
async def test_a_second_connection_resumes_the_tls_session(tmp_path, reuse: bool) -> None:
    pki = Pki(tmp_path)
    verifier = Verifier(("IP Address", HOST))
    async with tls_upstream(pki) as (server, upstream), pool_for(tls_session_reuse=reuse) as pool:
        url = f"https://{HOST}:{server.port}"
        endpoint = pool.endpoint(url, ssl=pki.client_context(), verify_peer=verifier)
        first = await endpoint.request(b"POST", b"/", [], b"a", 5)  # its session ticket is kept
        # two at once: one reuses the idle connection, the other opens a second one
        second, third = await asyncio.gather(
            endpoint.request(b"POST", b"/", [], b"b", 5), endpoint.request(b"POST", b"/", [], b"c", 5)
        )
        assert [r.status for r in (first, second, third)] == [200, 200, 200]
        assert sorted(upstream.requests) == [b"a", b"b", b"c"]
        # the second connection may finish connecting after both answers
        await await_for(lambda: len(verifier.seen), lambda n: n == 2, what="the second connection verified")
        assert endpoint.tls_handshakes == 2
        assert endpoint.tls_resumed == (1 if reuse else 0)
        # a resumed connection still knows (and checked) who is on the other end
        assert len(verifier.seen) == 2 and ("IP Address", HOST) in verifier.seen[1]["subjectAltName"]
        assert all(r.peer_cert is not None for r in (first, second, third))
