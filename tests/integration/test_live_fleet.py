"""The whole fleet on a live feed: python-binance against a local fake Binance, and alpaca-py
against a local fake Alpaca, each replaying the bundled recording (`flotilla up --feed binance
--venue-url URL` does the same)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flotilla.control import send_command
from libs.common.config import DEFAULT_CONFIG, load_config, with_port_offset
from libs.common.testing import fake_alpaca, fake_binance
from libs.common.testing.credentials import throwaway_pair
from libs.common.testing.fleet import fleet_counter, running_fleet, wait_until

ALPACA_KEY, ALPACA_SECRET = throwaway_pair("alpaca-data")


@contextlib.contextmanager
def fake_venue(source: str) -> Iterator[Any]:
    """A local fake of the venue, replaying the recording at 20x."""
    if source == "binance":
        with fake_binance.FakeBinanceThread(
            fake_binance.Recording.load(fake_binance.DEFAULT_DATA), speed=20
        ) as fake:
            yield fake
    else:
        with fake_alpaca.FakeAlpacaThread(
            fake_alpaca.AlpacaRecording.load(fake_alpaca.DEFAULT_DATA), speed=20
        ) as fake:
            yield fake


@pytest.mark.slow
@pytest.mark.timeout(150)
@pytest.mark.parametrize("source", ["binance", "alpaca"])
def test_the_fleet_trades_on_a_live_feed_and_obeys_a_halt(
    run_dir: Path, port_offset: int, source: str
) -> None:
    with fake_venue(source) as fake:
        overrides = {
            "FLOTILLA__MARKET_DATA__SOURCE": source,
            "FLOTILLA__MARKET_DATA__VENUE_URL": fake.url,
            # the fake data stream accepts any pair; this one is made per run
            "APCA_API_KEY_ID": ALPACA_KEY,
            "APCA_API_SECRET_KEY": ALPACA_SECRET,
            # the instruments trade where their data comes from
            "FLOTILLA__INSTRUMENTS__BTCUSDT__VENUE": source,
            "FLOTILLA__INSTRUMENTS__ETHUSDT__VENUE": source,
        }
        with running_fleet(run_dir, port_offset, overrides) as fleet:
            wait_until(
                lambda: (
                    sum((fleet_counter(fleet, "market-data", "ticks_published") or {}).values())
                    > 2_000
                ),
                60,
                0.2,
                "ticks from the live feed",
            )
            live = fleet_counter(fleet, "market-data", "live_feed")
            received = fleet_counter(fleet, "signal", "ticks_received") or {}
            endpoint = with_port_offset(load_config(DEFAULT_CONFIG).bus, port_offset).ctl_cmd
            halted = send_command(endpoint, "halt", "live test", "", 3_000)
            time.sleep(0.5)
            assert not fleet.dead(), [p.instance for p in fleet.dead()]
    assert live["connects"] >= 1 and live["parse_errors"] == 0, live
    if source == "binance":
        assert all(live["synced"].values()) and set(live["synced"]) == {"BTCUSDT", "ETHUSDT"}
        assert live["gaps"] == 0 and live["ticker_mismatches"] == 0, live
    assert set(received) == {"BTCUSDT", "ETHUSDT"}, received
    assert halted.ok and halted.state.state == "HALTED"
