"""Moved to `tests.support` (tests/support/procs.py); kept while tests written against this name land."""

from tests.support.procs import *  # noqa: F403
from tests.support.procs import __all__  # noqa: F401
