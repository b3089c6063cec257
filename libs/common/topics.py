"""Every topic string is built here and nowhere else.

Topics are lowercase, dot-separated, general to specific. On the wire a topic is followed by a
NUL byte, so subscribing to `exact(t)` matches only `t`, and `family(...)` (ending in a dot)
matches a whole subtree: `md.quote.bin.` can never match `md.quote.binance2`.
"""

from __future__ import annotations

from functools import lru_cache

TERMINATOR = b"\x00"


@lru_cache(maxsize=4096)  # called for every published tick; the set of topics is small
def _join(*parts: str) -> str:
    """Join lowercased parts with dots."""
    return ".".join(p.lower() for p in parts)


def md_trade(venue: str, symbol: str) -> str:
    """Trades of one symbol on one venue."""
    return _join("md", "trade", venue, symbol)


def md_quote(venue: str, symbol: str) -> str:
    """Top-of-book quotes of one symbol on one venue."""
    return _join("md", "quote", venue, symbol)


def md_status(venue: str) -> str:
    """Feed lifecycle of one venue (waiting, live, end)."""
    return _join("md", "status", venue)


def signal(strategy: str, symbol: str) -> str:
    """A strategy's signals for one symbol."""
    return _join("sig", strategy, symbol)


def signal_end(instance: str) -> str:
    """End-of-stream marker of one signal instance."""
    return _join("sig", "_end", instance)


def risk_decision(strategy: str) -> str:
    """Risk's accept/reject decisions for one strategy."""
    return _join("risk", "decision", strategy)


RISK_PANIC = "risk.panic"  # panic rules firing; the kill switch subscribes


def risk_end() -> str:
    """End-of-stream marker of risk."""
    return "risk._end"


def exec_order(venue: str, symbol: str) -> str:
    """Order state changes of one symbol."""
    return _join("exec", "order", venue, symbol)


def exec_fill(venue: str, symbol: str) -> str:
    """Fills of one symbol."""
    return _join("exec", "fill", venue, symbol)


def exec_end() -> str:
    """End-of-stream marker of execution."""
    return "exec._end"


CTL_STATE = "ctl.state"


def heartbeat(service: str, instance: str) -> str:
    """Liveness of one service instance."""
    return _join("hb", service, instance)


def exact(topic: str) -> bytes:
    """Subscription bytes that match exactly this topic."""
    return topic.encode() + TERMINATOR


def family(*parts: str) -> bytes:
    """Subscription bytes that match every topic under these parts (trailing dot)."""
    return (_join(*parts) + ".").encode()


FAMILIES = frozenset({"md", "sig", "risk", "exec", "ctl", "hb"})


def family_of(topic: str) -> str:
    """The first segment of a topic, or "other": a metric label a hostile peer cannot inflate."""
    head = topic.split(".", 1)[0]
    return head if head in FAMILIES else "other"
