"""market-data: replays recorded Binance traffic and publishes normalised trades and quotes."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import Counter as PromCounter

from libs.common import topics
from libs.common.config import DEFAULT_CONFIG
from libs.common.messages import FeedStatus, Quote, Trade
from libs.common.metrics import SampledTimer
from libs.common.runtime import ControlLink, Runtime

from .binance import VENUE, ParseError, parse_stream_message
from .live import LiveLoop, open_feed
from .replay import LineCounter, merged

log = logging.getLogger(__name__)
CONTROL_CHECK_EVERY = 256  # messages between looks at the control socket and stop flag
# A replay never reconnects: 0 here. A live feed adapter increments it per re-established
# connection to the venue.
FEED_RECONNECTS = PromCounter(
    "flotilla_market_data_feed_reconnects",
    "Connections to the venue's feed re-established, by venue",
    ["venue"],
)
FEED_RECONNECTS.labels(VENUE)
PUBLISH_TIMER = SampledTimer("market_data_publish")  # encode and send one tick, 1 in 64


class MarketDataService:
    """Waits for its consumers, replays the feed at the configured speed, then reports the end."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.cfg = rt.cfg.market_data
        self.symbols = set(rt.cfg.instruments)
        self.published: Counter[str] = Counter()
        self.lines = LineCounter()
        self.parse_errors = 0
        self.unknown_symbol_drops = 0
        self.skipped = 0
        self.ticks_left = -1
        self.first_publish_mono_ns = 0  # for `make bench`'s throughput figure
        self.last_publish_mono_ns = 0
        self.live_stats: dict[str, Any] = {}  # the live feed's counters (summary.json)
        # The venue the ticks come from: the replay is recorded Binance traffic.
        self.venue = VENUE if self.cfg.source == "replay" else self.cfg.source

    def start(self) -> None:
        """Bind the PUB socket and connect the control link."""
        self.pub = self.rt.publisher(self.rt.cfg.bus.md_pub, bind=True)
        self.control = ControlLink(self.rt)
        self.rt.serve_metrics(self.cfg.metrics_port)

    def run(self) -> int:
        """The whole lifecycle; returns the process exit code."""
        if not self.wait_for_consumers():
            # Stopped while waiting is an ordinary Ctrl-C; only giving up on consumers is a failure.
            return 0 if self.rt.stop_requested else 3
        if self.cfg.source != "replay":
            self.run_live()
            self.publish_status("end")
            self.rt.save_stats(self.stats, drained=True, force=True)
            return 0
        self.replay([resolve_feed_path(p) for p in self.cfg.feed])
        self.publish_status("end")
        self.rt.save_stats(self.stats, drained=True)
        log.info("replay finished: %s", dict(self.published))
        while not self.rt.stop_requested:
            self.rt.maintain()
            # Wait on the control socket, not a sleep: a halt is acknowledged at once.
            self.control.socket.poll(50)
            self.control.drain()  # also reads snapshot replies and checks the dead man's switch
        return 0

    def run_live(self) -> None:
        """The live venue feed until stopped (source = "binance" or "alpaca")."""
        feed = open_feed(self.rt.cfg, self.rt.clock.time_ns)
        log.info("live feed: %s at %s", self.cfg.source, self.cfg.venue_url or "the venue")
        self.publish_status("live")
        LiveLoop(self, feed, self.cfg.status_interval_ms / 1000 * 10).run()

    def publish_tick(self, msg: Trade | Quote) -> None:
        """Publish one live message of a configured symbol (others are counted and dropped)."""
        if msg.symbol not in self.symbols:
            self.unknown_symbol_drops += 1
            return
        self.pub.publish(topic_for(msg), msg)
        self.published[msg.symbol] += 1

    def count_reconnects(self, n: int) -> None:
        """The live feed re-established its connection n more times."""
        FEED_RECONNECTS.labels(self.venue).inc(n)

    def wait_for_consumers(self) -> bool:
        """Publish `waiting` until every expected consumer reports it hears us (slow joiners)."""
        deadline = time.monotonic() + self.cfg.consumer_wait_timeout_ms / 1000
        while not self.rt.stop_requested:
            self.rt.maintain()
            self.publish_status("waiting")
            self.control.drain()
            missing = self.missing_consumers()
            if not missing:
                return True
            if time.monotonic() > deadline:
                log.error("consumers never became ready: %s", ", ".join(missing))
                return False
            time.sleep(self.cfg.status_interval_ms / 1000)
        return False

    def missing_consumers(self) -> list[str]:
        """Services with fewer ready instances than configured, or whose replicas disagree."""
        missing = []
        for svc, want in self.cfg.wait_for_consumers.items():
            keys = self.rt.store.keys(f"ready:{svc}:")
            if len(keys) < want:
                missing.append(f"{svc} ({len(keys)}/{want})")
            elif not self.replicas_settled(svc, keys):
                missing.append(f"{svc} (replica assignment not settled)")
        return missing

    def replicas_settled(self, svc: str, ready_keys: list[str]) -> bool:
        """Replicas mark ready with their membership view; every view must be exactly the
        ready set, or a replica could still be about to hand symbols over mid-replay."""
        instances = sorted(key[len(f"ready:{svc}:") :] for key in ready_keys)
        expected = json.dumps(instances).encode()
        views = {self.rt.store.get(key) for key in ready_keys} - {b"1", None}
        return not views or views == {expected}

    def replay(self, paths: list[Path]) -> None:
        """Publish every recorded trade and quote (`repeat` times), paced by `rate_per_s` or
        by recorded time divided by `speed`."""
        preloaded = self.preload(paths) if self.cfg.preload else None
        self.publish_status("live")
        self.first_publish_mono_ns = time.monotonic_ns()
        control = (self.control.socket, self.control.drain)
        rate_pacer = RatePacer(self.cfg.rate_per_s, control) if self.cfg.rate_per_s > 0 else None
        self.ticks_left = self.cfg.limit_ticks or -1  # -1: no limit
        for _ in range(self.cfg.repeat):
            pacer = rate_pacer or Pacer(self.cfg.speed, control)  # recorded time restarts each pass
            messages = preloaded if preloaded is not None else self.parsed(paths)
            if not self.publish_all(messages, pacer):
                log.info("stop requested during replay")
                return
        self.last_publish_mono_ns = time.monotonic_ns()

    def preload(self, paths: list[Path]) -> list[tuple[int, Trade | Quote]]:
        """Parse the whole feed up front (benchmarks), still obeying the control plane: it
        takes seconds, and a halt or the dead man's switch must not wait for it."""
        parsed = []
        for count, item in enumerate(self.parsed(paths)):
            if count % CONTROL_CHECK_EVERY == 0:
                self.control.drain()
                self.rt.maintain()
            parsed.append(item)
        return parsed

    def publish_all(self, messages: Iterable[tuple[int, Trade | Quote]], pacer: Any) -> bool:
        """Publish one pass; False if a stop was requested part way."""
        slept = False
        for count, (recv_ns, msg) in enumerate(messages):
            # Housekeeping every N messages, and whenever pacing left idle time (a quiet feed
            # must still show the health check a turning loop).
            if slept or count % CONTROL_CHECK_EVERY == 0:
                self.control.drain()
                self.rt.maintain()
                self.rt.save_stats(self.stats)
                if self.rt.stop_requested:
                    return False
            if self.ticks_left == 0:
                return True
            slept = pacer.wait_until(recv_ns)
            t0 = PUBLISH_TIMER.start()
            self.pub.publish(topic_for(msg), msg)
            if t0:  # sampled: 63 calls in 64 skip the call (bench/micro.py)
                PUBLISH_TIMER.stop(t0)
            self.published[msg.symbol] += 1
            self.ticks_left -= 1
        return True

    def parsed(self, paths: list[Path]) -> Iterator[tuple[int, Trade | Quote]]:
        """The feed's publishable messages in receive order; bad input is counted and dropped."""
        for recv_ns, raw in merged(paths, self.lines):
            msg = self.parse_line(recv_ns, raw)
            if msg is not None:
                yield recv_ns, msg

    def parse_line(self, recv_ns: int, raw: bytes) -> Trade | Quote | None:
        """One recorded line as a message of a known symbol, or None (counted)."""
        try:
            msg = parse_stream_message(raw, recv_ns, self.rt.clock.time_ns())
        except ParseError as exc:
            self.parse_errors += 1
            log.warning("unparseable feed message dropped: %s", exc)
            return None
        if msg is None:
            self.skipped += 1
            return None
        if msg.symbol not in self.symbols:
            self.unknown_symbol_drops += 1
            if self.unknown_symbol_drops <= 10:
                log.warning("message for unknown symbol %r dropped", msg.symbol)
            return None
        return msg

    def publish_status(self, state: Any, staleness_ms: dict[str, int] | None = None) -> None:
        """Announce the feed state (consumers use `end` to drain), with live staleness."""
        now = self.rt.clock.time_ns()
        status = FeedStatus(
            ts_event=now,
            ts_init=now,
            venue=self.venue,
            state=state,
            published=dict(self.published),
            staleness_ms=staleness_ms or {},
        )
        self.pub.publish(topics.md_status(self.venue), status)

    def stats(self) -> dict[str, Any]:
        """Counters for summary.json."""
        return {
            "ticks_published": dict(self.published),
            "lines_read": self.lines.lines,
            "bad_lines": self.lines.bad_lines,
            "parse_errors": self.parse_errors,
            "unknown_symbol_drops": self.unknown_symbol_drops,
            "skipped_messages": self.skipped,
            "first_publish_mono_ns": self.first_publish_mono_ns,
            "last_publish_mono_ns": self.last_publish_mono_ns,
            "live_feed": self.live_stats,
        }

    def close(self) -> None:
        """Nothing beyond the sockets, which the Runtime closes."""


def topic_for(msg: Trade | Quote) -> str:
    """The md topic for a normalised message."""
    if isinstance(msg, Trade):
        return topics.md_trade(msg.venue, msg.symbol)
    return topics.md_quote(msg.venue, msg.symbol)


def resolve_feed_path(path: str) -> Path:
    """Relative paths are tried from the working directory, then from the project root."""
    candidate = Path(path)
    if candidate.is_absolute() or candidate.exists():
        return candidate
    return DEFAULT_CONFIG.parents[1] / candidate


class IdleWait:
    """How a pacer waits: sleeping, or (in the service) polling the control socket so that a
    trading-state change is applied and acknowledged during the wait, not after it."""

    def __init__(self, on_control: tuple[Any, Any] | None = None) -> None:
        self.on_control = on_control  # (zmq socket, drain callback)

    def idle(self, delay_ns: float) -> None:
        """Wait delay_ns; with a control socket, wake early to drain it, then keep waiting."""
        if self.on_control is None:
            time.sleep(delay_ns / 1e9)
            return
        sock, drain = self.on_control
        deadline = time.monotonic_ns() + delay_ns
        while (left := deadline - time.monotonic_ns()) >= 1_000_000:
            if sock.poll(int(left // 1_000_000)):  # zmq poll has millisecond resolution
                drain()
        if sock.poll(0):
            drain()
        if (left := deadline - time.monotonic_ns()) > 0:
            time.sleep(left / 1e9)  # the sub-millisecond rest


class RatePacer(IdleWait):
    """Paces publishing at a fixed number of messages per second, whatever the recording's
    timing (benchmarks). Like Pacer it never sleeps less than ~0.2 ms: it runs slightly ahead
    and then sleeps, so the average rate is exact and short bursts are possible."""

    def __init__(self, rate_per_s: float, on_control: tuple[Any, Any] | None = None) -> None:
        super().__init__(on_control)
        self.interval_ns = 1e9 / rate_per_s
        self.next_ns = 0.0

    def wait_until(self, _recv_ns: int) -> bool:
        """Block until this message's slot; True if that meant sleeping."""
        now = time.monotonic_ns()
        if self.next_ns == 0:
            self.next_ns = now
        delay_ns = self.next_ns - now
        self.next_ns += self.interval_ns  # a late message does not shift the schedule
        if delay_ns > 200_000:
            self.idle(delay_ns)
            return True
        return False


class Pacer(IdleWait):
    """Sleeps so that recorded time / speed matches elapsed wall time (speed 0: never sleeps)."""

    def __init__(self, speed: float, on_control: tuple[Any, Any] | None = None) -> None:
        super().__init__(on_control)
        self.speed = speed
        self.first_recv_ns: int | None = None
        self.start_mono_ns = 0

    def wait_until(self, recv_ns: int) -> bool:
        """Block until this recorded instant is due; True if that meant sleeping."""
        if self.speed <= 0:
            return False
        if self.first_recv_ns is None:
            self.first_recv_ns = recv_ns
            self.start_mono_ns = time.monotonic_ns()
            return False
        due = self.start_mono_ns + (recv_ns - self.first_recv_ns) / self.speed
        delay_ns = due - time.monotonic_ns()
        if delay_ns > 200_000:  # below ~0.2 ms sleeping costs more than it saves
            self.idle(delay_ns)
            return True
        return False
