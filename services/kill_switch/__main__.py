"""Run the kill switch alone: `python -m services.kill_switch`."""

from services.main import run_service

from .service import KillSwitchService

raise SystemExit(run_service("kill-switch", KillSwitchService))
