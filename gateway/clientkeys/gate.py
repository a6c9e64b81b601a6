"""The gate in front of the LLM routes: client key, allowed model, rate limits.

One ``KeyGate`` per gateway process (``plane.key_gate``). It reads the route table's compiled
key table and its own meters: nothing here awaits or touches the store (the ``KeySync`` task
shares the counts in the background), but for ``look_up``, the miss path below, which reads a
key the table does not have yet on threads of its own. The whole API::

    caller = plane.key_gate.authenticate(authorization)
    #   authorization: the request's Authorization header (str, bytes or None)
    if caller.refusal is not None:
        status, headers, body = caller.refusal  # a 401, sent before the body is even looked at
    ...                                         # read the body
    adm = plane.key_gate.admit_key(caller.key, model)
    #   model: the meshgate model name from the body (before any /version pin)
    if adm.refusal is not None:
        status, headers, body = adm.refusal    # send it as it is: an OpenAI-shaped error
        ...                                     # (403, or 429 with retry-after) and headers
    else:
        ...                                     # route; add adm.headers to the answer's headers
        plane.key_gate.record(adm.key_id, tokens)   # after the answer: prompt + completion tokens

``admit(authorization, model)`` does both steps at once.

A key's first requests on a gateway in shared mode come before the gateway's first sync of it
has brought a lease: the first is admitted without one, and ``admit_key(key, model,
may_wait=True)`` answers the others ``waits`` (no refusal, nothing counted) instead of a 429:
the caller hands a callback to ``after_sync(key.id, fn)``, which runs once the next sync of that
key is over (the sync is asked for at once: ``on_wait``), and admits again then (without
``may_wait``: a refusal then is a real one). The same holds in a minute's first moments when the
lease reserved ahead for it runs out before its first sync.

* No active key configured: every request is admitted (``key_id`` None, no headers).
* A missing, unknown or revoked key: 401 ``invalid_api_key`` (the body's code is
  ``missing_api_key`` when none was sent).
* A key not allowed the model: 403 ``model_not_allowed``.
* Over the key's rpm or tpm: 429 ``rate_limit_exceeded`` with ``retry-after`` (whole seconds)
  and ``retry-after-ms`` (the OpenAI SDK prefers it).
* Every answer to a keyed request, admitted or limited, carries OpenAI's ``x-ratelimit-limit-*``,
  ``x-ratelimit-remaining-*`` and ``x-ratelimit-reset-*`` headers for the limits the key has.

A key that authenticated is remembered by its exact ``Authorization`` value for the key table
it was checked against (a table swap, such as a revocation, forgets them all), so a caller's
next request skips the parse and the SHA-256: the lookup of an unknown value costs what it
costs for any value (a dict keyed by the process's randomised string hash; refusals are never
remembered, so callers sending wrong keys cannot grow it; at most `KeyGate.REMEMBERED`).

A well-formed key whose id the table does not hold (a key created since the table was compiled)
is refused ``unknown`` when the gate has a ``fetch`` (shared store): ``look_up(authorization,
then)`` then asks the store before the refusal is sent. True: ``then(caller)`` is called on the
event loop with the answer (the key, or the refusal to send); False: a bound said no, send the
refusal now (``gateway.clientkeys.lookup`` has the bounds and why a revoked key is never
revived). ``lookups`` counts them by outcome.

``record`` may be called with ``None`` (open gateway, or tokens unknown) and is then a no-op;
a token budget that goes negative blocks later requests until the window slides past it.
Headers are lowercase ``(bytes, bytes)`` pairs, as ``gateway.http`` takes them; each refusal
carries ``x-meshgate-error`` with its ``router.reasons`` code, and ``gate.refused`` counts them.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple

from router.client_keys import ClientKey, KeyCheck, KeyTable, digest, parse_token, token_id
from router.ratelimit import Meter, Verdict, go_duration
from router.reasons import INVALID_API_KEY, MODEL_NOT_ALLOWED, RATE_LIMITED

__all__ = ["Admission", "Caller", "KeyGate", "openai_error"]

Headers = list[tuple[bytes, bytes]]
Refusal = tuple[int, Headers, bytes]

_JSON = (b"content-type", b"application/json")
log = logging.getLogger("meshgate.clientkeys")


class Caller(NamedTuple):
    """Who is calling: ``key`` None and no refusal when no active key exists (open routes)."""

    key: ClientKey | None
    refusal: Refusal | None = None
    #: refused as a key the route table does not know, which the store may: ``look_up``
    unknown: bool = False


class Admission(NamedTuple):
    key_id: str | None
    headers: Headers
    refusal: Refusal | None = None
    #: neither admitted nor refused: admit again after the key's next sync (``after_sync``)
    waits: bool = False


def openai_error(
    status: int,
    reason: str,
    message: str,
    err_type: str,
    code: str | None,
    extra: Headers,
    param: str | None = None,
) -> Refusal:
    """An answer in OpenAI's error document, ``{"error": {message, type, param, code}}``, with
    ``x-meshgate-error: <reason>`` (the LLM routes answer every error this way)."""
    body = {"error": {"message": message, "type": err_type, "param": param, "code": code}}
    headers = [_JSON, (b"x-meshgate-error", reason.encode()), *extra]
    return status, headers, json.dumps(body, separators=(",", ":")).encode()


def _limit_headers(v: Verdict) -> Headers:
    out: Headers = []
    reset = None
    if v.limit_requests is not None:
        reset = go_duration(v.reset_requests_s).encode()
        out += [
            (b"x-ratelimit-limit-requests", b"%d" % v.limit_requests),
            (b"x-ratelimit-remaining-requests", b"%d" % v.remaining_requests),  # type: ignore[str-format]
            (b"x-ratelimit-reset-requests", reset),
        ]
    if v.limit_tokens is not None:
        if reset is None or v.reset_tokens_s != v.reset_requests_s:  # the same once both have counts
            reset = go_duration(v.reset_tokens_s).encode()
        out += [
            (b"x-ratelimit-limit-tokens", b"%d" % v.limit_tokens),
            (b"x-ratelimit-remaining-tokens", b"%d" % v.remaining_tokens),  # type: ignore[str-format]
            (b"x-ratelimit-reset-tokens", reset),
        ]
    return out


class KeyGate:
    """Authenticates and meters LLM requests (see the module docstring for the API)."""

    #: the most ``Authorization`` values remembered as authenticated (then they are forgotten)
    REMEMBERED = 4096
    #: the miss path's bounds (``gateway.clientkeys.lookup``): lookups per second and burst,
    #: lookups at once, their threads, how long and how many digests the store lacked are kept
    RATE = 20.0
    BURST = 20
    IN_FLIGHT = 8
    THREADS = 2
    ABSENT_S = 10.0
    ABSENT_MAX = 4096

    def __init__(
        self,
        keys: Callable[[], KeyTable],
        *,
        shared: bool,
        sync_s: float = 0.1,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._keys = keys  # the route table's key table, read per request (it is swapped whole)
        self.shared = shared
        self.sync_s = sync_s
        self.now = now
        self.meters: dict[str, Meter] = {}
        self.refused: dict[str, int] = {}  # by reason, for /metrics and tests
        #: key id -> callbacks of the requests waiting for its next sync
        self.waiting: dict[str, list[Callable[[], None]]] = {}
        #: called when a request starts waiting: the sync (``KeySync``) runs at once
        self.on_wait: Callable[[], None] | None = None
        #: Authorization value -> its authenticated caller, for the key table `_known_of`
        self._known: dict[str | bytes, Caller] = {}
        self._known_of: KeyTable | None = None
        #: the miss path (``gateway.clientkeys.lookup``): digest -> the key as the store has it
        #: (blocking, run on the gate's threads); None: keys come with the route table only
        self.fetch: Callable[[str], ClientKey | None] | None = None
        self.lookups: dict[str, int] = {}  # by outcome, for /v1/gateway and tests
        self._absent: dict[str, float] = {}  # digest -> until when it is not asked again
        self._pending: dict[str, list[tuple[str | bytes, Callable[[Caller], None]]]] = {}
        self._bucket = float(self.BURST)
        self._bucket_at = now()
        self._threads: ThreadPoolExecutor | None = None

    def _meter(self, key: ClientKey) -> Meter:
        meter = self.meters.get(key.id)
        if meter is None:
            meter = self.meters[key.id] = Meter(key.limits, shared=self.shared, now=self.now())
        elif meter.limits is not key.limits:
            meter.limits = key.limits  # a changed limit applies from the next request on
        return meter

    def _refuse(self, reason: str, refusal: Refusal) -> Refusal:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        return refusal

    def admit(self, authorization: str | bytes | None, model: str) -> Admission:
        """``authenticate`` and ``admit_key`` in one step."""
        caller = self.authenticate(authorization)
        if caller.refusal is not None:
            if caller.unknown:  # no lookup here (it would be asynchronous): refused as unknown
                self._refused_unknown()
            return Admission(None, [], caller.refusal)
        return self.admit_key(caller.key, model)

    def authenticate(self, authorization: str | bytes | None) -> Caller:
        """The key an ``Authorization`` header presents, or the 401 that refuses it (``unknown``:
        the store may know it, ``look_up``)."""
        table = self._keys()
        if table.open:
            return Caller(None)
        known = self._known
        if self._known_of is not table:  # new keys, limits or a revocation: check again
            known.clear()
            self._known_of = table
        elif authorization is not None:
            caller = known.get(authorization)
            if caller is not None:
                return caller
        given = authorization
        if isinstance(authorization, bytes):
            authorization = authorization.decode("latin-1")
        check, key = table.check(authorization)
        if check is KeyCheck.OK and key is not None:
            if len(known) >= self.REMEMBERED:
                known.clear()
            caller = known[given] = Caller(key)  # type: ignore[index]
            return caller
        if check is KeyCheck.MISSING:
            refusal = openai_error(
                401,
                INVALID_API_KEY,
                "You didn't provide an API key: send it as 'Authorization: Bearer mg-...'.",
                "invalid_request_error",
                "missing_api_key",
                [(b"www-authenticate", b"Bearer")],
            )
        else:
            what = f"the API key {key.id} ({key.name}) was revoked" if key else "Incorrect API key provided"
            refusal = openai_error(
                401,
                INVALID_API_KEY,
                f"{what}: create one with `meshgate keys create NAME`.",
                "invalid_request_error",
                "invalid_api_key",
                [(b"www-authenticate", b'Bearer error="invalid_token"')],
            )
        if check is KeyCheck.UNKNOWN and self.fetch is not None:
            return Caller(None, refusal, True)  # counted when it is sent (look_up)
        return Caller(None, self._refuse(INVALID_API_KEY, refusal))

    # -- the miss path (gateway.clientkeys.lookup) -------------------------------------------
    def look_up(self, authorization: str | bytes, then: Callable[[Caller], None]) -> bool:
        """Ask the store about a key ``authenticate`` refused as ``unknown``, unless a bound says
        no (False: send the refusal now). True: `then(caller)` gets the answer, on the loop."""
        table = self._keys()
        text = authorization.decode("latin-1") if isinstance(authorization, bytes) else authorization
        token = parse_token(text)
        if token is None or token_id(token) is None or self.fetch is None:
            return self._refused_unknown()
        given = authorization
        wanted = digest(token)
        now = self.now()
        until = self._absent.get(wanted)
        if until is not None:
            if until > now:
                self._count("absent_cached")
                return self._refused_unknown()
            del self._absent[wanted]
        waiters = self._pending.get(wanted)
        if waiters is not None:  # the same key asked by requests at once: one lookup
            waiters.append((given, then))
            return True
        self._bucket = min(float(self.BURST), self._bucket + max(0.0, now - self._bucket_at) * self.RATE)
        self._bucket_at = now
        if len(self._pending) >= self.IN_FLIGHT or self._bucket < 1.0:
            self._count("limited")
            return self._refused_unknown()
        self._bucket -= 1.0
        self._pending[wanted] = [(given, then)]
        if self._threads is None:
            self._threads = ThreadPoolExecutor(self.THREADS, thread_name_prefix="key-lookup")
        self._count("asked")
        loop = asyncio.get_running_loop()
        fut = self._threads.submit(self.fetch, wanted)  # type: ignore[arg-type]
        fut.add_done_callback(
            lambda f: loop.call_soon_threadsafe(self._looked_up, wanted, token_id(token), table, f)
        )
        return True

    def _looked_up(self, wanted: str, key_id: str, table: KeyTable, fut: Future) -> None:
        waiters = self._pending.pop(wanted, [])
        try:
            key = fut.result()
        except Exception as exc:  # the store is down: refused as unknown, not asked again soon
            log.warning("client key %s not looked up in the store: %s: %s", key_id, type(exc).__name__, exc)
            key = None
        if self._keys() is not table:  # swapped meanwhile: the answer may predate the change
            self._count("stale")
            for given, then in waiters:
                self._answer(given, then, again=True)
            return
        good = key is not None and key.id == key_id and hmac.compare_digest(key.digest, wanted)
        if good and not key.revoked:  # type: ignore[union-attr]
            self._count("adopted")
            known = self._known
            if self._known_of is not table:
                known.clear()
                self._known_of = table
            for given, _ in waiters:  # remembered for this table only: forgotten at its swap
                if len(known) >= self.REMEMBERED:
                    known.clear()
                known[given] = Caller(key)
        else:
            self._count("absent")
            absent = self._absent
            if len(absent) >= self.ABSENT_MAX:
                del absent[next(iter(absent))]  # the oldest
            absent[wanted] = self.now() + self.ABSENT_S
        for given, then in waiters:
            self._answer(given, then, again=False)

    def _answer(self, given: str | bytes, then: Callable[[Caller], None], again: bool) -> None:
        """The waiter's answer from the table as it is now (`again`: a key still unknown is
        looked up once more, its lookup having raced a table swap)."""
        try:
            answer = self.authenticate(given)
            if answer.unknown:
                if again and self.look_up(given, then):
                    return
                answer = Caller(None, self._refuse(INVALID_API_KEY, answer.refusal))  # type: ignore[arg-type]
            then(answer)
        except Exception:  # one request's failure is its own
            log.exception("a request waiting for the lookup of its client key failed")

    def _refused_unknown(self) -> bool:
        self.refused[INVALID_API_KEY] = self.refused.get(INVALID_API_KEY, 0) + 1
        return False

    def _count(self, outcome: str) -> None:
        self.lookups[outcome] = self.lookups.get(outcome, 0) + 1

    def admit_key(self, key: ClientKey | None, model: str, may_wait: bool = False) -> Admission:
        """Admit an authenticated caller's request for ``model`` (the allowed models, then the
        rate limits); ``key`` None (open routes) is always admitted. `may_wait`: a request that
        only lacks the lease of a sync still to come waits for it (module docstring)."""
        if key is None:
            return Admission(None, [])  # a new list: the caller may extend it
        if not key.allows(model):
            allowed = ", ".join(sorted(key.models))
            refusal = openai_error(
                403,
                MODEL_NOT_ALLOWED,
                f"the API key {key.name} may not use model {model!r} (allowed: {allowed}).",
                "invalid_request_error",
                "model_not_allowed",
                [],
            )
            return Admission(None, [], self._refuse(MODEL_NOT_ALLOWED, refusal))
        meter = self._meter(key)
        verdict = meter.admit(self.now(), self.sync_s)
        headers = _limit_headers(verdict)
        if verdict.admitted:
            return Admission(key.id, headers)
        if may_wait and meter.sync_due:
            return Admission(key.id, [], None, True)
        wait = verdict.retry_after_s
        if math.isinf(wait):
            wait = 60.0
        limit = key.limits.rpm if verdict.limit == "requests" else key.limits.tpm
        unit = "requests per min (RPM)" if verdict.limit == "requests" else "tokens per min (TPM)"
        headers += [
            (b"retry-after", str(max(1, math.ceil(wait))).encode()),
            (b"retry-after-ms", str(max(1, math.ceil(wait * 1000))).encode()),
        ]
        self.refused[RATE_LIMITED] = self.refused.get(RATE_LIMITED, 0) + 1
        return Admission(
            key.id,
            [],
            openai_error(
                429,
                RATE_LIMITED,
                f"Rate limit reached for key {key.name} on {unit}: Limit {limit}. "
                f"Please try again in {go_duration(wait)}.",
                verdict.limit or "requests",
                "rate_limit_exceeded",
                headers,
            ),
        )

    def after_sync(self, key_id: str, callback: Callable[[], None]) -> None:
        """Call `callback` once the next sync of the key is over (it is asked for now)."""
        self.waiting.setdefault(key_id, []).append(callback)
        if self.on_wait is not None:
            self.on_wait()

    def synced(self, key_ids: Iterable[str]) -> None:
        """A sync of these keys is over (whether the store answered or not): run their waiters."""
        for key_id in key_ids:
            for callback in self.waiting.pop(key_id, ()):
                try:
                    callback()
                except Exception:  # one request's failure is its own: the others still go on
                    log.exception("a request waiting for the sync of key %s failed", key_id)

    def record(self, key_id: str | None, tokens: int | None) -> None:
        """Count an answer's tokens (prompt + completion) against its key's budget."""
        if key_id is None or not tokens:
            return
        meter = self.meters.get(key_id)
        if meter is not None:
            meter.record(tokens, self.now())
