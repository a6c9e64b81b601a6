"""Fault knobs of tinylm: the ways hosted LLM APIs fail, on demand and reproducibly.

Gateways must honour `429` + `retry-after`, retry 5xx before the first byte, time out slow
first tokens and turn a stream that breaks halfway into a clean error; these knobs produce
each of those. They apply to completion requests only, after the request is validated, and
are replaced at runtime with `POST /v2/debug/faults` (`{}` heals).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from enum import IntEnum
from typing import Any

from models.faults import check_knobs, is_int, knobs_from_json

__all__ = ["LlmFate", "LlmFaultInjector", "LlmFaults"]

_ERROR_STATUSES = (500, 502, 503)


@dataclass(frozen=True, slots=True)
class LlmFaults:
    """What goes wrong with completion requests; the default is a healthy, fast server.

    - `rate_limit_rate`: probability of `429` with `retry-after: <retry_after_s>` (whole
      seconds, rounded up) and OpenAI's `rate_limit_exceeded` error.
    - `error_rate`: probability of an `error_status` (500, 502 or 503) server error.
    - `time_to_first_token_ms`: wait before the first event of a stream (or before a
      whole answer).
    - `time_per_token_ms`: wait between tokens; a whole answer waits for all its tokens.
    - `drop_rate`: probability that the connection is cut: a stream after `drop_after`
      events (the role event counts), a whole answer before any byte of it.
    - `seed`: seeds the draws so a run is reproducible; `None` draws from OS entropy.
    """

    rate_limit_rate: float = 0.0
    retry_after_s: float = 1.0
    error_rate: float = 0.0
    error_status: int = 500
    time_to_first_token_ms: float = 0.0
    time_per_token_ms: float = 0.0
    drop_rate: float = 0.0
    drop_after: int = 2
    seed: int | None = None

    def __post_init__(self) -> None:
        check_knobs(
            self,
            rates=("rate_limit_rate", "error_rate", "drop_rate"),
            durations=("retry_after_s", "time_to_first_token_ms", "time_per_token_ms"),
        )
        if self.error_status not in _ERROR_STATUSES:
            raise ValueError(f"error_status: must be one of 500, 502, 503, got {self.error_status!r}")
        if not is_int(self.drop_after) or self.drop_after < 0:
            raise ValueError(f"drop_after: must be an integer >= 0, got {self.drop_after!r}")

    @classmethod
    def from_json(cls, doc: Any) -> LlmFaults:
        """Build from a decoded JSON object; missing fields take their defaults, unknown ones fail."""
        return knobs_from_json(cls, doc)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class LlmFate(IntEnum):
    """What happens to one completion request."""

    PASS = 0
    RATE_LIMITED = 1
    ERROR = 2
    DROP = 3


class LlmFaultInjector:
    """Draws each request's fate from the current knobs; replacing them reseeds the draws."""

    __slots__ = ("_faults", "_rng")

    def __init__(self, faults: LlmFaults, rng: random.Random | None = None) -> None:
        self._faults = faults
        self._rng = rng if rng is not None else random.Random(faults.seed)

    @property
    def faults(self) -> LlmFaults:
        return self._faults

    def replace(self, faults: LlmFaults) -> None:
        self._faults = faults
        self._rng = random.Random(faults.seed)

    def draw(self) -> LlmFate:
        """The fate of the next request: one draw per knob that is set, in a fixed order."""
        faults, rng = self._faults, self._rng
        if faults.rate_limit_rate and rng.random() < faults.rate_limit_rate:
            return LlmFate.RATE_LIMITED
        if faults.error_rate and rng.random() < faults.error_rate:
            return LlmFate.ERROR
        if faults.drop_rate and rng.random() < faults.drop_rate:
            return LlmFate.DROP
        return LlmFate.PASS
