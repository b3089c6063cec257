"""Run risk alone: `python -m services.risk`."""

from services.main import run_service

from .service import RiskService

raise SystemExit(run_service("risk", RiskService))
