"""Run execution alone: `python -m services.execution`."""

from services.main import run_service

from .service import ExecutionService

raise SystemExit(run_service("execution", ExecutionService))
