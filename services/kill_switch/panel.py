"""The kill switch's side of the GPIO panel: events into the main loop, the watchdog, the LEDs.

The panel thread (gpio.PanelThread) does all pin I/O. Its events cross into the kill switch's
loop through a queue plus one byte on a pipe that the loop's zmq poller watches, so a button
press wakes the loop at once instead of waiting for the next heartbeat (and no ZeroMQ socket
lives in the GPIO thread). When the panel is disabled everything here is a no-op.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
from typing import Any

from libs.common.clock import Clock
from libs.common.config import GpioConfig

from .gpio import Panel, PanelEvent, PanelThread, open_backend

log = logging.getLogger(__name__)
WATCHDOG_TRIGGER = "gpio:watchdog"
IDLE_POLL_MS = 1_000  # no panel: the heartbeat schedule alone bounds the loop's wait

Trigger = tuple[str, bool, str]  # (trigger, active, detail)


class PanelLink:
    """GPIO events for the main loop, the GPIO watchdog as a trigger, and the LED display."""

    def __init__(self, cfg: GpioConfig, clock: Clock) -> None:
        self.cfg = cfg
        self._clock = clock
        self._queue: queue.SimpleQueue[PanelEvent] = queue.SimpleQueue()
        self._thread: PanelThread | None = None
        self._watchdog_tripped = False
        self._wake: tuple[int, int] | None = None
        if cfg.enabled:
            self._wake = os.pipe()
            os.set_blocking(self._wake[0], False)
            os.set_blocking(self._wake[1], False)

    @property
    def sockets(self) -> tuple[Any, ...]:
        """File descriptors for the main loop's zmq poller (none when the panel is disabled)."""
        return (self._wake[0],) if self._wake is not None else ()

    @property
    def poll_ms(self) -> int:
        """The longest the main loop may wait: the watchdog must be checked in time."""
        return max(1, self.cfg.watchdog_ms // 4) if self.cfg.enabled else IDLE_POLL_MS

    def start(self) -> None:
        """Open the pins and start the panel thread (a failure to open them is fatal)."""
        if not self.cfg.enabled:
            return
        panel = Panel(open_backend(self.cfg), self.cfg)
        self._thread = PanelThread(panel, self._forward, self.cfg, self._clock)
        self._thread.start()
        log.info(
            "gpio panel started: e-stop pin %d, tamper pin %d",
            self.cfg.estop_pin,
            self.cfg.tamper_pin,
        )

    def _forward(self, events: list[PanelEvent]) -> None:
        """Runs in the GPIO thread: queue the events and wake the main loop."""
        for event in events:
            self._queue.put(event)
        if self._wake is not None:
            # A full pipe already holds wake-ups: the loop will drain the whole queue anyway.
            with contextlib.suppress(BlockingIOError):
                os.write(self._wake[1], b"!")

    def events(self) -> list[Trigger]:
        """Triggers that changed since the last call: button/tamper events, then the watchdog."""
        if self._wake is None:
            return []
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake[0], 4096)
        changed: list[Trigger] = []
        while not self._queue.empty():
            event = self._queue.get_nowait()
            changed.append((event.trigger, event.active, self._detail(event.trigger, event.active)))
        return changed + self._watchdog()

    def _detail(self, trigger: str, active: bool) -> str:
        """The audit and reason text for a panel event."""
        what = {"gpio:estop": "emergency stop pressed or wire cut", "gpio:tamper": "tamper input"}
        text = what.get(trigger, trigger)
        return text if active else f"{text}: released"

    def _watchdog(self) -> list[Trigger]:
        """A stalled GPIO loop is a hard trigger until it turns again (we cannot see the button)."""
        if self._thread is None:
            return []
        stalled = self._thread.stalled(self._clock.monotonic_ns())
        if stalled == self._watchdog_tripped:
            return []
        self._watchdog_tripped = stalled
        detail = f"GPIO loop silent for more than {self.cfg.watchdog_ms} ms"
        return [(WATCHDOG_TRIGGER, stalled, detail if stalled else "GPIO loop turning again")]

    def show(self, mode: str, acknowledged: bool) -> None:
        """The LEDs: state colour, blinking until the fleet has acknowledged."""
        if self._thread is not None:
            self._thread.set_display(mode, acknowledged)

    def stop(self) -> None:
        """Stop the panel thread (LEDs off) and close the socket."""
        if self._thread is not None:
            self._thread.stop()
        if self._wake is not None:
            for fd in self._wake:
                os.close(fd)
            self._wake = None
