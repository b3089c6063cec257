"""The L2 book: Binance's snapshot + diff procedure, on hand-made cases and on the recording."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libs.common.messages import Quote
from services.market_data.binance import ParseError, parse_stream_message
from services.market_data.l2book import (
    BookState,
    DepthDiff,
    DepthSnapshot,
    L2Book,
    Outcome,
    Ticker,
    TopCheck,
    TopOfBook,
    Verdict,
    parse_depth_diff,
    parse_depth_snapshot,
    split_stream,
)
from services.market_data.replay import LineCounter, read_lines

DATA = Path(__file__).resolve().parents[2] / "data" / "binance"
D = Decimal


def diff(
    first: int, last: int, bids: dict[str, str] | None = None, asks: dict[str, str] | None = None
) -> DepthDiff:
    """A diff for symbol X with levels written as {"price": "qty"}."""
    return DepthDiff(
        "X",
        first,
        last,
        tuple((D(p), D(q)) for p, q in (bids or {}).items()),
        tuple((D(p), D(q)) for p, q in (asks or {}).items()),
    )


def snap(last_update_id: int, bids: dict[str, str], asks: dict[str, str]) -> DepthSnapshot:
    """A snapshot written as {"price": "qty"} per side."""
    return DepthSnapshot(
        last_update_id,
        tuple(sorted(((D(p), D(q)) for p, q in bids.items()), reverse=True)),
        tuple(sorted((D(p), D(q)) for p, q in asks.items())),
    )


def synced_book(last_update_id: int = 100) -> L2Book:
    """A book synced on a small snapshot: bids 10 x1, 9 x2; asks 11 x1, 12 x3."""
    book = L2Book("X")
    assert (
        book.on_snapshot(snap(last_update_id, {"10": "1", "9": "2"}, {"11": "1", "12": "3"}))
        is Outcome.SYNCED
    )
    return book


# --- the procedure on hand-made cases ----------------------------------------------------------


def test_diffs_before_the_snapshot_are_buffered_then_the_stale_ones_dropped() -> None:
    book = L2Book("X")
    assert book.on_diff(diff(90, 95, bids={"10": "5"})) is Outcome.BUFFERED
    assert book.on_diff(diff(96, 101, bids={"10": "7"})) is Outcome.BUFFERED
    assert book.on_diff(diff(102, 104, asks={"11": "0"})) is Outcome.BUFFERED
    assert not book.synced and book.buffered == 3

    outcome = book.on_snapshot(snap(100, {"10": "1", "9": "2"}, {"11": "1", "12": "3"}))

    # 90..95 is older than the snapshot; 96..101 straddles 101 and applies; 102..104 chains.
    assert outcome is Outcome.SYNCED
    assert book.last_update_id == 104 and book.buffered == 0
    assert book.bids == {D(10): D(7), D(9): D(2)}
    assert book.asks == {D(12): D(3)}


def test_quantity_zero_removes_a_level_and_others_set_it() -> None:
    book = synced_book()
    assert (
        book.on_diff(diff(99, 101, bids={"10": "0", "9.5": "4"}, asks={"12": "0.5"}))
        is Outcome.APPLIED
    )
    assert book.levels("bids") == ((D("9.5"), D(4)), (D(9), D(2)))
    assert book.levels("asks") == ((D(11), D(1)), (D(12), D("0.5")))
    assert book.top() == TopOfBook(D("9.5"), D(4), D(11), D(1))


def test_removing_an_absent_level_is_harmless() -> None:
    book = synced_book()
    assert book.on_diff(diff(101, 101, bids={"5": "0"})) is Outcome.APPLIED
    assert len(book.bids) == 2


def test_diffs_already_covered_by_the_book_are_dropped() -> None:
    book = synced_book(100)
    assert book.on_diff(diff(95, 100, bids={"10": "99"})) is Outcome.DROPPED
    assert book.bids[D(10)] == D(1)


def test_the_first_diff_after_a_snapshot_must_straddle_it() -> None:
    book = synced_book(100)
    assert book.on_diff(diff(102, 105)) is Outcome.GAP  # 101 is missing
    assert book.state is BookState.AWAITING_SNAPSHOT and not book.bids and book.top() is None
    assert book.buffered == 1  # kept: it may straddle the next snapshot


def test_after_the_first_diff_each_must_start_right_after_the_previous() -> None:
    book = synced_book(100)
    assert book.on_diff(diff(95, 103)) is Outcome.APPLIED  # U <= 101 <= u: a valid first diff
    assert book.on_diff(diff(104, 110)) is Outcome.APPLIED
    assert book.on_diff(diff(112, 115, bids={"1": "1"})) is Outcome.GAP  # 111 is lost
    assert not book.synced

    # The gapped diff and what follows are buffered, and a newer snapshot rebuilds the book.
    assert book.on_diff(diff(116, 118, bids={"8": "1"})) is Outcome.BUFFERED
    assert book.on_snapshot(snap(113, {"10": "1"}, {"11": "1"})) is Outcome.SYNCED
    assert book.last_update_id == 118
    assert book.bids == {D(10): D(1), D(8): D(1), D(1): D(1)}


def test_a_snapshot_older_than_the_buffer_is_refused_and_the_buffer_kept() -> None:
    book = L2Book("X")
    book.on_diff(diff(110, 120, bids={"10": "3"}))
    assert book.on_snapshot(snap(100, {"10": "1"}, {"11": "1"})) is Outcome.SNAPSHOT_TOO_OLD
    assert not book.synced and book.buffered == 1
    assert book.on_snapshot(snap(115, {"10": "1"}, {"11": "1"})) is Outcome.SYNCED
    assert book.bids == {D(10): D(3)} and book.last_update_id == 120


def test_a_gap_inside_the_buffer_is_found_when_the_snapshot_comes() -> None:
    book = L2Book("X")
    book.on_diff(diff(95, 101))
    book.on_diff(diff(103, 104))  # 102 is lost
    book.on_diff(diff(105, 106))
    assert book.on_snapshot(snap(100, {"10": "1"}, {"11": "1"})) is Outcome.GAP
    assert not book.synced and book.buffered == 2  # 103..104 and 105..106 wait for a snapshot


def test_a_snapshot_newer_than_every_buffered_diff_waits_for_a_straddling_one() -> None:
    book = L2Book("X")
    book.on_diff(diff(95, 99))
    assert book.on_snapshot(snap(100, {"10": "1"}, {"11": "1"})) is Outcome.SYNCED
    assert book.on_diff(diff(100, 100)) is Outcome.DROPPED
    assert book.on_diff(diff(101, 102, asks={"11": "2"})) is Outcome.APPLIED
    assert book.asks == {D(11): D(2)}


def test_reset_restarts_the_procedure() -> None:
    book = synced_book()
    book.on_diff(diff(101, 101))
    book.reset()
    assert not book.synced and book.buffered == 0 and book.top() is None


def test_the_buffer_is_bounded_and_keeps_the_newest() -> None:
    book = L2Book("X", max_buffered=3)
    for i in range(10):
        book.on_diff(diff(i * 10 + 1, i * 10 + 10))
    assert book.buffered == 3
    assert book.on_snapshot(snap(75, {"1": "1"}, {"2": "1"})) is Outcome.SYNCED
    assert book.last_update_id == 100


def test_snapshot_round_trips_through_binances_wire_form() -> None:
    book = synced_book()
    raw = book.snapshot().to_json()
    assert raw.startswith(b'{"lastUpdateId":100,"bids":[["10.00000000","1.00000000"]')
    assert parse_depth_snapshot(raw) == book.snapshot()
    assert parse_depth_snapshot(book.snapshot().to_json(limit=1)) == book.snapshot(depth=1)


@pytest.mark.parametrize(
    "data",
    [
        b'{"s":"X","U":5,"u":4,"b":[],"a":[]}',  # U > u
        b'{"s":"X","U":1,"u":2,"b":[["NaN","1"]],"a":[]}',
        b'{"s":"X","U":1,"u":2,"b":[["1","-1"]],"a":[]}',
        b'{"s":"X","U":1,"u":2,"b":[["0","1"]],"a":[]}',
        b'{"s":"X","U":-1,"u":2,"b":[],"a":[]}',
        b"not json",
    ],
)
def test_malformed_depth_diffs_are_parse_errors(data: bytes) -> None:
    with pytest.raises(ParseError):
        parse_depth_diff(data)


# --- TopCheck ----------------------------------------------------------------------------------


def ticker(update_id: int, bid: str, bid_qty: str, ask: str, ask_qty: str) -> Ticker:
    """A bookTicker as TopCheck sees it."""
    return Ticker(update_id, TopOfBook(D(bid), D(bid_qty), D(ask), D(ask_qty)))


def test_a_ticker_waits_for_the_diff_that_covers_it() -> None:
    book, check = synced_book(100), TopCheck()
    assert check.on_ticker(book, ticker(103, "10", "5", "11", "1")) is None
    assert check.on_ticker(book, ticker(104, "10", "6", "11", "1")) is None
    book.on_diff(diff(101, 104, bids={"10": "6"}))
    assert check.after_diff(book) is Verdict.MATCH  # the newest covered ticker, 104
    book.on_diff(diff(105, 106, asks={"12": "1"}))  # no ticker: the top must not have moved
    assert check.after_diff(book) is Verdict.MATCH
    book.on_diff(diff(107, 107, bids={"10": "1"}))  # the top moved, yet no ticker says so
    assert check.after_diff(book) is Verdict.MISMATCH


def test_a_ticker_at_the_books_update_id_is_checked_at_once() -> None:
    book, check = synced_book(100), TopCheck()
    assert check.on_ticker(book, ticker(100, "10", "1", "11", "1")) is Verdict.MATCH
    assert check.on_ticker(book, ticker(100, "10", "1", "11", "2")) is Verdict.MISMATCH
    assert check.on_ticker(book, ticker(99, "1", "1", "2", "2")) is None  # superseded


def test_a_wrong_book_top_is_reported() -> None:
    book, check = synced_book(100), TopCheck()
    check.on_ticker(book, ticker(101, "10", "1", "10.5", "1"))  # a better ask the diff lacks
    book.on_diff(diff(101, 101))
    assert check.after_diff(book) is Verdict.MISMATCH


def test_a_snapshot_is_not_checked_but_late_tickers_it_covers_are_used_by_the_next_diff() -> None:
    book, check = L2Book("X"), TopCheck()
    check.on_ticker(book, ticker(99, "10", "9", "11", "1"))  # waiting: no book yet
    book.on_snapshot(snap(100, {"10": "1"}, {"11": "1"}))
    check.after_snapshot(book)  # ticker 100 is still on the websocket: no verdict
    assert check.on_ticker(book, ticker(100, "10", "1", "11", "1")) is Verdict.MATCH
    book.on_diff(diff(101, 101, asks={"12": "1"}))
    assert check.after_diff(book) is Verdict.MATCH  # against ticker 100, not 99


def test_reset_forgets_tickers_from_before_a_disconnect() -> None:
    book, check = synced_book(100), TopCheck()
    check.on_ticker(book, ticker(100, "10", "1", "11", "1"))
    check.reset()
    book.on_diff(diff(101, 101, bids={"10": "2"}))
    assert check.after_diff(book) is None


# --- the recording -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Recorded:
    """One symbol's recorded depth traffic: the REST snapshot, the diffs around it, tickers."""

    snapshot: DepthSnapshot
    before: tuple[DepthDiff, ...]  # diffs that arrived before the snapshot line
    after: tuple[DepthDiff, ...]  # diffs that arrived after it
    events: tuple[DepthDiff | Ticker | DepthSnapshot, ...]  # everything, in arrival order


@functools.cache
def recorded(name: str) -> Recorded:
    """Parse one bundled recording's depth, snapshot and bookTicker lines."""
    snapshot: DepthSnapshot | None = None
    before: list[DepthDiff] = []
    after: list[DepthDiff] = []
    events: list[DepthDiff | Ticker | DepthSnapshot] = []
    for recv_ns, raw in read_lines(DATA / name, LineCounter()):
        stream, data = split_stream(raw)
        if not stream:
            snapshot = parse_depth_snapshot(raw)
            events.append(snapshot)
        elif "@depth" in stream:
            d = parse_depth_diff(data)
            (before if snapshot is None else after).append(d)
            events.append(d)
        elif stream.endswith("@bookTicker"):
            quote = parse_stream_message(raw, recv_ns, 0)
            assert isinstance(quote, Quote)
            events.append(Ticker.from_quote(quote))
    assert snapshot is not None
    return Recorded(snapshot, tuple(before), tuple(after), tuple(events))


RECORDINGS = ("spot_btcusdt_20240808.gz", "spot_ethusdt_20240808.gz")


@pytest.mark.parametrize("name", RECORDINGS)
def test_the_recording_syncs_and_every_diff_chains_and_matches_the_tickers(name: str) -> None:
    book, check = L2Book("X"), TopCheck()
    outcomes: dict[Outcome, int] = {}
    verdicts: dict[Verdict | None, int] = {}
    for ev in recorded(name).events:
        if isinstance(ev, Ticker):
            verdict = check.on_ticker(book, ev)
        else:
            if isinstance(ev, DepthDiff):
                out = book.on_diff(ev)
                verdict = check.after_diff(book)
            else:
                out = book.on_snapshot(ev)
                check.after_snapshot(book)
                verdict = None
            outcomes[out] = outcomes.get(out, 0) + 1
            top = book.top()
            assert top is None or top.bid_px < top.ask_px  # never crossed
        verdicts[verdict] = verdicts.get(verdict, 0) + 1
    assert set(outcomes) == {Outcome.BUFFERED, Outcome.SYNCED, Outcome.APPLIED}
    assert outcomes[Outcome.APPLIED] > 3000
    assert Verdict.MISMATCH not in verdicts
    assert verdicts[Verdict.MATCH] > 3000


def naive(
    snapshot: DepthSnapshot, diffs: tuple[DepthDiff, ...]
) -> tuple[int, dict[Decimal, Decimal], dict[Decimal, Decimal]]:
    """The book after `diffs` on `snapshot`, by plain dict updates (no chain checks)."""
    bids, asks, last = dict(snapshot.bids), dict(snapshot.asks), snapshot.last_update_id
    for d in diffs:
        for side, levels in ((bids, d.bids), (asks, d.asks)):
            for price, qty in levels:
                if qty:
                    side[price] = qty
                else:
                    side.pop(price, None)
        last = d.last_id
    return last, bids, asks


@functools.cache
def chain(name: str) -> tuple[DepthSnapshot, tuple[DepthDiff, ...]]:
    """The recorded snapshot and the diffs that follow it (the first straddles it)."""
    rec = recorded(name)
    first = [d for d in rec.before + rec.after if d.last_id > rec.snapshot.last_update_id]
    return rec.snapshot, tuple(first)


def state_at(name: str, k: int) -> DepthSnapshot:
    """The venue's book right after diff k (k = -1: the recorded snapshot), as a snapshot."""
    snapshot, diffs = chain(name)
    last, bids, asks = naive(snapshot, diffs[: k + 1])
    return DepthSnapshot(
        last, tuple(sorted(bids.items(), reverse=True)), tuple(sorted(asks.items()))
    )


@st.composite
def resync_points(draw: st.DrawFn) -> tuple[str, int, int, int, int]:
    """(recording, k: snapshot after diff k, j: first diff the new stream delivers,
    s: last diff delivered before the snapshot arrives, m: last diff delivered after it)."""
    name = draw(st.sampled_from(RECORDINGS))
    n = len(chain(name)[1])
    k = draw(st.integers(-1, n - 1))
    j = draw(st.integers(0, min(n - 1, k + 1)))  # the stream is open before the snapshot's id
    s = draw(st.integers(j - 1, n - 1))
    m = draw(st.integers(max(s, k), n - 1))
    return name, k, j, s, m


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(resync_points())
def test_any_valid_resync_point_gives_the_book_of_the_recorded_snapshot_and_diffs(
    point: tuple[str, int, int, int, int],
) -> None:
    name, k, j, s, m = point
    snapshot, diffs = chain(name)
    book = L2Book("X")
    for d in diffs[j : s + 1]:
        assert book.on_diff(d) is Outcome.BUFFERED
    assert book.on_snapshot(state_at(name, k)) is Outcome.SYNCED
    for d in diffs[s + 1 : m + 1]:
        assert book.on_diff(d) in (Outcome.APPLIED, Outcome.DROPPED)

    last, bids, asks = naive(snapshot, diffs[: m + 1])
    assert book.last_update_id == last
    assert book.bids == bids and book.asks == asks


@settings(max_examples=15, deadline=None)
@given(st.sampled_from(RECORDINGS), st.integers(0, 3000), st.integers(1, 50))
def test_a_snapshot_older_than_the_stream_is_refused(name: str, j: int, behind: int) -> None:
    _, diffs = chain(name)
    book = L2Book("X")
    book.on_diff(diffs[j])
    old = DepthSnapshot(diffs[j].first_id - 1 - behind, (), ())
    assert book.on_snapshot(old) is Outcome.SNAPSHOT_TOO_OLD
