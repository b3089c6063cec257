"""The fleet as users run it: `docker compose up` on the bundled replay, with a real Redis."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

import pytest

from libs.common.testing.compose import ROOT, ComposeFleet, wait_for

pytestmark = [pytest.mark.system, pytest.mark.slow, pytest.mark.timeout(600)]

BUNDLED_TICKS = 67_980  # data/binance/README.md
FOUR_SERVICES = ("execution", "market-data", "risk", "signal")


def flotilla(fleet: ComposeFleet, *args: str) -> subprocess.CompletedProcess[str]:
    """The operator CLI on the host, pointed at the compose kill switch's published port."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "flotilla.cli",
            *args,
            "--endpoint",
            f"tcp://127.0.0.1:{fleet.cmd_port}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        check=False,
    )


def acked_services(status_output: str, seq: int) -> set[str]:
    """Services with an instance that acknowledged state `seq`, from `flotilla status`."""
    head, *lines = status_output.splitlines() or [""]
    if f" seq {seq} " not in head:
        return set()
    acked = set()
    for line in lines:
        instance, _, mark = line.strip().rpartition(": ")
        if mark == "ok":
            acked |= {svc for svc in FOUR_SERVICES if instance.startswith(f"{svc}-")}
    return acked


def halt_and_wait_for_every_ack(fleet: ComposeFleet) -> None:
    """`flotilla halt` from the host, then wait until every service container acknowledged it."""
    halted = flotilla(fleet, "halt", "--reason", "system test", "--operator", "ci")
    assert halted.returncode == 0, halted.stderr
    seq = int(halted.stdout.split(" seq ")[1].split()[0])
    wait_for(
        lambda: acked_services(flotilla(fleet, "status").stdout, seq) == set(FOUR_SERVICES),
        15,
        "every container to acknowledge the halt",
    )


def wait_until_drained(fleet: ComposeFleet, timeout_s: float) -> None:
    """Wait for the whole replay to go through to execution's end-of-stream."""
    wait_for(lambda: fleet.keys("drained:market-data:"), timeout_s, "market-data to finish")
    wait_for(lambda: fleet.keys("drained:execution:"), timeout_s, "execution to drain")


def test_compose_fleet_trades_the_replay_obeys_a_host_halt_and_stops_cleanly(compose_fleet):
    """Compose brings the fleet up on Redis; it trades every tick; a halt from the host is
    acknowledged by every container; `stop` ends every container with exit code 0."""
    fleet = compose_fleet(REPLAY_SPEED="0")
    fleet.up()
    wait_until_drained(fleet, 180)

    (md,) = fleet.stats("market-data")
    assert sum(md["ticks_published"].values()) == BUNDLED_TICKS
    (execution,) = fleet.stats("execution")
    assert execution["fills"] > 0
    assert execution["sequence_gaps"] == 0

    halt_and_wait_for_every_ack(fleet)

    # compose sends SIGTERM and waits 10 s before SIGKILL (exit 137): 0 means a drained stop.
    codes = fleet.stop(timeout_s=10)
    assert len(codes) == 6
    assert codes == dict.fromkeys(codes, 0)


def signals_per_symbol(fleet: ComposeFleet) -> dict[str, int]:
    """Signals emitted per symbol, summed over every signal replica."""
    totals: dict[str, int] = {}
    for doc in fleet.stats("signal"):
        for symbol, count in doc["signals"].items():
            totals[symbol] = totals.get(symbol, 0) + count
    return totals


def run_replay_with_signal_replicas(compose_fleet, replicas: int) -> ComposeFleet:
    """A full flat-out replay with `replicas` signal replicas, waited to its drained end."""
    fleet = compose_fleet(REPLAY_SPEED="0", SIGNAL_REPLICAS=str(replicas))
    fleet.up("--scale", f"signal={replicas}")
    wait_until_drained(fleet, 180)
    wait_for(lambda: len(fleet.keys("drained:signal:")) == replicas, 30, "every replica to drain")
    return fleet


def test_three_signal_replicas_emit_exactly_the_signals_of_one(compose_fleet):
    """Scaling signal to 3 splits the symbols: per-symbol signal counts equal one replica's."""
    one = run_replay_with_signal_replicas(compose_fleet, 1)
    expected = signals_per_symbol(one)
    one.down()
    three = run_replay_with_signal_replicas(compose_fleet, 3)

    assert sum(expected.values()) > 0
    assert signals_per_symbol(three) == expected
    owners = [tuple(doc["ticks_received"]) for doc in three.stats("signal")]
    owned = [symbol for symbols in owners for symbol in symbols]
    assert sorted(owned) == sorted(expected), "each symbol was processed by exactly one replica"
    assert len(three.containers("signal")) == 3


def assignments(fleet: ComposeFleet) -> dict[str, list[str]]:
    """Live replica -> the symbols it owns, from the replicas' own records in Redis."""
    docs = {key.rsplit(":", 1)[1]: fleet.get_json(key) for key in fleet.keys("assign:signal:")}
    return {instance: doc["symbols"] for instance, doc in docs.items() if doc}


def test_killed_signal_replica_hands_its_symbols_to_survivors_within_the_bound(compose_fleet):
    """`docker kill` of the replica owning BTCUSDT: a survivor owns it within
    membership_ttl_ms + membership_interval_ms (2.25 s by default) plus polling slack."""
    fleet = compose_fleet(REPLAY_SPEED="3", SIGNAL_REPLICAS="3")
    fleet.up("--scale", "signal=3")
    wait_for(
        lambda: sum(sum(doc["ticks_published"].values()) for doc in fleet.stats("market-data")),
        60,
        "the replay to start",
    )
    owners = wait_for(
        lambda: [i for i, symbols in assignments(fleet).items() if "BTCUSDT" in symbols],
        10,
        "an owner of BTCUSDT",
    )
    (victim_instance,) = owners
    victim = next(
        name
        for name in fleet.containers("signal")
        if victim_instance.startswith(f"signal-{fleet.hostname(name)}-")
    )
    subprocess.run(["docker", "update", "--restart=no", victim], check=True, capture_output=True)

    killed_at = time.monotonic()
    subprocess.run(["docker", "kill", victim], check=True, capture_output=True)
    survivor = wait_for(
        lambda: [
            i
            for i, symbols in assignments(fleet).items()
            if "BTCUSDT" in symbols and i != victim_instance
        ],
        10,
        "a survivor to take BTCUSDT",
        interval_s=0.05,
    )[0]
    handover_s = time.monotonic() - killed_at
    print(f"BTCUSDT moved from {victim_instance} to {survivor} in {handover_s:.2f} s")
    assert handover_s <= 2.25 + 1.0, f"handover took {handover_s:.2f} s"

    def survivor_btc_ticks() -> int:
        doc = fleet.get_json(f"stats:signal:{survivor}") or {}
        return int(doc.get("ticks_received", {}).get("BTCUSDT", 0))

    before = survivor_btc_ticks()
    wait_for(lambda: survivor_btc_ticks() > before, 15, "the survivor to receive BTCUSDT ticks")


def start_second_execution(fleet: ComposeFleet) -> str:
    """Start another execution container exactly like compose's (same env, network alias
    and journal volume): what someone scaling execution by hand would get."""
    (first,) = fleet.containers("execution")
    env = subprocess.run(
        ["docker", "inspect", "-f", "{{json .Config.Env}}", first],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    args = ["docker", "run", "-d", "--name", f"{fleet.project}-execution-extra"]
    args += ["--network", f"{fleet.project}_default", "--network-alias", "execution"]
    args += ["-v", f"{fleet.project}_execution-journal:/var/lib/flotilla"]
    args += ["--label", f"com.docker.compose.project={fleet.project}"]
    args += ["--label", "com.docker.compose.service=execution-extra"]
    for item in json.loads(env):
        args += ["-e", item]
    fleet.extras.append(f"{fleet.project}-execution-extra")
    subprocess.run([*args, "flotilla/execution:latest"], check=True, capture_output=True)
    return fleet.extras[-1]


def container_log(name: str) -> str:
    """Everything a container has logged so far."""
    done = subprocess.run(["docker", "logs", name], capture_output=True, text=True, check=True)
    return done.stdout + done.stderr


def test_second_execution_stands_by_and_takes_over_only_when_the_writer_dies(compose_fleet):
    """A second execution never trades alongside the first (it holds no lease and binds no
    order socket); when the first dies it takes over within the lease TTL and keeps trading
    from the same journal."""
    fleet = compose_fleet(REPLAY_SPEED="4")
    fleet.up()
    (first,) = fleet.containers("execution")
    extra = start_second_execution(fleet)
    wait_for(lambda: "standing by" in container_log(extra), 30, "the extra one to stand by")
    ready = subprocess.run(
        ["docker", "exec", extra, "python", "-m", "flotilla.health", "--ready"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ready.returncode == 1 and "standing by" in ready.stderr
    assert len(fleet.keys("stats:execution:")) == 1, "the standby must not run the service"

    wait_for(lambda: fleet.stats("execution")[0]["fills"] > 0, 60, "the first to fill orders")
    subprocess.run(["docker", "update", "--restart=no", first], check=True, capture_output=True)
    killed_at = time.monotonic()
    subprocess.run(["docker", "kill", first], check=True, capture_output=True)
    wait_for(
        lambda: "holding the execution lease" in container_log(extra),
        15,
        "the standby to take the lease",
        interval_s=0.1,
    )
    takeover_s = time.monotonic() - killed_at
    print(f"execution standby took over {takeover_s:.2f} s after the writer was killed")
    assert takeover_s <= 5.0 + 1.5, f"takeover took {takeover_s:.2f} s (lease TTL 5 s)"

    def extra_stats():
        docs = [d for d in fleet.stats("execution") if d["instance"].startswith("execution-")]
        return [d for d in docs if fleet.hostname(extra) in d["instance"]]

    (restored,) = wait_for(extra_stats, 15, "the new writer's stats")
    assert restored["orders_received"] > 0, "the journal of the dead writer was restored"


def prometheus_query(fleet: ComposeFleet, path: str) -> dict:
    """GET a Prometheus HTTP API path on the monitoring profile's published port."""
    url = f"http://127.0.0.1:{fleet.env['PROMETHEUS_PORT']}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.loads(resp.read())
    except OSError:
        return {}


def scraped_services(fleet: ComposeFleet) -> set[str]:
    """Services whose every target Prometheus currently reports as up."""
    targets = prometheus_query(fleet, "/api/v1/targets").get("data", {}).get("activeTargets", [])
    up = {t["labels"]["service"] for t in targets if t["health"] == "up"}
    down = {t["labels"]["service"] for t in targets if t["health"] != "up"}
    return up - down


def test_monitoring_profile_scrapes_every_service_and_agrees_with_the_fleet(compose_fleet):
    """`--profile monitoring`: Prometheus finds every service (2 signal replicas included)
    through Docker's DNS, and its fill count is the one execution reports."""
    fleet = compose_fleet(REPLAY_SPEED="0", SIGNAL_REPLICAS="2")
    fleet.up_with_profile("monitoring")
    wait_until_drained(fleet, 180)
    wait_for(
        lambda: scraped_services(fleet) == {"kill-switch", *FOUR_SERVICES},
        60,
        "Prometheus to scrape every service",
        interval_s=1,
    )
    (execution,) = fleet.stats("execution")
    query = "/api/v1/query?query=sum(flotilla_execution_fills_total)"

    def fills_in_prometheus() -> float | None:
        result = prometheus_query(fleet, query).get("data", {}).get("result", [])
        value = float(result[0]["value"][1]) if result else None
        return value if value == execution["fills"] else None

    wait_for(fills_in_prometheus, 30, f"Prometheus to see {execution['fills']} fills", 1)
    replicas = prometheus_query(fleet, "/api/v1/query?query=count(up{service=%22signal%22})")
    assert replicas["data"]["result"][0]["value"][1] == "2"


def test_every_container_obeys_a_halt_from_the_host_while_trading(compose_fleet):
    """Mid-replay, `flotilla halt` from the host: once acknowledged, risk refuses every signal
    (trading_halted) and execution accepts no order; after `resume` orders flow again."""
    fleet = compose_fleet(REPLAY_SPEED="5")
    fleet.up()
    wait_for(lambda: fleet.stats("execution")[0]["orders_received"] > 0, 90, "a first order")

    halt_and_wait_for_every_ack(fleet)
    time.sleep(1.0)  # an order already on the wire when risk applied the halt may still land
    orders_at_halt = fleet.stats("execution")[0]["orders_received"]

    def refused_while_halted() -> int:
        (risk,) = fleet.stats("risk")
        return int(risk["orders_rejected"].get("trading_halted", 0))

    wait_for(refused_while_halted, 60, "risk to refuse a signal because trading is halted")
    assert fleet.stats("execution")[0]["orders_received"] == orders_at_halt

    # The kill switch refuses a resume within 3 s of the halt (cooldown): retry as an operator would.
    wait_for(
        lambda: flotilla(fleet, "resume", "--operator", "ci").returncode == 0,
        10,
        "resume to be accepted once the cooldown has passed",
        interval_s=0.5,
    )
    wait_for(
        lambda: fleet.stats("execution")[0]["orders_received"] > orders_at_halt,
        60,
        "orders to flow again after resume",
    )
