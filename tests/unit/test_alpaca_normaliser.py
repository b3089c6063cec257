"""The Alpaca normaliser: exact money from msgpack floats and JSON text, nanosecond timestamps,
taker sides, bars counted and not published, and bad input refused with ParseError."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from libs.common.config import Instrument, load_config
from libs.common.messages import Quote, Trade
from libs.common.testing.fake_alpaca import (
    DEFAULT_DATA,
    AlpacaRecording,
    encode,
    pair_of,
    render,
    rfc3339,
)
from services.market_data.alpaca import (
    VENUE,
    AlpacaNormaliser,
    AlpacaSymbol,
    ParseError,
    decode_frame,
    symbols_from_instruments,
    timestamp_ns,
    wire_decimal,
)

BTC = AlpacaSymbol("BTC/USDT", "BTCUSDT", Decimal("0.01"), Decimal("0.00001"))
ETH = AlpacaSymbol("ETH/USDT", "ETHUSDT", Decimal("0.01"), Decimal("0.0001"))
T0 = 1723161254_123456789  # 2024-08-08T23:54:14.123456789Z


def trade(**over: Any) -> dict[str, Any]:
    """A crypto trade as alpaca-py hands it over with raw_data=True (msgpack decoded)."""
    msg = {
        "T": "t",
        "S": "BTC/USDT",
        "t": msgpack.Timestamp.from_unix_nano(T0),
        "p": 61837.63,
        "s": 0.00042,
        "i": 3733111,
        "tks": "B",
    }
    return {**msg, **over}


def quote(**over: Any) -> dict[str, Any]:
    """A crypto quote as alpaca-py hands it over."""
    msg = {
        "T": "q",
        "S": "BTC/USDT",
        "t": msgpack.Timestamp.from_unix_nano(T0),
        "bp": 61837.63,
        "bs": 3.78826,
        "ap": 61837.64,
        "as": 1.92853,
    }
    return {**msg, **over}


@pytest.fixture(scope="module")
def recording() -> AlpacaRecording:
    """The bundled 2024-08-08 recordings as Alpaca events."""
    return AlpacaRecording.load(DEFAULT_DATA)


def test_every_recorded_price_and_size_survives_msgpack_floats_exactly(
    recording: AlpacaRecording,
) -> None:
    """Through the fake's msgpack frames (float64) and back, every trade and quote of the
    recording equals the recording's decimal, while Decimal(float) would not."""
    norm = AlpacaNormaliser([BTC, ETH])
    expanded_differs = 0
    checked = 0
    for ev in recording.events:
        if ev.kind == "b":
            continue
        frame = encode([render(ev, "crypto", pair_of(ev.symbol))], "msgpack")
        (msg,) = decode_frame(frame)  # what alpaca-py's msgpack.unpackb gives the handler
        out = norm.normalise(msg, 0)
        f = ev.fields
        if isinstance(out, Trade):
            assert (out.price, out.qty, out.trade_id) == (f["p"], f["s"], f["i"])
            assert out.aggressor == ("buy" if f["tks"] == "B" else "sell")
            expanded_differs += Decimal(msg["p"]) != f["p"]
        else:
            assert isinstance(out, Quote)
            assert (out.bid_px, out.bid_qty, out.ask_px, out.ask_qty) == (
                f["bp"],
                f["bs"],
                f["ap"],
                f["as"],
            )
        assert out.ts_event == f["t"]  # nanoseconds, exactly
        assert out.venue == VENUE and out.symbol == ev.symbol
        checked += 1
    assert checked == 15_863 + 52_117
    assert norm.inexact == 0
    assert expanded_differs > 10_000  # the float route would have corrupted most prices


def test_quantised_values_carry_the_increment_exponent() -> None:
    """0.00042 with increment 0.00001 is Decimal('0.00042'); prices have two places."""
    out = AlpacaNormaliser([BTC]).normalise(trade(p=61837.6, s=1.0), 5)
    assert isinstance(out, Trade)
    assert str(out.price) == "61837.60" and str(out.qty) == "1.00000"
    assert out.ts_init == 5


@given(
    st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal("9999999"), places=8).filter(
        lambda d: len(d.normalize().as_tuple().digits) <= 15
    )
)
def test_shortest_repr_recovers_any_decimal_of_up_to_15_digits(value: Decimal) -> None:
    """The claim the exactness rests on: float64 keeps 15 significant digits round-trip."""
    assert wire_decimal(float(value)) == value


def test_json_frames_keep_the_wire_text() -> None:
    """Text frames (and REST) decode numbers as Decimal and RFC 3339 with nanoseconds."""
    raw = (
        '[{"T":"t","S":"BTC/USDT","t":"2024-08-08T23:54:14.123456789Z","p":61837.63,'
        '"s":0.00042000,"i":7,"tks":"S"}]'
    )
    (msg,) = decode_frame(raw.encode())
    assert msg["p"] == Decimal("61837.63") and isinstance(msg["p"], Decimal)
    out = AlpacaNormaliser([AlpacaSymbol("BTC/USDT", "BTCUSDT")]).normalise(msg, 0)
    assert isinstance(out, Trade)
    assert out.ts_event == T0 and out.aggressor == "sell"
    assert str(out.price) == "61837.63" and str(out.qty) == "0.00042000"  # no increment: as sent


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("2024-08-08T23:54:14.123456789Z", T0),
        ("2024-08-08T23:54:14Z", T0 - 123456789),
        ("2024-08-08T23:54:14.5Z", T0 - 123456789 + 500_000_000),
        ("2024-08-09T01:54:14.123456789+02:00", T0),
    ],
)
def test_rfc3339_timestamps_are_exact_to_the_nanosecond(text: str, ns: int) -> None:
    """Fractions of up to nine digits and offsets, without float or datetime rounding."""
    assert timestamp_ns(text) == ns


def test_the_fakes_timestamps_round_trip() -> None:
    """rfc3339 (the fake's JSON) and msgpack timestamps both give back the same ns."""
    assert timestamp_ns(rfc3339(T0)) == T0
    packed = msgpack.unpackb(msgpack.packb(msgpack.Timestamp.from_unix_nano(T0)))
    assert timestamp_ns(packed) == T0


def test_quotes_are_numbered_per_symbol() -> None:
    """Alpaca quotes have no sequence number: update_id counts each symbol's quotes."""
    norm = AlpacaNormaliser([BTC, ETH])
    ids = [
        norm.normalise(quote(S=s), 0).update_id  # type: ignore[union-attr]
        for s in ("BTC/USDT", "BTC/USDT", "ETH/USDT", "BTC/USDT")
    ]
    assert ids == [1, 2, 1, 3]


def test_bars_and_unknown_symbols_are_counted_not_published() -> None:
    """Bars map to nothing; symbols not configured are dropped and counted; control is ignored."""
    norm = AlpacaNormaliser([BTC])
    bar = {"T": "b", "S": "BTC/USDT", "t": T0, "o": 1.0, "h": 1.0, "l": 1.0, "c": 1.0, "v": 2.0}
    assert norm.normalise(bar, 0) is None
    assert norm.normalise({**bar, "T": "u"}, 0) is None
    assert norm.normalise(trade(S="DOGE/USD"), 0) is None
    assert norm.normalise({"T": "subscription", "trades": []}, 0) is None
    assert (norm.bars, norm.unknown_symbols) == (2, 1)


def test_stock_trades_infer_the_aggressor() -> None:
    """No `tks` on stocks: quote rule against the last mid, else the tick rule."""
    aapl = AlpacaSymbol("AAPL", "AAPL", Decimal("0.01"), Decimal("1"))
    norm = AlpacaNormaliser([aapl])

    def side(price: float) -> str:
        out = norm.normalise(trade(S="AAPL", p=price, s=100, tks=None), 0)
        assert isinstance(out, Trade)
        return out.aggressor

    assert side(200.0) == "buy"  # nothing known yet
    assert side(199.9) == "sell"  # down-tick
    assert side(199.9) == "sell"  # zero tick: as before
    norm.normalise(quote(S="AAPL", bp=199.0, ap=199.2, bs=100, **{"as": 100}), 0)
    assert side(199.15) == "buy"  # above the mid 199.10
    assert side(199.05) == "sell"
    assert norm.aggressor_inferred == 5


def test_off_grid_values_are_quantised_and_counted() -> None:
    """A price with more digits than the increment is rounded to it and counted as inexact."""
    norm = AlpacaNormaliser([BTC])
    out = norm.normalise(trade(p=61837.635), 0)
    assert isinstance(out, Trade)
    assert out.price == Decimal("61837.64") and norm.inexact == 1


@pytest.mark.parametrize(
    "bad",
    [
        {"p": float("nan")},
        {"p": float("inf")},
        {"s": -1.0},
        {"p": True},
        {"p": "abc"},
        {"p": None},
        {"i": -1},
        {"i": 2**64},
        {"i": "7"},
        {"t": "yesterday"},
        {"t": 1.5},
        {"t": "2024-13-40T00:00:00Z"},
        {"p": 1e30},
    ],
)
def test_bad_trades_raise_parse_error(bad: dict[str, Any]) -> None:
    """Hostile or broken values are refused, never published."""
    with pytest.raises(ParseError):
        AlpacaNormaliser([BTC]).normalise(trade(**bad), 0)


def test_missing_fields_raise_parse_error() -> None:
    """A quote without its ask size is refused."""
    msg = quote()
    del msg["as"]
    with pytest.raises(ParseError, match="without"):
        AlpacaNormaliser([BTC]).normalise(msg, 0)


@pytest.mark.parametrize("raw", [b"\xc1", b"\x92\x01", b"[1,2", b"[1,2]", "{nope"])
def test_undecodable_frames_raise_parse_error(raw: bytes | str) -> None:
    """Garbage, truncated msgpack, bad JSON and lists of non-objects."""
    with pytest.raises(ParseError):
        decode_frame(raw)


def test_symbols_come_from_the_instrument_config() -> None:
    """Crypto pairs are BASE/QUOTE of the configured instruments, with their increments."""
    cfg = load_config()
    syms = symbols_from_instruments(cfg.instruments, ["BTCUSDT", "ETHUSDT"])
    assert [(s.alpaca, s.symbol) for s in syms] == [
        ("BTC/USDT", "BTCUSDT"),
        ("ETH/USDT", "ETHUSDT"),
    ]
    assert syms[0].price_increment == cfg.instruments["BTCUSDT"].price_increment
    stock = Instrument(
        base="AAPL", quote="USD", price_increment=Decimal("0.01"), size_increment=Decimal("1")
    )
    (aapl,) = symbols_from_instruments({"AAPL": stock}, asset_class="stocks")
    assert aapl.alpaca == "AAPL"
    with pytest.raises(ValueError, match="XRPUSDT"):
        symbols_from_instruments(cfg.instruments, ["XRPUSDT"])


def test_the_fakes_stock_messages_normalise_too(recording: AlpacaRecording) -> None:
    """The fake's stock-shaped messages (no taker side, exchange codes) go through as well."""
    ev = recording.trades("BTCUSDT")[0]
    msg = render(ev, "stocks", "BTCUSDT")
    assert "tks" not in msg and msg["x"] == "V"
    (wire,) = decode_frame(encode([msg], "msgpack"))
    out = AlpacaNormaliser([AlpacaSymbol("BTCUSDT", "BTCUSDT", BTC.price_increment)]).normalise(
        wire, 0
    )
    assert isinstance(out, Trade) and out.price == ev.fields["p"]
