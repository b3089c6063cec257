"""Positions and PnL on risk's /metrics come from the book at scrape time."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services.risk.book import RiskBook
from services.risk.book_metrics import BookCollector

from .builders import fill, quote


def scraped(book: RiskBook) -> dict[tuple[str, str], float]:
    """(metric, symbol) -> value, as a Prometheus server would read them."""
    registry = CollectorRegistry()
    registry.register(BookCollector(book))
    text = generate_latest(registry).decode()
    return {
        (s.name, s.labels.get("symbol", "")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_positions_and_pnl_follow_fills_and_the_last_quote() -> None:
    """Buy 0.002 at 60,000, sell 0.001 at 60,100 (fee 0.1): position 0.001, realized 0.0,
    and the open 0.001 marked at mid 60,050 is worth +0.05; ETH stays flat at zero."""
    book = RiskBook(["BTCUSDT", "ETHUSDT"])
    book.apply_fill(fill(1, side="buy", qty="0.002", price="60000"))
    book.apply_fill(fill(2, side="sell", qty="0.001", price="60100", fee="0.1"))
    book.symbols["BTCUSDT"].quote = quote(bid="60000", ask="60100")

    values = scraped(book)

    assert values[("flotilla_risk_position", "BTCUSDT")] == 0.001
    assert values[("flotilla_risk_realized_pnl", "BTCUSDT")] == 0.0
    assert values[("flotilla_risk_unrealized_pnl", "BTCUSDT")] == 0.05
    assert values[("flotilla_risk_position", "ETHUSDT")] == 0.0
    assert values[("flotilla_risk_working_orders", "")] == 0


def test_a_scrape_sees_the_book_as_it_is_now() -> None:
    """No caching: a fill after one scrape shows in the next."""
    book = RiskBook(["BTCUSDT"])
    assert scraped(book)[("flotilla_risk_position", "BTCUSDT")] == 0.0
    book.apply_fill(fill(1, side="sell", qty="0.003"))
    assert scraped(book)[("flotilla_risk_position", "BTCUSDT")] == -0.003
