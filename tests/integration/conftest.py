"""Fixtures for integration tests: free port offsets, recording slices, no process left behind."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from libs.common.testing.fleet import (
    BTC_0808,
    BUNDLED_DATA,
    ETH_0808,
    SHARED_DATA,
    expected_ticks,
    processes_of_run,
    reserved_port_offset,
    service_pids_of,
    write_slice,
)

SLICE_LINES = 15_000


@dataclass(frozen=True)
class Slices:
    """The first SLICE_LINES lines of each recording, as files, plus what they should publish."""

    paths: tuple[Path, ...]
    lines: tuple[list[bytes], ...]
    expected: dict[str, int]


def recording(name: str) -> Path:
    """A recording from ../shared/data/binance (the bundled copy is byte-identical)."""
    shared = SHARED_DATA / name
    return shared if shared.is_file() else BUNDLED_DATA / name


@pytest.fixture(scope="session")
def slices(tmp_path_factory: pytest.TempPathFactory) -> Slices:
    """Slices of the BTCUSDT and ETHUSDT 2024-08-08 recordings, gzip-compressed like the originals."""
    out = tmp_path_factory.mktemp("slices")
    paths, lines = [], []
    for name in (BTC_0808, ETH_0808):
        dst = out / name.replace(".gz", f".head{SLICE_LINES}.gz")
        lines.append(write_slice(recording(name), dst, SLICE_LINES))
        paths.append(dst)
    expected = expected_ticks(line for part in lines for line in part)
    assert set(expected) == {"BTCUSDT", "ETHUSDT"}, expected
    return Slices(tuple(paths), tuple(lines), expected)


@pytest.fixture
def port_offset() -> Iterator[int]:
    """A port offset whose bus and metrics ports are all free (locked for this test)."""
    with reserved_port_offset() as offset:
        yield offset


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A fresh run directory (flotilla up creates it)."""
    return tmp_path / "run"


@pytest.fixture(autouse=True)
def no_process_left_behind(tmp_path: Path) -> Iterator[None]:
    """Fail the test if any service process of its runs, or any service child, outlives it."""
    yield
    deadline = time.monotonic() + 3
    while (left := processes_of_run(tmp_path) + service_pids_of(os.getpid())) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.1)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"processes outlived the test: {left}"
