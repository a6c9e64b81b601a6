"""gateway.dataplane.llm_usage: what a request is charged against its client key, known values."""

from __future__ import annotations

from gateway.dataplane.llm_usage import LlmUsage, charged_tokens


def test_the_upstreams_usage_is_charged_when_it_came():
    assert charged_tokens(LlmUsage(streamed=True, events=9, prompt_tokens=12, completion_tokens=7), 400) == 19
    assert charged_tokens(LlmUsage(streamed=False, completion_tokens=3), 400) == 3


def test_a_stream_without_usage_is_charged_the_prompts_estimate_and_its_events():
    # the client left (or the stream broke) after 7 events: 101 characters -> 26 tokens + 7
    assert charged_tokens(LlmUsage(streamed=True, events=7), 101) == 26 + 7


def test_nothing_relayed_and_no_usage_charges_nothing():
    assert charged_tokens(LlmUsage(streamed=True), 400) is None  # refused or failed before an event
    assert charged_tokens(LlmUsage(streamed=False), 400) is None  # a whole answer without usage


def test_a_client_leaving_while_the_upstream_has_the_request_is_charged_its_prompts_estimate():
    # a whole answer, or a stream before its first event: 101 characters -> 26 tokens
    assert charged_tokens(LlmUsage(streamed=False), 101, left_in_flight=True) == 26
    assert charged_tokens(LlmUsage(streamed=True), 101, left_in_flight=True) == 26
    assert charged_tokens(LlmUsage(streamed=True, events=7), 101, left_in_flight=True) == 26 + 7
    assert charged_tokens(LlmUsage(streamed=False, prompt_tokens=12), 101, left_in_flight=True) == 12
