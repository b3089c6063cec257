"""Run market-data alone: `python -m services.market_data`."""

from services.main import run_service

from .service import MarketDataService

raise SystemExit(run_service("market-data", MarketDataService))
