"""The poll helper returns what it saw, and a timeout names what was awaited and the last value."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from tests.support.wait import await_for, wait_for


def test_returns_the_first_value_that_holds():
    counter = itertools.count()
    assert wait_for(lambda: next(counter), lambda n: n >= 3, what="three", interval=0.001) == 3
    assert wait_for(lambda: "ready", what="ready") == "ready"


def test_a_timeout_names_what_was_awaited_and_the_last_value():
    with pytest.raises(AssertionError, match=r"waiting for the flush; last value: \{'n': 2\}"):
        wait_for(lambda: {"n": 2}, lambda c: c["n"] == 3, what="the flush", timeout=0.05, interval=0.01)


def test_ignored_errors_count_as_not_yet_and_are_reported():
    answers = iter([ConnectionError("refused"), ConnectionError("refused"), "up"])

    def check() -> str:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert wait_for(check, what="up", interval=0.001, ignore=(ConnectionError,)) == "up"

    def refused() -> None:
        raise ConnectionError("refused")

    with pytest.raises(AssertionError, match=r"ConnectionError\('refused'\)"):
        wait_for(refused, what="up", timeout=0.02, interval=0.01, ignore=(ConnectionError,))
    with pytest.raises(ConnectionError):  # not ignored: fails at once
        wait_for(refused, what="up")


def test_await_for_lets_the_loop_run_between_polls():
    async def scenario() -> int:
        box = {"n": 0}

        async def bump() -> None:
            for _ in range(3):
                await asyncio.sleep(0)
                box["n"] += 1

        task = asyncio.create_task(bump())
        got = await await_for(lambda: box["n"], lambda n: n == 3, what="three bumps")
        await task
        return got

    assert asyncio.run(scenario()) == 3
    with pytest.raises(AssertionError, match="waiting for never"):
        asyncio.run(await_for(lambda: False, what="never", timeout=0.02, interval=0.01))
