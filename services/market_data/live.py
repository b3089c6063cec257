"""market-data's live path: a venue feed's normalised messages onto the bus.

The feed (services/market_data/binance_live.py) runs its own asyncio thread and hands over
Trade/Quote messages through a queue; this loop publishes them, keeps the control link and the
health check turning, and announces per-symbol staleness with every status message.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

from libs.common.config import FleetConfig
from libs.common.messages import Quote, Trade

log = logging.getLogger(__name__)
GET_TIMEOUT_S = 0.005  # longest a quiet feed keeps the loop from its control socket


class LiveFeed(Protocol):
    """What the loop needs from a venue feed adapter."""

    def start(self) -> None:
        """Connect (in the feed's own thread)."""

    def get(self, timeout_s: float = 0.0) -> Trade | Quote | None:
        """The next normalised message, waiting at most timeout_s."""

    def drain(self, max_items: int = 10_000) -> list[Trade | Quote]:
        """Every message waiting now."""

    def staleness(self) -> dict[str, float]:
        """Seconds since the last message, per symbol."""

    def stats(self) -> dict[str, Any]:
        """The feed's counters."""

    def close(self, timeout_s: float = 10.0) -> None:
        """Disconnect and stop the thread."""


def open_feed(cfg: FleetConfig, clock_ns: Any) -> LiveFeed:
    """The configured live feed (adapters imported here: replay-only images need neither SDK)."""
    md = cfg.market_data
    symbols = sorted(cfg.instruments)
    if md.source == "alpaca":
        return open_alpaca_feed(cfg, symbols, clock_ns)
    return open_binance_feed(symbols, md.venue_url, md.live_silence_timeout_s, clock_ns)


def open_alpaca_feed(cfg: FleetConfig, symbols: list[str], clock_ns: Any) -> LiveFeed:
    """alpaca-py's crypto or stock data stream (keys from $APCA_API_KEY_ID / _SECRET_KEY)."""
    from .alpaca import symbols_from_instruments
    from .alpaca_live import AlpacaFeedConfig, AlpacaLiveFeed

    md = cfg.market_data
    feed_cfg = AlpacaFeedConfig(
        symbols=symbols_from_instruments(cfg.instruments, symbols, md.alpaca_asset_class),
        asset_class=md.alpaca_asset_class,
        stock_feed=md.alpaca_stock_feed,
        venue_url=md.venue_url,
        silence_timeout_s=md.live_silence_timeout_s,
    )
    return AlpacaLiveFeed(feed_cfg, clock_ns=clock_ns)


def open_binance_feed(
    symbols: list[str], venue_url: str, silence_timeout_s: float, clock_ns: Any
) -> LiveFeed:
    """The python-binance feed (imported here: replay-only images need not carry python-binance)."""
    from .binance_live import BinanceLiveFeed, LiveFeedConfig

    cfg = LiveFeedConfig(
        symbols=tuple(sorted(symbols)), venue_url=venue_url, silence_timeout_s=silence_timeout_s
    )
    return BinanceLiveFeed(cfg, clock_ns=clock_ns)


class LiveLoop:
    """Publishes a live feed until the service is asked to stop."""

    def __init__(self, svc: Any, feed: LiveFeed, status_interval_s: float) -> None:
        self.svc = svc
        self.feed = feed
        self.status_interval_s = status_interval_s
        self.reconnects_seen = 0

    def run(self) -> None:
        """Start the feed, publish what it delivers, report status; close it on stop."""
        self.feed.start()
        next_status = 0.0
        try:
            while not self.svc.rt.stop_requested:
                self.publish_waiting()
                self.svc.control.drain()
                self.svc.rt.maintain()
                if time.monotonic() >= next_status:
                    next_status = time.monotonic() + self.status_interval_s
                    self.report()
        finally:
            self.feed.close()

    def publish_waiting(self) -> None:
        """Block briefly for the next message, then publish everything that is waiting."""
        first = self.feed.get(GET_TIMEOUT_S)
        if first is None:
            return
        for msg in [first, *self.feed.drain()]:
            self.svc.publish_tick(msg)

    def report(self) -> None:
        """Status with staleness, reconnect counter, stats for summary.json."""
        staleness = {s: int(v * 1000) for s, v in self.feed.staleness().items()}
        self.svc.publish_status("live", staleness)
        stats = self.feed.stats()
        new = stats.get("reconnects", 0) - self.reconnects_seen
        if new > 0:
            self.svc.count_reconnects(new)
            self.reconnects_seen += new
        self.svc.live_stats = stats
        self.svc.rt.save_stats(self.svc.stats)
