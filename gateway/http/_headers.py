"""Header helpers shared by the server and the upstream pool: hop-by-hop filtering in one pass."""

from __future__ import annotations

import time
from collections.abc import Iterable
from email.utils import formatdate
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._server import Request

Headers = list[tuple[bytes, bytes]]

# RFC 9110 7.6.1 connection-specific fields, plus the framing fields each hop sets for itself.
HOP_BY_HOP: frozenset[bytes] = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# What a proxy drops before forwarding a request: hop-by-hop, and the fields the next hop gets fresh.
# A caller that drops more passes `DROP_FORWARD | {...}`, computed once.
DROP_FORWARD: frozenset[bytes] = HOP_BY_HOP | {b"host", b"content-length", b"expect"}
_XFF = b"x-forwarded-for"


def connection_tokens(headers: Headers) -> frozenset[bytes]:
    """Extra header names a `Connection` header declares hop-by-hop (rare; empty when none)."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    tokens -= {b"close", b"keep-alive", b""}
    return frozenset(tokens)


def proxy_headers(
    request: Request, extra: Iterable[tuple[bytes, bytes]] = (), drop: frozenset[bytes] = DROP_FORWARD
) -> Headers:
    """The headers to forward upstream for `request`, in one pass.

    Drops hop-by-hop fields (and any the client's `Connection` header names), `host`,
    `content-length` and `expect` (the upstream pool sets framing itself) — or whatever `drop`
    lists, a superset of `DROP_FORWARD` —, appends the client address to `x-forwarded-for`,
    then appends `extra`.
    """
    client_ip = request.client[0].encode("latin-1")
    out: Headers = []
    xff: bytes | None = None
    listed = False
    for item in request.headers:
        name = item[0]
        if name in drop:
            if name == b"connection":
                listed = True
            continue
        if name == _XFF:
            xff = item[1] if xff is None else xff + b", " + item[1]
            continue
        out.append(item)
    if listed:
        tokens = connection_tokens(request.headers)
        if tokens:
            out = [item for item in out if item[0] not in tokens]
    out.append((_XFF, client_ip if xff is None else xff + b", " + client_ip))
    out.extend(extra)
    return out


class _HttpDate:
    """The ``Date`` header of responses this process makes itself (RFC 9110 6.6.1: an origin
    server MUST send one), formatted once per second; relayed responses keep the upstream's."""

    __slots__ = ("_header", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._header = (b"date", b"")

    def __call__(self) -> tuple[bytes, bytes]:
        second = int(time.time())
        if second != self._second:
            self._second, self._header = second, (b"date", formatdate(second, usegmt=True).encode())
        return self._header


date_header = _HttpDate()


JSON_HEADERS: Headers = [(b"content-type", b"application/json")]
