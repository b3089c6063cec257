"""The kill switch's hash-chained audit log and `flotilla audit verify|show|export`."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flotilla.audit import parse_export, run_namespace
from flotilla.cli import main
from flotilla.fleet import Fleet
from libs.common.config import DEFAULT_CONFIG, load_config
from libs.common.store import REDIS_URL_ENV, EmbeddedStore, RedisStore, StateStore
from services.kill_switch.audit import (
    AUDIT_HEAD,
    AUDIT_LOG,
    GENESIS,
    AuditCorrupt,
    AuditLog,
    parse_entry,
    verify,
)

T0 = 1_700_000_000_123_456_789


@dataclass
class Backend:
    """A store the test can also tamper with behind the store's back."""

    kind: str  # "sqlite" or "redis"
    run_dir: Path
    redis_url: str
    namespace: str

    def open(self) -> StateStore:
        """A new connection, as a restarted kill switch would open."""
        if self.kind == "redis":
            return RedisStore(self.redis_url, self.namespace)
        return EmbeddedStore(self.run_dir / "state.sqlite", self.namespace)

    def cli(self) -> list[str]:
        """The flags that point `flotilla audit` at this store."""
        if self.kind == "redis":
            return ["--redis-url", self.redis_url, "--namespace", self.namespace]
        return ["--run-dir", str(self.run_dir)]

    def rewrite(self, index: int, value: bytes) -> None:
        """Overwrite one stored log value in the backend's own storage."""
        if self.kind == "redis":
            with redis.Redis.from_url(self.redis_url) as client:
                client.lset(self._redis_log(), index, value)
            return
        self._sql("UPDATE log SET value = ? WHERE ns = ? AND name = ? AND idx = ?", value, index)

    def delete(self, index: int) -> None:
        """Remove one stored log value in the backend's own storage."""
        if self.kind == "redis":
            with redis.Redis.from_url(self.redis_url) as client:
                client.lset(self._redis_log(), index, b"__gone__")
                client.lrem(self._redis_log(), 1, b"__gone__")
            return
        self._sql("DELETE FROM log WHERE ns = ? AND name = ? AND idx = ?", index)

    def _redis_log(self) -> str:
        return f"{self.namespace}.log:{AUDIT_LOG}"

    def _sql(self, statement: str, *params: Any) -> None:
        if "UPDATE" in statement:
            params = (params[0], self.namespace, AUDIT_LOG, *params[1:])
        else:
            params = (self.namespace, AUDIT_LOG, *params)
        with sqlite3.connect(self.run_dir / "state.sqlite") as db:
            assert db.execute(statement, params).rowcount == 1


@pytest.fixture(autouse=True)
def no_env_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI must read the store the test names, not one from the environment."""
    monkeypatch.delenv(REDIS_URL_ENV, raising=False)


def _sqlite_backend(tmp_path: Path) -> Backend:
    run_dir = tmp_path / "run 1"  # a space: the namespace must sanitise it like the fleet does
    return Backend("sqlite", run_dir, "", "run-run_1")


@pytest.fixture
def sqlite_backend(tmp_path: Path) -> Backend:
    return _sqlite_backend(tmp_path)


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        return Backend("redis", tmp_path, url, f"t{uuid.uuid4().hex[:12]}")
    return _sqlite_backend(tmp_path)


@pytest.fixture
def store(backend: Backend) -> Iterator[StateStore]:
    s = backend.open()
    yield s
    s.close()


def record_for(i: int) -> tuple[str, dict[str, Any]]:
    """A realistic entry for global position i: command, transition, trigger, panic in turn."""
    kind = ("command", "transition", "trigger", "panic")[i % 4]
    if kind == "command":
        return kind, {"action": "halt", "operator": "zoé ☃", "reason": f"drill\u2028{i}"}
    if kind == "transition":
        return kind, {"state": "HALTED", "seq": i // 4 + 1, "source": "cli", "reason": "drill"}
    if kind == "trigger":
        return kind, {"trigger": "gpio:estop", "active": i % 8 == 2, "detail": "button"}
    return kind, {"rule": "max_drawdown", "action": "halt", "value": "-12.5", "detail": "dd"}


def fill(audit: AuditLog, n: int, start: int = 0) -> None:
    """Append entries start..start+n-1."""
    for i in range(start, start + n):
        kind, record = record_for(i)
        audit.append(kind, record, T0 + i * 1_000_000)


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run `flotilla audit ...` as a user would: exit code, stdout, stderr."""
    code = main(["audit", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def exported(tmp_path: Path, backend: Backend, capsys: pytest.CaptureFixture[str]) -> Path:
    """Export the backend's log to a file through the CLI."""
    path = tmp_path / "audit.jsonl"
    code, _, err = cli(capsys, "export", *backend.cli(), "--out", str(path))
    assert code == 0, err
    return path


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


# --- append, verify, export ---------------------------------------------------------------


def test_thousand_appends_are_quick_and_verify_from_the_store_and_an_export(
    sqlite_backend: Backend, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = sqlite_backend.open()
    audit = AuditLog(store)
    started = time.monotonic()
    fill(audit, 1000)
    elapsed = time.monotonic() - started
    store.close()

    assert elapsed < 5.0  # one append + one set each; ~0.3 s here, generous for slow CI
    code, out, err = cli(capsys, "verify", *sqlite_backend.cli())
    assert (code, err) == (0, "")
    assert out == f"audit log OK: 1000 entries, head {audit.last_hash[:12]}\n"
    path = exported(tmp_path, sqlite_backend, capsys)
    assert len(lines_of(path)) == 1001  # 1000 entries, then the head
    code, out, err = cli(capsys, "verify", "--file", str(path))
    assert (code, err) == (0, "")
    assert out == f"audit log OK: 1000 entries, head {audit.last_hash[:12]}\n"


def test_entries_are_chained_canonical_json(sqlite_backend: Backend) -> None:
    store = sqlite_backend.open()
    audit = AuditLog(store)
    first = audit.append("command", {"b": 1, "a": "é"}, T0)
    second = audit.append("transition", {"seq": 1}, T0 + 1)
    raw = store.read_log(AUDIT_LOG)
    head = store.get(AUDIT_HEAD)
    store.close()

    assert (first.index, first.prev, second.index, second.prev) == (0, GENESIS, 1, first.hash)
    assert raw[0] == first.encode()
    assert raw[0].startswith(b'{"hash":"') and '"record":{"a":"é","b":1}'.encode() in raw[0]
    assert json.loads(raw[1])["hash"] == second.hash == second.computed_hash()
    assert head == head_bytes(second.hash, 1)


def test_export_to_stdout_is_the_stored_bytes_then_the_head(
    sqlite_backend: Backend, capsys: pytest.CaptureFixture[str]
) -> None:
    store = sqlite_backend.open()
    fill(AuditLog(store), 5)
    stored, head = store.read_log(AUDIT_LOG), store.get(AUDIT_HEAD)
    store.close()

    code, out, _ = cli(capsys, "export", *sqlite_backend.cli())

    assert code == 0
    assert head is not None
    assert out.encode() == b"".join(line + b"\n" for line in [*stored, head])


def test_empty_store_verifies_as_empty(
    sqlite_backend: Backend, capsys: pytest.CaptureFixture[str]
) -> None:
    EmbeddedStore(sqlite_backend.run_dir / "state.sqlite", sqlite_backend.namespace).close()

    assert cli(capsys, "verify", *sqlite_backend.cli()) == (
        0,
        "audit log OK: 0 entries, no head\n",
        "",
    )


def test_show_prints_one_readable_line_per_entry(
    sqlite_backend: Backend, capsys: pytest.CaptureFixture[str]
) -> None:
    store = sqlite_backend.open()
    fill(AuditLog(store), 4)
    store.close()

    code, out, _ = cli(capsys, "show", *sqlite_backend.cli())

    assert code == 0
    assert out.splitlines() == [
        '     0  2023-11-14T22:13:20.123Z  command     action=halt operator="zoé ☃" '
        'reason="drill\\u20280"',
        "     1  2023-11-14T22:13:20.124Z  transition  state=HALTED seq=1 source=cli reason=drill",
        "     2  2023-11-14T22:13:20.125Z  trigger     trigger=gpio:estop active=true detail=button",
        "     3  2023-11-14T22:13:20.126Z  panic       action=halt rule=max_drawdown detail=dd",
    ]


def test_show_escapes_terminal_control_characters(
    sqlite_backend: Backend, capsys: pytest.CaptureFixture[str]
) -> None:
    store = sqlite_backend.open()
    AuditLog(store).append("command", {"action": "halt", "reason": "\x1b[2Jgone\x9b"}, T0)
    store.close()

    _, out, _ = cli(capsys, "show", *sqlite_backend.cli())

    assert "\x1b" not in out and "\x9b" not in out
    assert 'reason="\\u001b[2Jgone\\u009b"' in out


# --- tampering with the store --------------------------------------------------------------


def _filled(backend: Backend, n: int = 40) -> str:
    """Fill the backend's log with n entries; return the head hash."""
    store = backend.open()
    audit = AuditLog(store)
    fill(audit, n)
    store.close()
    return audit.last_hash


def _flip_one_byte(raw: bytes) -> bytes:
    """raw with one byte of its record changed (the first letter of the record's first key)."""
    at = raw.index(b'"record":{"') + len(b'"record":{"')
    return raw[:at] + bytes([raw[at] ^ 0x01]) + raw[at + 1 :]


def test_store_one_byte_edit_is_named(backend: Backend, capsys: pytest.CaptureFixture[str]) -> None:
    _filled(backend)
    store = backend.open()
    raw = store.read_log(AUDIT_LOG, 17)[0]
    store.close()
    backend.rewrite(17, _flip_one_byte(raw))

    code, out, err = cli(capsys, "verify", *backend.cli())

    assert (code, out) == (1, "")
    assert err.splitlines()[0] == "entry 17: hash mismatch (edited?)"


def test_store_deleted_middle_entry_is_found(
    backend: Backend, capsys: pytest.CaptureFixture[str]
) -> None:
    _filled(backend)
    backend.delete(20)

    code, _, err = cli(capsys, "verify", *backend.cli())

    assert code == 1
    assert "entry 20: index 21, expected 20" in err
    assert "entry 20: prev does not match entry 19's hash (deleted or reordered?)" in err
    assert "log ends at entry 38 but head says 39 (tail deleted?)" in err


def test_store_deleted_tail_with_the_head_kept_is_found(
    backend: Backend, capsys: pytest.CaptureFixture[str]
) -> None:
    _filled(backend)
    backend.delete(39)

    code, _, err = cli(capsys, "verify", *backend.cli())

    assert code == 1
    assert err.splitlines()[0] == "log ends at entry 38 but head says 39 (tail deleted?)"


def test_store_transition_seq_gap_is_reported(
    sqlite_backend: Backend, capsys: pytest.CaptureFixture[str]
) -> None:
    store = sqlite_backend.open()
    audit = AuditLog(store)
    for seq in (1, 2, 4, 4):
        audit.append("transition", {"state": "HALTED", "seq": seq}, T0)
    store.close()

    code, _, err = cli(capsys, "verify", *sqlite_backend.cli())

    assert code == 1
    assert err.splitlines()[:2] == [
        "entry 2: transition seq 4 after seq 2 (gap: 1 missing)",
        "entry 3: transition seq 4 after seq 4 (not increasing)",
    ]


# --- restarts ---------------------------------------------------------------------------------


def test_a_restart_continues_the_chain(backend: Backend, store: StateStore) -> None:
    first = AuditLog(store)
    fill(first, 3)

    reopened = backend.open()
    try:
        second = AuditLog(reopened)
        fill(second, 2, start=3)
        entries = [parse_entry(raw) for raw in reopened.read_log(AUDIT_LOG)]
        problems = verify(reopened.read_log(AUDIT_LOG), reopened.get(AUDIT_HEAD))
    finally:
        reopened.close()

    assert problems == []
    assert [e.index for e in entries] == [0, 1, 2, 3, 4]
    assert entries[3].prev == entries[2].hash == first.last_hash
    assert second.last_hash == entries[4].hash


def _garbage_head(store: StateStore) -> None:
    store.set(AUDIT_HEAD, b"not json")


def head_bytes(digest: str, index: int) -> bytes:
    """A well-formed head record."""
    return json.dumps({"hash": digest, "index": index}, separators=(",", ":")).encode()


def _head_wrong_hash(store: StateStore) -> None:
    store.set(AUDIT_HEAD, head_bytes("a" * 64, 2))


def _head_behind(store: StateStore) -> None:
    store.append(AUDIT_LOG, store.read_log(AUDIT_LOG, 2)[0])  # a crash before the head write


def _head_gone(store: StateStore) -> None:
    store.delete(AUDIT_HEAD)


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (_garbage_head, "head 'ctl:audit_head' is unreadable: not valid JSON"),
        (_head_wrong_hash, "entry 2 is not the entry its head names"),
        (_head_behind, "entry 3 is past the head and does not chain onto it"),
        (_head_gone, "has 3 entries but no head"),
    ],
)
def test_a_log_and_head_that_disagree_at_start_refuse_to_continue(
    backend: Backend, store: StateStore, corrupt: Any, message: str
) -> None:
    fill(AuditLog(store), 3)
    corrupt(store)

    with pytest.raises(AuditCorrupt, match=message):
        AuditLog(store)


def test_a_crash_between_append_and_head_write_is_repaired_at_start(
    backend: Backend, store: StateStore
) -> None:
    audit = AuditLog(store)
    fill(audit, 3)
    head_before = store.get(AUDIT_HEAD)
    audit.append("command", {"action": "halt"}, 99)
    assert head_before is not None
    store.set(AUDIT_HEAD, head_before)  # the head write never happened

    restarted = AuditLog(store)
    restarted.append("command", {"action": "resume"}, 100)

    assert verify(store.read_log(AUDIT_LOG), store.get(AUDIT_HEAD)) == []
    assert restarted.length == 5


def test_a_head_without_a_log_refuses_to_continue(sqlite_backend: Backend) -> None:
    store = sqlite_backend.open()
    store.set(AUDIT_HEAD, head_bytes("a" * 64, 0))
    with pytest.raises(AuditCorrupt, match="has 0 entries but its head says"):
        AuditLog(store)
    store.close()


def test_an_edited_newest_entry_refuses_to_continue(sqlite_backend: Backend) -> None:
    _filled(sqlite_backend, 3)
    store = sqlite_backend.open()
    raw = store.read_log(AUDIT_LOG, 2)[0]
    sqlite_backend.rewrite(2, _flip_one_byte(raw))

    with pytest.raises(AuditCorrupt, match="entry 2: hash mismatch"):
        AuditLog(store)
    store.close()


def test_append_fails_closed_when_another_writer_appended(sqlite_backend: Backend) -> None:
    store = sqlite_backend.open()
    audit = AuditLog(store)
    fill(audit, 2)
    store.append(AUDIT_LOG, b"{}")

    with pytest.raises(AuditCorrupt, match="written at index 3, expected 2"):
        audit.append("command", {"action": "halt"}, T0)
    store.close()


def test_append_rejects_a_record_that_is_not_plain_json_before_writing(
    sqlite_backend: Backend,
) -> None:
    store = sqlite_backend.open()
    audit = AuditLog(store)

    with pytest.raises(TypeError):
        audit.append("command", {"qty": Decimal("1.5")}, T0)
    with pytest.raises(ValueError, match="unknown audit kind"):
        audit.append("note", {}, T0)
    audit.append("command", {"qty": "1.5"}, T0)

    assert store.log_length(AUDIT_LOG) == 1
    assert verify(store.read_log(AUDIT_LOG), store.get(AUDIT_HEAD)) == []
    store.close()


# --- tampering with an export -------------------------------------------------------------


@pytest.fixture
def export_file(
    sqlite_backend: Backend, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> Path:
    """An export of a 40-entry log: lines 0..39 are entries, line 40 the head."""
    _filled(sqlite_backend)
    return exported(tmp_path, sqlite_backend, capsys)


def _verify_file(capsys: pytest.CaptureFixture[str], path: Path) -> tuple[int, list[str]]:
    code, out, err = cli(capsys, "verify", "--file", str(path))
    assert out == "" or code == 0
    return code, err.splitlines()


def test_file_one_byte_edit_is_named(export_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = lines_of(export_file)
    lines[17] = _flip_one_byte(lines[17])
    write_lines(export_file, lines)

    code, err = _verify_file(capsys, export_file)

    assert code == 1
    assert err[0] == "entry 17: hash mismatch (edited?)"


def test_file_deleted_middle_line_is_found(
    export_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = lines_of(export_file)
    del lines[20]
    write_lines(export_file, lines)

    code, err = _verify_file(capsys, export_file)

    assert code == 1
    assert "entry 20: prev does not match entry 19's hash (deleted or reordered?)" in err


@pytest.mark.parametrize(
    ("cut", "message"),
    [
        ([39], "log ends at entry 38 but head says 39 (tail deleted?)"),
        ([39, 40], "no head: the log has 39 entries but no head record (head deleted?)"),
    ],
    ids=["newest-entry", "newest-entry-and-head"],
)
def test_file_deleted_tail_is_found(
    export_file: Path, capsys: pytest.CaptureFixture[str], cut: list[int], message: str
) -> None:
    lines = [line for i, line in enumerate(lines_of(export_file)) if i not in cut]
    write_lines(export_file, lines)

    code, err = _verify_file(capsys, export_file)

    assert code == 1
    assert message in err


def test_file_reordered_lines_are_found(
    export_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = lines_of(export_file)
    lines[10], lines[11] = lines[11], lines[10]
    write_lines(export_file, lines)

    code, err = _verify_file(capsys, export_file)

    assert code == 1
    assert "entry 10: index 11, expected 10" in err
    assert "entry 11: prev does not match entry 10's hash (deleted or reordered?)" in err


def test_file_invalid_json_line_is_reported(
    export_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = lines_of(export_file)
    lines[5] = lines[5][:-1]
    write_lines(export_file, lines)

    code, err = _verify_file(capsys, export_file)

    assert code == 1
    assert err[0].startswith("entry 5: not valid JSON")


@pytest.mark.parametrize("last", [True, False], ids=["last-newline", "first-newline"])
@pytest.mark.parametrize("byte", [b" ", b"\r", b"\t"])
def test_whitespace_edits_that_keep_the_json_meaning_are_still_found(
    export_file: Path, last: bool, byte: bytes
) -> None:
    data = export_file.read_bytes()
    at = len(data) - 1 if last else data.index(b"\n")
    changed = data[:at] + byte + data[at + 1 :]

    assert verify(*parse_export(changed)) != []


@pytest.fixture(scope="module")
def small_export(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The export bytes of a 9-entry log (every kind, non-ASCII records, two transitions)."""
    path = tmp_path_factory.mktemp("export") / "state.sqlite"
    store = EmbeddedStore(path)
    fill(AuditLog(store), 9)
    entries, head = store.read_log(AUDIT_LOG), store.get(AUDIT_HEAD)
    store.close()
    assert head is not None
    return b"".join(line + b"\n" for line in [*entries, head])


# The only function-scoped fixture here is the autouse env cleanup, harmless to share.
@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_single_byte_change_in_an_export_is_detected(
    small_export: bytes, data: st.DataObject
) -> None:
    assert verify(*parse_export(small_export)) == []
    at = data.draw(st.integers(0, len(small_export) - 1), label="position")
    new = data.draw(st.integers(0, 255).filter(lambda b: b != small_export[at]), label="byte")
    changed = small_export[:at] + bytes([new]) + small_export[at + 1 :]

    assert verify(*parse_export(changed)) != []


# --- sources and errors ---------------------------------------------------------------------


def test_run_namespace_is_the_fleets(tmp_path: Path) -> None:
    run_dir = tmp_path / "2024-01-02 03:04"
    fleet = Fleet(cfg=load_config(), run_dir=run_dir, config_path=DEFAULT_CONFIG)
    fleet.close()

    assert run_namespace(run_dir) == fleet.namespace == "run-2024-01-02_03_04"


@pytest.mark.parametrize(
    "argv",
    [
        ["verify", "--run-dir", "{tmp}/nowhere"],
        ["verify", "--run-dir", "{tmp}/garbage"],
        ["show", "--file", "{tmp}/missing.jsonl"],
        ["verify", "--redis-url", "redis://127.0.0.1:1/0"],
        ["export", "--file", "{tmp}/garbage/state.sqlite"],
        ["verify"],
    ],
    ids=["no-store", "not-sqlite", "no-file", "redis-down", "export-from-file", "no-source"],
)
def test_an_unreadable_source_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "state.sqlite").write_bytes(b"this is not a database" * 100)

    code, out, err = cli(capsys, *(a.replace("{tmp}", str(tmp_path)) for a in argv))

    assert (code, out) == (2, "")
    assert err.startswith("flotilla audit: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
