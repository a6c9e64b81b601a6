"""What the gateway measured of one LLM request (OpenAI-compatible routes).

The LLM front end fills one ``LlmUsage`` per request and leaves it on the exchange
(``ex.llm``; ``None`` for Open Inference Protocol requests) before the completion observers
run, so experiment counters, Prometheus metrics, traces and the access log read the same
figures. Times are seconds on the monotonic clock; token counts come from the upstream's
``usage`` object (for streams, the usage chunk the gateway asks for), cost from the version's
prices per million tokens. A figure the gateway could not know is ``None``, never 0.

A client key is charged ``charged_tokens``: the upstream's count when it came, else an
estimate for a stream that relayed events without one (the client left, the stream broke, the
upstream does not send usage) and for a request, streamed or not, whose client left while the
upstream had it, so that leaving early does not escape the key's tpm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from router.table import LlmRoute

__all__ = ["CHARS_PER_TOKEN", "LlmUsage", "charged_tokens", "cost_usd"]

#: characters of a request body per token, for the prompt's estimate (OpenAI's rule of thumb
#: for English text; the body's JSON around the prompt counts too, which errs high)
CHARS_PER_TOKEN = 4


@dataclass(slots=True)
class LlmUsage:
    streamed: bool
    #: from when the gateway received the request (a wait for its key's first lease included)
    #: to the first content event reaching the client (streams only)
    ttft_s: float | None = None
    #: mean gap between content events after the first (streams with two or more events)
    inter_token_s: float | None = None
    #: content events relayed to the client
    events: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    #: prompt and completion tokens priced by the version's price_in / price_out (USD per 1M tokens)
    cost_usd: float | None = None
    #: the stream ended midway (reason ``stream_broken``): the client got an SSE error event
    broken: bool = False
    #: the ``model`` the upstream's answer names (OpenTelemetry's ``gen_ai.response.model``)
    response_model: str | None = None

    @property
    def total_tokens(self) -> int | None:
        if self.prompt_tokens is None and self.completion_tokens is None:
            return None
        return (self.prompt_tokens or 0) + (self.completion_tokens or 0)


def cost_usd(prices: LlmRoute, prompt: int | None, completion: int | None) -> float | None:
    """What `prompt` and `completion` tokens cost at a version's prices (USD per 1M tokens);
    None when no token count is known or the version has no prices."""
    if prompt is None and completion is None:
        return None
    if prices.price_in is None and prices.price_out is None:
        return None
    return ((prompt or 0) * (prices.price_in or 0.0) + (completion or 0) * (prices.price_out or 0.0)) / 1e6


def charged_tokens(usage: LlmUsage, body_chars: int, left_in_flight: bool = False) -> int | None:
    """The tokens a request counts against its client key: the upstream's usage when it came;
    else, for a stream that relayed events or a request whose client left while the upstream
    had it (`left_in_flight`: its prompt was sent and is being processed), the prompt estimated
    from the request body's ``body_chars`` plus one token per event relayed (OpenAI and vLLM
    stream about a token an event; the role and finish events count one each). None: nothing
    to charge (no usage and nothing relayed, and no upstream working on it when the client left:
    refused, or failed before its first event)."""
    total = usage.total_tokens
    if total is not None or not (usage.events or left_in_flight):
        return total
    return math.ceil(body_chars / CHARS_PER_TOKEN) + usage.events
