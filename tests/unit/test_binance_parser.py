"""Binance combined-stream JSON -> Trade / Quote, exactly, and ParseError for anything else."""

from __future__ import annotations

import gzip
import itertools
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libs.common.messages import Quote, Trade
from services.market_data.binance import ParseError, parse_stream_message

RECORDING = Path(__file__).resolve().parents[2] / "data" / "binance" / "spot_btcusdt_20240808.gz"
TS_INIT = 42

# Lines 1, 3 and 4 of the bundled recording, byte for byte (after the receive timestamp).
DEPTH = b'{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1723161255308,"s":"BTCUSDT","U":50093239203,"u":50093239207,"b":[["55653.87000000","0.00000000"]],"a":[["61838.04000000","0.32332000"],["61844.30000000","0.40163000"],["61862.50000000","0.05019000"],["61862.51000000","0.00000000"]]}}'
BOOK_TICKER_RECV_NS = 1723161254087891268
BOOK_TICKER = b'{"stream":"btcusdt@bookTicker","data":{"u":50093239212,"s":"BTCUSDT","b":"61837.63000000","B":"3.78826000","a":"61837.64000000","A":"1.54698000"}}'
TRADE_SELLER_AGGRESSOR = b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1723161255343,"s":"BTCUSDT","t":3735683259,"p":"61837.63000000","q":"0.02000000","T":1723161255342,"m":true,"M":true}}'
TRADE_BUYER_AGGRESSOR = b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1723161255857,"s":"BTCUSDT","t":3735683305,"p":"61828.02000000","q":"0.00810000","T":1723161255856,"m":false,"M":true}}'
REST_SNAPSHOT = b'{"lastUpdateId":50093239218,"bids":[["61837.63000000","3.78826000"]],"asks":[["61837.64000000","1.54698000"]]}'


def parse(raw: bytes, recv_ns: int = 1) -> Trade | Quote | None:
    return parse_stream_message(raw, recv_ns, TS_INIT)


def test_trade_line_from_the_recording_becomes_a_trade_at_exchange_time() -> None:
    trade = parse(TRADE_SELLER_AGGRESSOR)

    assert trade == Trade(
        ts_event=1723161255342 * 1_000_000,  # T, the trade time, in ns
        ts_init=TS_INIT,
        venue="binance",
        symbol="BTCUSDT",
        price=Decimal("61837.63000000"),
        qty=Decimal("0.02000000"),
        aggressor="sell",
        trade_id=3735683259,
    )


def test_buyer_is_maker_means_the_seller_was_the_aggressor() -> None:
    seller = parse(TRADE_SELLER_AGGRESSOR)
    buyer = parse(TRADE_BUYER_AGGRESSOR)

    assert isinstance(seller, Trade) and seller.aggressor == "sell"  # m = true
    assert isinstance(buyer, Trade) and buyer.aggressor == "buy"  # m = false


def test_prices_are_decoded_as_exact_decimals_with_every_recorded_digit() -> None:
    trade = parse(TRADE_SELLER_AGGRESSOR)

    assert isinstance(trade, Trade)
    assert isinstance(trade.price, Decimal) and isinstance(trade.qty, Decimal)
    assert str(trade.price) == "61837.63000000"
    assert str(trade.qty) == "0.02000000"


def test_book_ticker_line_becomes_a_quote_stamped_with_the_receive_time() -> None:
    q = parse(BOOK_TICKER, recv_ns=BOOK_TICKER_RECV_NS)

    assert q == Quote(
        ts_event=BOOK_TICKER_RECV_NS,  # spot bookTicker carries no exchange time
        ts_init=TS_INIT,
        venue="binance",
        symbol="BTCUSDT",
        bid_px=Decimal("61837.63"),
        bid_qty=Decimal("3.78826"),
        ask_px=Decimal("61837.64"),
        ask_qty=Decimal("1.54698"),
        update_id=50093239212,
    )
    assert str(q.ask_px) == "61837.64000000"


@pytest.mark.parametrize("raw", [DEPTH, REST_SNAPSHOT], ids=["depth", "rest_snapshot"])
def test_streams_that_are_not_published_are_skipped(raw: bytes) -> None:
    assert parse(raw) is None


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b'{"stream":"btcusdt@trade","data":{"e":"trade"',
        b"\xff\xfe\x00",
        b"null",
        b"[1, 2]",
        b'{"stream": 5}',
        b'{"stream":"btcusdt@trade"}',
        b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":1,"q":"1","T":1,"m":true}}',
        b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":1,"p":"x","q":"1","T":1,"m":true}}',
        b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":1,"p":"1","q":"1","T":"soon","m":true}}',
        b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":1,"p":"1","q":"1","T":1,"m":"yes"}}',
        b'{"stream":"btcusdt@bookTicker","data":{"u":1,"s":"BTCUSDT","b":"1","B":"1","a":"1"}}',
        b'{"stream":"btcusdt@bookTicker","data":{"u":1,"s":"BTCUSDT","b":"NaN","B":"1","a":"1","A":"1"}}',
        b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":1,"p":"Infinity","q":"1","T":1,"m":true}}',
        b'{"stream":"btcusdt@trade","data":' + b"[" * 50_000 + b"]" * 50_000 + b"}",
        b'{"stream":"btcusdt@\xfftrade"}',
        b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"\xc3\x28","t":1,"p":"1","q":"1","T":1,"m":true}}',
    ],
    ids=[
        "empty",
        "not_json",
        "truncated",
        "binary",
        "null",
        "array",
        "stream_not_a_string",
        "no_data",
        "missing_price",
        "price_not_a_number",
        "time_not_an_int",
        "maker_flag_not_a_bool",
        "missing_ask_size",
        "nan_price",
        "infinite_price",
        "deeply_nested",
        "invalid_utf8_stream",
        "invalid_utf8_symbol",
    ],
)
def test_malformed_messages_raise_parse_error_and_nothing_else(raw: bytes) -> None:
    with pytest.raises(ParseError):
        parse(raw)


def test_every_line_at_the_start_of_the_real_recording_parses() -> None:
    kinds: dict[str, int] = {}
    with gzip.open(RECORDING, "rb") as fh:
        for line in itertools.islice(fh, 3_000):
            recv, _, payload = line.partition(b" ")
            msg = parse(payload, recv_ns=int(recv))
            name = type(msg).__name__
            kinds[name] = kinds.get(name, 0) + 1
            if isinstance(msg, Quote):
                assert msg.bid_px < msg.ask_px

    assert set(kinds) == {"Trade", "Quote", "NoneType"}


REAL_LINES = [TRADE_SELLER_AGGRESSOR, BOOK_TICKER, DEPTH, REST_SNAPSHOT]


@settings(max_examples=400, deadline=None)
@given(
    line=st.sampled_from(REAL_LINES),
    at=st.integers(min_value=0, max_value=400),
    junk=st.binary(min_size=0, max_size=4),
    drop=st.integers(min_value=0, max_value=4),
)
def test_a_corrupted_recording_line_never_raises_anything_but_parse_error(
    line: bytes, at: int, junk: bytes, drop: int
) -> None:
    corrupted = line[:at] + junk + line[at + drop :]

    try:
        result = parse(corrupted)
    except ParseError:
        return
    assert result is None or isinstance(result, Trade | Quote)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":1,"p":"1","q":"1","T":99999999999999999,"m":true}}',
        b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":18446744073709551616,"p":"1","q":"1","T":1,"m":true}}',
        b'{"stream":"btcusdt@bookTicker","data":{"u":-1,"s":"BTCUSDT","b":"1","B":"1","a":"2","A":"1"}}',
    ],
)
def test_integers_that_would_overflow_the_wire_are_a_parse_error(raw: bytes) -> None:
    with pytest.raises(ParseError):
        parse_stream_message(raw, recv_ns=1, ts_init=1)
