"""Signal replicas split the symbols; market-data waits until their membership views agree.

Real SignalService / MarketDataService / Runtime objects on one shared SQLite store (one
connection per replica, as separate processes would have) and a fake clock. Only the sockets
are replaced: the market-data subscriber records its subscriptions, the control link is a bare
trading gate.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import msgspec
import pytest

from libs.common import topics
from libs.common.clock import FakeClock
from libs.common.config import DEFAULT_CONFIG, FleetConfig, Instrument, load_config
from libs.common.messages import FeedStatus
from libs.common.runtime import Runtime
from libs.common.store import EmbeddedStore
from libs.common.trading_gate import TradingGate
from services.market_data.service import MarketDataService
from services.signal.service import SUBSCRIPTION_SETTLE_NS, SignalService

from .builders import trading_state

SYMBOLS = [f"{base}USDT" for base in ("BTC", "ETH", "SOL", "XRP", "ADA", "DOGE", "LTC", "DOT")]
MEMBERSHIP_TTL_MS = 200


class RecordingSubscriber:
    """Stands in for the market-data SUB socket: remembers what is subscribed."""

    def __init__(self) -> None:
        self.prefixes: set[bytes] = {topics.family("md", "status")}
        self.sequence_gaps = 0
        self.decode_errors = 0

    def subscribe(self, prefix: bytes) -> None:
        self.prefixes.add(prefix)

    def unsubscribe(self, prefix: bytes) -> None:
        self.prefixes.discard(prefix)

    def symbols(self) -> set[str]:
        """Symbols whose trades and quotes would arrive."""
        return {
            sym
            for sym in SYMBOLS
            if topics.exact(topics.md_trade("binance", sym)) in self.prefixes
            and topics.exact(topics.md_quote("binance", sym)) in self.prefixes
        }


@pytest.fixture
def cfg() -> FleetConfig:
    """The shipped config with eight symbols, a short membership TTL, market-data waiting for
    two signal replicas."""
    shipped = load_config(DEFAULT_CONFIG, env={})
    btc = shipped.instruments["BTCUSDT"]
    instruments = {
        sym: Instrument(**{**msgspec.structs.asdict(btc), "base": sym[:-4]}) for sym in SYMBOLS
    }
    ofi = msgspec.structs.replace(
        shipped.signal.ofi, order_qty={sym: Decimal("0.001") for sym in SYMBOLS}
    )
    return msgspec.structs.replace(
        shipped,
        instruments=instruments,
        signal=msgspec.structs.replace(shipped.signal, symbols=SYMBOLS, ofi=ofi),
        market_data=msgspec.structs.replace(shipped.market_data, wait_for_consumers={"signal": 2}),
        cluster=msgspec.structs.replace(
            shipped.cluster, membership_ttl_ms=MEMBERSHIP_TTL_MS, membership_interval_ms=50
        ),
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def runtime(
    cfg: FleetConfig, clock: FakeClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[str, str], Runtime]]:
    """Builds Runtimes (service, instance) on one shared embedded store; closes them after."""
    built: list[Runtime] = []

    def build(service: str, instance: str) -> Runtime:
        monkeypatch.setenv("FLOTILLA_INSTANCE", instance)
        store = EmbeddedStore(tmp_path / "state.sqlite")
        built.append(Runtime(service, cfg, tmp_path, clock, store))
        return built[-1]

    yield build
    for rt in built:
        rt.close()


@pytest.fixture
def replica(
    runtime: Callable[[str, str], Runtime], clock: FakeClock
) -> Callable[[str], SignalService]:
    """A signal replica that has heard the trading state, with recording sockets."""

    def build(instance: str) -> SignalService:
        svc = SignalService(runtime("signal", instance))
        svc.md = RecordingSubscriber()  # type: ignore[assignment]
        gate = TradingGate(clock)
        gate.on_state(trading_state("ACTIVE", seq=1))
        svc.control = SimpleNamespace(gate=gate)  # type: ignore[assignment]
        return svc

    return build


def owned(svc: SignalService) -> set[str]:
    """What a replica runs its strategy on, checked against what it subscribes to."""
    assert svc.md.symbols() == set(svc.strategies)  # type: ignore[attr-defined]
    return set(svc.strategies)


def settled_status(svc: SignalService, clock: FakeClock) -> FeedStatus:
    """A `waiting` feed status sent after the replica's subscriptions settled."""
    ts = max(clock.time_ns(), svc.assignment_changed_ns + SUBSCRIPTION_SETTLE_NS)
    return FeedStatus(ts_event=ts, ts_init=ts, venue="binance", state="waiting")


def two_replicas(replica: Callable[[str], SignalService]) -> tuple[SignalService, SignalService]:
    """Replicas a and b, both having seen each other."""
    a, b = replica("signal-a"), replica("signal-b")
    a.refresh_membership()
    b.refresh_membership()
    a.refresh_membership()
    return a, b


# --- splitting the symbols ------------------------------------------------------------------


def test_a_lone_replica_owns_every_symbol(replica: Callable[[str], SignalService]) -> None:
    a = replica("signal-a")

    a.refresh_membership()

    assert owned(a) == set(SYMBOLS)


def test_two_replicas_split_the_symbols_with_no_overlap_and_full_coverage(
    replica: Callable[[str], SignalService],
) -> None:
    a, b = two_replicas(replica)

    assert a.view == b.view == ["signal-a", "signal-b"]
    assert owned(a) and owned(b)
    assert owned(a).isdisjoint(owned(b))
    assert owned(a) | owned(b) == set(SYMBOLS)


def test_each_replica_publishes_what_it_owns(replica: Callable[[str], SignalService]) -> None:
    a, b = two_replicas(replica)

    doc = json.loads(a.rt.store.get("assign:signal:signal-b") or b"null")

    assert doc["symbols"] == sorted(owned(b))
    assert doc["members"] == ["signal-a", "signal-b"]


def test_when_a_replica_stops_the_survivor_takes_all_symbols_at_its_next_refresh(
    replica: Callable[[str], SignalService],
) -> None:
    a, b = two_replicas(replica)

    b.close()  # clean stop: leaves the group at once
    a.refresh_membership()

    assert a.view == ["signal-a"]
    assert owned(a) == set(SYMBOLS)


def test_when_a_replica_dies_the_survivor_takes_its_symbols_after_the_ttl(
    replica: Callable[[str], SignalService],
) -> None:
    a, _dead = two_replicas(replica)  # _dead never heartbeats again
    deadline = time.monotonic() + 2.0

    for _ in range(200):
        a.refresh_membership()
        if a.view == ["signal-a"] or time.monotonic() >= deadline:
            break
        time.sleep(0.01)

    assert a.view == ["signal-a"]
    assert owned(a) == set(SYMBOLS)


def test_a_newcomer_takes_symbols_only_from_the_existing_replicas_share(
    replica: Callable[[str], SignalService],
) -> None:
    a, b = two_replicas(replica)
    before = {"a": owned(a), "b": owned(b)}
    c = replica("signal-c")

    c.refresh_membership()
    a.refresh_membership()
    b.refresh_membership()

    assert owned(a) | owned(b) | owned(c) == set(SYMBOLS)
    assert len(owned(a)) + len(owned(b)) + len(owned(c)) == len(SYMBOLS)
    assert owned(a) <= before["a"] and owned(b) <= before["b"]


# --- ready marks and market-data's wait -----------------------------------------------------


def test_the_ready_mark_carries_the_sorted_member_list(
    replica: Callable[[str], SignalService], clock: FakeClock
) -> None:
    b, a = replica("signal-b"), replica("signal-a")  # registration order must not matter
    b.refresh_membership()
    a.refresh_membership()
    b.refresh_membership()

    b.on_feed_status(settled_status(b, clock))

    assert b.rt.store.get("ready:signal:signal-b") == b'["signal-a", "signal-b"]'


def test_no_ready_mark_before_the_new_subscriptions_settled(
    replica: Callable[[str], SignalService], clock: FakeClock
) -> None:
    a = replica("signal-a")
    a.refresh_membership()
    early = a.assignment_changed_ns + SUBSCRIPTION_SETTLE_NS - 1

    a.on_feed_status(FeedStatus(ts_event=early, ts_init=early, venue="binance", state="waiting"))

    assert a.rt.store.get("ready:signal:signal-a") is None


def test_no_ready_mark_before_hearing_the_trading_state(
    replica: Callable[[str], SignalService], clock: FakeClock
) -> None:
    a = replica("signal-a")
    a.control = SimpleNamespace(gate=TradingGate(clock))  # type: ignore[assignment]
    a.refresh_membership()

    a.on_feed_status(settled_status(a, clock))

    assert a.rt.store.get("ready:signal:signal-a") is None


def test_the_ready_mark_follows_a_membership_change_at_once(
    replica: Callable[[str], SignalService], clock: FakeClock
) -> None:
    a, b = two_replicas(replica)
    a.on_feed_status(settled_status(a, clock))
    b.close()
    a.refresh_membership()

    a.on_feed_status(settled_status(a, clock))  # well inside the 1 s refresh throttle

    assert a.rt.store.get("ready:signal:signal-a") == b'["signal-a"]'


@pytest.fixture
def market_data(runtime: Callable[[str, str], Runtime]) -> MarketDataService:
    return MarketDataService(runtime("market-data", "md-1"))


def test_market_data_waits_for_the_configured_number_of_replicas(
    replica: Callable[[str], SignalService], market_data: MarketDataService, clock: FakeClock
) -> None:
    a = replica("signal-a")
    a.refresh_membership()
    a.on_feed_status(settled_status(a, clock))

    assert market_data.missing_consumers() == ["signal (1/2)"]


def test_market_data_proceeds_once_every_replica_reports_the_same_view(
    replica: Callable[[str], SignalService], market_data: MarketDataService, clock: FakeClock
) -> None:
    a, b = two_replicas(replica)
    a.on_feed_status(settled_status(a, clock))
    b.on_feed_status(settled_status(b, clock))
    keys = market_data.rt.store.keys("ready:signal:")

    assert market_data.replicas_settled("signal", keys)
    assert market_data.missing_consumers() == []


def test_market_data_waits_while_a_replica_still_has_an_old_view(
    replica: Callable[[str], SignalService], market_data: MarketDataService, clock: FakeClock
) -> None:
    a = replica("signal-a")
    a.refresh_membership()
    a.on_feed_status(settled_status(a, clock))  # marks ready seeing only itself
    b = replica("signal-b")
    b.refresh_membership()
    b.on_feed_status(settled_status(b, clock))  # sees both
    keys = market_data.rt.store.keys("ready:signal:")

    assert not market_data.replicas_settled("signal", keys)
    assert market_data.missing_consumers() == ["signal (replica assignment not settled)"]

    a.refresh_membership()  # a now sees b and hands over b's symbols
    a.on_feed_status(settled_status(a, clock))

    assert market_data.replicas_settled("signal", keys)
    assert market_data.missing_consumers() == []


def test_services_that_mark_ready_without_a_view_count_as_settled(
    market_data: MarketDataService,
) -> None:
    store = market_data.rt.store
    store.set("ready:risk:risk-1", b"1", ttl_ms=60_000)

    assert market_data.replicas_settled("risk", store.keys("ready:risk:"))
