"""The GPIO emergency-stop panel: a normally-closed e-stop and tamper loop, status LEDs, a buzzer.

Wiring (BCM numbering): each input is a normally-closed contact to ground with the internal
pull-up enabled, so the idle, closed circuit reads LOW and a pressed button, an opened enclosure
or a cut wire all read HIGH. HIGH is therefore "active", and anything the panel cannot read
for sure is treated as HIGH: a spurious halt is safe, a missed one is not.

Three layers:
- `PinBackend`: raw pin I/O. `RpiGpioBackend` drives real pins through RPi.GPIO (on a Pi 5 the
  `rpi-lgpio` package provides the same module); `SimulatedPins` keeps levels in memory and,
  given a directory, in files `<dir>/gpio<N>` so another process can press the button.
- `Panel`: pure logic (no threads, time passed in): debounce, trigger events, LEDs, buzzer.
- `PanelThread`: a daemon thread that owns all pin I/O, polls the panel, hands events to a
  callable, and exposes a watchdog (`stalled`) the kill switch halts on.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple, Protocol

from libs.common.clock import Clock
from libs.common.config import GpioConfig

log = logging.getLogger(__name__)

ESTOP = "gpio:estop"
TAMPER = "gpio:tamper"
NOT_FITTED = 0  # a pin number of 0 in the config means "nothing wired"
HISTORY_KEPT = 10_000  # simulated output writes remembered (bounded: a blinking LED runs forever)

_LED_FOR_MODE = {
    "ACTIVE": "green",
    "REDUCING": "yellow",
    "PAUSED": "yellow",
    "HALTED": "red",
    "EMERGENCY": "red",
}
_FAIL_CLOSED_LED = "red"  # a mode the panel does not know is shown as halted


class GpioUnavailable(RuntimeError):
    """The requested GPIO backend cannot be used on this machine."""


class PinBackend(Protocol):
    """Raw pin I/O; True means the pin is high."""

    def setup_input(self, pin: int) -> None:
        """Configure `pin` as an input with the internal pull-up."""
        ...

    def setup_output(self, pin: int) -> None:
        """Configure `pin` as an output."""
        ...

    def read(self, pin: int) -> bool:
        """The input's level (True = high)."""
        ...

    def write(self, pin: int, high: bool) -> None:
        """Drive the output high or low."""
        ...

    def cleanup(self) -> None:
        """Release every pin this backend set up."""
        ...


# --------------------------------------------------------------------------- RPi.GPIO


def _import_rpi_gpio() -> ModuleType:
    """RPi.GPIO, imported only when asked for: importing it off a Pi raises RuntimeError."""
    try:
        return importlib.import_module("RPi.GPIO")
    except ImportError as exc:
        raise GpioUnavailable(f"RPi.GPIO is not installed ({exc})") from exc
    except RuntimeError as exc:  # "This module can only be run on a Raspberry Pi!"
        raise GpioUnavailable(f"RPi.GPIO cannot run on this machine: {exc}") from exc


class RpiGpioBackend:
    """Real pins through RPi.GPIO, BCM numbering."""

    def __init__(self, gpio: ModuleType | None = None) -> None:
        self._gpio: Any = gpio if gpio is not None else _import_rpi_gpio()
        try:
            self._gpio.setwarnings(False)  # "channel already in use" after an unclean exit
            self._gpio.setmode(self._gpio.BCM)
        except RuntimeError as exc:  # e.g. no access to /dev/gpiomem
            raise GpioUnavailable(f"RPi.GPIO imported but cannot drive the pins: {exc}") from exc

    def setup_input(self, pin: int) -> None:
        """Input with the internal pull-up: a normally-closed contact to ground idles low."""
        self._gpio.setup(pin, self._gpio.IN, pull_up_down=self._gpio.PUD_UP)

    def setup_output(self, pin: int) -> None:
        """Output, starting low (LED/buzzer off)."""
        self._gpio.setup(pin, self._gpio.OUT, initial=self._gpio.LOW)

    def read(self, pin: int) -> bool:
        """The input's level."""
        return bool(self._gpio.input(pin))

    def write(self, pin: int, high: bool) -> None:
        """Drive the output."""
        self._gpio.output(pin, self._gpio.HIGH if high else self._gpio.LOW)

    def cleanup(self) -> None:
        """Return every pin this process set up to an input."""
        self._gpio.cleanup()


# --------------------------------------------------------------------------- simulated


class PinWrite(NamedTuple):
    """One output write seen by SimulatedPins."""

    ts_mono_ns: int
    pin: int
    high: bool


def pin_file(directory: str | os.PathLike[str], pin: int) -> Path:
    """The file holding pin `pin`'s level in a simulated pin directory."""
    return Path(directory) / f"gpio{pin}"


def write_pin_file(directory: str | os.PathLike[str], pin: int, high: bool) -> None:
    """Set a simulated pin's level atomically (write a temp file, then rename over).

    Readers take an empty or partial file as "active" (a halt), so a plain truncate-and-write
    could halt the fleet by accident; the rename means a reader sees either old or new.
    """
    path = pin_file(directory, pin)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(b"1\n" if high else b"0\n")
    os.replace(tmp, path)


def read_pin_file(path: str | os.PathLike[str]) -> bool:
    """A simulated input's level from its file; anything unreadable reads high (active).

    Missing file: the idle, closed circuit (low), so a demo needs no files to run.
    Empty, half-written, garbage or unreadable: high. Both panel inputs are normally closed,
    so high means "pressed / wire cut / enclosure open" and halts: a reading we cannot trust
    must fail closed, exactly as a real cut wire does.
    """
    try:
        fd = os.open(path, os.O_RDONLY)  # raw fd: no buffered file object per read at 1 kHz
    except FileNotFoundError:
        return False
    except OSError:
        return True
    try:
        data = os.read(fd, 16).strip()
    except OSError:
        return True
    finally:
        os.close(fd)
    return data != b"0"


class SimulatedPins:
    """In-memory pins (tests drive them with `set_level`), optionally mirrored to files."""

    def __init__(
        self, directory: str | os.PathLike[str] | None = None, clock: Clock | None = None
    ) -> None:
        self.directory = Path(directory) if directory else None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._levels: dict[int, bool] = {}
        self._paths: dict[int, Path] = {}
        self.inputs: set[int] = set()
        self.outputs: dict[int, bool] = {}
        self.history: deque[PinWrite] = deque(maxlen=HISTORY_KEPT)
        self.cleaned_up = False

    def set_level(self, pin: int, high: bool) -> None:
        """Drive an input from outside (the test's finger on the button)."""
        if self.directory is not None:
            write_pin_file(self.directory, pin, high)
        self._levels[pin] = high

    def setup_input(self, pin: int) -> None:
        """Register an input; unset inputs idle low, like a closed circuit."""
        self.inputs.add(pin)

    def setup_output(self, pin: int) -> None:
        """Register an output, initially low."""
        self.outputs.setdefault(pin, False)

    def read(self, pin: int) -> bool:
        """The input's level: from its file when file-backed, else from `set_level`."""
        if self.directory is not None:
            return read_pin_file(self._path(pin))
        return self._levels.get(pin, False)

    def write(self, pin: int, high: bool) -> None:
        """Drive an output; recorded in `outputs`, `history` and (file-backed) its file."""
        self.outputs[pin] = high
        self.history.append(PinWrite(self._now_ns(), pin, high))
        if self.directory is not None:
            write_pin_file(self.directory, pin, high)

    def cleanup(self) -> None:
        """Outputs low, as on a Pi where cleanup turns them back into inputs."""
        for pin, high in list(self.outputs.items()):
            if high:
                self.write(pin, False)
        self.cleaned_up = True

    def _path(self, pin: int) -> Path:
        """The pin's file, built once (reads run at the poll rate)."""
        path = self._paths.get(pin)
        if path is None:
            assert self.directory is not None
            path = self._paths[pin] = pin_file(self.directory, pin)
        return path

    def _now_ns(self) -> int:
        """Monotonic ns from the injected clock, or the system's."""
        return self._clock.monotonic_ns() if self._clock is not None else time.monotonic_ns()


def open_backend(cfg: GpioConfig) -> PinBackend:
    """The backend `cfg.backend` asks for; "auto" falls back to simulated off a Pi."""
    simulated_dir = cfg.simulated_dir or None
    if cfg.backend == "simulated":
        return SimulatedPins(simulated_dir)
    if cfg.backend == "rpi":
        return RpiGpioBackend()
    try:
        gpio = _import_rpi_gpio()
    except GpioUnavailable as exc:
        log.warning("gpio: %s; using simulated pins (dir=%r)", exc, simulated_dir or "")
        return SimulatedPins(simulated_dir)
    # RPi.GPIO imported, so this is a Pi: if its pins then fail, raise rather than fall back,
    # because simulated pins there would silently disconnect the real stop button.
    return RpiGpioBackend(gpio)


# --------------------------------------------------------------------------- panel logic


@dataclass(frozen=True, slots=True)
class PanelEvent:
    """A hard trigger became active or (after debounce) released."""

    trigger: str
    active: bool
    ts_mono_ns: int


class _Input:
    """One normally-closed input: active at once, released only after a quiet debounce."""

    def __init__(self, trigger: str, pin: int, debounce_ns: int) -> None:
        self.trigger = trigger
        self.pin = pin
        self.debounce_ns = debounce_ns
        self.active = False
        self._inactive_since: int | None = None

    def update(self, reading_high: bool, now_ns: int) -> PanelEvent | None:
        """Feed one reading; the event it causes, if any."""
        if reading_high:
            self._inactive_since = None  # any bounce back restarts the release window
            if self.active:
                return None
            self.active = True  # the first active reading counts: a halt must not wait
            return PanelEvent(self.trigger, True, now_ns)
        if not self.active:
            return None
        if self._inactive_since is None:
            self._inactive_since = now_ns
        if now_ns - self._inactive_since < self.debounce_ns:
            return None
        self.active = False
        self._inactive_since = None
        return PanelEvent(self.trigger, False, now_ns)


def _check_pins(cfg: GpioConfig) -> None:
    """Refuse a config that would read or drive one pin twice, or has no e-stop."""
    if cfg.estop_pin == NOT_FITTED:
        raise ValueError("gpio: estop_pin is required when the panel is enabled")
    fitted = [
        p
        for p in (
            cfg.estop_pin,
            cfg.tamper_pin,
            cfg.led_green_pin,
            cfg.led_yellow_pin,
            cfg.led_red_pin,
            cfg.buzzer_pin,
        )
        if p != NOT_FITTED
    ]
    duplicates = sorted({p for p in fitted if fitted.count(p) > 1})
    if duplicates:
        raise ValueError(f"gpio: pins used twice in the config: {duplicates}")
    if cfg.debounce_ms < 0 or cfg.blink_interval_ms < 0:
        raise ValueError("gpio: debounce_ms and blink_interval_ms must be >= 0")


class Panel:
    """The panel's logic over a PinBackend: call `poll`, then `show`, from one thread."""

    def __init__(self, backend: PinBackend, cfg: GpioConfig) -> None:
        _check_pins(cfg)
        self.backend = backend
        debounce_ns = cfg.debounce_ms * 1_000_000
        self._inputs = [
            _Input(trigger, pin, debounce_ns)
            for trigger, pin in ((ESTOP, cfg.estop_pin), (TAMPER, cfg.tamper_pin))
            if pin != NOT_FITTED
        ]
        leds = {"green": cfg.led_green_pin, "yellow": cfg.led_yellow_pin, "red": cfg.led_red_pin}
        self._leds = {name: pin for name, pin in leds.items() if pin != NOT_FITTED}
        self._buzzer = cfg.buzzer_pin
        self._blink_ns = cfg.blink_interval_ms * 1_000_000
        self._display_key: tuple[str, bool] | None = None
        self._display_since_ns = 0
        self._written: dict[int, bool] = {}
        self._closed = False
        for inp in self._inputs:
            backend.setup_input(inp.pin)
        for pin in self._output_pins():
            backend.setup_output(pin)
            self._write(pin, False)

    def poll(self, now_mono_ns: int) -> list[PanelEvent]:
        """Read every input once; the activations and releases this reading caused."""
        events = []
        for inp in self._inputs:
            event = inp.update(self.backend.read(inp.pin), now_mono_ns)
            if event is not None:
                events.append(event)
        return events

    def active_triggers(self) -> frozenset[str]:
        """The hard triggers active now (debounced)."""
        return frozenset(inp.trigger for inp in self._inputs if inp.active)

    def show(self, mode: str, acknowledged: bool, now_mono_ns: int) -> None:
        """Light the LED for `mode` (blinking until acknowledged) and set the buzzer."""
        self._note_display(mode, acknowledged, now_mono_ns)
        lit = _LED_FOR_MODE.get(mode, _FAIL_CLOSED_LED)
        on = acknowledged or self._blink_phase_on(now_mono_ns)
        for name, pin in self._leds.items():
            self._write(pin, on and name == lit)
        if self._buzzer != NOT_FITTED:
            self._write(self._buzzer, mode == "EMERGENCY" or any(i.active for i in self._inputs))

    def close(self) -> None:
        """Every output off, then release the pins; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            for pin in self._output_pins():
                self._write(pin, False)
        finally:
            self.backend.cleanup()

    def _note_display(self, mode: str, acknowledged: bool, now_ns: int) -> None:
        """Restart the blink cycle on every new display, so a change shows at once."""
        key = (mode, acknowledged)
        if key == self._display_key:
            return
        if mode not in _LED_FOR_MODE:
            log.warning("gpio: unknown trading mode %r shown as %s", mode, _FAIL_CLOSED_LED)
        self._display_key = key
        self._display_since_ns = now_ns

    def _blink_phase_on(self, now_ns: int) -> bool:
        """On for blink_interval, off for blink_interval, from when the display changed."""
        if self._blink_ns <= 0:
            return True  # blinking disabled: steady on
        return (now_ns - self._display_since_ns) // self._blink_ns % 2 == 0

    def _output_pins(self) -> list[int]:
        """LED and buzzer pins that are fitted."""
        pins = list(self._leds.values())
        if self._buzzer != NOT_FITTED:
            pins.append(self._buzzer)
        return pins

    def _write(self, pin: int, high: bool) -> None:
        """Drive a pin only when its level changes (file-backed pins would write at 1 kHz)."""
        if self._written.get(pin) == high:
            return
        self.backend.write(pin, high)
        self._written[pin] = high


# --------------------------------------------------------------------------- thread


class PanelThread:
    """A daemon thread that does all pin I/O: poll, forward events, update the display."""

    def __init__(
        self,
        panel: Panel,
        on_events: Callable[[list[PanelEvent]], None],
        cfg: GpioConfig,
        clock: Clock,
    ) -> None:
        if cfg.watchdog_ms <= cfg.poll_interval_ms:
            raise ValueError("gpio: watchdog_ms must exceed poll_interval_ms")
        self.panel = panel
        self._on_events = on_events
        self._clock = clock
        # At least 1 ms: a zero interval would spin and starve the kill switch's own thread.
        self._interval_s = max(cfg.poll_interval_ms, 1) / 1000
        self._watchdog_ns = cfg.watchdog_ms * 1_000_000
        # Written by the main thread, read by the GPIO thread: one tuple, replaced atomically.
        self._display: tuple[str, bool] = ("UNKNOWN", False)  # red, blinking until told
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gpio-panel", daemon=True)
        self._stopped = False
        self.last_loop_mono_ns = clock.monotonic_ns()
        self.error: BaseException | None = None

    def set_display(self, mode: str, acknowledged: bool) -> None:
        """What the LEDs should show; applied by the GPIO thread on its next turn."""
        self._display = (mode, acknowledged)

    def start(self) -> None:
        """Start polling; the watchdog counts from now."""
        self.last_loop_mono_ns = self._clock.monotonic_ns()
        self._thread.start()

    def stalled(self, now_mono_ns: int) -> bool:
        """True when the loop has not turned for more than watchdog_ms (and was not stopped)."""
        if self._stopped:
            return False  # a deliberate stop is not a fault; stop() is the owner's act
        return now_mono_ns - self.last_loop_mono_ns > self._watchdog_ns

    def is_alive(self) -> bool:
        """Whether the loop thread is still running."""
        return self._thread.is_alive()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop the loop, wait for it (bounded), and turn every output off."""
        self._stopped = True
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.error("gpio: panel thread did not stop within %.1f s", timeout_s)
        self.panel.close()

    def turn(self) -> None:
        """One loop turn: read inputs, hand over events, refresh the display."""
        now = self._clock.monotonic_ns()
        events = self.panel.poll(now)
        if events:
            self._on_events(events)  # before the display: the halt is what matters
        mode, acknowledged = self._display
        self.panel.show(mode, acknowledged, now)
        self.last_loop_mono_ns = now

    def _run(self) -> None:
        """Turn until stopped; on an error, log it and stop turning so the watchdog fires."""
        try:
            while not self._stop.is_set():
                self.turn()
                self._stop.wait(self._interval_s)
        except Exception as exc:
            self.error = exc
            log.exception("gpio: panel loop failed; it stops, and the watchdog will halt")
