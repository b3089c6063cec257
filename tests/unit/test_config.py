"""Fleet configuration: the shipped file loads, and bad values fail loudly with their path."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from libs.common.config import DEFAULT_CONFIG, ConfigError, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "flotilla.toml"
    path.write_text(text)
    return path


MINIMAL = """
[instruments.BTCUSDT]
base = "BTC"
quote = "USDT"
price_increment = "0.01"
size_increment = "0.00001"

[signal]
symbols = ["BTCUSDT"]

[signal.ofi]
order_qty = { BTCUSDT = "0.001" }
"""


def test_shipped_config_loads_with_its_limits() -> None:
    cfg = load_config(DEFAULT_CONFIG, env={})

    assert set(cfg.instruments) == {"BTCUSDT", "ETHUSDT"}
    assert cfg.signal.symbols == ["BTCUSDT", "ETHUSDT"]
    assert cfg.risk.limits.max_position == {"BTCUSDT": Decimal("0.003"), "ETHUSDT": Decimal("0.06")}
    assert cfg.risk.limits.max_orders_per_window == 3
    assert cfg.risk.limits.rate_window_ms == 10_000
    assert cfg.missed_heartbeats_to_halt == 3


def test_money_fields_are_exact_decimals() -> None:
    cfg = load_config(DEFAULT_CONFIG, env={})
    money = [
        cfg.instruments["BTCUSDT"].price_increment,
        cfg.instruments["BTCUSDT"].size_increment,
        cfg.risk.limits.max_order_notional,
        cfg.risk.limits.collar_bps,
        *cfg.risk.limits.max_order_qty.values(),
        *cfg.risk.limits.max_position.values(),
        *cfg.signal.ofi.order_qty.values(),
        cfg.execution.taker_fee_bps,
        cfg.execution.maker_fee_bps,
    ]

    assert all(isinstance(v, Decimal) for v in money)
    assert cfg.instruments["BTCUSDT"].size_increment == Decimal("0.00001")


def test_money_written_as_a_toml_float_is_still_exact(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "\n[risk.limits]\nmax_order_notional = 0.1\n")

    cfg = load_config(path, env={})

    assert cfg.risk.limits.max_order_notional == Decimal("0.1")


def test_bad_env_value_names_the_field_it_broke() -> None:
    env = {"FLOTILLA__RISK__LIMITS__RATE_WINDOW_MS": "abc"}

    with pytest.raises(ConfigError, match=r"risk\.limits\.rate_window_ms"):
        load_config(DEFAULT_CONFIG, env=env)


def test_env_override_below_a_plain_value_is_a_config_error() -> None:
    env = {"FLOTILLA__RISK__LIMITS__RATE_WINDOW_MS__SECONDS": "1"}

    with pytest.raises(ConfigError, match="rate_window_ms"):
        load_config(DEFAULT_CONFIG, env=env)


def test_a_misspelt_key_is_rejected_not_ignored(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + '\n[risk.limits]\nmax_positon = { BTCUSDT = "1" }\n')

    with pytest.raises(ConfigError, match="max_positon"):
        load_config(path, env={})


def test_an_unknown_env_key_is_rejected() -> None:
    with pytest.raises(ConfigError, match="colar_bps"):
        load_config(DEFAULT_CONFIG, env={"FLOTILLA__RISK__LIMITS__COLAR_BPS": "25"})


def test_signal_symbol_without_an_instrument_is_rejected() -> None:
    env = {"FLOTILLA__SIGNAL__SYMBOLS": '["BTCUSDT", "XRPUSDT"]'}

    with pytest.raises(ConfigError, match="XRPUSDT"):
        load_config(DEFAULT_CONFIG, env=env)


def test_env_overrides_one_symbol_of_a_per_symbol_table() -> None:
    env = {"FLOTILLA__RISK__LIMITS__MAX_POSITION__BTCUSDT": "0.01"}

    cfg = load_config(DEFAULT_CONFIG, env=env)

    assert cfg.risk.limits.max_position == {"BTCUSDT": Decimal("0.01"), "ETHUSDT": Decimal("0.06")}


def test_env_overrides_a_scalar_field() -> None:
    cfg = load_config(DEFAULT_CONFIG, env={"FLOTILLA__RISK__LIMITS__COLLAR_BPS": "25"})

    assert cfg.risk.limits.collar_bps == Decimal("25")


def test_unrelated_environment_variables_are_ignored() -> None:
    cfg = load_config(DEFAULT_CONFIG, env={"FLOTILLA_OTHER": "x", "PATH": "/bin"})

    assert cfg.risk.limits.collar_bps == Decimal("50")


def test_unreadable_or_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml", env={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(write(tmp_path, "[risk\n"), env={})


def test_non_positive_increment_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace('size_increment = "0.00001"', 'size_increment = "0"'))

    with pytest.raises(ConfigError, match="BTCUSDT"):
        load_config(path, env={})


@pytest.mark.parametrize("value", ['"NaN"', '"-5"', '"0"', '"Infinity"'])
def test_money_limit_that_would_disable_a_check_is_refused(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, MINIMAL + f"\n[risk.limits]\nmax_order_notional = {value}\n")

    with pytest.raises(ConfigError, match=r"risk\.limits\.max_order_notional"):
        load_config(path, env={})


def test_traded_symbol_without_an_order_size_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace('order_qty = { BTCUSDT = "0.001" }', "order_qty = {}"))

    with pytest.raises(ConfigError, match="order_qty has no size for 'BTCUSDT'"):
        load_config(path, env={})
