"""The GPIO emergency-stop panel: debounce, fail-closed inputs, LEDs, buzzer, watchdog, backends."""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from libs.common.clock import FakeClock, LiveClock
from libs.common.config import GpioConfig
from services.kill_switch.gpio import (
    ESTOP,
    TAMPER,
    GpioUnavailable,
    Panel,
    PanelEvent,
    PanelThread,
    RpiGpioBackend,
    SimulatedPins,
    open_backend,
    pin_file,
    write_pin_file,
)

ESTOP_PIN, TAMPER_PIN, GREEN, YELLOW, RED, BUZZER = 17, 27, 5, 6, 13, 19
DEBOUNCE_MS, BLINK_MS = 20, 250
MS = 1_000_000


def gpio_cfg(**overrides: Any) -> GpioConfig:
    """A panel config with a buzzer fitted unless overridden."""
    fields: dict[str, Any] = {
        "enabled": True,
        "backend": "simulated",
        "buzzer_pin": BUZZER,
        "debounce_ms": DEBOUNCE_MS,
        "blink_interval_ms": BLINK_MS,
    }
    fields.update(overrides)
    return GpioConfig(**fields)


@dataclass
class Rig:
    """A panel on in-memory pins driven by a fake clock."""

    clock: FakeClock
    pins: SimulatedPins
    panel: Panel

    def step(self, estop_high: bool, ms: int = 1) -> list[PanelEvent]:
        """Hold the e-stop input at a level for `ms` milliseconds, polling every 1 ms."""
        events: list[PanelEvent] = []
        for _ in range(ms):
            self.pins.set_level(ESTOP_PIN, estop_high)
            events += self.panel.poll(self.clock.monotonic_ns())
            self.clock.advance_ms(1)
        return events

    def lit(self) -> set[int]:
        """The LED pins that are on."""
        return {p for p in (GREEN, YELLOW, RED) if self.pins.outputs[p]}


def make_rig(cfg: GpioConfig | None = None) -> Rig:
    """A fresh rig."""
    clock = FakeClock()
    pins = SimulatedPins(clock=clock)
    return Rig(clock, pins, Panel(pins, cfg or gpio_cfg()))


@pytest.fixture
def rig() -> Rig:
    return make_rig()


def wait_until(predicate: Callable[[], bool], timeout_s: float = 2.0) -> bool:
    """Poll `predicate` until true or the timeout; bounded, never a fixed sleep-then-assert."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.002)
    return predicate()


# --------------------------------------------------------------------------- debounce


def test_idle_closed_circuit_gives_no_events(rig: Rig) -> None:
    assert rig.step(False, ms=100) == []
    assert rig.panel.active_triggers() == frozenset()


def test_press_gives_one_activation_at_the_first_high_reading(rig: Rig) -> None:
    rig.step(False, ms=5)
    pressed_at = rig.clock.monotonic_ns()

    events = rig.step(True, ms=100)

    assert events == [PanelEvent(ESTOP, True, pressed_at)]
    assert rig.panel.active_triggers() == frozenset({ESTOP})


def test_bounce_on_press_gives_one_activation_and_no_release(rig: Rig) -> None:
    bounce = [True, False, True, False, True]  # toggling every 1 ms for 5 ms
    events = [e for level in bounce for e in rig.step(level)]
    events += rig.step(True, ms=200)

    assert [(e.trigger, e.active) for e in events] == [(ESTOP, True)]


def test_bounce_on_release_gives_one_release_after_a_quiet_debounce(rig: Rig) -> None:
    rig.step(True, ms=50)
    bounce = [False, True, False, True, False]
    events = [e for level in bounce for e in rig.step(level)]
    last_low_at = rig.clock.monotonic_ns() - 1 * MS  # the final False reading of the bounce
    events += rig.step(False, ms=200)

    assert events == [PanelEvent(ESTOP, False, last_low_at + DEBOUNCE_MS * MS)]
    assert rig.panel.active_triggers() == frozenset()


def test_release_is_not_taken_before_debounce_ms(rig: Rig) -> None:
    rig.step(True, ms=10)

    assert rig.step(False, ms=DEBOUNCE_MS) == []  # readings at 0..19 ms after release
    assert [e.active for e in rig.step(False)] == [False]  # the reading at 20 ms


def test_cut_wire_activates_and_never_releases(rig: Rig) -> None:
    events = rig.step(True, ms=2_000)  # a cut wire: the pull-up holds the input high for good

    assert [(e.trigger, e.active) for e in events] == [(ESTOP, True)]
    assert rig.panel.active_triggers() == frozenset({ESTOP})


def test_tamper_is_its_own_trigger(rig: Rig) -> None:
    rig.pins.set_level(TAMPER_PIN, True)
    events = rig.step(False, ms=5)
    rig.pins.set_level(TAMPER_PIN, False)
    events += rig.step(False, ms=DEBOUNCE_MS + 5)

    assert [(e.trigger, e.active) for e in events] == [(TAMPER, True), (TAMPER, False)]


def test_started_with_the_button_pressed_activates_on_the_first_poll() -> None:
    clock = FakeClock()
    pins = SimulatedPins(clock=clock)
    pins.set_level(ESTOP_PIN, True)
    panel = Panel(pins, gpio_cfg())

    assert panel.poll(clock.monotonic_ns()) == [PanelEvent(ESTOP, True, clock.monotonic_ns())]


def test_zero_debounce_releases_on_the_first_low_reading() -> None:
    rig = make_rig(gpio_cfg(debounce_ms=0))
    rig.step(True, ms=3)

    assert [e.active for e in rig.step(False)] == [False]


# --------------------------------------------------------------------------- LEDs and buzzer


@pytest.mark.parametrize(
    ("mode", "led"),
    [
        ("ACTIVE", GREEN),
        ("REDUCING", YELLOW),
        ("PAUSED", YELLOW),
        ("HALTED", RED),
        ("EMERGENCY", RED),
    ],
)
def test_acknowledged_mode_lights_exactly_its_led(rig: Rig, mode: str, led: int) -> None:
    rig.panel.show(mode, True, rig.clock.monotonic_ns())

    assert rig.lit() == {led}


def test_unknown_mode_fails_closed_to_red(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    rig.panel.show("BOGUS", True, rig.clock.monotonic_ns())

    assert rig.lit() == {RED}
    assert "unknown trading mode 'BOGUS'" in caplog.text


def test_unacknowledged_mode_blinks_with_period_twice_the_interval(rig: Rig) -> None:
    t0 = rig.clock.monotonic_ns()
    expected = {
        0: {RED},  # on at once: a new halt is visible immediately
        BLINK_MS - 1: {RED},
        BLINK_MS: set(),
        2 * BLINK_MS - 1: set(),
        2 * BLINK_MS: {RED},
        3 * BLINK_MS + 10: set(),
    }
    seen = {}
    for offset_ms in expected:
        rig.panel.show("HALTED", False, t0 + offset_ms * MS)
        seen[offset_ms] = rig.lit()

    assert seen == expected


def test_acknowledgement_stops_the_blink(rig: Rig) -> None:
    t0 = rig.clock.monotonic_ns()
    rig.panel.show("PAUSED", False, t0 + BLINK_MS * MS)  # first seen here: on
    rig.panel.show("PAUSED", False, t0 + 2 * BLINK_MS * MS)  # off phase
    assert rig.lit() == set()

    rig.panel.show("PAUSED", True, t0 + 2 * BLINK_MS * MS)
    assert rig.lit() == {YELLOW}


def test_a_new_mode_restarts_the_blink_lit(rig: Rig) -> None:
    t0 = rig.clock.monotonic_ns()
    rig.panel.show("ACTIVE", False, t0)
    rig.panel.show("ACTIVE", False, t0 + BLINK_MS * MS)  # green in its off phase
    rig.panel.show("HALTED", False, t0 + BLINK_MS * MS)

    assert rig.lit() == {RED}


def test_buzzer_sounds_while_a_trigger_is_active_or_in_emergency(rig: Rig) -> None:
    def buzzer_after(mode: str) -> bool:
        rig.panel.show(mode, True, rig.clock.monotonic_ns())
        return rig.pins.outputs[BUZZER]

    assert buzzer_after("ACTIVE") is False
    rig.step(True)
    assert buzzer_after("HALTED") is True
    rig.step(False, ms=DEBOUNCE_MS + 1)
    assert buzzer_after("HALTED") is False
    assert buzzer_after("EMERGENCY") is True
    assert buzzer_after("ACTIVE") is False


def test_no_buzzer_fitted_drives_no_buzzer_pin() -> None:
    rig = make_rig(gpio_cfg(buzzer_pin=0))
    rig.step(True)
    rig.panel.show("EMERGENCY", True, rig.clock.monotonic_ns())

    assert set(rig.pins.outputs) == {GREEN, YELLOW, RED}


def test_outputs_are_written_only_when_they_change(rig: Rig) -> None:
    rig.panel.show("ACTIVE", True, rig.clock.monotonic_ns())
    writes = len(rig.pins.history)
    for _ in range(100):
        rig.clock.advance_ms(1)
        rig.panel.show("ACTIVE", True, rig.clock.monotonic_ns())

    assert len(rig.pins.history) == writes


def test_close_turns_every_output_off_and_cleans_up(rig: Rig) -> None:
    rig.step(True)
    rig.panel.show("EMERGENCY", True, rig.clock.monotonic_ns())
    rig.panel.close()
    rig.panel.close()  # idempotent

    assert not any(rig.pins.outputs.values())
    assert rig.pins.cleaned_up


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"led_red_pin": ESTOP_PIN}, "pins used twice"),
        ({"estop_pin": 0}, "estop_pin is required"),
        ({"debounce_ms": -1}, "must be >= 0"),
    ],
)
def test_bad_pin_config_is_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Panel(SimulatedPins(), gpio_cfg(**overrides))


# --------------------------------------------------------------------------- file-backed pins


def file_rig(tmp_path: Path) -> Rig:
    """A panel whose pins live in files under tmp_path, as another process would see them."""
    clock = FakeClock()
    pins = SimulatedPins(tmp_path, clock=clock)
    return Rig(clock, pins, Panel(pins, gpio_cfg()))


def test_writing_1_to_the_estop_file_is_a_press(tmp_path: Path) -> None:
    rig = file_rig(tmp_path)
    assert rig.panel.poll(rig.clock.monotonic_ns()) == []  # no file: closed circuit, idle

    (tmp_path / f"gpio{ESTOP_PIN}").write_text("1\n")  # the other process's finger

    assert [e.active for e in rig.panel.poll(rig.clock.monotonic_ns())] == [True]


def test_writing_0_after_debounce_releases(tmp_path: Path) -> None:
    rig = file_rig(tmp_path)
    write_pin_file(tmp_path, ESTOP_PIN, True)
    rig.panel.poll(rig.clock.monotonic_ns())
    write_pin_file(tmp_path, ESTOP_PIN, False)
    rig.panel.poll(rig.clock.monotonic_ns())
    rig.clock.advance_ms(DEBOUNCE_MS)

    assert [e.active for e in rig.panel.poll(rig.clock.monotonic_ns())] == [False]


@pytest.mark.parametrize("content", [b"", b"\n", b"garbage", b"\x00", b"01", b"-1"])
def test_unreadable_file_content_reads_active(tmp_path: Path, content: bytes) -> None:
    rig = file_rig(tmp_path)
    (tmp_path / f"gpio{ESTOP_PIN}").write_bytes(content)

    assert [e.trigger for e in rig.panel.poll(rig.clock.monotonic_ns())] == [ESTOP]


def test_a_directory_in_place_of_the_file_reads_active(tmp_path: Path) -> None:
    rig = file_rig(tmp_path)
    (tmp_path / f"gpio{ESTOP_PIN}").mkdir()

    assert [e.trigger for e in rig.panel.poll(rig.clock.monotonic_ns())] == [ESTOP]


def test_outputs_are_mirrored_to_files_and_history(tmp_path: Path) -> None:
    rig = file_rig(tmp_path)
    rig.panel.show("HALTED", True, rig.clock.monotonic_ns())

    assert pin_file(tmp_path, RED).read_text().strip() == "1"
    assert pin_file(tmp_path, GREEN).read_text().strip() == "0"
    assert [(w.pin, w.high) for w in rig.pins.history if w.high] == [(RED, True)]
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files


def test_set_level_on_file_backed_pins_writes_the_file(tmp_path: Path) -> None:
    pins = SimulatedPins(tmp_path)
    pins.set_level(TAMPER_PIN, True)

    assert pin_file(tmp_path, TAMPER_PIN).read_text().strip() == "1"
    assert pins.read(TAMPER_PIN) is True


# --------------------------------------------------------------------------- backends


class FakeGpio(types.ModuleType):
    """Stands in for RPi.GPIO and records calls."""

    BCM, IN, OUT, PUD_UP, LOW, HIGH = "BCM", "IN", "OUT", "PUD_UP", 0, 1

    def __init__(self, fail_setmode: bool = False) -> None:
        super().__init__("RPi.GPIO")
        self.calls: list[tuple[Any, ...]] = []
        self.levels: dict[int, int] = {}
        self.fail_setmode = fail_setmode

    def setwarnings(self, on: bool) -> None:
        self.calls.append(("setwarnings", on))

    def setmode(self, mode: str) -> None:
        if self.fail_setmode:
            raise RuntimeError("No access to /dev/mem.  Try running as root!")
        self.calls.append(("setmode", mode))

    def setup(self, pin: int, direction: str, **kw: Any) -> None:
        self.calls.append(("setup", pin, direction, kw))

    def input(self, pin: int) -> int:
        return self.levels.get(pin, 0)

    def output(self, pin: int, level: int) -> None:
        self.calls.append(("output", pin, level))

    def cleanup(self) -> None:
        self.calls.append(("cleanup",))


def test_rpi_backend_off_a_pi_raises_gpio_unavailable_naming_the_cause() -> None:
    with pytest.raises(GpioUnavailable, match=r"RPi\.GPIO.*Raspberry Pi"):
        open_backend(gpio_cfg(backend="rpi"))


def test_auto_off_a_pi_falls_back_to_simulated_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend = open_backend(gpio_cfg(backend="auto", simulated_dir=str(tmp_path)))

    assert isinstance(backend, SimulatedPins)
    assert backend.directory == tmp_path
    assert any(r.levelno == logging.WARNING and "simulated" in r.message for r in caplog.records)


def test_simulated_backend_without_a_dir_is_in_memory() -> None:
    backend = open_backend(gpio_cfg(backend="simulated"))

    assert isinstance(backend, SimulatedPins)
    assert backend.directory is None


def test_auto_with_rpi_gpio_importable_uses_it(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeGpio()
    monkeypatch.setitem(sys.modules, "RPi.GPIO", fake)

    backend = open_backend(gpio_cfg(backend="auto"))

    assert isinstance(backend, RpiGpioBackend)
    assert ("setmode", "BCM") in fake.calls


def test_auto_on_a_pi_with_unusable_pins_raises_rather_than_simulating(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "RPi.GPIO", FakeGpio(fail_setmode=True))

    with pytest.raises(GpioUnavailable, match="cannot drive the pins"):
        open_backend(gpio_cfg(backend="auto"))


def test_rpi_backend_sets_up_pull_ups_outputs_and_cleans_up() -> None:
    fake = FakeGpio()
    fake.levels[ESTOP_PIN] = 1
    backend = RpiGpioBackend(fake)
    panel = Panel(backend, gpio_cfg())

    assert [e.trigger for e in panel.poll(0)] == [ESTOP]
    panel.close()

    assert ("setup", ESTOP_PIN, "IN", {"pull_up_down": "PUD_UP"}) in fake.calls
    assert ("setup", RED, "OUT", {"initial": 0}) in fake.calls
    assert fake.calls[-1] == ("cleanup",)


# --------------------------------------------------------------------------- thread and watchdog

WATCHDOG_MS = 100


def thread_cfg() -> GpioConfig:
    """Real short times for the thread tests."""
    return gpio_cfg(poll_interval_ms=1, watchdog_ms=WATCHDOG_MS, debounce_ms=5)


class TrappedPins(SimulatedPins):
    """Pins whose reads can be made to raise or to block (bounded), to stall the loop."""

    def __init__(self) -> None:
        super().__init__()
        self.explode = False
        self.gate = threading.Event()
        self.gate.set()

    def read(self, pin: int) -> bool:
        if self.explode:
            raise OSError("gpio chip gone")
        self.gate.wait(5.0)  # bounded: a forgotten gate cannot hang the suite
        return super().read(pin)


@pytest.fixture
def running() -> Iterator[tuple[PanelThread, TrappedPins, queue.SimpleQueue[list[PanelEvent]]]]:
    pins = TrappedPins()
    events: queue.SimpleQueue[list[PanelEvent]] = queue.SimpleQueue()
    thread = PanelThread(Panel(pins, thread_cfg()), events.put, thread_cfg(), LiveClock())
    thread.start()
    yield thread, pins, events
    pins.gate.set()
    thread.stop()


def test_thread_forwards_a_press_and_follows_the_display(
    running: tuple[PanelThread, TrappedPins, queue.SimpleQueue[list[PanelEvent]]],
) -> None:
    thread, pins, events = running
    thread.set_display("ACTIVE", True)
    assert wait_until(lambda: pins.outputs[GREEN] and not pins.outputs[RED])

    pins.set_level(ESTOP_PIN, True)
    got = events.get(timeout=2.0)
    thread.set_display("HALTED", True)

    assert [(e.trigger, e.active) for e in got] == [(ESTOP, True)]
    assert wait_until(lambda: pins.outputs[RED] and pins.outputs[BUZZER])
    assert not thread.stalled(time.monotonic_ns())


def test_stop_turns_the_leds_off_and_is_not_a_stall(
    running: tuple[PanelThread, TrappedPins, queue.SimpleQueue[list[PanelEvent]]],
) -> None:
    thread, pins, _ = running
    thread.set_display("ACTIVE", True)
    assert wait_until(lambda: pins.outputs[GREEN])

    thread.stop()

    assert not thread.is_alive()
    assert not any(pins.outputs.values())
    assert pins.cleaned_up
    assert not thread.stalled(time.monotonic_ns() + 10 * WATCHDOG_MS * MS)


def assert_watchdog_fires_after_and_not_before(thread: PanelThread) -> None:
    """Stalled within 2 s of real time, and exactly watchdog_ms after the last turn."""
    assert wait_until(lambda: thread.stalled(time.monotonic_ns()))
    last = thread.last_loop_mono_ns
    assert not thread.stalled(last + WATCHDOG_MS * MS)
    assert thread.stalled(last + WATCHDOG_MS * MS + 1)


def test_loop_that_raises_logs_it_stops_and_trips_the_watchdog(
    running: tuple[PanelThread, TrappedPins, queue.SimpleQueue[list[PanelEvent]]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    thread, pins, _ = running
    assert not thread.stalled(time.monotonic_ns())

    pins.explode = True

    assert wait_until(lambda: not thread.is_alive())
    assert isinstance(thread.error, OSError)
    assert "panel loop failed" in caplog.text and "gpio chip gone" in caplog.text
    assert_watchdog_fires_after_and_not_before(thread)


def test_blocked_loop_trips_the_watchdog_and_recovers_when_unblocked(
    running: tuple[PanelThread, TrappedPins, queue.SimpleQueue[list[PanelEvent]]],
) -> None:
    thread, pins, _ = running
    pins.gate.clear()

    assert_watchdog_fires_after_and_not_before(thread)
    assert thread.is_alive()

    pins.gate.set()
    assert wait_until(lambda: not thread.stalled(time.monotonic_ns()))


def test_watchdog_must_exceed_the_poll_interval() -> None:
    cfg = gpio_cfg(poll_interval_ms=10, watchdog_ms=10)

    with pytest.raises(ValueError, match="watchdog_ms"):
        PanelThread(Panel(SimulatedPins(), cfg), lambda _: None, cfg, LiveClock())
