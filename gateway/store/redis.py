"""Redis store: shared state for many gateways on many machines.

The key schema lives in :class:`RedisKeys` (documented in ``docs/redis.md``); it is
Redis Cluster safe: one commit touches one slot (``{prefix:cfg}``), one experiment's
counters share the experiment's ``{...}`` hash tag. Multi-slot calls (a counter batch
over several experiments, a records put) run in one MULTI/EXEC on a standalone Redis, and
are made of per-slot steps that stay correct when split per slot.

redis-py is used with retries switched off: a retried write after a connection error may
apply twice, so failures surface at once as :class:`StoreUnavailable` (sockets time out
after ~1 s, so a dead Redis fails fast) and callers decide (``CounterBuffer`` retries with
an idempotency sequence). Config changes are announced on the ``prefix:config`` channel and
watched by one background thread per store, which also polls the version as a safety net.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from gateway.store.base import Conflict, Document, StoreUnavailable, Write, check_window_adds
from gateway.store.watchers import Watchers

__all__ = ["RedisKeys", "RedisStore", "hash_tag"]

log = logging.getLogger("meshgate.store")

_PREFIX_RE = re.compile(r"[A-Za-z0-9_.:-]+")
_NAMESPACE_RE = re.compile(r"[a-z0-9_./-]+")
# A writer's high-water mark outlives any plausible outage of its gateway.
_WRITER_TTL_MS = 7 * 24 * 3600 * 1000
# Record-index trimming tolerates this much clock skew between gateways (the record's
# own native TTL is the truth; the index only lists candidates).
_INDEX_SKEW_MS = 60_000
# The config watcher reconnects with exponential backoff between these bounds.
_MIN_BACKOFF_S, _MAX_BACKOFF_S = 0.05, 5.0
# Redis replies that mean "not available now" rather than "your request is wrong": the
# classes redis-py maps, and the codes it leaves as plain ResponseError text.
_UNAVAILABLE_ERRORS = (
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
)
_UNAVAILABLE_CODES = re.compile(r"\b(MISCONF|BUSY|NOREPLICAS)\b")

# Scripts start with a ``#!lua`` shebang: Redis 7 then refuses a write script up front when
# it is out of memory or a read-only replica, instead of failing it halfway.
#
# Atomically: check the expected version, apply puts/deletes, bump and announce it.
# KEYS: version, collection hashes...; ARGV: expect ('' = any), channel, then per write
# (op 'p'|'d', collection key index, key, json).
_COMMIT_LUA = """#!lua
local v = tonumber(redis.call('GET', KEYS[1]) or '0')
if ARGV[1] ~= '' and tonumber(ARGV[1]) ~= v then return {0, v} end
for i = 3, #ARGV, 4 do
  local k = KEYS[tonumber(ARGV[i + 1])]
  if ARGV[i] == 'p' then redis.call('HSET', k, ARGV[i + 2], ARGV[i + 3])
  else redis.call('HDEL', k, ARGV[i + 2]) end
end
v = redis.call('INCR', KEYS[1])
redis.call('PUBLISH', ARGV[2], v)
return {1, v}
"""

# Add one slot's share of a counter batch; with a writer sequence, at most once.
# KEYS: tag index set, writer high-water mark, group hashes...
# ARGV: seq ('' = no dedup, KEYS[2] unused), writer ttl ms, then per group (aligned with
# KEYS[3..]): name, field count, then per field: field, delta (a decimal string).
# Flat arguments cost the shared Redis less than a JSON payload (cjson.decode measured
# ~+20 us per call on the 2-core bench machine); packing them costs each gateway more.
# Integers stay exact with HINCRBY; a float delta or a field that already holds a
# float (HINCRBY refuses it) goes through HINCRBYFLOAT.
_ADD_LUA = """#!lua
if ARGV[1] ~= '' then
  local hwm = tonumber(redis.call('GET', KEYS[2]) or '0')
  if tonumber(ARGV[1]) <= hwm then return 0 end
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
end
local a = 3
for i = 3, #KEYS do
  redis.call('SADD', KEYS[1], ARGV[a])
  local n = tonumber(ARGV[a + 1])
  a = a + 2
  for _ = 1, n do
    local f, d = ARGV[a], ARGV[a + 1]
    if string.find(d, '[.eE]') then
      redis.call('HINCRBYFLOAT', KEYS[i], f, d)
    else
      local r = redis.pcall('HINCRBY', KEYS[i], f, d)
      if type(r) == 'table' and r['err'] then redis.call('HINCRBYFLOAT', KEYS[i], f, d) end
    end
    a = a + 2
  end
end
return 1
"""


def hash_tag(name: str) -> str | None:
    """The Redis Cluster hash tag of ``name`` (text inside the first ``{...}``), if any."""
    start = name.find("{")
    if start < 0:
        return None
    end = name.find("}", start + 1)
    if end < 0 or end == start + 1:
        return None
    return name[start + 1 : end]


@dataclass(frozen=True, slots=True)
class RedisKeys:
    """Every key meshgate writes, in one place (the schema of ``docs/redis.md``)."""

    prefix: str

    def __post_init__(self) -> None:
        if not _PREFIX_RE.fullmatch(self.prefix):
            raise ValueError(f"Redis key prefix {self.prefix!r} must match [A-Za-z0-9_.:-]+")

    # -- config: one slot, so a commit is one atomic script --------------------------
    @property
    def version(self) -> str:
        return f"{{{self.prefix}:cfg}}:version"

    def collection(self, collection: str) -> str:
        return f"{{{self.prefix}:cfg}}:doc:{collection}"

    @property
    def channel(self) -> str:
        return f"{self.prefix}:config"

    # -- counters: a group keeps its own tag, or is wrapped in one --------------------
    def counter_tag(self, group: str) -> str:
        """The slot tag of a group: its own ``{...}`` tag, else the whole (brace-free) name."""
        tag = hash_tag(group)
        if tag is not None:
            return tag
        if not group or "{" in group or "}" in group:
            raise ValueError(f"counter group {group!r} must be non-empty with at most one complete {{tag}}")
        return group

    def counter(self, group: str) -> str:
        if hash_tag(group) is not None:
            return f"{self.prefix}:ctr:{group}"
        return f"{self.prefix}:ctu:{{{self.counter_tag(group)}}}"

    def counter_index(self, tag: str) -> str:
        """Set of the group names that share ``tag`` (same slot as those groups)."""
        return f"{self.prefix}:cti:{{{tag}}}"

    def counter_writer(self, tag: str, writer: str) -> str:
        """A writer's last applied batch sequence for this slot (idempotent retries)."""
        return f"{self.prefix}:ctw:{{{tag}}}:{writer}"

    @property
    def counter_tags(self) -> str:
        """Set of every counter tag, for ``counter_groups`` prefixes without a tag."""
        return f"{self.prefix}:ctt"

    # -- expiring records: native TTLs plus a per-namespace index by expiry -----------
    def record(self, namespace: str, key: str) -> str:
        return f"{self.prefix}:rec:{_check_namespace(namespace)}:{key}"

    def record_index(self, namespace: str) -> str:
        return f"{self.prefix}:rix:{_check_namespace(namespace)}"

    # -- window counters: one hash per group, expiring natively -----------------------
    def window(self, namespace: str, key: str) -> str:
        return f"{self.prefix}:win:{_check_namespace(namespace)}:{{{key}}}"

    def patterns(self) -> tuple[str, str]:
        """SCAN patterns covering every key of this prefix (for tests and tooling)."""
        return (f"{{{self.prefix}:cfg}}:*", f"{self.prefix}:*")


def _check_namespace(namespace: str) -> str:
    if not _NAMESPACE_RE.fullmatch(namespace):
        raise ValueError(f"record namespace {namespace!r} must match [a-z0-9_./-]+ (no ':')")
    return namespace


def _mask(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _number(raw: str) -> int | float:
    try:
        return int(raw)
    except ValueError:
        return float(raw)


def _delta(group: str, field: str, value: int | float) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"counter {group}/{field} delta must be int or float, got {value!r}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"counter {group}/{field} delta must be finite, got {value!r}")
        return repr(value)
    return str(value)


class RedisStore:
    """The shared store. ``prefix`` namespaces every key (several meshes or tests on one Redis)."""

    def __init__(
        self,
        url: str,
        prefix: str = "meshgate",
        *,
        socket_timeout_s: float = 1.0,
        poll_interval_s: float = 1.0,
        max_connections: int = 64,
    ) -> None:
        self.url = url
        self.keys = RedisKeys(prefix)
        self._display = _mask(url)
        self._poll_interval_s = poll_interval_s
        try:
            self._client = redis.Redis.from_url(
                url,
                decode_responses=True,
                socket_timeout=socket_timeout_s,
                socket_connect_timeout=socket_timeout_s,
                retry=Retry(NoBackoff(), 0),
                max_connections=max_connections,
            )
        except ValueError as exc:
            raise ValueError(f"invalid Redis URL {self._display!r}: {exc}") from exc
        self._commit_script = self._client.register_script(_COMMIT_LUA)
        self._watchers = Watchers()
        self._watch_lock = threading.Lock()
        self._watcher: _VersionWatcher | None = None

    def __repr__(self) -> str:
        return f"RedisStore({self._display!r}, prefix={self.keys.prefix!r})"

    @contextlib.contextmanager
    def _io(self, what: str) -> Iterator[None]:
        """Translate redis-py failures into meshgate's ``StoreUnavailable``."""
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StoreUnavailable(f"Redis store {self._display} is unreachable ({what}): {exc}") from exc
        except redis.ResponseError as exc:
            if isinstance(exc, _UNAVAILABLE_ERRORS) or _UNAVAILABLE_CODES.search(str(exc)):
                raise StoreUnavailable(f"Redis store {self._display} refused {what}: {exc}") from exc
            raise

    # -- config documents -------------------------------------------------------------
    def config_version(self) -> int:
        with self._io("reading the config version"):
            raw = self._client.get(self.keys.version)
        return int(raw) if raw is not None else 0

    def get(self, collection: str, key: str) -> Document | None:
        with self._io(f"reading {collection}/{key}"):
            raw = self._client.hget(self.keys.collection(collection), key)
        return json.loads(raw) if raw is not None else None

    def list(self, collection: str) -> list[Document]:
        with self._io(f"listing {collection}"):
            docs = self._client.hgetall(self.keys.collection(collection))
        return [json.loads(docs[k]) for k in sorted(docs)]

    def snapshot(self, collections: tuple[str, ...]) -> tuple[int, dict[str, dict[str, Document]]]:
        with self._io("reading a config snapshot"):
            pipe = self._client.pipeline(transaction=True)
            pipe.get(self.keys.version)
            for coll in collections:
                pipe.hgetall(self.keys.collection(coll))
            raw_version, *hashes = pipe.execute()
        out = {
            coll: {k: json.loads(h[k]) for k in sorted(h)}
            for coll, h in zip(collections, hashes, strict=True)
        }
        return (int(raw_version) if raw_version is not None else 0), out

    def commit(self, writes: list[Write], *, expect_version: int | None = None) -> int:
        coll_keys: dict[str, int] = {}
        args: list[str | int] = ["" if expect_version is None else expect_version, self.keys.channel]
        for w in writes:
            index = coll_keys.setdefault(w.collection, len(coll_keys) + 2)  # Lua KEYS are 1-based
            doc = "" if w.doc is None else json.dumps(w.doc, separators=(",", ":"))
            args += ["d" if w.doc is None else "p", index, w.key, doc]
        keys = [self.keys.version, *(self.keys.collection(c) for c in coll_keys)]
        with self._io("committing config"):
            applied, version = self._commit_script(keys=keys, args=args)
        if not applied:
            raise Conflict(f"config version moved from {expect_version} to {version}")
        return int(version)

    def watch(self, callback: Callable[[int], None]) -> Callable[[], None]:
        """Subscribe ``callback``; the first call starts the watcher thread and waits (≤ 2 s)
        until it is subscribed, so no commit after ``watch`` returns is missed. If Redis is
        down the thread keeps retrying with backoff and catches up by polling."""
        unsubscribe = self._watchers.add(callback)
        with self._watch_lock:
            if self._watcher is None:
                self._watcher = _VersionWatcher(self, self._watchers.notify, self._poll_interval_s)
                self._watcher.start()
            watcher = self._watcher
        watcher.ready.wait(timeout=2.0)
        return unsubscribe

    # -- counters ---------------------------------------------------------------------
    def add_counters(self, batch: Mapping[str, Mapping[str, int | float]]) -> None:
        self._add(batch, None)

    def add_counters_once(
        self, batch: Mapping[str, Mapping[str, int | float]], writer: str, seq: int
    ) -> bool:
        """Add ``batch`` unless this writer already applied sequence ``seq`` (or a later one).

        A writer sends its batches in increasing ``seq`` and retries a failed one with the
        same ``seq``, so a batch whose reply was lost is never added twice. Returns False
        when the batch had already been applied.
        """
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", writer):
            raise ValueError(f"counter writer id {writer!r} must match [A-Za-z0-9_.-]+")
        if seq < 1:
            raise ValueError(f"counter batch sequence must be >= 1, got {seq}")
        return self._add(batch, (writer, seq))

    def _add(self, batch: Mapping[str, Mapping[str, int | float]], once: tuple[str, int] | None) -> bool:
        by_tag: dict[str, list[tuple[str, Mapping[str, int | float]]]] = {}
        for group, fields in batch.items():
            if fields:
                by_tag.setdefault(self.keys.counter_tag(group), []).append((group, fields))
        if not by_tag:
            return True
        pipe = self._client.pipeline(transaction=True)
        pipe.sadd(self.keys.counter_tags, *by_tag)
        for tag, groups in by_tag.items():
            writer_key = self.keys.counter_writer(tag, once[0]) if once else self.keys.counter_index(tag)
            keys = [self.keys.counter_index(tag), writer_key, *(self.keys.counter(g) for g, _ in groups)]
            args: list[str | int] = ["" if once is None else once[1], _WRITER_TTL_MS]
            for group, fields in groups:
                args += [group, len(fields)]
                for field, value in fields.items():
                    args += [field, _delta(group, field, value)]
            # EVAL (not EVALSHA) inside MULTI: a missing script cannot fail half a batch.
            pipe.eval(_ADD_LUA, len(keys), *keys, *args)
        with self._io("adding counters"):
            _, *applied = pipe.execute()
        return any(applied)

    def counters(self, group: str) -> dict[str, float]:
        with self._io(f"reading counters {group}"):
            raw = self._client.hgetall(self.keys.counter(group))
        return {f: _number(v) for f, v in raw.items()}

    def counter_groups(self, prefix: str) -> dict[str, dict[str, float]]:
        """Groups from the per-tag index: one set read when ``prefix`` holds a complete tag
        (``exp:{ab}:``), else the tag registry first (no KEYS, no SCAN)."""
        tag = hash_tag(prefix)
        with self._io(f"listing counter groups {prefix}"):
            tags = [tag] if tag is not None else sorted(self._client.smembers(self.keys.counter_tags))
            pipe = self._client.pipeline(transaction=False)
            for t in tags:
                pipe.smembers(self.keys.counter_index(t))
            groups = sorted(g for members in pipe.execute() for g in members if g.startswith(prefix))
            pipe = self._client.pipeline(transaction=True)
            for g in groups:
                pipe.hgetall(self.keys.counter(g))
            values = pipe.execute() if groups else []
        return {
            g: {f: _number(v) for f, v in raw.items()} for g, raw in zip(groups, values, strict=True) if raw
        }

    # -- window counters ----------------------------------------------------------------
    def add_windows(
        self, namespace: str, adds: Mapping[str, Mapping[str, int]], ttl_s: float
    ) -> dict[str, dict[str, int]]:
        """HINCRBY, PEXPIRE and HGETALL per group in one MULTI/EXEC (each group is one key with
        its own slot; on a cluster the per-group steps stay correct when split)."""
        check_window_adds(adds)
        if not adds:
            return {}
        ttl_ms = max(1, int(ttl_s * 1000))
        pipe = self._client.pipeline(transaction=True)
        for key, fields in adds.items():
            name = self.keys.window(namespace, key)
            for field, delta in fields.items():
                pipe.hincrby(name, field, delta)
            if fields:
                pipe.pexpire(name, ttl_ms)
            pipe.hgetall(name)
        with self._io(f"adding {namespace} window counters"):
            replies = pipe.execute()
        out: dict[str, dict[str, int]] = {}
        at = 0
        for key, fields in adds.items():
            at += len(fields) + (1 if fields else 0)
            out[key] = {f: int(v) for f, v in replies[at].items()}
            at += 1
        return out

    # -- expiring records -------------------------------------------------------------
    def put_records(
        self, namespace: str, records: Mapping[str, Document], ttl_s: float, *, listed: bool = True
    ) -> None:
        """``listed=False`` skips the expiry index: measured ~120 B of Redis memory and a ZADD
        per record (a join record itself is ~150 B), for records nobody lists."""
        if not records:
            return
        ttl_ms = max(1, int(ttl_s * 1000))
        now_ms = int(time.time() * 1000)
        index = self.keys.record_index(namespace)
        pipe = self._client.pipeline(transaction=True)
        for key, doc in records.items():
            pipe.set(self.keys.record(namespace, key), json.dumps(doc, separators=(",", ":")), px=ttl_ms)
        if listed:
            pipe.zadd(index, {key: now_ms + ttl_ms for key in records})
            self._trim_index(pipe, index, now_ms, ttl_ms)
        with self._io(f"writing {namespace} records"):
            pipe.execute()

    @staticmethod
    def _trim_index(pipe: redis.client.Pipeline, index: str, now_ms: int, ttl_ms: int) -> None:
        """Drop long-expired members; let the index die with its longest-lived record."""
        pipe.zremrangebyscore(index, "-inf", now_ms - _INDEX_SKEW_MS)
        pipe.pexpire(index, ttl_ms + _INDEX_SKEW_MS, nx=True)
        pipe.pexpire(index, ttl_ms + _INDEX_SKEW_MS, gt=True)

    def get_record(self, namespace: str, key: str) -> Document | None:
        with self._io(f"reading record {namespace}/{key}"):
            raw = self._client.get(self.keys.record(namespace, key))
        return json.loads(raw) if raw is not None else None

    def list_records(self, namespace: str) -> dict[str, Document]:
        """Candidates from the expiry index, then one GET each: the native TTL decides."""
        now_ms = int(time.time() * 1000)
        with self._io(f"listing {namespace} records"):
            keys = self._client.zrangebyscore(
                self.keys.record_index(namespace), now_ms - _INDEX_SKEW_MS, "+inf"
            )
            pipe = self._client.pipeline(transaction=False)
            for key in keys:
                pipe.get(self.keys.record(namespace, key))
            values = pipe.execute() if keys else []
        return {k: json.loads(v) for k, v in sorted(zip(keys, values, strict=True)) if v is not None}

    def claim(self, namespace: str, key: str, ttl_s: float) -> bool:
        """SET NX PX on the record key (as in SQLite, a claim is a record with ``{}``)."""
        ttl_ms = max(1, int(ttl_s * 1000))
        now_ms = int(time.time() * 1000)
        index = self.keys.record_index(namespace)
        pipe = self._client.pipeline(transaction=True)
        pipe.set(self.keys.record(namespace, key), "{}", nx=True, px=ttl_ms)
        pipe.zadd(index, {key: now_ms + ttl_ms}, gt=True)
        self._trim_index(pipe, index, now_ms, ttl_ms)
        with self._io(f"claiming {namespace}/{key}"):
            won, *_ = pipe.execute()
        return bool(won)

    # -- lifecycle --------------------------------------------------------------------
    def ping(self) -> bool:
        try:
            return bool(self._client.ping())
        except redis.RedisError:
            return False

    def persistence_warning(self) -> str | None:
        """A warning when Redis may lose meshgate's state: neither AOF nor RDB is on (a restart
        loses it all), or an ``allkeys-*`` eviction policy may drop config and counters."""
        with self._io("reading persistence settings"):
            try:
                conf = self._client.config_get("appendonly", "save", "maxmemory-policy")
                aof, rdb = conf.get("appendonly") == "yes", bool(conf.get("save"))
                policy = conf.get("maxmemory-policy", "")
            except redis.ResponseError:  # CONFIG is often renamed or disabled on managed Redis
                aof = str(self._client.info("persistence").get("aof_enabled")) == "1"
                rdb, policy = None, ""
        problems = []
        if not (aof or rdb):
            how = "RDB snapshots are off" if rdb is False else "RDB settings are unreadable (CONFIG denied)"
            problems.append(
                f"Redis at {self._display} has AOF off and {how}: a restart loses every model, "
                "experiment and counter. Run it with `appendonly yes` and `appendfsync everysec`."
            )
        if policy.startswith("allkeys"):
            problems.append(
                f"Redis at {self._display} evicts any key under memory pressure (maxmemory-policy "
                f"{policy}): use `noeviction` so config and counters are never dropped."
            )
        return " ".join([*problems, "See docs/redis.md."]) if problems else None

    def close(self) -> None:
        with self._watch_lock:
            watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.stop()
        self._client.close()
        self._client.connection_pool.disconnect()


class _VersionWatcher(threading.Thread):
    """Pub/sub on ``prefix:config`` plus a version poll; reconnects with capped backoff.

    Calls ``notify`` only when the version changes: upwards from a message or a poll, and
    downwards only from a poll (a Redis that lost its data), so a late message never
    announces an older version.
    """

    def __init__(self, store: RedisStore, notify: Callable[[int], None], poll_interval_s: float) -> None:
        super().__init__(name=f"meshgate-watch-{store.keys.prefix}", daemon=True)
        self._store = store
        self._notify = notify
        self._poll_interval_s = poll_interval_s
        self._stop_event = threading.Event()
        self._last: int | None = None
        self.ready = threading.Event()
        self._pubsub: redis.client.PubSub | None = None
        self._backoff = _MIN_BACKOFF_S

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5.0)

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self._session()
            except (redis.RedisError, StoreUnavailable, OSError, ValueError) as exc:
                if self._stop_event.is_set():
                    break
                log.warning("config watcher lost Redis (%s); retrying in %.2fs", exc, self._backoff)
            finally:
                self._close_pubsub()
            self._stop_event.wait(self._backoff * random.uniform(0.5, 1.0))
            self._backoff = min(self._backoff * 2, _MAX_BACKOFF_S)

    def _close_pubsub(self) -> None:
        if self._pubsub is not None:
            with contextlib.suppress(redis.RedisError, OSError):
                self._pubsub.close()
            self._pubsub = None

    def _session(self) -> None:
        pubsub = self._pubsub = self._store._client.pubsub()
        pubsub.subscribe(self._store.keys.channel)
        deadline = time.monotonic() + 2.0
        while (msg := pubsub.get_message(timeout=0.1)) is None or msg["type"] != "subscribe":
            if time.monotonic() > deadline:
                raise redis.TimeoutError("no SUBSCRIBE confirmation within 2 s")
        self._observe(self._store.config_version(), from_poll=True)
        self.ready.set()
        self._backoff = _MIN_BACKOFF_S
        next_poll = time.monotonic() + self._poll_interval_s
        while not self._stop_event.is_set():
            msg = pubsub.get_message(timeout=max(0.0, min(next_poll - time.monotonic(), 0.5)))
            if msg is not None and msg["type"] == "message":
                self._observe(int(msg["data"]), from_poll=False)
            if time.monotonic() >= next_poll:
                self._observe(self._store.config_version(), from_poll=True)
                next_poll = time.monotonic() + self._poll_interval_s

    def _observe(self, version: int, *, from_poll: bool) -> None:
        last = self._last
        self._last = version if last is None or version > last or from_poll else last
        if last is not None and (version > last or (from_poll and version < last)):
            self._notify(version)
