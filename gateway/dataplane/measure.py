"""Experiment measurement on the data plane: per-arm counters, signed request ids, feedback.

Every request an experiment routed adds its outcome to the arm's counter group (requests,
errors, latency moments and histogram; for an LLM request also what its ``ex.llm`` measured:
time to first token, inter-token time, tokens, cost, and a broken stream, which counts as an
error) through a write-behind buffer flushed every second:
the hot path never waits for the store. The arm's outcomes are summed in a per-arm tally on
the event-loop thread (plain numbers, no lock) and enter the counter buffer once per flush.

``POST /v1/feedback`` later joins an outcome (a conversion, a label) to the arm, on any
gateway, and counts it once per request and metric (``store.claim``). The join needs no
per-request state: the gateway mints the ids of experiment-routed requests so that they
carry experiment, arm and issue time under the mesh's MAC (``feedback_ids``). Only a request
whose caller sent its own ``x-request-id`` (which cannot carry the assignment), or one
served before the gateway had the mesh's key (store down at start), leaves a short-lived
join record under its id, written behind like the counters.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from bisect import bisect_left
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from experiments.counters import (
    LATENCY_BOUNDS_S,
    LLM_FIGURES,
    TTFT_BUCKET_FIELDS,
    arm_group,
    latency_bucket_field,
    llm_fields,
    metric_fields,
)
from gateway.dataplane.exchange import Exchange
from gateway.dataplane.feedback_ids import FeedbackIds, load_or_create_key, looks_signed
from gateway.dataplane.llm_usage import LlmUsage
from gateway.http import Request, Responder, UpstreamResponse, error_response, json_response
from gateway.store import Store, StoreUnavailable
from gateway.store.buffer import CounterBuffer, RecordBuffer
from router.reasons import CLIENT_CLOSED
from router.table import RouteTable

if TYPE_CHECKING:
    from gateway.dataplane.plane import DataPlane

__all__ = ["FEEDBACK_PATH", "JOIN_NAMESPACE", "Measurement"]

log = logging.getLogger("meshgate.measure")

FEEDBACK_PATH = "/v1/feedback"
JOIN_NAMESPACE = "join"
_FEEDBACK_NAMESPACE = "feedback"
_MAX_EVENTS = 1000
_MAX_ID = 200
# A feedback value's square goes into a counter: bounded so sums of squares stay finite.
_MAX_VALUE = 1e100


class FeedbackError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class _ArmTally:
    """One arm's outcomes since the last flush, summed on the event-loop thread without a lock.

    ``drain`` hands them to the ``CounterBuffer`` (one locked ``add_many`` per arm and flush
    instead of one per request); ``lat_n`` is ``requests``, so it is not kept twice.
    """

    __slots__ = ("buckets", "errors", "group", "lat_sum", "lat_sumsq", "llm", "requests", "unkeyed")

    def __init__(self, group: str) -> None:
        self.group = group
        self.requests = 0
        self.errors = 0
        self.unkeyed = 0
        self.lat_sum = 0.0
        self.lat_sumsq = 0.0
        self.buckets = [0] * (len(LATENCY_BOUNDS_S) + 1)
        self.llm: _LlmTally | None = None  # made by the arm's first LLM request

    def deltas(self) -> dict[str, int | float]:
        out: dict[str, int | float] = {
            "requests": self.requests,
            "errors": self.errors,
            "unkeyed": self.unkeyed,
            "lat_n": self.requests,
            "lat_sum": self.lat_sum,
            "lat_sumsq": self.lat_sumsq,
        }
        for i, n in enumerate(self.buckets):
            if n:
                out[_BUCKET_FIELDS[i]] = n
        if self.llm is not None:
            self.llm.add_deltas(out)
        return out


class _LlmTally:
    """One arm's LLM figures since the last flush (``experiments.counters`` names the fields).

    ``moments`` holds n, sum, sum of squares for each of ``LLM_FIGURES`` in that order; a
    figure the request did not have (``None``: a non-streamed request has no time to first
    token) is not counted, so each figure's mean is over the requests that have it.
    """

    __slots__ = ("broken", "moments", "requests", "streams", "ttft_buckets")

    def __init__(self) -> None:
        self.requests = 0
        self.streams = 0
        self.broken = 0
        self.moments = [0.0] * (3 * len(LLM_FIGURES))
        self.ttft_buckets = [0] * (len(LATENCY_BOUNDS_S) + 1)

    def add(self, llm: LlmUsage) -> None:
        self.requests += 1
        if llm.streamed:
            self.streams += 1
            if llm.broken:
                self.broken += 1
        m = self.moments
        ttft = llm.ttft_s
        if ttft is not None:
            self.ttft_buckets[bisect_left(LATENCY_BOUNDS_S, ttft)] += 1
        for i, value in enumerate(
            (ttft, llm.inter_token_s, llm.prompt_tokens, llm.completion_tokens, llm.cost_usd)
        ):
            if value is not None:
                j = 3 * i
                m[j] += 1
                m[j + 1] += value
                m[j + 2] += value * value

    def add_deltas(self, out: dict[str, int | float]) -> None:
        out["llm_requests"] = self.requests
        out["llm_streams"] = self.streams
        out["llm_broken"] = self.broken
        m = self.moments
        for i, figure in enumerate(LLM_FIGURES):
            if m[3 * i]:
                n, s, ss = llm_fields(figure)
                out[n], out[s], out[ss] = int(m[3 * i]), m[3 * i + 1], m[3 * i + 2]
        for i, count in enumerate(self.ttft_buckets):
            if count:
                out[TTFT_BUCKET_FIELDS[i]] = count


_BUCKET_FIELDS = tuple(latency_bucket_field(b) for b in (*LATENCY_BOUNDS_S, math.inf))


def _new_llm(tally: _ArmTally) -> _LlmTally:
    tally.llm = _LlmTally()
    return tally.llm


class Measurement:
    """Counters, request ids and join records for experiments, and the feedback endpoint.

    Construction reads (or creates) the mesh's feedback-id key from the store; when the
    store does not answer, ids stay plain with join records until the flusher gets the key.
    """

    def __init__(
        self, store: Store, *, join_ttl_s: float = 24 * 3600.0, flush_interval_s: float = 1.0
    ) -> None:
        self.store = store
        self.join_ttl_s = join_ttl_s
        self.flush_interval_s = flush_interval_s
        self.counters = CounterBuffer()
        self._arms: dict[tuple[str, str | None], _ArmTally] = {}  # since the last drain
        self.records = RecordBuffer(join_ttl_s, listed=False)  # feedback reads them by request id
        self.plane: DataPlane | None = None
        self._running: tuple[RouteTable | None, dict[str, Mapping[str, str]]] = (None, {})
        key = self._fetch_key()
        self.ids = None if key is None else FeedbackIds(key)

    def _fetch_key(self) -> bytes | None:
        try:
            return load_or_create_key(self.store)
        except (StoreUnavailable, ValueError) as exc:
            log.warning("no feedback-id key (%s): request ids get join records until there is one", exc)
            return None

    async def _load_ids(self) -> FeedbackIds | None:
        """The signer, fetching the key first if the store was down when this process started."""
        if self.ids is None:
            key = await asyncio.to_thread(self._fetch_key)
            if key is not None and self.ids is None:
                self.ids = FeedbackIds(key)
                if self.plane is not None:
                    self.plane.mint_request_id = self.ids.mint_request_id
        return self.ids

    # -- the data path (event-loop thread, no I/O) -----------------------------------------
    def observe(
        self, ex: Exchange, status: int, reason: str | None, response: UpstreamResponse | None
    ) -> None:
        choice = ex.choice
        experiment = choice.experiment
        if experiment is None or reason == CLIENT_CLOSED:
            return
        latency = time.monotonic() - ex.t0
        key = (experiment, choice.arm)
        tally = self._arms.get(key)
        if tally is None:
            tally = self._arms[key] = _ArmTally(arm_group(experiment, choice.arm))
        tally.requests += 1
        llm = ex.llm
        if status >= 500 or (llm is not None and llm.broken):  # a broken stream is a failure too
            tally.errors += 1
        if llm is not None:
            (tally.llm or _new_llm(tally)).add(llm)
        if not choice.keyed:
            tally.unkeyed += 1
        tally.lat_sum += latency
        tally.lat_sumsq += latency * latency
        tally.buckets[bisect_left(LATENCY_BOUNDS_S, latency)] += 1
        split = ex.model.split
        if (
            split is not None
            and split.metrics
            and split.experiment == choice.experiment
            and not looks_signed(ex.request_id)
        ):
            # feedback needs the join and the id cannot carry it (the caller's own id, or no
            # key yet); an experiment without metrics never gets any feedback (no write at all)
            self.records.put(
                JOIN_NAMESPACE,
                ex.request_id,
                {"e": choice.experiment, "a": choice.arm, "m": dict(split.metrics)},
            )

    # -- background ---------------------------------------------------------------------
    async def run_flusher(self) -> None:
        """Flush both buffers every interval, and once more when cancelled (shutdown); fetch
        the feedback-id key until there is one."""
        try:
            while True:
                await asyncio.sleep(self.flush_interval_s)
                await self._load_ids()
                try:
                    await self.flush()
                except Exception:  # a refused batch is counted as dropped; later ones still go
                    log.exception("counter flush failed")
        finally:
            await self.flush()

    def drain(self) -> None:
        """Move the arms' tallies into the counter buffer (event-loop thread, before a flush)."""
        arms, self._arms = self._arms, {}  # arms of ended experiments do not linger
        for tally in arms.values():
            self.counters.add_many(tally.group, tally.deltas())

    async def flush(self) -> bool:
        self.drain()
        ok_records = await asyncio.to_thread(self.records.flush, self.store)
        ok_counters = await asyncio.to_thread(self.counters.flush, self.store)
        if not (ok_records and ok_counters):
            log.warning(
                "store unavailable; holding %d counter cells and %d join records in memory",
                self.counters.size,
                self.records.size,
            )
        return ok_records and ok_counters

    def snapshot(self) -> dict[str, Any]:
        return {
            "pending_counter_cells": self.counters.size + sum(len(t.deltas()) for t in self._arms.values()),
            "pending_join_records": self.records.size,
            "dropped_counter_increments": self.counters.dropped,
            "dropped_join_records": self.records.dropped,
            "last_error": self.counters.last_error or self.records.last_error,
        }

    # -- POST /v1/feedback --------------------------------------------------------------
    def handle_feedback(self, request: Request, responder: Responder) -> None:
        if request.method != b"POST":
            _send(responder, error_response("method_not_allowed", "POST a feedback event or a list of them"))
            return
        try:
            events, single = _parse_feedback(request.body or b"")
        except FeedbackError as exc:
            _send(responder, error_response(exc.reason, exc.message))
            return
        asyncio.get_running_loop().create_task(self._feedback(events, single, responder))

    async def _feedback(
        self, events: list[tuple[str, str, float]], single: bool, responder: Responder
    ) -> None:
        try:
            results = [await self._one(*event) for event in events]
        except StoreUnavailable as exc:
            _send(
                responder,
                error_response(
                    "store_unavailable", f"feedback not recorded, retry: {exc}", [(b"retry-after", b"1")]
                ),
            )
            return
        if single and results[0]["status"] not in ("accepted", "duplicate"):
            res = results[0]
            _send(responder, error_response(res["status"], res["message"]))
            return
        accepted = sum(r["status"] == "accepted" for r in results)
        duplicates = sum(r["status"] == "duplicate" for r in results)
        _send(
            responder,
            json_response(200, {"accepted": accepted, "duplicates": duplicates, "results": results}),
        )

    async def _assignment(self, request_id: str) -> tuple[str, str, Mapping[str, str]] | None:
        """Experiment, arm and metric kinds of a request: from a signed id (no lookup while
        the experiment runs here), else from the join record. Raises StoreUnavailable."""
        if not looks_signed(request_id):
            record = self.records.pending(JOIN_NAMESPACE, request_id)
            if record is None:
                record = await asyncio.to_thread(self.store.get_record, JOIN_NAMESPACE, request_id)
            return None if record is None else (record["e"], record["a"], record["m"])
        ids = await self._load_ids()
        if ids is None:
            raise StoreUnavailable("the mesh's feedback-id key cannot be read (see the gateway log)")
        found = ids.verify(request_id, self.join_ttl_s)
        if found is None:
            return None
        experiment, arm = found
        metrics = self._running_metrics().get(experiment)
        if metrics is None:  # ended (or not in this gateway's table yet): its stored definition
            doc = await asyncio.to_thread(self.store.get, "experiments", experiment)
            if doc is None:
                return None
            metrics = {m["name"]: m.get("kind", "binary") for m in doc.get("metrics", [])}
        return experiment, arm, metrics

    def _running_metrics(self) -> dict[str, Mapping[str, str]]:
        """Metric kinds of the experiments in the current route table, by experiment."""
        if self.plane is None:
            return {}
        table = self.plane.table
        if self._running[0] is not table:
            splits = (m.split for m in table.models.values() if m.split is not None)
            self._running = (table, {s.experiment: s.metrics for s in splits})
        return self._running[1]

    async def _one(self, request_id: str, metric: str, value: float) -> dict[str, Any]:
        found = await self._assignment(request_id)
        out: dict[str, Any] = {"request_id": request_id, "metric": metric}
        if found is None:
            hours = self.join_ttl_s / 3600
            return {
                **out,
                "status": "unknown_request",
                "message": f"request id {request_id!r} is unknown or expired: feedback joins requests "
                f"that an experiment with metrics routed within the last {hours:g} h",
            }
        experiment, arm, metrics = found
        kind = metrics.get(metric)
        if kind is None:
            declared = ", ".join(sorted(metrics)) or "none"
            return {
                **out,
                "status": "unknown_metric",
                "message": f"experiment {experiment!r} declares no metric {metric!r} (declared: {declared})",
            }
        if kind == "binary" and value not in (0, 1):
            return {
                **out,
                "status": "bad_request",
                "message": f"metric {metric!r} is binary: value must be 0, 1, true or false, got {value!r}",
            }
        key = f"{request_id}:{metric}"
        if not await asyncio.to_thread(self.store.claim, _FEEDBACK_NAMESPACE, key, self.join_ttl_s):
            return {**out, "status": "duplicate", "experiment": experiment, "arm": arm}
        n, s, ss = metric_fields(metric)
        self.counters.add_many(arm_group(experiment, arm), {n: 1, s: value, ss: value * value})
        return {**out, "status": "accepted", "experiment": experiment, "arm": arm}


def _send(responder: Responder, answer: tuple[int, list[tuple[bytes, bytes]], bytes]) -> None:
    if not responder.done:
        responder.respond(*answer)


def _parse_feedback(body: bytes) -> tuple[list[tuple[str, str, float]], bool]:
    """Validate the whole body before anything is recorded: all events or none."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FeedbackError("bad_request", f"feedback body is not valid JSON: {exc}") from None
    single = isinstance(doc, dict)
    items = [doc] if single else doc
    if not isinstance(items, list) or not items:
        raise FeedbackError(
            "bad_request", 'send {"request_id", "metric", "value"} or a non-empty list of them'
        )
    if len(items) > _MAX_EVENTS:
        raise FeedbackError("bad_request", f"at most {_MAX_EVENTS} feedback events per request")
    events = []
    for i, item in enumerate(items):
        where = "" if single else f"[{i}]"
        if not isinstance(item, dict):
            raise FeedbackError("bad_request", f"{where or 'body'}: expected an object")
        unknown = set(item) - {"request_id", "metric", "value"}
        if unknown:
            raise FeedbackError("bad_request", f"{where}{sorted(unknown)[0]}: unknown field")
        rid, metric, value = item.get("request_id"), item.get("metric"), item.get("value")
        if not isinstance(rid, str) or not 0 < len(rid) <= _MAX_ID:
            raise FeedbackError(
                "bad_request", f"{where}request_id: expected the x-meshgate-request-id of a request"
            )
        if not isinstance(metric, str) or not metric:
            raise FeedbackError("bad_request", f"{where}metric: expected a metric name")
        if isinstance(value, bool):
            value = int(value)
        if not isinstance(value, int | float) or not math.isfinite(value):
            raise FeedbackError("bad_request", f"{where}value: expected a finite number or a boolean")
        if abs(value) > _MAX_VALUE:
            raise FeedbackError("bad_request", f"{where}value: magnitude must be at most {_MAX_VALUE:g}")
        events.append((rid, metric, value))
    return events, single
