"""Read recorded `<recv_ns> <json>` lines from one or more gzip/plain files, in arrival order."""

from __future__ import annotations

import gzip
import heapq
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)


class RecordingError(Exception):
    """A recording file cannot be opened."""


def _open(path: Path) -> IO[bytes]:
    """Open gzip or plain files transparently."""
    try:
        with path.open("rb") as probe:
            magic = probe.read(2)
        if magic == b"\x1f\x8b":
            return gzip.open(path, "rb")  # type: ignore[return-value]
        return path.open("rb")
    except OSError as exc:
        raise RecordingError(f"cannot open recording {path}: {exc}") from exc


class LineCounter:
    """Counts lines read and lines dropped as garbage, across files."""

    def __init__(self) -> None:
        self.lines = 0
        self.bad_lines = 0


def read_lines(path: Path, counter: LineCounter) -> Iterator[tuple[int, bytes]]:
    """Yield (recv_ns, json) per good line; count and log lines that are not `<int> <json>`."""
    with _open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            counter.lines += 1
            ts, sep, payload = line.partition(b" ")
            if not sep or not ts.isdigit() or not payload.strip():
                counter.bad_lines += 1
                log.warning("%s:%d: not '<recv_ns> <json>', dropped", path.name, lineno)
                continue
            yield int(ts), payload


def merged(paths: list[Path], counter: LineCounter) -> Iterator[tuple[int, bytes]]:
    """All files merged by receive time (each file is already in order)."""
    for p in paths:
        if not p.is_file():
            raise RecordingError(f"recording not found: {p}")
    streams = [read_lines(p, counter) for p in paths]
    return heapq.merge(*streams, key=lambda item: item[0])
