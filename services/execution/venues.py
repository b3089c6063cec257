"""Which live venue adapter execution talks to, from config (imported only when configured:
the paper exchange needs neither python-binance nor alpaca-py)."""

from __future__ import annotations

from libs.common.config import ConfigError, FleetConfig

from .venue import Venue


def open_venue(cfg: FleetConfig) -> Venue:
    """The configured live venue; ConfigError for a production endpoint without `live`."""
    ex = cfg.execution
    if ex.venue == "binance":
        from .binance_venue import BinanceVenue

        return BinanceVenue.from_config(cfg)
    if ex.venue == "alpaca":
        from .alpaca_venue import AlpacaVenue

        return AlpacaVenue.from_config(cfg)
    raise ConfigError(f"[execution] venue {ex.venue!r} is not a live venue")
