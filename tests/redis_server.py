"""Moved to `tests.support` (tests/support/redis_server.py); kept while tests using this name land."""

from tests.support.redis_server import *  # noqa: F403
from tests.support.redis_server import __all__, private_redis  # noqa: F401
