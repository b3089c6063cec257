"""State store: one small key/value + append-only-log interface, two backends.

``EmbeddedStore`` keeps everything in one SQLite file (no server needed) and is safe
for several processes on one host. ``RedisStore`` keeps it in Redis for fleets that
span hosts. ``open_store`` picks one from configuration.
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol, cast
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

NAMESPACE_ENV = "FLOTILLA_STORE_NAMESPACE"
REDIS_URL_ENV = "FLOTILLA_REDIS_URL"

# A namespace must not contain the separators used below, otherwise namespace "a"
# could see keys of a namespace called "a:b" (or logs of one called "a.log").
_NAMESPACE_RE = re.compile(r"[A-Za-z0-9_-]+")

# Several processes share one SQLite file; a writer waits this long for the lock
# before giving up, which is far longer than any of our transactions take.
_SQLITE_BUSY_TIMEOUT_MS = 5_000

# Short timeouts so a dead Redis surfaces as a StoreError instead of a hang.
_REDIS_SOCKET_TIMEOUT_S = 2.0


class StoreError(Exception):
    """The store backend is unreachable, misconfigured or failed."""


class StateStore(Protocol):
    """Key/value store with TTLs, atomic counters and append-only logs."""

    def get(self, key: str) -> bytes | None:
        """Return the value of a live key, or None."""
        ...

    def set(self, key: str, value: bytes, ttl_ms: int | None = None) -> None:
        """Store a value, replacing any previous one (and its TTL)."""
        ...

    def set_if_absent(self, key: str, value: bytes, ttl_ms: int | None = None) -> bool:
        """Atomically store a value only if no live key exists; True if stored."""
        ...

    def replace_if_equal(
        self, key: str, expected: bytes, value: bytes, ttl_ms: int | None = None
    ) -> bool:
        """Atomically replace a live key's value (and TTL) only if it equals expected."""
        ...

    def delete_if_equal(self, key: str, expected: bytes) -> bool:
        """Atomically delete a live key only if its value equals expected; True if deleted."""
        ...

    def delete(self, key: str) -> None:
        """Remove a key; no error if it does not exist."""
        ...

    def keys(self, prefix: str) -> list[str]:
        """Return the live keys starting with prefix, sorted."""
        ...

    def incr(self, key: str, amount: int = 1) -> int:
        """Atomically add amount to an integer key (absent counts as 0); return the result."""
        ...

    def append(self, log: str, value: bytes) -> int:
        """Append to a log; return the new entry's 0-based index."""
        ...

    def read_log(self, log: str, start: int = 0) -> list[bytes]:
        """Return the log's entries from index start on, in order."""
        ...

    def log_length(self, log: str) -> int:
        """Return the number of entries in a log."""
        ...

    def close(self) -> None:
        """Release the connection; the store must not be used afterwards."""
        ...


def open_store(
    path: str | os.PathLike[str],
    redis_url: str | None = None,
    namespace: str | None = None,
) -> StateStore:
    """Redis when redis_url (or env FLOTILLA_REDIS_URL when redis_url is None) is set, else
    EmbeddedStore(path). The namespace defaults to env FLOTILLA_STORE_NAMESPACE or "flotilla"."""
    url = redis_url if redis_url is not None else os.environ.get(REDIS_URL_ENV)
    if namespace is None:
        namespace = os.environ.get(NAMESPACE_ENV) or "flotilla"
    if url:
        return RedisStore(url, namespace)
    return EmbeddedStore(path, namespace)


def _check_namespace(namespace: str) -> str:
    """Return namespace if it is a plain identifier, else raise StoreError."""
    if not _NAMESPACE_RE.fullmatch(namespace):
        raise StoreError(f"invalid namespace {namespace!r}: use only letters, digits, '_', '-'")
    return namespace


def _check_ttl(ttl_ms: int | None) -> None:
    """Reject TTLs that would expire a key before it is written."""
    if ttl_ms is not None and ttl_ms <= 0:
        raise ValueError(f"ttl_ms must be positive, got {ttl_ms}")


def _check_start(start: int) -> None:
    """Reject negative log offsets (Redis would read them from the end, SQLite would not)."""
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")


def _now_ms() -> int:
    """Current wall-clock time in milliseconds."""
    # Wall clock, not monotonic: expiry times are shared between processes and survive restarts.
    return time.time_ns() // 1_000_000


_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS kv (
    ns TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    expires_at INTEGER,  -- wall-clock ms, NULL = never
    PRIMARY KEY (ns, key)
) WITHOUT ROWID""",
    """
CREATE TABLE IF NOT EXISTS log (
    ns TEXT NOT NULL,
    name TEXT NOT NULL,
    idx INTEGER NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (ns, name, idx)
) WITHOUT ROWID""",
)

_LIVE = "(expires_at IS NULL OR expires_at > ?)"


class EmbeddedStore:
    """StateStore in a SQLite file (WAL mode); one connection per process."""

    def __init__(self, path: str | os.PathLike[str], namespace: str = "flotilla") -> None:
        """Open (creating if needed) the store file at path."""
        self._ns = _check_namespace(namespace)
        self._path = Path(path)
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN ourselves, so Python never opens
            # implicit (deferred) transactions that could deadlock on upgrade.
            self._db = sqlite3.connect(
                self._path, timeout=_SQLITE_BUSY_TIMEOUT_MS / 1000, isolation_level=None
            )
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open state store {self._path}: {exc}") from exc
        try:
            self._setup()
        except StoreError:
            self._db.close()
            raise

    def _setup(self) -> None:
        """Configure the connection, create the schema and drop long-expired keys."""
        with self._errors():
            self._db.execute(f"PRAGMA busy_timeout = {_SQLITE_BUSY_TIMEOUT_MS}")
            self._enable_wal()
            # NORMAL is durable across process crashes in WAL mode; only a power cut
            # can lose the last transactions, which is acceptable for this state.
            self._db.execute("PRAGMA synchronous = NORMAL")
            with self._immediate():
                # One execute() per statement: executescript() would COMMIT our transaction.
                for statement in _SCHEMA:
                    self._db.execute(statement)
                # Expired rows are invisible anyway; purge them here so the file stays small.
                self._db.execute(
                    "DELETE FROM kv WHERE expires_at IS NOT NULL AND expires_at <= ?",
                    (_now_ms(),),
                )

    def _enable_wal(self) -> None:
        """Switch to WAL so readers and one writer work concurrently across processes."""
        # Retried by hand: SQLite does not apply busy_timeout to this switch, so processes
        # creating the same new file at the same moment get "database is locked" at once.
        deadline = time.monotonic() + _SQLITE_BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                self._db.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn sqlite3 errors into StoreError."""
        try:
            yield
        except sqlite3.Error as exc:
            raise StoreError(f"state store {self._path}: {exc}") from exc

    @contextmanager
    def _immediate(self) -> Iterator[None]:
        """Run the block in a write transaction that holds the lock from the start."""
        # IMMEDIATE, not deferred: read-then-write must be atomic across processes, and
        # upgrading a read transaction to a write one can fail with SQLITE_BUSY mid-way.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _live_row(self, key: str) -> tuple[bytes, int | None] | None:
        """Return (value, expires_at) of a live key, or None."""
        row = self._db.execute(
            f"SELECT value, expires_at FROM kv WHERE ns = ? AND key = ? AND {_LIVE}",
            (self._ns, key, _now_ms()),
        ).fetchone()
        return cast("tuple[bytes, int | None] | None", row)

    def _write(self, key: str, value: bytes, expires_at: int | None) -> None:
        """Insert or replace one key."""
        self._db.execute(
            "INSERT OR REPLACE INTO kv (ns, key, value, expires_at) VALUES (?, ?, ?, ?)",
            (self._ns, key, value, expires_at),
        )

    def get(self, key: str) -> bytes | None:
        """Return the value of a live key, or None."""
        with self._errors():
            row = self._live_row(key)
        return None if row is None else bytes(row[0])

    def set(self, key: str, value: bytes, ttl_ms: int | None = None) -> None:
        """Store a value, replacing any previous one (and its TTL)."""
        _check_ttl(ttl_ms)
        with self._errors():
            self._write(key, value, None if ttl_ms is None else _now_ms() + ttl_ms)

    def set_if_absent(self, key: str, value: bytes, ttl_ms: int | None = None) -> bool:
        """Atomically store a value only if no live key exists; True if stored."""
        _check_ttl(ttl_ms)
        with self._errors(), self._immediate():
            if self._live_row(key) is not None:
                return False
            self._write(key, value, None if ttl_ms is None else _now_ms() + ttl_ms)
            return True

    def replace_if_equal(
        self, key: str, expected: bytes, value: bytes, ttl_ms: int | None = None
    ) -> bool:
        """Atomically replace a live key's value (and TTL) only if it equals expected."""
        _check_ttl(ttl_ms)
        with self._errors(), self._immediate():
            row = self._live_row(key)
            if row is None or bytes(row[0]) != expected:
                return False
            self._write(key, value, None if ttl_ms is None else _now_ms() + ttl_ms)
            return True

    def delete_if_equal(self, key: str, expected: bytes) -> bool:
        """Atomically delete a live key only if its value equals expected; True if deleted."""
        with self._errors(), self._immediate():
            row = self._live_row(key)
            if row is None or bytes(row[0]) != expected:
                return False
            self._db.execute("DELETE FROM kv WHERE ns = ? AND key = ?", (self._ns, key))
            return True

    def delete(self, key: str) -> None:
        """Remove a key; no error if it does not exist."""
        with self._errors():
            self._db.execute("DELETE FROM kv WHERE ns = ? AND key = ?", (self._ns, key))

    def keys(self, prefix: str) -> list[str]:
        """Return the live keys starting with prefix, sorted."""
        with self._errors():
            rows = self._db.execute(
                f"SELECT key FROM kv WHERE ns = ? AND substr(key, 1, ?) = ? AND {_LIVE}",
                (self._ns, len(prefix), prefix, _now_ms()),
            ).fetchall()
        # Sort in Python so the order matches RedisStore exactly.
        return sorted(row[0] for row in rows)

    def incr(self, key: str, amount: int = 1) -> int:
        """Atomically add amount to an integer key (absent counts as 0); return the result."""
        # Same as Redis INCRBY: the value is stored as decimal text and an existing TTL is kept.
        with self._errors(), self._immediate():
            row = self._live_row(key)
            current, expires_at = (0, None) if row is None else (_parse_int(key, row[0]), row[1])
            new = current + amount
            self._write(key, str(new).encode(), expires_at)
        return new

    def append(self, log: str, value: bytes) -> int:
        """Append to a log; return the new entry's 0-based index."""
        with self._errors(), self._immediate():
            (idx,) = self._db.execute(
                "SELECT COUNT(*) FROM log WHERE ns = ? AND name = ?", (self._ns, log)
            ).fetchone()
            self._db.execute(
                "INSERT INTO log (ns, name, idx, value) VALUES (?, ?, ?, ?)",
                (self._ns, log, idx, value),
            )
        return int(idx)

    def read_log(self, log: str, start: int = 0) -> list[bytes]:
        """Return the log's entries from index start on, in order."""
        _check_start(start)
        with self._errors():
            rows = self._db.execute(
                "SELECT value FROM log WHERE ns = ? AND name = ? AND idx >= ? ORDER BY idx",
                (self._ns, log, start),
            ).fetchall()
        return [bytes(row[0]) for row in rows]

    def log_length(self, log: str) -> int:
        """Return the number of entries in a log."""
        with self._errors():
            (count,) = self._db.execute(
                "SELECT COUNT(*) FROM log WHERE ns = ? AND name = ?", (self._ns, log)
            ).fetchone()
        return int(count)

    def close(self) -> None:
        """Close the SQLite connection."""
        self._db.close()


def _parse_int(key: str, raw: bytes) -> int:
    """Parse a counter value, raising ValueError (as RedisStore does) if it is not one."""
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"value of {key!r} is not an integer") from None


def _redact(url: str) -> str:
    """Hide the password in a URL so it can go into error messages and logs."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "<unparseable URL>"


class RedisStore:
    """StateStore in Redis; keys live at f"{namespace}:{key}", logs at f"{namespace}.log:{log}"."""

    def __init__(self, url: str, namespace: str = "flotilla") -> None:
        """Connect to the Redis at url and check it answers."""
        self._ns = _check_namespace(namespace)
        self._url = _redact(url)
        try:
            self._client = redis.Redis.from_url(
                url,
                socket_timeout=_REDIS_SOCKET_TIMEOUT_S,
                socket_connect_timeout=_REDIS_SOCKET_TIMEOUT_S,
                # One immediate retry covers a pooled connection the server dropped;
                # the client's default (10 retries with backoff) would stall for many seconds.
                retry=Retry(NoBackoff(), 1),
            )
        except ValueError as exc:  # redis-py's word for a malformed URL or bad scheme
            raise StoreError(f"invalid Redis URL {self._url}: {exc}") from exc
        self._replace_script = self._client.register_script(_REPLACE_IF_EQUAL_LUA)
        self._delete_script = self._client.register_script(_DELETE_IF_EQUAL_LUA)
        try:
            with self._errors():
                self._client.ping()
        except StoreError:
            self._client.close()
            raise

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn redis-py errors into StoreError."""
        try:
            yield
        except redis.RedisError as exc:
            raise StoreError(f"Redis at {self._url}: {exc}") from exc

    def _key(self, key: str) -> str:
        """Full Redis key of a store key."""
        return f"{self._ns}:{key}"

    def _log(self, log: str) -> str:
        """Full Redis key of a log; a separate prefix keeps logs out of keys()."""
        return f"{self._ns}.log:{log}"

    def get(self, key: str) -> bytes | None:
        """Return the value of a live key, or None."""
        with self._errors():
            value = self._client.get(self._key(key))
        return None if value is None else bytes(cast(bytes, value))

    def set(self, key: str, value: bytes, ttl_ms: int | None = None) -> None:
        """Store a value, replacing any previous one (and its TTL)."""
        _check_ttl(ttl_ms)
        with self._errors():
            self._client.set(self._key(key), value, px=ttl_ms)

    def set_if_absent(self, key: str, value: bytes, ttl_ms: int | None = None) -> bool:
        """Atomically store a value only if no live key exists; True if stored."""
        _check_ttl(ttl_ms)
        with self._errors():
            return bool(self._client.set(self._key(key), value, px=ttl_ms, nx=True))

    def replace_if_equal(
        self, key: str, expected: bytes, value: bytes, ttl_ms: int | None = None
    ) -> bool:
        """Atomically replace a live key's value (and TTL) only if it equals expected."""
        _check_ttl(ttl_ms)
        with self._errors():
            done = self._replace_script(
                keys=[self._key(key)], args=[expected, value, 0 if ttl_ms is None else ttl_ms]
            )
        return bool(done)

    def delete_if_equal(self, key: str, expected: bytes) -> bool:
        """Atomically delete a live key only if its value equals expected; True if deleted."""
        with self._errors():
            done = self._delete_script(keys=[self._key(key)], args=[expected])
        return bool(done)

    def delete(self, key: str) -> None:
        """Remove a key; no error if it does not exist."""
        with self._errors():
            self._client.delete(self._key(key))

    def keys(self, prefix: str) -> list[str]:
        """Return the live keys starting with prefix, sorted."""
        full_prefix = self._key(prefix)
        # SCAN (not KEYS) so a big keyspace does not block the server.
        with self._errors():
            found = self._client.scan_iter(match=_glob_escape(full_prefix) + "*", count=500)
            names = {cast(bytes, name).decode() for name in found}
        return sorted(name[len(self._ns) + 1 :] for name in names)

    def incr(self, key: str, amount: int = 1) -> int:
        """Atomically add amount to an integer key (absent counts as 0); return the result."""
        with self._errors():
            try:
                return int(cast(int, self._client.incrby(self._key(key), amount)))
            except redis.ResponseError as exc:
                raise ValueError(f"value of {key!r} is not an integer: {exc}") from exc

    def append(self, log: str, value: bytes) -> int:
        """Append to a log; return the new entry's 0-based index."""
        with self._errors():
            length = cast(int, self._client.rpush(self._log(log), value))
        return int(length) - 1

    def read_log(self, log: str, start: int = 0) -> list[bytes]:
        """Return the log's entries from index start on, in order."""
        _check_start(start)
        with self._errors():
            values = cast("list[bytes]", self._client.lrange(self._log(log), start, -1))
        return [bytes(value) for value in values]

    def log_length(self, log: str) -> int:
        """Return the number of entries in a log."""
        with self._errors():
            return int(cast(int, self._client.llen(self._log(log))))

    def close(self) -> None:
        """Close the client's connections."""
        self._client.close()


# Compare-and-set in one server-side step: a lease holder renews or releases only its own lease.
_REPLACE_IF_EQUAL_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if tonumber(ARGV[3]) > 0 then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
else
  redis.call('SET', KEYS[1], ARGV[2])
end
return 1
"""
_DELETE_IF_EQUAL_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""


def _glob_escape(text: str) -> str:
    """Escape Redis glob metacharacters so text matches literally in SCAN MATCH."""
    return re.sub(r"([\\*?\[\]])", r"\\\1", text)
