"""Fleet configuration: one frozen struct per service, loaded from TOML, overridden by env.

Every field that is a duration or size carries its unit in its name. Money is written as a
TOML string ("0.001") and decoded to Decimal, never through a binary float. Environment
variables override any field: FLOTILLA__RISK__COLLAR_BPS=25 sets `[risk] collar_bps`, and
FLOTILLA__RISK__MAX_POSITION__BTCUSDT=0.01 sets one key of a table.
"""

from __future__ import annotations

import os
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import msgspec

ENV_PREFIX = "FLOTILLA__"
SERVICES = ("market-data", "signal", "risk", "execution", "kill-switch")
# Services that must be the only active writer for an account (README "Scaling").
SINGLE_WRITERS = frozenset({"execution", "risk", "kill-switch"})
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "config" / "flotilla.toml"


class ConfigError(Exception):
    """The configuration is unreadable or a value is invalid; the message says which."""


class _Config(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Base of config structs: unknown keys are errors (a typo must not be silently ignored)."""


class Instrument(_Config, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """A tradable symbol and its increments."""

    base: str
    quote: str
    price_increment: Decimal
    size_increment: Decimal
    venue: str = "binance"


class BusConfig(_Config, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """ZeroMQ endpoints as full URLs; binders bind them, everyone else connects."""

    md_pub: str = "tcp://127.0.0.1:5550"
    sig_in: str = "tcp://127.0.0.1:5551"
    risk_pub: str = "tcp://127.0.0.1:5552"
    orders: str = "tcp://127.0.0.1:5553"
    exec_pub: str = "tcp://127.0.0.1:5554"
    ctl_pub: str = "tcp://127.0.0.1:5555"
    ctl_cmd: str = "tcp://127.0.0.1:5556"
    ctl_ack: str = "tcp://127.0.0.1:5557"
    bind_host: str = ""  # "" binds the URL's own host; "0.0.0.0" in containers
    data_hwm: int = 0  # 0 = unbounded queues: a bounded replay must never drop at the HWM
    pub_linger_ms: int = 2000


class MarketDataConfig(_Config, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Replay feed settings."""

    metrics_port: int = 9101
    feed: list[str] = []
    speed: float = 0.0  # 1.0 = recorded pace, 10 = ten times faster, 0 = as fast as possible
    wait_for_consumers: dict[str, int] = msgspec.field(
        default_factory=lambda: {"signal": 1, "risk": 1, "execution": 1}
    )
    consumer_wait_timeout_ms: int = 30_000
    status_interval_ms: int = 20
    rate_per_s: float = 0.0  # > 0: publish at this fixed tick rate instead of by `speed`
    repeat: int = 1  # replay the feed this many times (benchmarks need more ticks than it has)
    preload: bool = False  # parse the whole feed before starting, so parsing never paces it
    limit_ticks: int = 0  # > 0: stop after publishing this many ticks (benchmarks)
    source: Literal["replay", "binance", "alpaca"] = "replay"  # live: python-binance / alpaca-py
    venue_url: str = ""  # live feed: "" = the venue itself; "http://127.0.0.1:N" = a local fake
    live_silence_timeout_s: float = 10.0  # live feed watchdog: reconnect after this much silence
    alpaca_asset_class: Literal["crypto", "stocks"] = "crypto"
    alpaca_stock_feed: Literal["iex", "sip"] = "iex"  # stocks: IEX (free) or SIP (paid plan)


class OfiParams(_Config, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Order-flow-imbalance strategy parameters."""

    window_trades: int = 50
    entry_threshold: float = 0.6
    min_microprice_edge_bps: float = 0.0
    cooldown_ms: int = 5_000
    order_type: Literal["market", "limit"] = "market"
    order_qty: dict[str, Decimal] = {}


class PulseParams(_Config, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The load-generating strategy `make bench` uses: a market order every N ticks,
    alternating sides. It has no edge and exists only to drive the order path."""

    every_ticks: int = 10
    order_qty: dict[str, Decimal] = {}


class SignalConfig(_Config, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The signal service: which strategy, over which symbols."""

    metrics_port: int = 9102
    strategy: Literal["ofi", "pulse"] = "ofi"
    symbols: list[str] = []
    ofi: OfiParams = OfiParams()
    pulse: PulseParams = PulseParams()


class RiskLimits(_Config, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Pre-trade limits; per-symbol tables are keyed by symbol."""

    max_order_qty: dict[str, Decimal] = {}
    max_order_notional: Decimal = Decimal("5000")
    max_position: dict[str, Decimal] = {}
    collar_bps: Decimal = Decimal("50")
    max_orders_per_window: int = 5
    rate_window_ms: int = 1_000


class PanicConfig(_Config, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Panic rules in risk; each firing becomes a kill-switch transition (SAFETY.md)."""

    enabled: bool = True
    # No quote for a symbol this long (after its first) -> halt. Not 500: the bundled recording
    # has normal quiet gaps up to 874 ms (ETHUSDT) at recorded pace (tests/unit/test_panic_rules).
    quote_stale_ms: int = 1_000
    spread_blowout_ratio: Decimal = Decimal("3")  # spread > ratio x rolling median ...
    # ... for at least this long -> halt. One-tick medians and millisecond blow-outs (up to
    # 190 ms) are normal in the recording; a persistent one is a broken market.
    spread_blowout_persist_ms: int = 250
    spread_window_quotes: int = 500  # quotes in the rolling median
    spread_min_samples: int = 100  # no spread verdict before this many quotes of a symbol
    slippage_ratio: Decimal = Decimal("3")  # |fill - expected| > ratio x expected slippage
    expected_slippage_bps: Decimal = Decimal("5")
    venue_errors: int = 5  # this many venue errors ...
    venue_error_window_ms: int = 10_000  # ... within this window -> halt
    daily_loss_limit: Decimal = Decimal("1000")  # realised + unrealised loss (quote ccy) -> halt
    drawdown_soft: Decimal = Decimal("250")  # from the PnL peak -> REDUCING
    drawdown_hard: Decimal = Decimal("500")  # from the PnL peak -> HALTED
    max_fills_per_window: int = 20  # repeated-execution throttle, per strategy ...
    fill_window_ms: int = 60_000  # ... -> strategy disabled until an operator resumes it


class RiskConfig(_Config, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The risk service."""

    metrics_port: int = 9103
    limits: RiskLimits = RiskLimits()
    panic: PanicConfig = PanicConfig()
    order_timeout_ms: int = 1_000


class ExecutionConfig(_Config, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The execution service and its paper exchange."""

    metrics_port: int = 9104
    taker_fee_bps: Decimal = Decimal("10")
    maker_fee_bps: Decimal = Decimal("10")
    max_order_age_ms: int = 2_000
    # The venue orders go to. Anything but "paper" is a live venue (services/execution/live.py);
    # a production endpoint also needs `live = true` (`flotilla up --live`).
    venue: Literal["paper", "binance", "alpaca"] = "paper"
    venue_url: str = ""  # "" = the venue's test endpoint (Binance testnet, Alpaca paper)
    live: bool = False  # required to trade on a venue's production endpoint
    venue_timeout_ms: int = 5_000
    venue_poll_interval_ms: int = 250  # fills and unknown outcomes fetched this often
    venue_sync_interval_ms: int = 2_000  # working orders checked against the venue's
    venue_unknown_grace_ms: int = 5_000  # an unknown order absent this long never arrived


class GpioConfig(_Config, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The emergency-stop panel (BCM pin numbers; 0 = not fitted)."""

    enabled: bool = False
    backend: Literal["auto", "rpi", "simulated"] = "auto"  # auto: RPi.GPIO if importable
    simulated_dir: str = ""  # simulated backend: pin levels as files here (tests, demos)
    estop_pin: int = 17  # normally closed to ground: pressed or wire cut reads high
    tamper_pin: int = 27  # normally closed: enclosure opened reads high
    led_green_pin: int = 5
    led_yellow_pin: int = 6
    led_red_pin: int = 13
    buzzer_pin: int = 0
    debounce_ms: int = 20
    poll_interval_ms: int = 1
    watchdog_ms: int = 500  # the GPIO loop silent this long -> halt
    blink_interval_ms: int = 250  # LED blink while the fleet has not acknowledged


class KillSwitchConfig(_Config, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The kill switch."""

    metrics_port: int = 9105
    heartbeat_interval_ms: int = 100
    initial_state: Literal["ACTIVE", "HALTED"] = "ACTIVE"
    resume_cooldown_ms: int = 3_000  # resume is refused this soon after a restricting transition
    prepare_timeout_ms: int = 200  # wait this long for execution to confirm a halt-prepare
    stall_halt: bool = True  # a kill switch that finds itself frozen > deadman window halts
    gpio: GpioConfig = GpioConfig()


class ClusterConfig(_Config, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Replicas and single writers (see libs/common/cluster.py and the README's Scaling)."""

    membership_ttl_ms: int = 2_000  # a silent replica's symbols move after at most this
    membership_interval_ms: int = 250  # how often replicas heartbeat and recompute assignment
    lease_ttl_ms: int = 5_000  # a dead single writer's standby takes over after at most this
    ready_ttl_ms: int = 5_000  # a start-up readiness mark from a dead process expires


class DashboardConfig(_Config, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The read-only web page (`flotilla dashboard`; `flotilla up` starts it with the fleet)."""

    enabled: bool = True  # flotilla up starts it (best effort: a busy port leaves the fleet be)
    host: str = "127.0.0.1"  # containers set 0.0.0.0
    port: int = 9100
    recent_events: int = 50  # orders and fills kept in memory for the page
    # Host headers served besides IP literals and localhost: any other name is refused, so a
    # page on some other site cannot read the fleet through DNS rebinding.
    allowed_hosts: list[str] = []


class FleetConfig(_Config, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Everything the fleet needs, one section per service."""

    instruments: dict[str, Instrument] = {}
    bus: BusConfig = BusConfig()
    metrics_host: str = "127.0.0.1"
    missed_heartbeats_to_halt: int = 3
    market_data: MarketDataConfig = MarketDataConfig()
    signal: SignalConfig = SignalConfig()
    risk: RiskConfig = RiskConfig()
    execution: ExecutionConfig = ExecutionConfig()
    kill_switch: KillSwitchConfig = KillSwitchConfig()
    cluster: ClusterConfig = ClusterConfig()
    dashboard: DashboardConfig = DashboardConfig()


def service_config(cfg: FleetConfig, service: str) -> Any:
    """A service's own section ("kill-switch" -> cfg.kill_switch)."""
    return getattr(cfg, service.replace("-", "_"))


def load_config(
    path: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None
) -> FleetConfig:
    """Read TOML, apply FLOTILLA__ overrides, validate; raise ConfigError with the bad field."""
    source = Path(path or os.environ.get("FLOTILLA_CONFIG") or DEFAULT_CONFIG)
    try:
        raw = tomllib.loads(source.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config {source}: {exc}") from exc
    apply_env_overrides(raw, os.environ if env is None else env)
    return parse_config(raw, str(source))


def parse_config(raw: dict[str, Any], source: str = "<dict>") -> FleetConfig:
    """Validate a config dict (a TOML float for money converts via its shortest repr, so 0.1 stays 0.1)."""
    try:
        cfg = msgspec.convert(raw, FleetConfig, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid config {source}: {exc}") from exc
    check_consistency(cfg)
    return cfg


def check_consistency(cfg: FleetConfig) -> None:
    """Cross-field checks msgspec cannot express."""
    for section in ("signal",):
        for sym in getattr(cfg, section).symbols:
            if sym not in cfg.instruments:
                raise ConfigError(f"[{section}] symbol {sym!r} is not in [instruments]")
    md = cfg.market_data
    if md.rate_per_s < 0 or md.repeat < 1 or md.limit_ticks < 0:
        raise ConfigError("[market_data] rate_per_s and limit_ticks must be >= 0, repeat >= 1")
    if cfg.market_data.speed < 0:
        raise ConfigError("[market_data] speed must be >= 0 (0 means as fast as possible)")
    for field in ("membership_ttl_ms", "membership_interval_ms", "lease_ttl_ms", "ready_ttl_ms"):
        if getattr(cfg.cluster, field) <= 0:
            raise ConfigError(f"[cluster] {field} must be > 0")
    # Leases renew and ready marks refresh about once a second (runtime.BEAT_INTERVAL_NS), and
    # a holder stops at half its TTL without a confirmed renewal: shorter TTLs would lapse.
    if cfg.cluster.lease_ttl_ms < 3_000:
        raise ConfigError("[cluster] lease_ttl_ms must be >= 3000 (leases renew every second)")
    if cfg.cluster.ready_ttl_ms < 2_000:
        raise ConfigError("[cluster] ready_ttl_ms must be >= 2000 (marks refresh every second)")
    if cfg.cluster.membership_interval_ms * 2 > cfg.cluster.membership_ttl_ms:
        raise ConfigError("[cluster] membership_ttl_ms must be at least 2x membership_interval_ms")
    if cfg.kill_switch.heartbeat_interval_ms <= 0:
        raise ConfigError("[kill_switch] heartbeat_interval_ms must be > 0")
    if not 0 < cfg.dashboard.port < 65536 or cfg.dashboard.recent_events < 1:
        raise ConfigError("[dashboard] port must be 1-65535 and recent_events >= 1")
    for name, inst in cfg.instruments.items():
        _require_positive(f"instruments.{name}.price_increment", inst.price_increment)
        _require_positive(f"instruments.{name}.size_increment", inst.size_increment)
    limits = cfg.risk.limits
    for field in ("max_order_qty", "max_position"):
        for sym, value in getattr(limits, field).items():
            _require_positive(f"risk.limits.{field}.{sym}", value)
    _require_positive("risk.limits.max_order_notional", limits.max_order_notional)
    _require_positive("risk.limits.collar_bps", limits.collar_bps)
    params = cfg.signal.ofi if cfg.signal.strategy == "ofi" else cfg.signal.pulse
    for sym, value in params.order_qty.items():
        _require_positive(f"signal.{cfg.signal.strategy}.order_qty.{sym}", value)
    for sym in cfg.signal.symbols:
        if sym not in params.order_qty:
            raise ConfigError(f"[signal.{cfg.signal.strategy}] order_qty has no size for {sym!r}")
    if cfg.signal.pulse.every_ticks < 1:
        raise ConfigError("[signal.pulse] every_ticks must be >= 1")
    for field in ("taker_fee_bps", "maker_fee_bps"):
        fee = getattr(cfg.execution, field)
        if not fee.is_finite() or fee < 0:
            raise ConfigError(f"execution.{field} must be a finite number >= 0, got {fee}")


def _require_positive(path: str, value: Decimal) -> None:
    """Money limits must be real, positive numbers: NaN or a negative cap would disable a check."""
    if not value.is_finite() or value <= 0:
        raise ConfigError(f"{path} must be a finite number > 0, got {value}")


def apply_env_overrides(raw: dict[str, Any], env: Any) -> None:
    """Set raw[a][b]... from every FLOTILLA__A__B=value variable.

    A key keeps its case when the file already has it that way (symbol tables such as
    max_position.BTCUSDT) or when it names an instrument; otherwise it is lowercased like
    every field name.
    """
    instruments = set(raw.get("instruments", {}))
    for name, value in sorted(env.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        path = name[len(ENV_PREFIX) :].split("__")
        node = raw
        for i, part in enumerate(path):
            if not isinstance(node, dict):
                raise ConfigError(f"{name}: {'.'.join(path[:i]).lower()} is not a table")
            key = part if part in node or part in instruments else part.lower()
            if i == len(path) - 1:
                node[key] = _env_value(value)
            else:
                node = node.setdefault(key, {})


def _env_value(value: str) -> Any:
    """Env values are strings; JSON-looking lists and tables are parsed, the rest left to msgspec."""
    if value[:1] in "[{":
        try:
            return msgspec.json.decode(value)
        except msgspec.DecodeError:
            return value
    return value


def bind_url(url: str, bind_host: str) -> str:
    """The URL a binder binds: the configured one, or the same port on bind_host."""
    if not bind_host or not url.startswith("tcp://"):
        return url
    port = url.rsplit(":", 1)[1]
    return f"tcp://{bind_host}:{port}"


def with_port_offset(bus: BusConfig, offset: int) -> BusConfig:
    """Shift every tcp port by `offset` (lets tests run a fleet on free ports)."""
    if offset == 0:
        return bus
    shifted = {}
    for field in bus.__struct_fields__:
        value = getattr(bus, field)
        if isinstance(value, str) and value.startswith("tcp://"):
            host, port = value.rsplit(":", 1)
            value = f"{host}:{int(port) + offset}"
        shifted[field] = value
    return msgspec.structs.replace(bus, **shifted)
