"""Positions and PnL per symbol as Prometheus gauges, computed from the risk book at scrape time.

A collector rather than gauges set on every fill and quote: the values cost nothing on the
per-tick path, and a scrape always sees the book as it is. The symbol label is bounded by the
configured instruments. Prometheus samples are floats: these are for watching, never for
accounting (the journal and summary.json carry the exact decimals).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .book import RiskBook


class BookCollector(Collector):
    """Exports flotilla_risk_position, flotilla_risk_{realized,unrealized}_pnl, working orders."""

    def __init__(self, book: RiskBook) -> None:
        self.book = book

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """One sample per configured symbol for each family."""
        position = GaugeMetricFamily(
            "flotilla_risk_position", "Net position in base units, by symbol", labels=["symbol"]
        )
        realized = GaugeMetricFamily(
            "flotilla_risk_realized_pnl",
            "Realized PnL net of fees, in the quote currency, by symbol",
            labels=["symbol"],
        )
        unrealized = GaugeMetricFamily(
            "flotilla_risk_unrealized_pnl",
            "Unrealized PnL at the mid of the last quote, in the quote currency, by symbol",
            labels=["symbol"],
        )
        for symbol, book in list(self.book.symbols.items()):  # a copy: scrapes run on a thread
            position.add_metric([symbol], float(book.position.qty))
            realized.add_metric([symbol], float(book.position.realized_pnl))
            unrealized.add_metric([symbol], float(book.position.unrealized(self.book.mark(symbol))))
        working = GaugeMetricFamily(
            "flotilla_risk_working_orders", "Orders sent and not yet finished at execution"
        )
        working.add_metric([], len(self.book.working))
        yield from (position, realized, unrealized, working)
