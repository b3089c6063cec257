"""Run signal alone: `python -m services.signal`."""

from services.main import run_service

from .service import SignalService

raise SystemExit(run_service("signal", SignalService))
