"""Throwaway redis-server processes for tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MISSING_REDIS_MESSAGE = (
    "redis-server is not on PATH; run scripts/install-system-deps.sh to install it "
    "(the Redis tests must not be skipped)"
)

_HOST = "127.0.0.1"
_START_TIMEOUT_S = 5.0
_STOP_TIMEOUT_S = 5.0
# Another process may grab the free port between our probe and redis-server's bind.
_START_ATTEMPTS = 3


class RedisServerError(RuntimeError):
    """redis-server is missing or did not start."""


@contextmanager
def running_redis_server(tmp_dir: str | os.PathLike[str]) -> Iterator[str]:
    """Run a throwaway redis-server on a free loopback port and yield its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RedisServerError(MISSING_REDIS_MESSAGE)
    directory = Path(tmp_dir)
    directory.mkdir(parents=True, exist_ok=True)
    proc, port = _start(binary, directory)
    try:
        yield f"redis://{_HOST}:{port}/0"
    finally:
        _stop(proc)


def _start(binary: str, directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start redis-server on a free port and wait until it answers PING."""
    errors = []
    for _ in range(_START_ATTEMPTS):
        port = _free_port()
        log_path = directory / f"redis-{port}.log"
        proc = _spawn(binary, port, directory, log_path)
        if _wait_for_ping(proc, port):
            return proc, port
        _stop(proc)
        errors.append(f"port {port}: {_tail(log_path)}")
    raise RedisServerError("redis-server did not start:\n" + "\n".join(errors))


def _spawn(binary: str, port: int, directory: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """Launch redis-server without persistence, logging to log_path."""
    command = [
        binary,
        "--port", str(port),
        "--bind", _HOST,
        "--save", "",
        "--appendonly", "no",
        "--dir", str(directory),
    ]  # fmt: skip
    with log_path.open("wb") as log:  # the child keeps its own copy of the fd
        return subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )


def _free_port() -> int:
    """Return a loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        return int(sock.getsockname()[1])


def _wait_for_ping(proc: subprocess.Popen[bytes], port: int) -> bool:
    """Poll until the server answers PING (True) or exits / times out (False)."""
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if _ping(port):
            return True
        time.sleep(0.05)
    return False


def _ping(port: int) -> bool:
    """Send one inline PING; True if the server answered PONG."""
    try:
        with socket.create_connection((_HOST, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server, then SIGKILL it if it does not exit in time."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=_STOP_TIMEOUT_S)


def _tail(path: Path, limit: int = 2000) -> str:
    """Last characters of a log file, for error messages."""
    try:
        return path.read_text(errors="replace")[-limit:].strip() or "(empty log)"
    except OSError as exc:
        return f"(no log: {exc})"
