"""What the data plane reads of a request (its route, its routing headers) and sends upstream.

Small pure functions over the engine's ``Request`` (bytes in, no I/O), each with one job (the
version is ``router.choose.choose_version``'s choice):

- `parse_target(path)`: a model path as ``(model, pinned version, action)``, else the path;
- `method_problem(action, method)`: why the method does not fit the route (405), if it does not;
- `routing_headers(request, split_header)`: the routing key, the caller's request id, the
  timeout header(s), the flag attributes and whether a ``traceparent`` came, in one pass over
  the headers;
- `DROP_UPSTREAM`: what ``proxy_headers`` leaves out of the headers sent upstream.
"""

from __future__ import annotations

from gateway.http import DROP_FORWARD, Request

__all__ = [
    "DROP_UPSTREAM",
    "KEY_HEADER",
    "REQUEST_ID_HEADER",
    "TIMEOUT_HEADER",
    "method_problem",
    "parse_target",
    "routing_headers",
]

MODELS_PREFIX = "/v2/models/"
ATTR_PREFIX = b"x-meshgate-attr-"
KEY_HEADER = b"x-meshgate-key"
REQUEST_ID_HEADER = b"x-request-id"
TIMEOUT_HEADER = b"x-meshgate-timeout-ms"
TRACEPARENT = b"traceparent"
_ACTIONS = ("infer", "", "ready")
_NO_ATTRS: dict[str, str] = {}  # shared empty attributes: never written to
# Not forwarded: hop-by-hop and framing fields, and the client's timeout (the exchange sends the
# remaining deadline instead).
DROP_UPSTREAM = DROP_FORWARD | {TIMEOUT_HEADER}

Route = tuple[str, str | None, str | None]


def parse_target(path: str) -> Route | str:
    """A decoded path as ``(model, pinned version or None, action)`` for ``/v2/models/...``
    (action ``"infer"``, ``""`` metadata, ``"ready"``; None: no such route), else the path."""
    if not path.startswith(MODELS_PREFIX):
        return path
    parts = path[len(MODELS_PREFIX) :].split("/")
    n = len(parts)
    if n >= 3 and parts[1] == "versions":
        pinned, action = parts[2], parts[3] if n == 4 else ("" if n == 3 else None)
    else:
        pinned, action = None, parts[1] if n == 2 else ("" if n == 1 else None)
    return (parts[0], pinned, action if action in _ACTIONS else None)


def method_problem(path: str, action: str, method: bytes) -> tuple[str, bytes] | None:
    """``(message, allow header)`` when `method` does not fit the action (405), else None."""
    expect = b"POST" if action == "infer" else b"GET"
    if method == expect or (method == b"HEAD" and expect == b"GET"):
        return None
    allowed = b"POST" if expect == b"POST" else b"GET, HEAD"
    return f"{path} takes {allowed.decode()}, not {method.decode()}", allowed


def routing_headers(
    request: Request, split_header: bytes
) -> tuple[str | None, str | None, bytes | None, dict[str, str], bool]:
    """``(key, request id, timeout, attributes, traceparent sent)`` from one pass over the headers.

    The key is ``x-meshgate-key``, else the model's split header; repeated timeout headers all
    count (joined with commas: the shortest wins); ``x-meshgate-attr-<name>`` are flag attributes.
    The last is whether the caller sent a ``traceparent`` (the access log then need not look).
    """
    key = rid = timeout = None
    attrs = _NO_ATTRS
    traced = False
    x_only = split_header.startswith(b"x-")  # then every other header read here starts with x-
    for hname, value in request.headers:
        if hname[0] != 120:  # not b"x...": an index, not a startswith() call
            if hname == TRACEPARENT:
                traced = True
                continue
            if x_only:
                continue
        if hname == KEY_HEADER or (hname == split_header and key is None):
            key = value.decode("latin-1")
        elif hname == REQUEST_ID_HEADER:
            rid = value.decode("latin-1")
        elif hname == TIMEOUT_HEADER:
            timeout = value if timeout is None else timeout + b"," + value
        elif hname.startswith(ATTR_PREFIX):
            if attrs is _NO_ATTRS:
                attrs = {}
            attrs[hname[len(ATTR_PREFIX) :].decode("latin-1")] = value.decode("latin-1")
    return key, rid, timeout, attrs, traced
