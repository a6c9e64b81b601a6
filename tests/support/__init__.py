"""Shared test support: one way to wait, one fake clock, real processes on free loopback ports.

Use these instead of writing another poll loop, clock or process starter::

    from tests.support import FakeClock, free_port, model_server, running_mesh, wait_for

Waiting (``tests/support/wait.py``) -- never a fixed sleep to wait for something to happen:
    ``wait_for(check, until=None, *, what, timeout=10.0, interval=0.05, ignore=())``
        Calls ``check()`` until its value is truthy (or ``until(value)`` holds) and returns that
        value. On timeout it raises ``AssertionError("timed out after 10 s waiting for <what>;
        last value: <repr>")``. Exceptions of the ``ignore`` types count as "not yet".
        Return the observed thing from ``check`` and test it in ``until``, so a failure shows it:
        ``wait_for(lambda: gw.get("/metrics").text, lambda t: "x_total 3" in t, what="x_total 3")``.
    ``await_for(...)``: the same inside a coroutine (the loop runs between polls).
    Waiting for a write-behind flush? Prefer an explicit flush; else poll for its effect.

Time (``tests/support/clock.py``):
    ``FakeClock(start=1000.0)``: call it for the time, ``advance(s)`` or set ``.t`` to move it.
    Inject it as a policy's ``now``/``clock``.

Processes (``tests/support/procs.py``) -- started on free ports, waited for, always stopped:
    ``HOST`` (127.0.0.1), ``MESHGATE`` (argv prefix of ``python -m gateway``), ``free_port()``,
    ``wait_http(url, popen, timeout=30)``: until ``url`` answers; fails at once if the child exits.
    ``Proc(args, log, env=None, cwd=None)``: a child whose output goes to ``log``; ``.stop()``
        (SIGTERM, then kill; returns the exit code), ``.output()``, ``.wait_for_output(needle)``.
    ``model_server(tmp, model, version, *extra)``: context manager, ``meshgate serve-model``,
        yields its base URL.
    ``running_mesh(data_dir, *extra)``: context manager, ``meshgate up``, yields a ``Mesh``
        (``.admin`` and ``.data`` httpx clients, ``.register()``, ``.wait_routable()``, ``.cli()``);
        asserts a clean exit (code 0) when it stops.
    ``wait_flushed(url)`` / ``mesh.wait_flushed()``: until the gateway's write-behind buffers
        (experiment counters, join records) are empty, i.e. all it answered is in the store.
        Use it instead of sleeping "one flush interval".
    ``admin_state(mesh)``: what a mesh's admin API holds (models, flags, config version).
    ``oip_digits(pixels)``, ``digits_body(i=0)``: a digits OIP body (of holdout image ``i``).

Many gateways (``tests/support/cluster.py``, import it from there):
    ``cluster(tmp, store_url, prefix, gateways=n)``: context manager, ``meshgate control`` and
        n ready ``meshgate gateway``s on one store; yields a ``Cluster`` (``.admin``,
        ``.gateways`` [``Gateway``: ``.url``, ``.status()``], ``.spawn_gateway()``,
        ``.wait_ready()``, ``.stop_gateway()``, ``.register()``, ``.store()``, ``.wait_flushed()``).
    ``arm_totals(store, experiment)``: the experiment's ``ArmCounters`` per arm in the store.
    ``wait_routable(gateways, model)``: until every gateway routes ``model``.

The mesh (``tests/support/mesh.py``, import it from there):
    ``mesh_with_port(tmp)``: ``running_mesh`` with a mesh (mTLS) port, as ``mesh.mesh_port``.
    ``sidecar(mesh, tmp, model, version, upstream, *extra, outbound=False)``: ``meshgate
        sidecar`` joined with a fresh token, ready; yields a ``Sidecar`` (``.port``, ``.outbound``).
    ``make_token``, ``issue`` (``meshgate ca issue``), ``client_context``, ``tls_post``,
    ``outbound_infer``, ``TD`` (the trust domain), ``BODY`` (an FP64 pair for echo/sum).

The engine on real sockets (``tests/support/engine.py``, import it from there):
    ``serving(handler, limits=None, ssl_context=None)``: an engine server on a free loopback port;
    ``raw_connection(port)``, ``exchange(port, data)``, ``read_response(reader)``, ``at_eof(reader)``,
    ``echo_handler`` (answers with what it saw, as JSON), ``Response``.

A meshgate in this process (``tests/support/inprocess.py``, import it from there):
    ``in_process_mesh(tmp, ...)``: ``meshgate up`` on its own thread and loop, so a test can hand
    it an in-memory span exporter; ``OTHER``, a second gateway's heartbeat record.

Stores (``tests/support/stores.py``): the ``store`` fixture, every backend in turn.

OFREP (``tests/support/ofrep.py``): ``FLAGS``, ``check_cases(base_url)`` through OpenFeature's own
provider, ``serve(service)``: a stdlib server for an ``OfrepService``.

Redis (``tests/support/redis_server.py``):
    ``SHARED_REDIS_URL``, ``unique_prefix()``, ``delete_prefix(url, prefix)``,
    ``shared_redis_or_fail()``; the ``shared_prefix`` fixture (a fresh prefix on the shared Redis,
    deleted afterwards; the integration conftest imports it); ``RedisServer(dir)``: a private
    ``redis-server`` on a free port (``start``, ``kill`` = SIGKILL, ``stop``, ``client``); the
    ``private_redis`` fixture (import it into a conftest to use it).

Rate limits (``tests/support/ratelimit.py``): ``start_inside_a_minute(now, seconds, lead)``, an
    instant whose run stays inside one wall-clock minute, and ``await until(instant)``: loads
    measured against a sliding minute start there, all processes at once.

Rules the suite checks (``tests/test_rules.py``): no ``time.sleep``/``asyncio.sleep`` in test
files outside this package except on its allow-list, each entry saying why.
"""

from tests.support.clock import FakeClock
from tests.support.procs import (
    HOST,
    MESHGATE,
    Mesh,
    Proc,
    admin_state,
    digits_body,
    free_port,
    model_server,
    oip_digits,
    running_mesh,
    wait_flushed,
    wait_http,
)
from tests.support.redis_server import (
    SHARED_REDIS_URL,
    RedisServer,
    delete_prefix,
    shared_redis_or_fail,
    unique_prefix,
)
from tests.support.wait import await_for, wait_for

__all__ = [
    "HOST",
    "MESHGATE",
    "SHARED_REDIS_URL",
    "FakeClock",
    "Mesh",
    "Proc",
    "RedisServer",
    "admin_state",
    "await_for",
    "delete_prefix",
    "digits_body",
    "free_port",
    "model_server",
    "oip_digits",
    "running_mesh",
    "shared_redis_or_fail",
    "unique_prefix",
    "wait_flushed",
    "wait_for",
    "wait_http",
]
