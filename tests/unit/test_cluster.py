"""Replica membership, symbol assignment and single-writer leases (libs/common/cluster.py)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from libs.common import runtime as runtime_module
from libs.common.clock import FakeClock
from libs.common.cluster import Lease, LeaseLost, Membership, assign, rendezvous_owner
from libs.common.config import DEFAULT_CONFIG, FleetConfig, load_config
from libs.common.runtime import Runtime
from libs.common.store import EmbeddedStore, RedisStore, StateStore, StoreError
from services import main as main_module

OpenStore = Callable[[], StateStore]

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
member_sets = st.sets(names, min_size=1, max_size=8)
item_sets = st.sets(names, min_size=0, max_size=40)


# --- rendezvous hashing: pure functions -----------------------------------------------------


def owners(items: set[str], members: set[str]) -> dict[str, str]:
    """item -> owning member, as assign() hands them out."""
    result: dict[str, str] = {}
    for member in members:
        for item in assign(items, members, member):
            assert item not in result, f"{item} assigned twice"
            result[item] = member
    return result


def test_rendezvous_owner_of_nothing_is_nobody() -> None:
    assert rendezvous_owner("BTCUSDT", []) is None
    assert assign(["BTCUSDT"], [], "a") == []


@settings(max_examples=200, deadline=None)
@given(item=names, members=member_sets, data=st.data())
def test_rendezvous_owner_is_a_member_and_ignores_member_order(
    item: str, members: set[str], data: st.DataObject
) -> None:
    ordered = sorted(members)
    shuffled = data.draw(st.permutations(ordered))
    owner = rendezvous_owner(item, ordered)

    assert owner in members
    assert rendezvous_owner(item, shuffled) == owner
    assert rendezvous_owner(item, ordered) == owner  # deterministic on a repeat call


@settings(max_examples=200, deadline=None)
@given(items=item_sets, members=member_sets)
def test_assignment_partitions_items_with_none_lost_or_doubled(
    items: set[str], members: set[str]
) -> None:
    assert set(owners(items, members)) == items


@settings(max_examples=200, deadline=None)
@given(items=item_sets, members=st.sets(names, min_size=2, max_size=8), data=st.data())
def test_removing_a_member_moves_only_that_members_items(
    items: set[str], members: set[str], data: st.DataObject
) -> None:
    gone = data.draw(st.sampled_from(sorted(members)))
    before = owners(items, members)
    after = owners(items, members - {gone})

    assert set(after) == items
    for item, owner in before.items():
        if owner != gone:
            assert after[item] == owner, f"{item} moved although {owner} stayed"


@settings(max_examples=200, deadline=None)
@given(items=item_sets, members=member_sets, newcomer=names)
def test_adding_a_member_only_gives_it_items_and_moves_nothing_else(
    items: set[str], members: set[str], newcomer: str
) -> None:
    before = owners(items, members)
    after = owners(items, members | {newcomer})

    for item, owner in after.items():
        assert owner in (before[item], newcomer)


@settings(max_examples=100, deadline=None)
@given(items=item_sets, members=member_sets, data=st.data())
def test_assign_returns_a_sorted_list_whatever_the_input_order(
    items: set[str], members: set[str], data: st.DataObject
) -> None:
    me = data.draw(st.sampled_from(sorted(members)))
    item_order = data.draw(st.permutations(sorted(items)))
    member_order = data.draw(st.permutations(sorted(members)))
    mine = assign(item_order, member_order, me)

    assert mine == sorted(mine)
    assert mine == assign(sorted(items), sorted(members), me)
    assert assign(items, [*member_order, me], me) == mine  # a duplicate member changes nothing


def test_a_non_member_is_assigned_nothing() -> None:
    assert assign(["BTCUSDT", "ETHUSDT"], ["a", "b"], "c") == []


def test_many_symbols_spread_over_every_replica() -> None:
    symbols = [f"SYM{i}USDT" for i in range(1000)]
    replicas = ["signal-0", "signal-1", "signal-2", "signal-3"]

    shares = [len(assign(symbols, replicas, r)) for r in replicas]

    assert sum(shares) == 1000
    assert all(150 <= share <= 350 for share in shares), shares


# --- both store backends --------------------------------------------------------------------


@pytest.fixture(params=["embedded", "redis"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenStore]:
    """Opens connections to one empty store (as separate replicas would); closes them after."""
    opened: list[StateStore] = []
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        namespace = f"t{uuid.uuid4().hex[:12]}"

        def connect() -> StateStore:
            return RedisStore(url, namespace)
    else:

        def connect() -> StateStore:
            return EmbeddedStore(tmp_path / "state.sqlite")

    def opener() -> StateStore:
        opened.append(connect())
        return opened[-1]

    yield opener
    for store in opened:
        store.close()


def wait_until(predicate: Callable[[], bool], timeout_s: float = 2.0) -> bool:
    """Poll predicate every 10 ms until it holds or timeout_s passes; return its last value."""
    deadline = time.monotonic() + timeout_s
    for _ in range(int(timeout_s / 0.01) + 1):
        if predicate() or time.monotonic() >= deadline:
            break
        time.sleep(0.01)
    return predicate()


# --- Membership -----------------------------------------------------------------------------


def test_heartbeat_registers_a_replica(open_store: OpenStore) -> None:
    member = Membership(open_store(), "signal", "a", ttl_ms=60_000)
    assert member.live_members() == []

    member.heartbeat()

    assert member.live_members() == ["a"]


def test_replicas_on_separate_connections_see_each_other(open_store: OpenStore) -> None:
    a = Membership(open_store(), "signal", "a", ttl_ms=60_000)
    b = Membership(open_store(), "signal", "b", ttl_ms=60_000)
    a.heartbeat()
    b.heartbeat()

    assert a.live_members() == ["a", "b"]
    assert b.live_members() == ["a", "b"]


def test_a_silent_replica_drops_out_after_its_ttl(open_store: OpenStore) -> None:
    silent = Membership(open_store(), "signal", "silent", ttl_ms=200)
    alive = Membership(open_store(), "signal", "alive", ttl_ms=60_000)
    silent.heartbeat()
    alive.heartbeat()
    assert alive.live_members() == ["alive", "silent"]

    assert wait_until(lambda: alive.live_members() == ["alive"])


def test_leave_removes_the_replica_at_once(open_store: OpenStore) -> None:
    leaving = Membership(open_store(), "signal", "leaving", ttl_ms=60_000)
    staying = Membership(open_store(), "signal", "staying", ttl_ms=60_000)
    leaving.heartbeat()
    staying.heartbeat()

    leaving.leave()

    assert staying.live_members() == ["staying"]


def test_groups_do_not_see_each_others_members(open_store: OpenStore) -> None:
    store = open_store()
    Membership(store, "signal", "a", ttl_ms=60_000).heartbeat()
    other = Membership(store, "signal-b", "b", ttl_ms=60_000)
    other.heartbeat()

    assert other.live_members() == ["b"]


def test_membership_rejects_a_non_positive_ttl(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "s.sqlite")
    try:
        with pytest.raises(ValueError, match="ttl"):
            Membership(store, "signal", "a", ttl_ms=0)
    finally:
        store.close()


# --- Lease ----------------------------------------------------------------------------------


def test_first_instance_holds_the_lease_and_a_second_stands_by(open_store: OpenStore) -> None:
    first = Lease(open_store(), "risk", "risk-1", ttl_ms=60_000)
    second = Lease(open_store(), "risk", "risk-2", ttl_ms=60_000)

    assert first.try_acquire()
    assert not second.try_acquire()
    assert (first.held, second.held) == (True, False)
    assert second.holder_now() == "risk-1"


def test_try_acquire_by_the_holder_succeeds_again(open_store: OpenStore) -> None:
    lease = Lease(open_store(), "risk", "risk-1", ttl_ms=60_000)
    assert lease.try_acquire()

    assert lease.try_acquire()
    assert lease.holder_now() == "risk-1"


def test_release_hands_the_lease_to_a_standby_at_once(open_store: OpenStore) -> None:
    first = Lease(open_store(), "risk", "risk-1", ttl_ms=60_000)
    second = Lease(open_store(), "risk", "risk-2", ttl_ms=60_000)
    assert first.try_acquire()

    first.release()

    assert not first.held
    assert second.try_acquire()
    assert second.holder_now() == "risk-2"


def test_an_expired_lease_can_be_taken_by_a_standby(open_store: OpenStore) -> None:
    first = Lease(open_store(), "risk", "risk-1", ttl_ms=100)
    second = Lease(open_store(), "risk", "risk-2", ttl_ms=60_000)
    assert first.try_acquire()

    assert wait_until(second.try_acquire)
    assert second.holder_now() == "risk-2"


def test_renew_after_someone_else_took_the_lease_raises_lease_lost(
    open_store: OpenStore,
) -> None:
    old = Lease(open_store(), "risk", "risk-1", ttl_ms=100)
    new = Lease(open_store(), "risk", "risk-2", ttl_ms=60_000)
    assert old.try_acquire()
    assert wait_until(new.try_acquire)

    with pytest.raises(LeaseLost, match="risk-2"):
        old.renew()
    assert not old.held
    assert new.holder_now() == "risk-2"


def test_a_former_holder_cannot_reacquire_a_lease_someone_else_holds(
    open_store: OpenStore,
) -> None:
    old = Lease(open_store(), "risk", "risk-1", ttl_ms=100)
    new = Lease(open_store(), "risk", "risk-2", ttl_ms=60_000)
    assert old.try_acquire()
    assert wait_until(new.try_acquire)

    assert not old.try_acquire()
    assert not old.held


def test_release_by_a_former_holder_leaves_the_new_holders_lease_alone(
    open_store: OpenStore,
) -> None:
    old = Lease(open_store(), "risk", "risk-1", ttl_ms=100)
    new = Lease(open_store(), "risk", "risk-2", ttl_ms=60_000)
    assert old.try_acquire()
    assert wait_until(new.try_acquire)

    old.release()

    assert new.holder_now() == "risk-2"
    new.renew()  # still ours


def test_renew_extends_a_held_lease(open_store: OpenStore) -> None:
    lease = Lease(open_store(), "risk", "risk-1", ttl_ms=60_000)
    assert lease.try_acquire()

    lease.renew()

    assert lease.held
    assert lease.holder_now() == "risk-1"


def test_renew_without_holding_the_lease_raises_lease_lost(open_store: OpenStore) -> None:
    lease = Lease(open_store(), "risk", "risk-1", ttl_ms=60_000)

    with pytest.raises(LeaseLost, match="not held"):
        lease.renew()


def test_leases_of_different_services_are_independent(open_store: OpenStore) -> None:
    store = open_store()

    assert Lease(store, "risk", "x", ttl_ms=60_000).try_acquire()
    assert Lease(store, "execution", "y", ttl_ms=60_000).try_acquire()


def test_lease_rejects_a_non_positive_ttl(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path / "s.sqlite")
    try:
        with pytest.raises(ValueError, match="ttl"):
            Lease(store, "risk", "a", ttl_ms=-1)
    finally:
        store.close()


# --- Lease while the store is unreachable (fake monotonic clock) ----------------------------


class UnreachableWhenTold:
    """A store wrapper whose compare-and-set calls raise StoreError while `down` is set."""

    def __init__(self, inner: StateStore) -> None:
        self.inner = inner
        self.down = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def replace_if_equal(self, *args: Any, **kwargs: Any) -> bool:
        """Fail like an unreachable Redis while down."""
        if self.down:
            raise StoreError("Redis at redis://x: connection refused")
        return self.inner.replace_if_equal(*args, **kwargs)

    def delete_if_equal(self, *args: Any, **kwargs: Any) -> bool:
        """Fail like an unreachable Redis while down."""
        if self.down:
            raise StoreError("Redis at redis://x: connection refused")
        return self.inner.delete_if_equal(*args, **kwargs)


class ManualClock:
    """A monotonic_ns source the test moves by hand."""

    def __init__(self) -> None:
        self.now_ns = 1_000_000_000

    def __call__(self) -> int:
        return self.now_ns

    def advance_ms(self, ms: int) -> None:
        """Move time forward."""
        self.now_ns += ms * 1_000_000


@pytest.fixture
def flaky(tmp_path: Path) -> Iterator[UnreachableWhenTold]:
    """An embedded store that the test can make unreachable."""
    inner = EmbeddedStore(tmp_path / "s.sqlite")
    yield UnreachableWhenTold(inner)
    inner.close()


def flaky_lease(store: UnreachableWhenTold, clock: ManualClock) -> Lease:
    """A held 1 s lease on the flaky store."""
    lease = Lease(store, "risk", "risk-1", ttl_ms=1_000, monotonic_ns=clock)
    assert lease.try_acquire()
    return lease


def test_store_outage_shorter_than_half_the_ttl_keeps_the_lease(
    flaky: UnreachableWhenTold,
) -> None:
    clock = ManualClock()
    lease = flaky_lease(flaky, clock)
    flaky.down = True

    for _ in range(4):
        clock.advance_ms(100)
        lease.renew()  # 100..400 ms since the last renewal: keep going

    assert lease.held


def test_store_outage_past_half_the_ttl_loses_the_lease(flaky: UnreachableWhenTold) -> None:
    clock = ManualClock()
    lease = flaky_lease(flaky, clock)
    flaky.down = True
    clock.advance_ms(400)
    lease.renew()

    clock.advance_ms(100)  # 500 ms: the lease may expire before we could notice
    with pytest.raises(LeaseLost, match="unreachable"):
        lease.renew()
    assert not lease.held


def test_a_successful_renewal_restarts_the_safe_margin(flaky: UnreachableWhenTold) -> None:
    clock = ManualClock()
    lease = flaky_lease(flaky, clock)
    clock.advance_ms(400)
    lease.renew()
    flaky.down = True

    clock.advance_ms(400)  # 800 ms since acquiring, 400 ms since the last renewal
    lease.renew()
    assert lease.held
    clock.advance_ms(100)
    with pytest.raises(LeaseLost):
        lease.renew()


def test_release_while_the_store_is_unreachable_does_not_raise(
    flaky: UnreachableWhenTold,
) -> None:
    lease = flaky_lease(flaky, ManualClock())
    flaky.down = True

    lease.release()

    assert not lease.held


# --- Runtime: standing by, taking over, stopping on a lost lease ----------------------------


@pytest.fixture
def cfg() -> FleetConfig:
    return load_config(DEFAULT_CONFIG, env={})


@pytest.fixture
def metrics_served(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Records (service, port) for each /metrics endpoint a Runtime would start (none binds)."""
    served: list[tuple[str, int]] = []

    def record(port: int, host: str, service: str, version: str, cfg_hash: str) -> None:
        served.append((service, port))

    monkeypatch.setattr(runtime_module, "serve_metrics", record)
    return served


@pytest.fixture
def make_runtime(
    tmp_path: Path,
    cfg: FleetConfig,
    monkeypatch: pytest.MonkeyPatch,
    metrics_served: list[tuple[str, int]],
) -> Iterator[Callable[[str, str], Runtime]]:
    """Builds Runtimes on one embedded store (no sockets opened); closes them after."""
    built: list[Runtime] = []

    def build(service: str, instance: str) -> Runtime:
        monkeypatch.setenv("FLOTILLA_INSTANCE", instance)
        rt = Runtime(service, cfg, tmp_path, FakeClock(), EmbeddedStore(tmp_path / "s.sqlite"))
        built.append(rt)
        return rt

    yield build
    for rt in built:
        rt.close()


BEAT = "flotilla_loop_heartbeat_timestamp_seconds"


def lease_held_gauge() -> float | None:
    return REGISTRY.get_sample_value("flotilla_lease_held")


def test_a_replicated_service_needs_no_lease(make_runtime: Callable[[str, str], Runtime]) -> None:
    rt = make_runtime("signal", "signal-1")

    assert rt.wait_for_lease()
    assert rt.lease is None


def test_a_single_writer_takes_a_free_lease_and_reports_it(
    make_runtime: Callable[[str, str], Runtime],
) -> None:
    rt = make_runtime("risk", "risk-1")

    assert rt.wait_for_lease()

    assert rt.lease is not None and rt.lease.holder_now() == "risk-1"
    assert lease_held_gauge() == 1.0


def test_a_second_single_writer_stands_by_until_told_to_stop(
    make_runtime: Callable[[str, str], Runtime], monkeypatch: pytest.MonkeyPatch
) -> None:
    active = make_runtime("risk", "risk-1")
    assert active.wait_for_lease()
    standby = make_runtime("risk", "risk-2")
    polls: list[float] = []

    def sleep(seconds: float) -> None:
        polls.append(seconds)
        standby.stop_requested = len(polls) >= 3  # SIGTERM while standing by

    monkeypatch.setattr(runtime_module.time, "sleep", sleep)

    assert not standby.wait_for_lease()
    assert len(polls) == 3
    assert REGISTRY.get_sample_value(BEAT) == pytest.approx(time.time(), abs=60)  # alive
    assert standby.lease is not None and not standby.lease.held
    assert standby.lease.holder_now() == "risk-1"


def test_a_standby_takes_over_when_the_active_writer_closes(
    make_runtime: Callable[[str, str], Runtime], monkeypatch: pytest.MonkeyPatch
) -> None:
    active = make_runtime("risk", "risk-1")
    assert active.wait_for_lease()
    standby = make_runtime("risk", "risk-2")
    polls: list[float] = []

    def sleep(seconds: float) -> None:
        polls.append(seconds)
        assert len(polls) < 5, "standby never took over"
        if len(polls) == 2:
            active.close()  # clean stop: releases the lease

    monkeypatch.setattr(runtime_module.time, "sleep", sleep)

    assert standby.wait_for_lease()
    assert len(polls) == 2
    assert standby.lease is not None and standby.lease.holder_now() == "risk-2"


def test_a_standby_serves_metrics_so_health_checks_see_it_alive(
    make_runtime: Callable[[str, str], Runtime],
    metrics_served: list[tuple[str, int]],
    cfg: FleetConfig,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    active = make_runtime("kill-switch", "ks-1")
    assert active.wait_for_lease()
    standby = make_runtime("kill-switch", "ks-2")
    metrics_served.clear()  # forget the active instance's endpoint
    served_while_standing_by: list[list[tuple[str, int]]] = []

    def sleep(seconds: float) -> None:
        served_while_standing_by.append(list(metrics_served))
        standby.stop_requested = True

    monkeypatch.setattr(runtime_module.time, "sleep", sleep)

    assert not standby.wait_for_lease()
    port = cfg.kill_switch.metrics_port
    assert served_while_standing_by == [[("kill-switch", port)]]


def test_metrics_are_served_once_when_the_service_starts_after_taking_the_lease(
    make_runtime: Callable[[str, str], Runtime], metrics_served: list[tuple[str, int]]
) -> None:
    rt = make_runtime("execution", "exec-1")
    assert rt.wait_for_lease()

    rt.serve_metrics(rt.cfg.execution.metrics_port)  # what the service's start() does

    assert metrics_served == [("execution", rt.cfg.execution.metrics_port)]


def test_maintain_raises_lease_lost_once_another_instance_holds_the_lease(
    make_runtime: Callable[[str, str], Runtime],
) -> None:
    rt = make_runtime("risk", "risk-1")
    assert rt.wait_for_lease()
    rt.store.set("lease:risk", b"risk-2", ttl_ms=60_000)  # ours expired and risk-2 took it

    with pytest.raises(LeaseLost, match="risk-2"):
        rt.maintain()
    assert lease_held_gauge() == 0.0


# --- services/main.py exit codes ------------------------------------------------------------


class FakeService:
    """Records lifecycle calls; run() raises what it is given."""

    def __init__(self, rt: Runtime, raises: BaseException | None = None) -> None:
        self.rt = rt
        self.raises = raises
        self.calls: list[str] = []

    def start(self) -> None:
        self.calls.append("start")

    def run(self) -> int:
        self.calls.append("run")
        if self.raises is not None:
            raise self.raises
        return 0

    def close(self) -> None:
        self.calls.append("close")


@pytest.fixture
def service_main(
    tmp_path: Path,
    cfg: FleetConfig,
    monkeypatch: pytest.MonkeyPatch,
    metrics_served: list[tuple[str, int]],
) -> list[Runtime]:
    """run_service on the shipped config and an embedded store, without touching logging or
    the test process's signal handlers; returns the Runtimes it builds."""
    built: list[Runtime] = []

    def runtime(service: str, cfg: FleetConfig, run_dir: Path) -> Runtime:
        rt = Runtime(service, cfg, run_dir, FakeClock(), EmbeddedStore(tmp_path / "s.sqlite"))
        monkeypatch.setattr(rt, "install_signal_handlers", lambda: None)
        built.append(rt)
        return rt

    monkeypatch.setenv("FLOTILLA_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setattr(main_module, "setup_logging", lambda name: None)
    monkeypatch.setattr(main_module, "load_config", lambda: cfg)
    monkeypatch.setattr(main_module, "Runtime", runtime)
    return built


def test_a_writer_that_loses_its_lease_exits_with_code_4(service_main: list[Runtime]) -> None:
    services: list[FakeService] = []

    def factory(rt: Runtime) -> FakeService:
        services.append(FakeService(rt, raises=LeaseLost("lease:risk is now held by risk-2")))
        return services[-1]

    assert main_module.run_service("risk", factory) == main_module.EXIT_LEASE_LOST == 4
    assert services[0].calls == ["start", "run", "close"]


def test_a_standby_stopped_before_taking_over_exits_0_without_starting(
    service_main: list[Runtime], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    holder_store = EmbeddedStore(tmp_path / "s.sqlite")
    try:
        assert Lease(holder_store, "risk", "risk-1", ttl_ms=60_000).try_acquire()

        def sleep(seconds: float) -> None:
            service_main[0].stop_requested = True  # SIGTERM while standing by

        monkeypatch.setattr(runtime_module.time, "sleep", sleep)
        services: list[FakeService] = []

        def factory(rt: Runtime) -> FakeService:
            services.append(FakeService(rt))
            return services[-1]

        assert main_module.run_service("risk", factory) == 0
        assert services[0].calls == []
        assert holder_store.get("lease:risk") == b"risk-1"
    finally:
        holder_store.close()
