"""An exact-Decimal L2 order book kept by Binance's documented snapshot + diff procedure.

Binance spot ("How to manage a local order book correctly"): open the depth stream and buffer
its diffs; fetch a REST snapshot; drop buffered diffs with u <= lastUpdateId; the first diff
applied must have U <= lastUpdateId + 1 <= u; from then on every diff's U must be the previous
diff's u + 1, otherwise updates were lost and the book must be rebuilt from a new snapshot.
A quantity of 0 removes the price level.

`L2Book` is that procedure as a pure state machine (no I/O, no clock): the caller feeds diffs
and snapshots and acts on the outcomes (fetch a snapshot on GAP or SNAPSHOT_TOO_OLD).
`TopCheck` pairs bookTicker messages with the book state they describe.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated

import msgspec

from libs.common.messages import Quote

from .binance import ParseError

Level = tuple[Decimal, Decimal]  # (price, quantity)
UpdateId = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
MAX_BUFFERED_DIFFS = 10_000  # ~17 minutes of depth@100ms: a snapshot never takes that long


@dataclass(frozen=True, slots=True)
class DepthDiff:
    """One `<symbol>@depth` event: updates U..u, levels to set (qty 0 = delete)."""

    symbol: str
    first_id: int  # U
    last_id: int  # u
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]
    event_ms: int = 0  # E


@dataclass(frozen=True, slots=True)
class DepthSnapshot:
    """A REST `GET /api/v3/depth` answer: the book as of `last_update_id`, best levels first."""

    last_update_id: int
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]

    def to_json(self, limit: int | None = None) -> bytes:
        """Binance's wire form: prices and quantities as 8-decimal strings."""
        n = limit if limit is not None else max(len(self.bids), len(self.asks))
        return msgspec.json.encode(
            {
                "lastUpdateId": self.last_update_id,
                "bids": [[f"{p:.8f}", f"{q:.8f}"] for p, q in self.bids[:n]],
                "asks": [[f"{p:.8f}", f"{q:.8f}"] for p, q in self.asks[:n]],
            }
        )


@dataclass(frozen=True, slots=True)
class TopOfBook:
    """Best bid and ask with their quantities."""

    bid_px: Decimal
    bid_qty: Decimal
    ask_px: Decimal
    ask_qty: Decimal


@dataclass(frozen=True, slots=True)
class Ticker:
    """The fields of a bookTicker that can be checked against the book."""

    update_id: int
    top: TopOfBook

    @classmethod
    def from_quote(cls, quote: Quote) -> Ticker:
        """From the normalised bookTicker (services/market_data/binance.py)."""
        top = TopOfBook(quote.bid_px, quote.bid_qty, quote.ask_px, quote.ask_qty)
        return cls(quote.update_id, top)


class BookState(enum.Enum):
    """Whether the book can be trusted."""

    AWAITING_SNAPSHOT = "awaiting_snapshot"  # buffering diffs; the levels are meaningless
    SYNCED = "synced"


class Outcome(enum.Enum):
    """What feeding a diff or snapshot did; GAP and SNAPSHOT_TOO_OLD ask for a new snapshot."""

    BUFFERED = "buffered"  # no snapshot yet: kept for when it comes
    APPLIED = "applied"
    DROPPED = "dropped"  # already covered by the book (u <= lastUpdateId)
    GAP = "gap"  # updates were lost: book discarded, buffering from this diff on
    SYNCED = "synced"  # snapshot accepted (and any buffered diffs applied)
    SNAPSHOT_TOO_OLD = "snapshot_too_old"  # the buffer starts after it: fetch another


class L2Book:
    """One symbol's book; see the module docstring for the procedure."""

    def __init__(self, symbol: str, max_buffered: int = MAX_BUFFERED_DIFFS) -> None:
        self.symbol = symbol
        self.bids: dict[Decimal, Decimal] = {}
        self.asks: dict[Decimal, Decimal] = {}
        self.last_update_id = 0
        self.state = BookState.AWAITING_SNAPSHOT
        self._bridged = False  # has a diff been applied on top of the current snapshot?
        self._buffer: deque[DepthDiff] = deque(maxlen=max_buffered)
        self._top: TopOfBook | None = None
        self._top_valid = False

    @property
    def synced(self) -> bool:
        """True when the levels are the venue's book as of `last_update_id`."""
        return self.state is BookState.SYNCED

    @property
    def buffered(self) -> int:
        """Diffs waiting for a snapshot."""
        return len(self._buffer)

    def reset(self) -> None:
        """Forget everything and buffer again (a new connection restarts the procedure)."""
        self._clear()
        self._buffer.clear()

    def on_diff(self, diff: DepthDiff) -> Outcome:
        """Feed one depth diff in arrival order."""
        if self.state is BookState.AWAITING_SNAPSHOT:
            self._buffer.append(diff)  # a full buffer drops the oldest: the next snapshot is newer
            return Outcome.BUFFERED
        return self._apply_synced(diff)

    def on_snapshot(self, snap: DepthSnapshot) -> Outcome:
        """Load a REST snapshot, then apply the buffered diffs that follow it."""
        pending = [d for d in self._buffer if d.last_id > snap.last_update_id]
        if pending and pending[0].first_id > snap.last_update_id + 1:
            # The stream has moved past the snapshot: diffs in between are in neither.
            return Outcome.SNAPSHOT_TOO_OLD
        self._load(snap)
        self._buffer.clear()
        for i, diff in enumerate(pending):
            if self._apply_synced(diff) is Outcome.GAP:
                self._buffer.extend(pending[i + 1 :])  # keep buffering past the gapped diff
                return Outcome.GAP
        return Outcome.SYNCED

    def _apply_synced(self, diff: DepthDiff) -> Outcome:
        """The chain check and the update itself, for a book that has a snapshot."""
        if diff.last_id <= self.last_update_id:
            return Outcome.DROPPED
        expected = self.last_update_id + 1
        bridges = diff.first_id <= expected if not self._bridged else diff.first_id == expected
        if not bridges:
            self._clear()
            self._buffer.append(diff)  # may straddle the next snapshot's lastUpdateId
            return Outcome.GAP
        _update(self.bids, diff.bids)
        _update(self.asks, diff.asks)
        self.last_update_id = diff.last_id
        self._bridged = True
        self._top_valid = False
        return Outcome.APPLIED

    def _load(self, snap: DepthSnapshot) -> None:
        """Replace the levels with a snapshot's."""
        self.bids = {p: q for p, q in snap.bids if q}
        self.asks = {p: q for p, q in snap.asks if q}
        self.last_update_id = snap.last_update_id
        self.state = BookState.SYNCED
        self._bridged = False
        self._top_valid = False

    def _clear(self) -> None:
        """Discard the levels and wait for a snapshot."""
        self.bids = {}
        self.asks = {}
        self.last_update_id = 0
        self.state = BookState.AWAITING_SNAPSHOT
        self._bridged = False
        self._top_valid = False

    def top(self) -> TopOfBook | None:
        """Best bid and ask; None unless synced with both sides present."""
        if not self._top_valid:
            self._top = self._compute_top()
            self._top_valid = True
        return self._top

    def _compute_top(self) -> TopOfBook | None:
        """O(levels), done at most once per applied diff: cheaper than keeping levels sorted."""
        if not self.synced or not self.bids or not self.asks:
            return None
        bid = max(self.bids)
        ask = min(self.asks)
        return TopOfBook(bid, self.bids[bid], ask, self.asks[ask])

    def levels(self, side: str, depth: int | None = None) -> tuple[Level, ...]:
        """One side's levels, best first ("bids" or "asks")."""
        book = self.bids if side == "bids" else self.asks
        ordered = sorted(book.items(), reverse=side == "bids")
        return tuple(ordered[:depth] if depth is not None else ordered)

    def snapshot(self, depth: int | None = None) -> DepthSnapshot:
        """The book as a REST-style snapshot (what a venue would answer)."""
        return DepthSnapshot(
            self.last_update_id, self.levels("bids", depth), self.levels("asks", depth)
        )


def _update(side: dict[Decimal, Decimal], levels: Iterable[Level]) -> None:
    """Set or (qty 0) delete levels."""
    for price, qty in levels:
        if qty:
            side[price] = qty
        else:
            side.pop(price, None)


class Verdict(enum.Enum):
    """A bookTicker compared with the book."""

    MATCH = "match"
    MISMATCH = "mismatch"


class TopCheck:
    """Checks the book's top against bookTicker messages.

    A bookTicker with update id t describes the top after update t. The book after applying a
    diff ending at u describes update u, so its top must equal the newest ticker with t <= u,
    whether that ticker came in that diff's range or earlier (a diff may leave the top alone).
    Tickers and diffs share the websocket, and depth@100ms is batched while bookTicker is not,
    so a diff's tickers have arrived before it: checked on the bundled recording, every diff's
    top matches (tests/unit/test_l2book.py). A REST snapshot does not share the websocket: its
    tickers may still be on the way, so a snapshot is not checked, only the diffs after it.
    Tickers must not have been lost since the last one: call reset() after a reconnect.
    """

    def __init__(self, max_pending: int = 1_000) -> None:
        self._pending: deque[Ticker] = deque(maxlen=max_pending)
        self._latest: Ticker | None = None  # the newest ticker the book has reached

    def reset(self) -> None:
        """Forget every ticker (the stream was interrupted, so some may be missing)."""
        self._pending.clear()
        self._latest = None

    def on_ticker(self, book: L2Book, ticker: Ticker) -> Verdict | None:
        """A ticker arrived: check it now if the book is exactly at its id, else keep it."""
        if not book.synced or ticker.update_id > book.last_update_id:
            self._pending.append(ticker)
            return None
        if self._latest is None or ticker.update_id >= self._latest.update_id:
            self._latest = ticker  # late, but the newest the book covers
        return _compare(book, ticker) if ticker.update_id == book.last_update_id else None

    def after_diff(self, book: L2Book) -> Verdict | None:
        """A diff was applied: check the top against the newest ticker the book covers."""
        self.after_snapshot(book)
        return _compare(book, self._latest) if self._latest is not None and book.synced else None

    def after_snapshot(self, book: L2Book) -> None:
        """A snapshot was loaded: the tickers it covers are no longer waiting."""
        if not book.synced:
            return
        while self._pending and self._pending[0].update_id <= book.last_update_id:
            ticker = self._pending.popleft()
            if self._latest is None or ticker.update_id >= self._latest.update_id:
                self._latest = ticker


def _compare(book: L2Book, ticker: Ticker) -> Verdict:
    """Prices and quantities of both sides must be equal."""
    return Verdict.MATCH if book.top() == ticker.top else Verdict.MISMATCH


# --- parsing ------------------------------------------------------------------------------------


class _DepthEvent(msgspec.Struct):
    """`<symbol>@depth[@100ms]` payload (field names are Binance's)."""

    s: str
    U: UpdateId
    u: UpdateId
    b: list[tuple[Decimal, Decimal]]
    a: list[tuple[Decimal, Decimal]]
    E: int = 0


class _Snapshot(msgspec.Struct):
    """REST depth answer."""

    lastUpdateId: UpdateId
    bids: list[tuple[Decimal, Decimal]]
    asks: list[tuple[Decimal, Decimal]]


class _Envelope(msgspec.Struct):
    """Combined-stream wrapper; a REST snapshot line has no `stream` key."""

    stream: str = ""
    data: msgspec.Raw = msgspec.Raw(b"null")


_envelope = msgspec.json.Decoder(_Envelope)
_depth = msgspec.json.Decoder(_DepthEvent)
_snapshot = msgspec.json.Decoder(_Snapshot)
_DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, RecursionError, UnicodeDecodeError)


def _levels(raw: Sequence[tuple[Decimal, Decimal]]) -> tuple[Level, ...]:
    """Validated levels: finite, price > 0, qty >= 0 (Decimal accepts "NaN")."""
    for price, qty in raw:
        if not (price.is_finite() and qty.is_finite() and price > 0 and qty >= 0):
            raise ParseError(f"bad level {price} {qty}")
    return tuple(raw)


def split_stream(raw: bytes) -> tuple[str, bytes]:
    """A combined-stream message's stream name and raw `data` ("" and b"null" for a snapshot)."""
    try:
        env = _envelope.decode(raw)
    except _DECODE_ERRORS as exc:
        raise ParseError(str(exc)) from exc
    return env.stream, bytes(env.data)


def parse_depth_diff(data: bytes) -> DepthDiff:
    """A depth event's `data` JSON (without the combined-stream envelope)."""
    try:
        ev = _depth.decode(data)
    except _DECODE_ERRORS as exc:
        raise ParseError(str(exc)) from exc
    if ev.u < ev.U:
        raise ParseError(f"depth diff with u {ev.u} < U {ev.U}")
    return DepthDiff(ev.s, ev.U, ev.u, _levels(ev.b), _levels(ev.a), ev.E)


def parse_depth_snapshot(raw: bytes) -> DepthSnapshot:
    """A REST depth answer; levels are re-sorted best first, whatever order they came in."""
    try:
        snap = _snapshot.decode(raw)
    except _DECODE_ERRORS as exc:
        raise ParseError(str(exc)) from exc
    bids = tuple(sorted(_levels(snap.bids), reverse=True))
    asks = tuple(sorted(_levels(snap.asks)))
    return DepthSnapshot(snap.lastUpdateId, bids, asks)
