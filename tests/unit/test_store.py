"""StateStore behaviour, run against both backends (SQLite file and a real redis-server)."""

from __future__ import annotations

import multiprocessing
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from libs.common.store import (
    REDIS_URL_ENV,
    EmbeddedStore,
    RedisStore,
    StateStore,
    StoreError,
    open_store,
)
from libs.common.testing.redis_server import (
    MISSING_REDIS_MESSAGE,
    RedisServerError,
    running_redis_server,
)


@dataclass(frozen=True)
class Backend:
    """How to open a store; picklable so child processes can open their own."""

    kind: str  # "embedded" or "redis"
    target: str  # SQLite file path or Redis URL
    namespace: str

    def open(self, namespace: str | None = None) -> StateStore:
        """Open a fresh connection to this backend."""
        ns = namespace or self.namespace
        if self.kind == "redis":
            return RedisStore(self.target, ns)
        return EmbeddedStore(self.target, ns)


@pytest.fixture(params=["embedded", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Each behaviour test runs once per backend, on an empty store."""
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        return Backend("redis", url, f"t{uuid.uuid4().hex[:12]}")
    return Backend("embedded", str(tmp_path / "state.db"), "flotilla")


@pytest.fixture
def store(backend: Backend) -> Iterator[StateStore]:
    """An open store on the backend under test."""
    opened = backend.open()
    yield opened
    opened.close()


def _wait_until(predicate: Callable[[], bool], timeout: float = 2.0) -> bool:
    """Poll predicate until it holds or timeout passes; return its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def _unused_port() -> int:
    """A loopback port nothing listens on (free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Child-process workers: module level so the spawn start method can import them.


def _lease_worker(backend: Backend, name: str, barrier: Any, leases: int) -> None:
    """Race for every lease; record each one won in the 'wins' log."""
    with closing(backend.open()) as store:
        barrier.wait(timeout=30)
        for i in range(leases):
            if store.set_if_absent(f"lease:{i}", name.encode()):
                store.append("wins", f"{i}:{name}".encode())


def _incr_worker(backend: Backend, name: str, barrier: Any, count: int) -> None:
    """Increment the shared counter count times."""
    with closing(backend.open()) as store:
        barrier.wait(timeout=30)
        for _ in range(count):
            store.incr("counter")


def _run_in_processes(target: Callable[..., None], backend: Backend, arg: int) -> None:
    """Run target in two processes released together by a barrier; assert both succeed."""
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no inherited connections
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=target, args=(backend, f"w{i}", barrier, arg)) for i in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=60)
    exitcodes = [proc.exitcode for proc in procs]
    for proc in procs:
        if proc.is_alive():
            proc.kill()
            proc.join()
        proc.close()
    assert exitcodes == [0, 0]


# --- behaviour, both backends -------------------------------------------------------------


def test_get_set_round_trip(store: StateStore) -> None:
    assert store.get("missing") is None
    store.set("k", b"v1")
    assert store.get("k") == b"v1"
    store.set("k", b"v2")
    assert store.get("k") == b"v2"
    store.set("binary", b"\x00\xff\n")
    store.set("empty", b"")
    assert store.get("binary") == b"\x00\xff\n"
    assert store.get("empty") == b""


def test_ttl_expiry(store: StateStore) -> None:
    store.set("short", b"x", ttl_ms=80)
    store.set("long", b"y", ttl_ms=60_000)
    store.set("forever", b"z")
    assert _wait_until(lambda: store.get("short") is None)
    assert store.keys("") == ["forever", "long"]
    assert store.get("long") == b"y"
    assert store.set_if_absent("short", b"new")
    assert store.get("short") == b"new"


def test_set_without_ttl_clears_ttl(store: StateStore) -> None:
    store.set("k", b"old", ttl_ms=50)
    store.set("k", b"new")
    time.sleep(0.15)
    assert store.get("k") == b"new"


def test_invalid_ttl_rejected(store: StateStore) -> None:
    with pytest.raises(ValueError):
        store.set("k", b"v", ttl_ms=0)
    with pytest.raises(ValueError):
        store.set_if_absent("k", b"v", ttl_ms=-5)


def test_set_if_absent_is_exclusive(store: StateStore) -> None:
    assert store.set_if_absent("lease", b"a")
    assert not store.set_if_absent("lease", b"b")
    assert store.get("lease") == b"a"
    store.delete("lease")
    assert store.set_if_absent("lease", b"b")
    assert store.get("lease") == b"b"


def test_set_if_absent_lease_expires(store: StateStore) -> None:
    assert store.set_if_absent("lease", b"a", ttl_ms=60)
    assert not store.set_if_absent("lease", b"b", ttl_ms=60_000)
    assert _wait_until(lambda: store.set_if_absent("lease", b"b", ttl_ms=60_000))
    assert store.get("lease") == b"b"


def test_set_if_absent_across_processes(backend: Backend, store: StateStore) -> None:
    leases = 25
    _run_in_processes(_lease_worker, backend, leases)
    wins = [entry.decode().split(":") for entry in store.read_log("wins")]
    assert sorted(int(i) for i, _ in wins) == list(range(leases))  # exactly one winner each
    for i, winner in wins:
        assert store.get(f"lease:{i}") == winner.encode()


def test_incr(store: StateStore) -> None:
    assert store.incr("n") == 1
    assert store.incr("n", 5) == 6
    assert store.incr("n", -10) == -4
    assert store.get("n") == b"-4"
    store.set("text", b"abc")
    with pytest.raises(ValueError):
        store.incr("text")


def test_incr_keeps_ttl(store: StateStore) -> None:
    store.incr("n")
    store.set("n", b"41", ttl_ms=80)
    assert store.incr("n") == 42
    assert _wait_until(lambda: store.get("n") is None)
    assert store.incr("n") == 1  # an expired counter starts again from zero


def test_incr_across_processes(backend: Backend, store: StateStore) -> None:
    _run_in_processes(_incr_worker, backend, 200)
    assert store.get("counter") == b"400"


def test_embedded_new_file_opened_by_processes_at_once(tmp_path: Path) -> None:
    backend = Backend("embedded", str(tmp_path / "fresh" / "state.db"), "flotilla")
    _run_in_processes(_incr_worker, backend, 50)  # both create the file and schema together
    with closing(backend.open()) as store:
        assert store.get("counter") == b"100"


def test_append_and_read_log(store: StateStore) -> None:
    assert [store.append("fills", f"e{i}".encode()) for i in range(5)] == [0, 1, 2, 3, 4]
    assert store.read_log("fills") == [b"e0", b"e1", b"e2", b"e3", b"e4"]
    assert store.read_log("fills", start=3) == [b"e3", b"e4"]
    assert store.read_log("fills", start=5) == []
    assert store.read_log("missing") == []
    with pytest.raises(ValueError):
        store.read_log("fills", start=-1)


def test_log_length(store: StateStore) -> None:
    assert store.log_length("fills") == 0
    store.append("fills", b"a")
    store.append("fills", b"b")
    store.append("other", b"c")
    assert store.log_length("fills") == 2
    assert store.log_length("other") == 1


def test_keys_prefix_sorted(store: StateStore) -> None:
    for key in ["b:2", "a:1", "b:10", "b:1", "c", "x*y", "xay"]:
        store.set(key, b"v")
    store.append("b:log", b"entry")  # logs are not keys
    assert store.keys("b:") == ["b:1", "b:10", "b:2"]
    assert store.keys("") == ["a:1", "b:1", "b:10", "b:2", "c", "x*y", "xay"]
    assert store.keys("x*") == ["x*y"]  # glob characters match literally
    assert store.keys("zzz") == []


def test_namespaces_isolated(backend: Backend, store: StateStore) -> None:
    store.set("k", b"mine")
    store.append("log", b"mine")
    with closing(backend.open(namespace=backend.namespace + "-other")) as other:
        other.set("k", b"theirs")
        other.set("only-theirs", b"x")
        other.append("log", b"theirs")
        assert other.get("k") == b"theirs"
        assert other.read_log("log") == [b"theirs"]
        assert other.keys("") == ["k", "only-theirs"]
    assert store.get("k") == b"mine"
    assert store.keys("") == ["k"]
    assert store.read_log("log") == [b"mine"]


def test_invalid_namespace_rejected(backend: Backend) -> None:
    with pytest.raises(StoreError, match="namespace"):
        backend.open(namespace="a:b")


def test_delete(store: StateStore) -> None:
    store.set("k", b"v")
    store.delete("k")
    store.delete("never-existed")
    assert store.get("k") is None
    assert store.keys("") == []


def test_persists_across_reopen(backend: Backend) -> None:
    with closing(backend.open()) as first:
        first.set("k", b"v")
        first.incr("n", 3)
        first.append("log", b"e0")
    with closing(backend.open()) as second:
        assert second.get("k") == b"v"
        assert second.get("n") == b"3"
        assert second.read_log("log") == [b"e0"]
        assert second.append("log", b"e1") == 1


# --- choosing and reaching a backend ------------------------------------------------------


def test_open_store_uses_redis_url(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(REDIS_URL_ENV, raising=False)
    with closing(open_store(tmp_path / "state.db", redis_url=redis_url, namespace="ost")) as s:
        assert isinstance(s, RedisStore)
    assert not (tmp_path / "state.db").exists()


def test_open_store_uses_env_url(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(REDIS_URL_ENV, redis_url)
    with closing(open_store(tmp_path / "state.db")) as s:
        assert isinstance(s, RedisStore)


def test_open_store_embedded_without_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REDIS_URL_ENV, raising=False)
    path = tmp_path / "sub" / "state.db"
    with closing(open_store(path)) as s:
        assert isinstance(s, EmbeddedStore)
        s.set("k", b"v")
    assert path.exists()


def test_unreachable_redis_raises_store_error(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{_unused_port()}/0"
    started = time.monotonic()
    with pytest.raises(StoreError, match=r"127\.0\.0\.1"):
        open_store(tmp_path / "state.db", redis_url=url)
    assert time.monotonic() - started < 3.0


def test_bad_redis_url_raises_store_error() -> None:
    with pytest.raises(StoreError, match="invalid Redis URL"):
        RedisStore("http://127.0.0.1:6379/0")


def test_store_error_hides_password() -> None:
    url = f"redis://user:s3cret@127.0.0.1:{_unused_port()}/0"
    with pytest.raises(StoreError) as info:
        RedisStore(url)
    assert "s3cret" not in str(info.value)


# --- the redis-server helper itself -------------------------------------------------------


def test_missing_redis_server_binary_fails_with_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    hint = r"scripts/install-system-deps\.sh"
    with pytest.raises(RedisServerError, match=hint), running_redis_server(tmp_path):
        pass


def test_running_redis_server_stops_afterwards(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        pytest.fail(MISSING_REDIS_MESSAGE)
    with running_redis_server(tmp_path) as url, closing(RedisStore(url)) as s:
        s.set("k", b"v")
        assert s.get("k") == b"v"
    with pytest.raises(StoreError):
        RedisStore(url)


# --- compare-and-set (what leases are built on), both backends ----------------------------


def test_replace_if_equal_replaces_only_the_expected_value(store: StateStore) -> None:
    store.set("lease", b"\x00a")
    assert not store.replace_if_equal("lease", b"\x00b", b"thief")
    assert store.get("lease") == b"\x00a"
    assert store.replace_if_equal("lease", b"\x00a", b"\x00a-renewed")
    assert store.get("lease") == b"\x00a-renewed"


def test_replace_if_equal_on_a_missing_key_neither_succeeds_nor_creates_it(
    store: StateStore,
) -> None:
    assert not store.replace_if_equal("lease", b"a", b"a", ttl_ms=60_000)
    assert store.get("lease") is None
    assert store.keys("") == []


def test_replace_if_equal_does_not_revive_an_expired_key(store: StateStore) -> None:
    store.set("lease", b"a", ttl_ms=50)
    assert _wait_until(lambda: store.get("lease") is None)
    assert not store.replace_if_equal("lease", b"a", b"a", ttl_ms=60_000)
    assert store.get("lease") is None


def test_replace_if_equal_applies_the_new_ttl(store: StateStore) -> None:
    store.set("short", b"a", ttl_ms=60_000)
    assert store.replace_if_equal("short", b"a", b"b", ttl_ms=80)
    assert store.get("short") == b"b"
    assert _wait_until(lambda: store.get("short") is None)


def test_replace_if_equal_without_ttl_clears_the_old_ttl(store: StateStore) -> None:
    store.set("k", b"a", ttl_ms=50)
    assert store.replace_if_equal("k", b"a", b"b")
    time.sleep(0.15)
    assert store.get("k") == b"b"


def test_replace_if_equal_rejects_an_invalid_ttl(store: StateStore) -> None:
    store.set("k", b"a")
    with pytest.raises(ValueError):
        store.replace_if_equal("k", b"a", b"b", ttl_ms=0)
    assert store.get("k") == b"a"


def test_delete_if_equal_deletes_only_the_expected_value(store: StateStore) -> None:
    store.set("lease", b"\x00a")
    assert not store.delete_if_equal("lease", b"\x00b")
    assert store.get("lease") == b"\x00a"
    assert store.delete_if_equal("lease", b"\x00a")
    assert store.get("lease") is None
    assert not store.delete_if_equal("lease", b"\x00a")  # already gone
    assert not store.delete_if_equal("never-existed", b"x")
