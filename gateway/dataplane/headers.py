"""The headers the data plane adds to the model's answers, and the one it reads from them.

Every routed answer carries ``x-meshgate-version`` and ``x-meshgate-request-id``, and says when
an experiment, a flag or a fallback chose the version (`response_headers`). A 429's
``retry-after`` is read by `retry_after_s` (the attempt sequence honours it). The gateway's own
error answers are ``gateway.http.error_response`` (codes: ``router.reasons``).
"""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.dataplane.exchange import Exchange

__all__ = ["response_headers", "retry_after_s"]

Headers = list[tuple[bytes, bytes]]

_MAX_RETRY_AFTER_S = 24 * 3600.0


def response_headers(ex: Exchange) -> Headers:
    """The gateway's headers on a routed answer: which version served it and why."""
    choice = ex.choice
    out = [
        (b"x-meshgate-version", ex.version.encode()),
        (b"x-meshgate-request-id", ex.request_id.encode()),
    ]
    if choice.experiment is not None:
        out.append((b"x-meshgate-experiment", choice.experiment.encode()))
        out.append((b"x-meshgate-arm", choice.arm.encode()))
    if choice.flag is not None:
        out.append((b"x-meshgate-flag", choice.flag.encode()))
    if ex.fallback:
        out.append((b"x-meshgate-fallback", b"1"))
    return out


def retry_after_s(headers: Headers) -> float | None:
    """An answer's ``retry-after`` in seconds (delay-seconds or an HTTP-date, RFC 9110 10.2.3);
    None when absent or unreadable. Capped at a day."""
    for name, value in headers:
        if name == b"retry-after":
            text = value.decode("latin-1").strip()
            if text.isdigit():
                return min(float(text), _MAX_RETRY_AFTER_S)
            try:
                when = parsedate_to_datetime(text).timestamp()
            except (TypeError, ValueError, IndexError, OverflowError):
                return None
            return min(max(0.0, when - time.time()), _MAX_RETRY_AFTER_S)
    return None
