"""The kill switch's audit log: append-only, hash-chained, with a head record for the tail.

Each entry is one canonical JSON object (sorted keys, no spaces, UTF-8) stored as one log value:
``{"hash", "index", "kind", "prev", "record", "ts_ns"}``. ``hash`` is the SHA-256 of the canonical
encoding of ``{"index", "kind", "prev", "record", "ts_ns"}``, and ``prev`` is the previous entry's
``hash`` (64 zeros for the first), so editing, deleting or reordering entries breaks the chain.
Deleting the newest entries leaves a valid chain, which is why every append also writes the head
``{"hash", "index"}`` of the newest entry under a separate key.

The chain detects accidents and clumsy tampering, not a forger with write access to the store:
there is no secret, so anyone can rebuild a consistent chain and head.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from libs.common.store import StateStore

log = logging.getLogger(__name__)
AUDIT_LOG = "ctl:audit"
AUDIT_HEAD = "ctl:audit_head"
GENESIS = "0" * 64  # the `prev` of entry 0
KINDS = ("command", "transition", "trigger", "panic")  # what the kill switch writes
_ENTRY_FIELDS = frozenset({"index", "ts_ns", "kind", "record", "prev", "hash"})
_HEAD_FIELDS = frozenset({"index", "hash"})
_HEX = frozenset("0123456789abcdef")


class AuditCorrupt(Exception):
    """The stored log and its head disagree: the kill switch must not write on top of them."""


class MalformedEntry(ValueError):
    """Bytes that are not a well-formed audit entry (or head); the message says why."""


def canonical(value: Any) -> bytes:
    """The one byte encoding that hashes and storage use (raises ValueError/TypeError if none)."""
    # allow_nan=False: NaN/Infinity are not JSON, and other parsers would reject the entry.
    text = json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return text.encode("utf-8")


def entry_hash(index: int, ts_ns: int, kind: str, record: dict[str, Any], prev: str) -> str:
    """Hex SHA-256 of an entry's content (everything but its own hash)."""
    content = {"index": index, "ts_ns": ts_ns, "kind": kind, "record": record, "prev": prev}
    return hashlib.sha256(canonical(content)).hexdigest()


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audit log entry; `hash` is as stored, `computed_hash()` is what it should be."""

    index: int
    ts_ns: int
    kind: str
    record: dict[str, Any]
    prev: str
    hash: str

    def computed_hash(self) -> str:
        """The hash this entry's content really has."""
        return entry_hash(self.index, self.ts_ns, self.kind, self.record, self.prev)

    def encode(self) -> bytes:
        """The canonical stored bytes of this entry."""
        return canonical(
            {
                "index": self.index,
                "ts_ns": self.ts_ns,
                "kind": self.kind,
                "record": self.record,
                "prev": self.prev,
                "hash": self.hash,
            }
        )


@dataclass(frozen=True, slots=True)
class AuditHead:
    """The newest entry's index and hash, stored apart from the log."""

    index: int
    hash: str

    def encode(self) -> bytes:
        """The canonical stored bytes of this head."""
        return canonical({"index": self.index, "hash": self.hash})


def _load_object(raw: bytes, fields: frozenset[str]) -> dict[str, Any]:
    """Parse raw as a JSON object with exactly these fields, or raise MalformedEntry."""
    try:
        # Decode explicitly: json.loads(bytes) guesses UTF-16/32 from NUL bytes.
        obj = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise MalformedEntry(f"not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise MalformedEntry("not a JSON object")
    if missing := sorted(fields - obj.keys()):
        raise MalformedEntry(f"missing field {missing[0]!r}")
    if extra := sorted(obj.keys() - fields):
        raise MalformedEntry(f"unexpected field {extra[0]!r}")
    return obj


def _is_int(value: Any) -> bool:
    """A JSON integer (bool is an int subclass in Python, not in JSON)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_digest(value: Any) -> bool:
    """A lower-case hex SHA-256 digest."""
    return isinstance(value, str) and len(value) == 64 and set(value) <= _HEX


def parse_entry(raw: bytes) -> AuditEntry:
    """Decode one stored entry, checking its shape (not its hash); raise MalformedEntry."""
    obj = _load_object(raw, _ENTRY_FIELDS)
    for name in ("index", "ts_ns"):
        if not _is_int(obj[name]):
            raise MalformedEntry(f"field {name!r} is not an integer")
    if not isinstance(obj["kind"], str) or not obj["kind"]:
        raise MalformedEntry("field 'kind' is not a non-empty string")
    if not isinstance(obj["record"], dict):
        raise MalformedEntry("field 'record' is not an object")
    for name in ("prev", "hash"):
        if not _is_digest(obj[name]):
            raise MalformedEntry(f"field {name!r} is not a hex SHA-256 digest")
    return AuditEntry(**obj)


def parse_head(raw: bytes) -> AuditHead:
    """Decode a stored head, checking its shape; raise MalformedEntry."""
    obj = _load_object(raw, _HEAD_FIELDS)
    if not _is_int(obj["index"]) or obj["index"] < 0:
        raise MalformedEntry("field 'index' is not a non-negative integer")
    if not _is_digest(obj["hash"]):
        raise MalformedEntry("field 'hash' is not a hex SHA-256 digest")
    head = AuditHead(obj["index"], obj["hash"])
    if head.encode() != raw:
        raise MalformedEntry("not in canonical form (edited?)")
    return head


def is_head_line(raw: bytes) -> bool:
    """True when raw looks like a head (an object with just index and hash), even a bad one."""
    try:
        _load_object(raw, _HEAD_FIELDS)
    except MalformedEntry:
        return False
    return True


class AuditLog:
    """Appends hash-chained entries to a store log and keeps the head key in step."""

    def __init__(self, store: StateStore, log: str = AUDIT_LOG, head_key: str = AUDIT_HEAD) -> None:
        """Pick up the chain where the store left it; raise AuditCorrupt if log and head disagree."""
        self._store = store
        self._log = log
        self._head_key = head_key
        self.length, self.last_hash = self._resume()

    def _resume(self) -> tuple[int, str]:
        """(entries so far, hash of the newest) from the head and the last entry."""
        raw_head = self._store.get(self._head_key)
        length = self._store.log_length(self._log)
        where = f"audit log {self._log!r}"
        if raw_head is None:
            if length == 0:
                return 0, GENESIS
            if length == 1:
                return self._repair_head(0, GENESIS)
            raise AuditCorrupt(f"{where} has {length} entries but no head {self._head_key!r}")
        try:
            head = parse_head(raw_head)
        except MalformedEntry as exc:
            raise AuditCorrupt(f"{where}: head {self._head_key!r} is unreadable: {exc}") from None
        if head.index == length - 2:
            self._check_last(head)
            return self._repair_head(length - 1, head.hash)
        if head.index != length - 1:
            # Shorter: the tail was deleted. Longer: written past the head (a crash between the
            # append and the head write, or tampering); either way a human must look first.
            raise AuditCorrupt(
                f"{where} has {length} entries but its head says the newest is entry {head.index}"
            )
        self._check_last(head)
        return length, head.hash

    def _repair_head(self, index: int, prev: str) -> tuple[int, str]:
        """Exactly one intact entry past the head that chains onto it: a crash between the append
        and the head write. Finish the head write (logged) instead of refusing to start."""
        where = f"audit log {self._log!r} entry {index}"
        raw = self._store.read_log(self._log, index)[0]
        try:
            entry = parse_entry(raw)
            intact = entry.computed_hash() == entry.hash and entry.encode() == raw
        except (ValueError, TypeError) as exc:
            raise AuditCorrupt(f"{where} is past the head and unreadable: {exc}") from None
        if not intact or entry.index != index or entry.prev != prev:
            raise AuditCorrupt(f"{where} is past the head and does not chain onto it")
        log.warning("%s was appended but its head was not written (crash?): head repaired", where)
        self._store.set(self._head_key, AuditHead(index, entry.hash).encode())
        return index + 1, entry.hash

    def _check_last(self, head: AuditHead) -> None:
        """The newest entry is intact and is the one the head names."""
        where = f"audit log {self._log!r} entry {head.index}"
        raw = self._store.read_log(self._log, head.index)[0]
        try:
            entry = parse_entry(raw)
            intact = entry.computed_hash() == entry.hash and entry.encode() == raw
        except (ValueError, TypeError) as exc:  # MalformedEntry, or content that cannot encode
            raise AuditCorrupt(f"{where} is unreadable: {exc}") from None
        if not intact:
            raise AuditCorrupt(f"{where}: hash mismatch (edited?)")
        if entry.index != head.index or entry.hash != head.hash:
            raise AuditCorrupt(f"{where} is not the entry its head names (replaced?)")

    def append(self, kind: str, record: dict[str, Any], ts_ns: int) -> AuditEntry:
        """Chain, store and head one entry; raise AuditCorrupt if someone else wrote the log."""
        if kind not in KINDS:
            raise ValueError(f"unknown audit kind {kind!r}; expected one of {', '.join(KINDS)}")
        index = self.length
        # Encoding first: a record that is not plain JSON fails here, before the store is touched.
        digest = entry_hash(index, ts_ns, kind, record, self.last_hash)
        entry = AuditEntry(index, ts_ns, kind, record, self.last_hash, digest)
        stored_at = self._store.append(self._log, entry.encode())
        if stored_at != index:
            raise AuditCorrupt(
                f"audit log {self._log!r}: entry written at index {stored_at}, expected {index} "
                "(another writer?)"
            )
        # Advance before the head write: if that fails, the next append still chains correctly
        # and its head write repairs the head.
        self.length, self.last_hash = index + 1, digest
        self._store.set(self._head_key, AuditHead(index, digest).encode())
        return entry


def snapshot(
    store: StateStore, log: str = AUDIT_LOG, head_key: str = AUDIT_HEAD, attempts: int = 5
) -> tuple[list[bytes], bytes | None]:
    """The log's entries and its head, read consistently while the kill switch may append."""
    entries: list[bytes] = []
    head: bytes | None = None
    for _ in range(attempts):
        head = store.get(head_key)
        entries = store.read_log(log)
        # An append between the two reads makes them disagree; a stable head means none did.
        if store.get(head_key) == head:
            break
    return entries, head


def _entry_problems(position: int, raw: bytes, entry: AuditEntry, prev: str | None) -> list[str]:
    """What is wrong with one well-formed entry at a position in the log."""
    where = f"entry {position}"
    problems = []
    if entry.index != position:
        problems.append(f"{where}: index {entry.index}, expected {position}")
    if entry.computed_hash() != entry.hash:
        problems.append(f"{where}: hash mismatch (edited?)")
    elif entry.encode() != raw:
        # Same content, different bytes: the hash cannot see it, but the bytes were edited.
        problems.append(f"{where}: not in canonical form (edited?)")
    if prev is not None and entry.prev != prev:
        if position == 0:
            problems.append(f"{where}: prev is not the genesis value (entries deleted before it?)")
        else:
            problems.append(
                f"{where}: prev does not match entry {position - 1}'s hash (deleted or reordered?)"
            )
    return problems


class _SeqCheck:
    """Transitions' seq must go up by exactly one from one transition to the next."""

    def __init__(self) -> None:
        self.last: int | None = None

    def check(self, position: int, entry: AuditEntry) -> list[str]:
        """Problems with this entry's seq, if it is a transition."""
        if entry.kind != "transition":
            return []
        seq = entry.record.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool):
            return [f"entry {position}: transition without an integer seq"]
        last, self.last = self.last, seq
        if last is None or seq == last + 1:
            return []
        if seq > last + 1:
            return [
                f"entry {position}: transition seq {seq} after seq {last} "
                f"(gap: {seq - last - 1} missing)"
            ]
        return [f"entry {position}: transition seq {seq} after seq {last} (not increasing)"]


def _head_problems(head: bytes | None, count: int, last_hash: str | None) -> list[str]:
    """Does the head name the log's newest entry? (count entries; last_hash: newest's hash)."""
    if head is None:
        if count == 0:
            return []
        return [f"no head: the log has {count} entries but no head record (head deleted?)"]
    try:
        parsed = parse_head(head)
    except MalformedEntry as exc:
        return [f"head: {exc}"]
    if count == 0:
        return [f"log is empty but head says entry {parsed.index} (log deleted?)"]
    if parsed.index > count - 1:
        return [f"log ends at entry {count - 1} but head says {parsed.index} (tail deleted?)"]
    if parsed.index < count - 1:
        return [
            f"log continues past its head: ends at entry {count - 1} but head says "
            f"{parsed.index} (written without the head, or head rolled back?)"
        ]
    if last_hash is not None and parsed.hash != last_hash:
        return [f"head hash does not match entry {count - 1}'s hash (last entry replaced?)"]
    return []


def verify(entries: Iterable[bytes], head: bytes | None) -> list[str]:
    """Every problem in a log (entries in order) and its head, as readable lines; [] = intact."""
    problems: list[str] = []
    seqs = _SeqCheck()
    prev: str | None = GENESIS  # None after an unreadable entry: its hash is unknown
    count = 0
    for position, raw in enumerate(entries):
        count = position + 1
        try:
            entry = parse_entry(raw)
            problems += _entry_problems(position, raw, entry, prev)
        except MalformedEntry as exc:
            problems.append(f"entry {position}: {exc}")
            prev = None
            continue
        except (ValueError, TypeError) as exc:  # e.g. a lone surrogate: valid JSON, not UTF-8
            problems.append(f"entry {position}: content cannot be encoded ({exc})")
            prev = None
            continue
        problems += seqs.check(position, entry)
        prev = entry.hash
    return problems + _head_problems(head, count, prev)
