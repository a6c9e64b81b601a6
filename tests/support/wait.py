"""The one way a test waits: poll an observable condition, bounded, failing with what it saw.

A fixed ``sleep`` either wastes time or flakes on a busy machine; a poll ends as soon as the
condition holds and, when it never does, says what was awaited and the last value seen.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["await_for", "wait_for"]

T = TypeVar("T")

_NOT_YET = object()


class _Poll:
    """One bounded poll: ``done()`` checks once, and raises once the deadline has passed."""

    def __init__(self, check, until, what: str, timeout: float, ignore) -> None:
        self.check, self.until, self.what, self.timeout, self.ignore = check, until, what, timeout, ignore
        self.deadline = time.monotonic() + timeout
        self.last: Any = _NOT_YET

    def done(self) -> bool:
        expired = time.monotonic() >= self.deadline  # read first: one more check after the deadline
        try:
            self.last = self.check()
        except self.ignore as exc:
            self.last = exc
        else:
            if self.until(self.last) if self.until is not None else self.last:
                return True
        if expired:
            shown = "(not checked)" if self.last is _NOT_YET else repr(self.last)
            if len(shown) > 3000:  # a log, say: its start and its end tell most
                shown = f"{shown[:1000]} ... {shown[-2000:]}"
            raise AssertionError(
                f"timed out after {self.timeout:g} s waiting for {self.what}; last value: {shown}"
            )
        return False


def wait_for(
    check: Callable[[], T],
    until: Callable[[T], Any] | None = None,
    *,
    what: str,
    timeout: float = 10.0,
    interval: float = 0.05,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``check()`` until its value is truthy (or ``until(value)`` holds) and return that value.

    ``check`` is always called once more after the deadline passes, so a slow machine never
    fails a condition that holds. Exceptions of the ``ignore`` types count as "not yet" (the
    last one is reported). On timeout: ``AssertionError`` naming ``what`` and the last value.
    """
    poll = _Poll(check, until, what, timeout, ignore)
    while not poll.done():
        time.sleep(interval)
    return poll.last


async def await_for(
    check: Callable[[], T],
    until: Callable[[T], Any] | None = None,
    *,
    what: str,
    timeout: float = 10.0,
    interval: float = 0.02,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """`wait_for` for a test on an event loop: ``check`` is a plain callable (not awaited) and the
    loop keeps running between polls, so the servers and tasks under test make progress."""
    poll = _Poll(check, until, what, timeout, ignore)
    while not poll.done():
        await asyncio.sleep(interval)
    return poll.last
