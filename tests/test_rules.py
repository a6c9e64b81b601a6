"""The test suite's own rules, checked: a test waits on an observable condition or an explicit
flush (``tests.support.wait_for`` / ``await_for`` / ``wait_flushed``), never on a fixed sleep;
and it asserts no upper bound on a measured time (speed is measured by benchmarks/).

A sleep is allowed only where it is not a wait: a stub's scripted slowness, pacing a bounded
load loop, a sampler, or a window in which something must *not* happen. Each such line is listed
below with the reason; a new one needs an entry (or, better, a poll). ``tests/support`` is exempt:
it is where the one poll loop lives.

Layout: a test sits beside the code it tests -- tests/router, tests/experiments (and
experiments/stats), tests/models, tests/<gateway subpackage> (cli, clientkeys, control, dataplane,
http, mesh, store, telemetry) -- in-process, on loopback; tests that run several meshgate
processes go to tests/integration, the fault soak to tests/soak, browser tests to tests/browser;
helpers shared by more than one directory live in tests/support. The directories are checked
below (a new one must mirror a package); which file tests what is kept by review.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent

#: A sleep of any length (``asyncio.sleep(0)`` only yields to the loop and is not one).
SLEEP = re.compile(
    r"(?<![\w])(?:time\.|asyncio\.)?sleep\((?!0\))"  # time.sleep, asyncio.sleep, a bare sleep
    r"|\.wait_for_timeout\("  # Playwright's fixed pause
    r"|Event\(\)\.wait\(\s*[\d.]"  # threading.Event().wait(1.5): a sleep in disguise
)

#: (file under tests/, text on the line) -> why that sleep is not a wait.
ALLOWED = {
    ("http/test_pool_interim.py", "await asyncio.sleep(5)"): "the upstream holds its connection open",
    ("http/test_server_early_answer.py", "await asyncio.sleep(0.02)"): "paces a bounded send loop",
    ("http/test_deadlines.py", "await asyncio.sleep(0.05)"): "a window: a closed wheel must fire nothing",
    ("http/test_streaming_memory.py", "await asyncio.sleep(0.02)"): "the RSS sampler's period",
    ("dataplane/test_deadline_faults.py", "await asyncio.sleep(1.0)"): "a scripted upstream answering late",
    ("integration/test_resilience.py", "time.sleep(stub.ready_delay_s)"): "a stub scripted to be slow",
    ("integration/test_resilience.py", "time.sleep(1.0)"): "a window: checks still running may end",
    ("integration/test_resilience.py", "time.sleep(0.5)"): "a window: no new check may start in it",
    ("integration/test_experiments_e2e.py", "time.sleep(0.001)"): "paces the load for the canary's clock",
    ("mesh/test_workload.py", "await asyncio.sleep(0.05)"): "paces bounded probes during rotation",
    ("store/test_buffer.py", "time.sleep(0.001)"): "paces a concurrent flusher thread",
}


def _sleeps() -> list[tuple[str, str]]:
    found = []
    for path in sorted(TESTS.rglob("*.py")):
        rel = path.relative_to(TESTS).as_posix()
        if rel.startswith("support/") or rel == "test_rules.py":
            continue
        for line in path.read_text().splitlines():
            if SLEEP.search(line):
                found.append((rel, line.strip()))
    return found


def test_no_fixed_sleep_outside_the_allow_list():
    unexplained = [
        f"{rel}: {line}"
        for rel, line in _sleeps()
        if not any(rel == f and text in line for f, text in ALLOWED)
    ]
    assert not unexplained, (
        "a fixed sleep in a test: wait on what it waits for with tests.support.wait_for/await_for "
        "(or wait_flushed for a gateway's counters), or add it to ALLOWED in tests/test_rules.py "
        "with why it is not a wait:\n" + "\n".join(unexplained)
    )


#: clock readings: time.monotonic(), time.perf_counter(), time.time(), loop.time() and the _ns forms
_CLOCKS = {"monotonic", "perf_counter", "time", "monotonic_ns", "perf_counter_ns", "time_ns"}


def _reads_clock(node: ast.AST) -> bool:
    return any(
        isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in _CLOCKS
        for n in ast.walk(node)
    )


def _durations(tree: ast.AST) -> set[str]:
    """Names bound to a measured duration: ``elapsed = time.monotonic() - t0`` and what is
    computed from one (``ms = elapsed * 1000``), plus any name that says so (``elapsed``, ``took``)."""
    names: set[str] = set()
    for _ in range(3):  # durations computed from durations
        for node in ast.walk(tree):
            assigns = isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign) and node.value is not None
            if assigns and _measures(node.value, names):  # type: ignore[union-attr]
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]  # type: ignore[union-attr]
                names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def _measures(node: ast.AST, durations: set[str]) -> bool:
    for n in ast.walk(node):
        if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Sub) and _reads_clock(n.left):
            return True
        if isinstance(n, ast.Name) and (n.id in durations or re.search(r"elapsed|took", n.id)):
            return True
    return False


def _timing_assertions() -> list[str]:
    """``assert`` comparisons that bound a measured time from above: a clock read at assertion
    time, or a duration, on the smaller side (``elapsed < 1.2``, ``time.time() + 590 < t``,
    ``abs(t - time.time()) < 3``). Load only ever makes those larger, so they fail on a busy
    machine. Lower bounds (``elapsed >= 0.2``: a deadline is never early) and brackets
    between clock readings taken around the event (``before <= t <= time.time()``) pass."""
    found = []
    for path in sorted(TESTS.rglob("*.py")):
        rel = path.relative_to(TESTS).as_posix()
        if rel.startswith("support/") or rel == "test_rules.py":
            continue
        tree = ast.parse(path.read_text())
        durations = _durations(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Assert):
                continue
            for compare in (n for n in ast.walk(node.test) if isinstance(n, ast.Compare)):
                sides = [compare.left, *compare.comparators]
                for i, op in enumerate(compare.ops):
                    if isinstance(op, ast.Lt | ast.LtE):
                        smaller = sides[i]
                    elif isinstance(op, ast.Gt | ast.GtE):
                        smaller = sides[i + 1]
                    else:
                        continue
                    if _reads_clock(smaller) or _measures(smaller, durations):
                        found.append(f"{rel}:{node.lineno}: {ast.unparse(node.test)}")
    return found


def test_no_timing_assertion_in_a_test():
    """Speed and timing targets are measured by benchmarks/ (medians over rounds), never
    asserted in a test: the machines are shared and noisy."""
    found = _timing_assertions()
    assert not found, (
        "a test bounds a measured time from above: assert what the timing stands for instead "
        "(a reason code, what the upstream saw, an order of events) and measure the time in a "
        "benchmark under benchmarks/:\n" + "\n".join(found)
    )


def test_every_allowed_sleep_still_exists():
    """An entry whose sleep is gone is stale: remove it, so the list stays the truth."""
    found = _sleeps()
    stale = [key for key in ALLOWED if not any(rel == key[0] and key[1] in line for rel, line in found)]
    assert not stale, stale


#: test directories that mirror no package of the same name, and why
NOT_A_PACKAGE = {
    "integration": "several meshgate processes, real sockets and Redis",
    "soak": "the fault soak's short form",
    "browser": "the dashboard in a real browser",
    "support": "the shared helpers",
}


def test_the_test_tree_mirrors_the_packages():
    tops = ("gateway", "router", "experiments", "models")
    packages = {*tops, *(p.stem for top in tops for p in (TESTS.parent / top).iterdir())}
    strays = [
        d.name
        for d in sorted(TESTS.iterdir())
        if d.is_dir() and (d / "__init__.py").exists() and d.name not in packages | set(NOT_A_PACKAGE)
    ]
    assert not strays, f"tests/<dir> must be named after the package it tests: {strays}"


def test_no_test_module_imports_another():
    """Shared helpers live in tests/support (or a package's conftest), not in a test module."""
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        for match in re.finditer(r"^\s*from tests\.(\S+) import", path.read_text(), re.M):
            if match.group(1).rsplit(".", 1)[-1].startswith("test_"):
                offenders.append(f"{path.relative_to(TESTS)} imports tests.{match.group(1)}")
    assert not offenders, offenders
