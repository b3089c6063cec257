"""Running more than one copy of a service: replica membership and single-writer leases.

Both live in the state store (Redis in compose and Kubernetes), so they work across hosts.

- `Membership`: each replica of a scalable service (signal) refreshes a key with a TTL; the
  live keys are the group. Work (symbols) is split by rendezvous hashing over the live members,
  so every replica computes the same assignment from the same member list with no coordinator,
  and a departure moves only the departed replica's symbols.
- `Lease`: services that must be the only writer for an account (execution, risk, kill-switch)
  hold a TTL lease. A second instance stands by instead of trading; if the holder cannot renew
  in time it must stop before the lease expires, so two writers never overlap.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable

from .store import StateStore, StoreError

log = logging.getLogger(__name__)


def rendezvous_owner(item: str, members: Iterable[str]) -> str | None:
    """The member with the highest hash weight for item (highest random weight hashing)."""
    best: tuple[bytes, str] | None = None
    for member in members:
        weight = hashlib.blake2b(f"{item}\0{member}".encode(), digest_size=8).digest()
        if best is None or (weight, member) > best:
            best = (weight, member)
    return None if best is None else best[1]


def assign(items: Iterable[str], members: Iterable[str], me: str) -> list[str]:
    """The items member `me` owns, in a stable order."""
    live = sorted(set(members))
    return sorted(item for item in items if rendezvous_owner(item, live) == me)


class Membership:
    """A replica's registration in its group, refreshed with a TTL heartbeat."""

    def __init__(
        self,
        store: StateStore,
        group: str,
        instance: str,
        ttl_ms: int,
    ) -> None:
        if ttl_ms <= 0:
            raise ValueError("membership ttl_ms must be > 0")
        self.store = store
        self.prefix = f"members:{group}:"
        self.instance = instance
        self.ttl_ms = ttl_ms

    def heartbeat(self) -> None:
        """Refresh this replica's key (it disappears ttl_ms after the last heartbeat)."""
        self.store.set(self.prefix + self.instance, b"1", ttl_ms=self.ttl_ms)

    def live_members(self) -> list[str]:
        """The replicas whose key has not expired, this one included once registered."""
        return [key[len(self.prefix) :] for key in self.store.keys(self.prefix)]

    def leave(self) -> None:
        """Deregister at a clean stop so survivors take over at once, not after the TTL."""
        self.store.delete(self.prefix + self.instance)


class LeaseLost(Exception):
    """This instance no longer holds (or can no longer prove it holds) its single-writer lease."""


class Lease:
    """A single-writer lease: acquire, renew while working, release at a clean stop."""

    def __init__(
        self,
        store: StateStore,
        name: str,
        holder: str,
        ttl_ms: int,
        monotonic_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        if ttl_ms <= 0:
            raise ValueError("lease ttl_ms must be > 0")
        self.store = store
        self.key = f"lease:{name}"
        self.holder = holder.encode()
        self.ttl_ms = ttl_ms
        self._monotonic_ns = monotonic_ns
        self.held = False
        self._renewed_ns = 0

    def try_acquire(self) -> bool:
        """Take the lease if it is free (or already ours); True when held."""
        # Assign `held` either way: a former holder whose lease someone else took must not
        # keep reporting held=True from an earlier acquisition.
        self.held = self.store.set_if_absent(self.key, self.holder, ttl_ms=self.ttl_ms) or (
            self.store.replace_if_equal(self.key, self.holder, self.holder, ttl_ms=self.ttl_ms)
        )
        if self.held:
            self._renewed_ns = self._monotonic_ns()
        return self.held

    def holder_now(self) -> str | None:
        """Who holds the lease at the moment, if anyone."""
        value = self.store.get(self.key)
        return None if value is None else value.decode(errors="replace")

    def renew(self) -> None:
        """Extend the lease; raise LeaseLost if another holder has it or renewal is overdue."""
        if not self.held:
            raise LeaseLost(f"{self.key} is not held")
        try:
            still_ours = self.store.replace_if_equal(
                self.key, self.holder, self.holder, ttl_ms=self.ttl_ms
            )
        except StoreError as exc:
            # Cannot reach the store: keep working only while the lease surely has not expired.
            if self.overdue():
                self.held = False
                raise LeaseLost(
                    f"{self.key}: store unreachable past the safe margin: {exc}"
                ) from exc
            log.warning("lease %s renewal failed, retrying: %s", self.key, exc)
            return
        if not still_ours:
            self.held = False
            raise LeaseLost(f"{self.key} is now held by {self.holder_now() or 'nobody'}")
        self._renewed_ns = self._monotonic_ns()

    def overdue(self) -> bool:
        """True once half the TTL has passed since the last confirmed renewal."""
        return self._monotonic_ns() - self._renewed_ns >= self.ttl_ms * 1_000_000 // 2

    def release(self) -> None:
        """Give the lease up at a clean stop so a standby takes over at once."""
        if self.held:
            self.held = False
            try:
                self.store.delete_if_equal(self.key, self.holder)
            except StoreError as exc:
                log.warning("could not release %s (it expires by itself): %s", self.key, exc)
