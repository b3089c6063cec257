"""The fleet trading on a live venue end to end: market data from python-binance's streams and
orders through python-binance's Client, both against one local fake Binance that replays the
recording and matches orders against its book. Then a restart reconciles the journal with the
venue, and an order the journal never sent keeps execution halted with a report."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import zmq

from flotilla.control import send_command
from libs.common.bus import RequestClient
from libs.common.config import DEFAULT_CONFIG, load_config, with_port_offset
from libs.common.messages import OrderChannelReply, OrderReply, OrderRequest
from libs.common.testing.fake_binance import (
    API_KEY,
    API_SECRET,
    DEFAULT_DATA,
    FakeBinanceThread,
    Recording,
)
from libs.common.testing.fleet import journal, running_fleet, wait_until
from services.execution.binance_venue import BinanceVenue

KEYS = {"BINANCE_API_KEY": API_KEY, "BINANCE_API_SECRET": API_SECRET}  # the fake's, made per run


def overrides(url: str) -> dict[str, str]:
    """Live feed and live venue on the fake (its test endpoint: no `live` needed)."""
    return {
        **KEYS,
        "FLOTILLA__MARKET_DATA__SOURCE": "binance",
        "FLOTILLA__MARKET_DATA__VENUE_URL": url,
        "FLOTILLA__EXECUTION__VENUE": "binance",
        "FLOTILLA__EXECUTION__VENUE_URL": url,
    }


def foreign_order(url: str) -> None:
    """Another session places a resting order the fleet's journal never saw."""
    cfg = load_config(DEFAULT_CONFIG, env={"FLOTILLA__EXECUTION__VENUE_URL": url})
    venue = BinanceVenue.from_config(cfg, env=KEYS)
    try:
        venue.submit(
            OrderRequest(
                ts_event=1,
                ts_init=1,
                client_order_id="someone-else-1",
                signal_id="x",
                strategy="manual",
                venue="binance",
                symbol="BTCUSDT",
                side="buy",
                order_type="limit",
                qty=Decimal("0.001"),
                limit_px=Decimal("30000"),
            )
        )
    finally:
        venue.close()


def order_reply(orders_endpoint: str) -> OrderReply:
    """Send one order straight to execution's order socket (as risk does) and return its reply."""
    ctx: zmq.Context[Any] = zmq.Context()
    client: RequestClient[Any] = RequestClient(ctx, orders_endpoint, OrderChannelReply, 3_000)
    now = time.time_ns()
    try:
        reply = client.request(
            OrderRequest(
                ts_event=now,
                ts_init=now,
                client_order_id="fl-after-mismatch",
                signal_id="s",
                strategy="ofi",
                venue="binance",
                symbol="BTCUSDT",
                side="buy",
                order_type="market",
                qty=Decimal("0.001"),
            )
        )
    finally:
        client.close()
        ctx.term()
    assert isinstance(reply, OrderReply)
    return reply


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_fleet_trades_at_a_live_venue_and_reconciles_on_restart(
    run_dir: Path, port_offset: int
) -> None:
    bus = with_port_offset(load_config(DEFAULT_CONFIG).bus, port_offset)
    ctl, orders = bus.ctl_cmd, bus.orders
    report = run_dir / "reconcile_report.txt"
    with FakeBinanceThread(Recording.load(DEFAULT_DATA), speed=20) as fake:
        with running_fleet(run_dir, port_offset, overrides(fake.url)) as fleet:
            wait_until(lambda: len(journal(run_dir)[1]) >= 3, 90, 0.2, "fills from the venue")
            assert send_command(ctl, "halt", "before restart", "", 3_000).ok
            fleet.stop("execution")
            fleet.start("execution")  # same journal: reconciles with the venue on start
            wait_until(
                lambda: "agree" in (run_dir / "logs" / "execution-2.log").read_text(),
                30,
                0.2,
                "a clean reconciliation",
            )
            clean = not report.exists()

            foreign_order(fake.url)
            fleet.stop("execution")
            fleet.start("execution")
            text = wait_until(
                lambda: report.exists() and "someone-else-1" in (t := report.read_text()) and t,
                30,
                0.2,
                "a reconciliation report naming the foreign order",
            )
            # An operator resumes; the venue still holds the foreign order: still blocked.
            time.sleep(3.1)  # the resume cooldown
            assert send_command(ctl, "resume", "", "ops", 3_000).ok
            time.sleep(1.0)
            refused = order_reply(orders).reason
            assert not fleet.dead(), [p.instance for p in fleet.dead()]
        updates, fills = journal(run_dir)
        venue_trades = {
            (t.symbol, str(t.id)) for s in ("BTCUSDT", "ETHUSDT") for t in fake.trades(s)
        }
    assert clean, "a restart with nothing changed at the venue must reconcile cleanly"
    assert "resume" in text
    assert refused == "reconcile_mismatch"
    assert all(f["venue"] == "binance" for f in fills)
    # every journaled fill is a venue trade (trade ids are per symbol), each exactly once
    ids = [tuple(f["fill_id"].split("-", 1)[1].rsplit("-", 1)) for f in fills]
    assert len(ids) == len(set(ids)) and set(ids) <= venue_trades, (ids, venue_trades)
    assert not any(
        u["status"] == "unknown" and u["reason"] == "venue_outcome_unknown" for u in updates[-5:]
    )
    assert json.dumps(updates)  # journal lines are plain JSON
