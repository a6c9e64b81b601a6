"""SQLite store: the embedded default. Durable (WAL), one machine, zero setup.

One connection per thread (sqlite3 connections are not shareable across threads);
writes take ``BEGIN IMMEDIATE`` so the config-version check and the writes are atomic
even with several processes on one file. Watchers in this process are called after a
commit; other processes on the same file see changes through the gateway's version poll.
Every SQLite failure (a full or read-only disk, a lock held past the busy timeout, a file
that is not a database) surfaces as :class:`StoreUnavailable` naming the cause, and a failed
write leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from gateway.store.base import Conflict, Document, StoreUnavailable, Write, check_window_adds
from gateway.store.watchers import Watchers

__all__ = ["SQLiteStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS docs (
    collection TEXT NOT NULL, key TEXT NOT NULL, doc TEXT NOT NULL,
    PRIMARY KEY (collection, key)
);
CREATE TABLE IF NOT EXISTS counters (
    grp TEXT NOT NULL, field TEXT NOT NULL, value NUMERIC NOT NULL,
    PRIMARY KEY (grp, field)
);
CREATE TABLE IF NOT EXISTS records (
    ns TEXT NOT NULL, key TEXT NOT NULL, doc TEXT NOT NULL, expires_at REAL NOT NULL,
    PRIMARY KEY (ns, key)
);
CREATE TABLE IF NOT EXISTS windows (
    ns TEXT NOT NULL, key TEXT NOT NULL, field TEXT NOT NULL, value INTEGER NOT NULL,
    expires_at REAL NOT NULL, PRIMARY KEY (ns, key, field)
);
INSERT OR IGNORE INTO meta (name, value) VALUES ('config_version', 0);
"""


class SQLiteStore:
    """The embedded store. ``path`` is a file, or ``:memory:``-like tests use a temp file."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        purge_interval_s: float = 60.0,
    ) -> None:
        self.path = str(path)
        self.url = f"sqlite:///{self.path}"
        self._clock = clock
        self._local = threading.local()
        self._watchers = Watchers()
        self._purged_at = 0.0
        self._windows_purged_at = 0.0
        self._purge_interval_s = purge_interval_s  # expired records are deleted at most this often
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        with self._io("creating the schema"):
            self._conn().executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=True)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"cannot open SQLite store {self.path}: {exc}") from exc
            self._local.conn = conn
        return conn

    @contextlib.contextmanager
    def _io(self, what: str) -> Iterator[None]:
        """Translate sqlite3 failures into meshgate's ``StoreUnavailable``."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            raise StoreUnavailable(f"SQLite store {self.path} failed {what}: {exc}") from exc

    @contextlib.contextmanager
    def _write(self, what: str) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction: committed whole, or rolled back whole.

        SQLite may already have rolled back (a full disk at COMMIT), so ROLLBACK is only
        issued while a transaction is open and never hides the error that caused it.
        """
        conn = self._conn()
        with self._io(what):
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    # -- config documents -------------------------------------------------------------
    def _version(self, conn: sqlite3.Connection) -> int:
        return int(conn.execute("SELECT value FROM meta WHERE name='config_version'").fetchone()[0])

    def config_version(self) -> int:
        with self._io("reading the config version"):
            return self._version(self._conn())

    def get(self, collection: str, key: str) -> Document | None:
        with self._io(f"reading {collection}/{key}"):
            row = (
                self._conn()
                .execute("SELECT doc FROM docs WHERE collection=? AND key=?", (collection, key))
                .fetchone()
            )
        return json.loads(row[0]) if row else None

    def list(self, collection: str) -> list[Document]:
        with self._io(f"listing {collection}"):
            rows = (
                self._conn()
                .execute("SELECT doc FROM docs WHERE collection=? ORDER BY key", (collection,))
                .fetchall()
            )
        return [json.loads(r[0]) for r in rows]

    def snapshot(self, collections: tuple[str, ...]) -> tuple[int, dict[str, dict[str, Document]]]:
        conn = self._conn()
        out: dict[str, dict[str, Document]] = {c: {} for c in collections}
        marks = ",".join("?" * len(collections))
        with self._io("reading a config snapshot"):
            conn.execute("BEGIN")
            try:
                version = self._version(conn)
                rows = conn.execute(
                    f"SELECT collection, key, doc FROM docs WHERE collection IN ({marks}) ORDER BY key",
                    collections,
                ).fetchall()
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")
        for coll, key, doc in rows:
            out[coll][key] = json.loads(doc)
        return version, out

    def commit(self, writes: list[Write], *, expect_version: int | None = None) -> int:
        with self._write("committing config") as conn:
            version = self._version(conn)
            if expect_version is not None and version != expect_version:
                raise Conflict(f"config version moved from {expect_version} to {version}")
            for w in writes:
                if w.doc is None:
                    conn.execute("DELETE FROM docs WHERE collection=? AND key=?", (w.collection, w.key))
                else:
                    conn.execute(
                        "INSERT INTO docs (collection, key, doc) VALUES (?, ?, ?) "
                        "ON CONFLICT (collection, key) DO UPDATE SET doc=excluded.doc",
                        (w.collection, w.key, json.dumps(w.doc, separators=(",", ":"))),
                    )
            version += 1
            conn.execute("UPDATE meta SET value=? WHERE name='config_version'", (version,))
        self._watchers.notify(version)
        return version

    def watch(self, callback: Callable[[int], None]) -> Callable[[], None]:
        return self._watchers.add(callback)

    # -- counters ---------------------------------------------------------------------
    def add_counters(self, batch: Mapping[str, Mapping[str, int | float]]) -> None:
        rows = [(grp, f, v) for grp, fields in batch.items() for f, v in fields.items()]
        if not rows:
            return
        with self._write("adding counters") as conn:
            conn.executemany(
                "INSERT INTO counters (grp, field, value) VALUES (?, ?, ?) "
                "ON CONFLICT (grp, field) DO UPDATE SET value = value + excluded.value",
                rows,
            )

    def counters(self, group: str) -> dict[str, float]:
        with self._io(f"reading counters {group}"):
            rows = self._conn().execute("SELECT field, value FROM counters WHERE grp=?", (group,)).fetchall()
        return {f: v for f, v in rows}

    def counter_groups(self, prefix: str) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        with self._io(f"listing counter groups {prefix}"):
            rows = (
                self._conn()
                .execute(
                    "SELECT grp, field, value FROM counters WHERE substr(grp, 1, ?) = ?",
                    (len(prefix), prefix),
                )
                .fetchall()
            )
        for grp, f, v in rows:
            out.setdefault(grp, {})[f] = v
        return out

    # -- window counters ----------------------------------------------------------------
    def add_windows(
        self, namespace: str, adds: Mapping[str, Mapping[str, int]], ttl_s: float
    ) -> dict[str, dict[str, int]]:
        """One write transaction: expired groups are dropped, deltas added, totals read."""
        check_window_adds(adds)
        now = self._clock()
        out: dict[str, dict[str, int]] = {}
        with self._write(f"adding {namespace} window counters") as conn:
            for key, fields in adds.items():
                conn.execute(
                    "DELETE FROM windows WHERE ns=? AND key=? AND expires_at <= ?", (namespace, key, now)
                )
                if fields:
                    conn.executemany(
                        "INSERT INTO windows (ns, key, field, value, expires_at) VALUES (?, ?, ?, ?, ?) "
                        "ON CONFLICT (ns, key, field) DO UPDATE SET value = value + excluded.value",
                        [(namespace, key, f, d, now + ttl_s) for f, d in fields.items()],
                    )
                    conn.execute(
                        "UPDATE windows SET expires_at=? WHERE ns=? AND key=?", (now + ttl_s, namespace, key)
                    )
                rows = conn.execute(
                    "SELECT field, value FROM windows WHERE ns=? AND key=?", (namespace, key)
                ).fetchall()
                out[key] = {f: int(v) for f, v in rows}
            if now - self._windows_purged_at >= self._purge_interval_s:
                self._windows_purged_at = now
                conn.execute("DELETE FROM windows WHERE expires_at <= ?", (now,))
        return out

    # -- expiring records -------------------------------------------------------------
    def put_records(
        self, namespace: str, records: Mapping[str, Document], ttl_s: float, *, listed: bool = True
    ) -> None:
        """``listed`` changes nothing here: the (ns, key) primary key serves both reads."""
        if not records:
            return
        now = self._clock()
        expires = now + ttl_s
        with self._write(f"writing {namespace} records") as conn:
            if (
                now - self._purged_at >= self._purge_interval_s
            ):  # expired rows go with the writes that add rows
                self._purged_at = now
                conn.execute("DELETE FROM records WHERE expires_at <= ?", (now,))
            conn.executemany(
                "INSERT INTO records (ns, key, doc, expires_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (ns, key) DO UPDATE SET doc=excluded.doc, expires_at=excluded.expires_at",
                [(namespace, k, json.dumps(d, separators=(",", ":")), expires) for k, d in records.items()],
            )

    def get_record(self, namespace: str, key: str) -> Document | None:
        with self._io(f"reading record {namespace}/{key}"):
            row = (
                self._conn()
                .execute(
                    "SELECT doc FROM records WHERE ns=? AND key=? AND expires_at > ?",
                    (namespace, key, self._clock()),
                )
                .fetchone()
            )
        return json.loads(row[0]) if row else None

    def list_records(self, namespace: str) -> dict[str, Document]:
        with self._io(f"listing {namespace} records"):
            rows = (
                self._conn()
                .execute(
                    "SELECT key, doc FROM records WHERE ns=? AND expires_at > ? ORDER BY key",
                    (namespace, self._clock()),
                )
                .fetchall()
            )
        return {k: json.loads(d) for k, d in rows}

    def claim(self, namespace: str, key: str, ttl_s: float) -> bool:
        now = self._clock()
        with self._write(f"claiming {namespace}/{key}") as conn:
            conn.execute(
                "DELETE FROM records WHERE ns=? AND key=? AND expires_at <= ?", (namespace, key, now)
            )
            cur = conn.execute(
                "INSERT OR IGNORE INTO records (ns, key, doc, expires_at) VALUES (?, ?, '{}', ?)",
                (namespace, key, now + ttl_s),
            )
        return cur.rowcount == 1

    # -- lifecycle --------------------------------------------------------------------
    def ping(self) -> bool:
        try:
            self._conn().execute("SELECT 1").fetchone()
        except sqlite3.Error:
            return False
        return True

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
