"""`flotilla audit verify|show|export`: check, read or copy the kill switch's audit log.

Where the log is read from:
- ``--run-dir DIR``: a local fleet's store, ``DIR/state.sqlite`` in namespace ``run-<DIR name>``;
- ``--redis-url URL`` (or ``$FLOTILLA_REDIS_URL``): a Redis store, in ``--namespace`` (default: the
  run dir's namespace when ``--run-dir`` is also given, else ``flotilla``);
- ``--file FILE``: an export (verify and show only).

An export is JSON lines: every entry's stored bytes on a line of its own, in log order, then the
head's stored bytes (``{"hash":...,"index":N}``) as the last line, so a file can be verified on
its own, a deleted tail included. A log without a head exports without a head line and so fails
verification, as the store itself does; an empty file is an empty log (like a fresh store).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from libs.common.store import REDIS_URL_ENV, StateStore, StoreError, open_store
from services.kill_switch.audit import (
    MalformedEntry,
    is_head_line,
    parse_entry,
    parse_head,
    snapshot,
    verify,
)

# Record fields worth a glance in `show`, in display order; the rest stay in the export.
SHOW_FIELDS = (
    "state",
    "seq",
    "action",
    "outcome",
    "rule",
    "trigger",
    "active",
    "strategy",
    "instance",
    "source",
    "operator",
    "reason",
    "detail",
)
_BARE = re.compile(r"[\w.:@/+-]+")  # values shown without quotes


class Unreadable(Exception):
    """The log's source cannot be opened or read; the message says which and why."""


def run_namespace(run_dir: Path) -> str:
    """The store namespace of a local fleet's run dir (the same rule as flotilla.fleet.Fleet)."""
    return "run-" + re.sub(r"[^A-Za-z0-9_-]", "_", run_dir.name)


def run_audit(args: argparse.Namespace) -> int:
    """verify | show | export; 0 ok, 1 the log is broken, 2 it cannot be read (or bad flags)."""
    try:
        _check_flags(args)
        entries, head = _load(args)
    except Unreadable as exc:
        print(f"flotilla audit: {exc}", file=sys.stderr)
        return 2
    if args.audit_command == "verify":
        return _verify(entries, head)
    if args.audit_command == "show":
        return _show(entries)
    return _export(entries, head, args.out)


def _check_flags(args: argparse.Namespace) -> None:
    """Reject flag combinations that would silently read something else than meant."""
    if args.file is not None and (args.run_dir is not None or args.redis_url):
        raise Unreadable("use either --file or a store (--run-dir / --redis-url), not both")
    if args.file is not None and args.audit_command == "export":
        raise Unreadable("export reads a store (--run-dir / --redis-url); --file is an export")
    if args.out is not None and args.audit_command != "export":
        raise Unreadable("--out is only for export")


def _load(args: argparse.Namespace) -> tuple[list[bytes], bytes | None]:
    """The entries and head from --file or from the store."""
    if args.file is not None:
        return parse_export(_read_file(args.file))
    store = _open_store(args)
    try:
        return snapshot(store)
    except StoreError as exc:
        raise Unreadable(str(exc)) from None
    finally:
        store.close()


def _read_file(path: Path) -> bytes:
    """A file's bytes, or Unreadable."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise Unreadable(f"cannot read {path}: {exc.strerror or exc}") from None


def _open_store(args: argparse.Namespace) -> StateStore:
    """The store named by --redis-url / $FLOTILLA_REDIS_URL or --run-dir, or Unreadable."""
    url = args.redis_url or os.environ.get(REDIS_URL_ENV) or ""
    run_dir: Path | None = args.run_dir
    namespace = args.namespace or (run_namespace(run_dir) if run_dir is not None else "flotilla")
    path = Path(os.devnull)
    if not url:
        if run_dir is None:
            raise Unreadable(
                "which log? give --run-dir DIR, --redis-url URL ($FLOTILLA_REDIS_URL) or --file"
            )
        path = run_dir / "state.sqlite"
        # Opening creates a missing file; an empty new store would then "verify" as intact.
        if not path.is_file():
            raise Unreadable(f"no state store at {path}")
    try:
        return open_store(path, redis_url=url, namespace=namespace)
    except StoreError as exc:
        raise Unreadable(str(exc)) from None


def parse_export(data: bytes) -> tuple[list[bytes], bytes | None]:
    """Split an exported file into its entries and its head line (None if the last line is not one)."""
    # Split on b"\n" only: str.splitlines would also split on U+2028 and friends inside records.
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # the newline that ends the last line (or an empty file)
    if lines and is_head_line(lines[-1]):
        return lines[:-1], lines[-1]
    return lines, None


def export_bytes(entries: Iterable[bytes], head: bytes | None) -> bytes:
    """The export of a log: each stored value, then the head, one per line."""
    lines = [*entries, *([head] if head is not None else [])]
    return b"".join(line + b"\n" for line in lines)


def _verify(entries: list[bytes], head: bytes | None) -> int:
    """Print OK and the head, or every problem on stderr."""
    problems = verify(entries, head)
    if problems:
        for problem in problems:
            print(problem, file=sys.stderr)
        print(
            f"audit log BROKEN: {len(problems)} problem(s) in {len(entries)} entries",
            file=sys.stderr,
        )
        return 1
    shown = f"head {parse_head(head).hash[:12]}" if head is not None else "no head"
    print(f"audit log OK: {len(entries)} entries, {shown}")
    return 0


def _show(entries: list[bytes]) -> int:
    """One line per entry; 1 if some entry cannot be read (show does not check the chain)."""
    unreadable = 0
    for position, raw in enumerate(entries):
        try:
            entry = parse_entry(raw)
        except MalformedEntry as exc:
            unreadable += 1
            print(f"{position:>6}  <unreadable: {exc}>")
            continue
        fields = describe(entry.record)
        print(f"{entry.index:>6}  {utc(entry.ts_ns)}  {entry.kind:<10}  {fields}".rstrip())
    return 1 if unreadable else 0


def utc(ts_ns: int) -> str:
    """Nanoseconds since the epoch as UTC ISO 8601 with milliseconds."""
    seconds, rest = divmod(ts_ns, 1_000_000_000)  # integer maths: a float would round the ms
    try:
        when = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return f"ts_ns={ts_ns}"
    return f"{when}.{rest // 1_000_000:03d}Z"


def describe(record: dict[str, Any]) -> str:
    """The record's key fields as key=value, empty ones left out."""
    return " ".join(
        f"{name}={_show_value(record[name])}"
        for name in SHOW_FIELDS
        if record.get(name) not in (None, "", [], {})
    )


def _show_value(value: Any) -> str:
    """A value for one terminal line: bare when plain, else JSON (control characters escaped)."""
    if isinstance(value, str) and _BARE.fullmatch(value):
        return value
    text = json.dumps(value, ensure_ascii=False)
    # Log text comes from operators and services: never let it drive the terminal.
    return text if text.isprintable() else json.dumps(value)


def _export(entries: list[bytes], head: bytes | None, out: Path | None) -> int:
    """Write the export to out or stdout; 1 if it cannot be a faithful one-entry-per-line copy."""
    data = export_bytes(entries, head)
    if out is None:
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        try:
            out.write_bytes(data)
        except OSError as exc:
            print(f"flotilla audit: cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        print(f"exported {len(entries)} entries{' and the head' if head else ''} to {out}")
    broken = [i for i, raw in enumerate(entries) if b"\n" in raw]
    for position in broken:
        print(f"entry {position} contains a newline: the export splits it", file=sys.stderr)
    if head is None and entries:
        print("the store has no head record: the export will not verify", file=sys.stderr)
    return 1 if broken else 0
