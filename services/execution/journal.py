"""Append-only JSONL journal of order state changes and fills, reloaded on restart."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import IO, TypeVar

import msgspec

from libs.common.bus import DECODE_ERRORS
from libs.common.messages import Fill, OrderUpdate

log = logging.getLogger(__name__)
T = TypeVar("T")


class Journal:
    """`orders.jsonl` and `fills.jsonl`; every line is written (and flushed) before it is published."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.orders_path = directory / "orders.jsonl"
        self.fills_path = directory / "fills.jsonl"
        self._encoder = msgspec.json.Encoder()
        self._orders: IO[bytes] | None = None
        self._fills: IO[bytes] | None = None

    def open(self) -> None:
        """Open both files for appending."""
        self._orders = self.orders_path.open("ab")
        self._fills = self.fills_path.open("ab")

    def record(self, event: OrderUpdate | Fill) -> None:
        """Append one event to its file."""
        fh = self._fills if isinstance(event, Fill) else self._orders
        assert fh is not None, "journal not opened"
        fh.write(self._encoder.encode(event) + b"\n")
        fh.flush()  # survives a crash of this process; not a power cut (no fsync per line)

    def load(self) -> tuple[list[OrderUpdate], list[Fill]]:
        """Every journaled update and fill; a torn last line (crash mid-write) is skipped."""
        return _read(self.orders_path, OrderUpdate), _read(self.fills_path, Fill)

    def close(self) -> None:
        """Close both files."""
        for fh in (self._orders, self._fills):
            if fh is not None:
                fh.close()


def _read(path: Path, kind: type[T]) -> list[T]:
    """Decode one JSONL file."""
    if not path.exists():
        return []
    decoder = msgspec.json.Decoder(kind)
    items: list[T] = []
    for lineno, line in enumerate(path.read_bytes().splitlines(), 1):
        try:
            items.append(decoder.decode(line))
        except DECODE_ERRORS as exc:
            log.error("%s:%d unreadable journal line skipped: %s", path.name, lineno, exc)
    return items
