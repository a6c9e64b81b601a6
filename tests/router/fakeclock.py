"""Moved to `tests.support` (tests/support/clock.py); kept while tests written against this name land."""

from tests.support.clock import FakeClock

__all__ = ["FakeClock"]
